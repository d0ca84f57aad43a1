"""bench/gpu.sh: says "no CUDA device" and exits 0 on a CPU machine; every cell's code runs (CPU dry run)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu.sh would measure for minutes")
def test_gpu_sh_on_cpu_says_so_and_exits_0():
    proc = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PY": sys.executable, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "no CUDA device: bench/gpu.sh measures nothing on this machine"


@pytest.mark.slow
def test_gpu_bench_cells_run_in_a_cpu_dry_run():
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--cpu-dry-run"], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(("| training", "| inference", "| data"))]
    assert len(rows) == 9 and not any("failed" in r for r in rows), proc.stdout
