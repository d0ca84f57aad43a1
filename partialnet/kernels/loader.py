"""Build and load the C++ CPU kernels (see :mod:`partialnet.kernels`)."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["build", "build_dir", "cpu_kernels"]

log = logging.getLogger(__name__)

NAME = "partialnet_cpu_kernels"
SOURCES = tuple(Path(__file__).with_name(f) for f in ("bindings.cpp", "bn_gelu.cpp", "pat_spatial.cpp", "one_image.cpp"))
HEADERS = (Path(__file__).with_name("vec_common.h"),)
# AVX2 + FMA: ATen's 256-bit vector types; OpenMP: ATen's parallel_for runs on torch's own threads.
CFLAGS = ("-O3", "-fopenmp", "-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2")


def build_dir() -> Path:
    """Where the build for this torch version, these sources and flags lives."""
    digest = hashlib.sha256()
    for src in SOURCES + HEADERS:
        digest.update(src.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    root = os.environ.get("PARTIALNET_KERNELS_DIR") or Path.home() / ".cache" / "partialnet" / "kernels"
    return Path(root) / f"torch{torch.__version__}-{digest.hexdigest()[:12]}"


def build(verbose: bool = False) -> ModuleType:
    """Compile the kernels if this build does not exist yet (about a minute on 2 cores) and load them."""
    from torch.utils.cpp_extension import load

    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    return load(NAME, [str(s) for s in SOURCES], extra_cflags=list(CFLAGS), build_directory=str(out),
                verbose=verbose)


def _cpu_has_avx2() -> bool:
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The built kernels, or None when there is no build for this torch version and these sources
    (``python -m partialnet.kernels`` makes one), the build does not load, or the CPU lacks AVX2.
    Never compiles."""
    if not _cpu_has_avx2():
        return None
    so = build_dir() / f"{NAME}.so"
    if not so.is_file():
        log.warning("partialnet's CPU kernels are not built for this torch version and these sources (%s); "
                    "PyTorch's operators run instead, more slowly. Build them with: python -m partialnet.kernels",
                    so.parent)
        return None
    try:
        spec = importlib.util.spec_from_file_location(NAME, so)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as e:  # a damaged or foreign build: run without it
        log.warning("partialnet's CPU kernels in %s do not load (%s); PyTorch's operators run instead. "
                    "Rebuild them with: python -m partialnet.kernels", so.parent, e)
        return None
    return module
