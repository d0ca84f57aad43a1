"""``python -m partialnet.kernels``: compile the C++ CPU kernels (``make install`` runs it)."""
from __future__ import annotations

import sys
import time

from partialnet.kernels.loader import build, build_dir, cpu_kernels


def main() -> int:
    t0 = time.perf_counter()
    print(f"building partialnet's CPU kernels in {build_dir()} ...", flush=True)
    build()
    cpu_kernels.cache_clear()
    if cpu_kernels() is None:
        print("built, but this CPU lacks AVX2: PyTorch's operators will run instead", flush=True)
    else:
        print(f"CPU kernels ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
