# partialnet, GPU-ready. The pinned torch wheel bundles the CUDA runtime (nvidia-* wheels), so
# a Debian 12 + Python 3.11 base (the same system as our dev machines and CI) runs on any host
# with the NVIDIA driver and container toolkit: docker run --gpus all partialnet
# The image runs `make install` itself: same Debian packages, same pinned Python packages.
FROM python:3.11-bookworm

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /opt/partialnet
COPY . .
RUN make install PYTHON=python3 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/partialnet/.venv/bin:$PATH
CMD ["python", "train.py"]
