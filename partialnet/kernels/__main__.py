"""``python -m partialnet.kernels``: compile the C++ CPU kernels (``make install`` runs it).

A failed build (no C++ compiler, no Python headers, an unwritable build directory) ends in one
line naming the cause and the fix, exit code 2; the library itself still runs without the kernels.
"""
from __future__ import annotations

import subprocess
import sys
import time

from partialnet.errors import UserError
from partialnet.kernels.loader import build, build_dir, cpu_kernels


def main() -> int:
    t0 = time.perf_counter()
    where = build_dir()
    print(f"building partialnet's CPU kernels in {where} ...", flush=True)
    try:
        build()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(
            f"could not build the CPU kernels in {where} ({first}); install a C++ compiler and the Python "
            "headers (apt-get install g++ python3-dev), or point PARTIALNET_KERNELS_DIR at a writable folder; "
            "without the kernels PyTorch's operators run instead") from None
    cpu_kernels.cache_clear()
    if cpu_kernels() is None:
        print("built, but this CPU lacks AVX2: PyTorch's operators will run instead", flush=True)
    else:
        print(f"CPU kernels ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    from partialnet.utils.cli import run_cli

    run_cli(main)
