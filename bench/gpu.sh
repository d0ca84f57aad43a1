#!/usr/bin/env bash
# GPU benchmark: training images/s (fp32 / bf16-mixed, NCHW / channels_last, eager / compile),
# FFCV GPU pipeline, inference at batch 256 and batch 1; one Markdown table in bench/GPU_RESULTS.md.
# About 8 minutes on one GPU (bench/gpu.py --budget-s caps it); prints "no CUDA device" and exits 0 on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" bench/gpu.py "$@"
