"""Shared test helpers: run the CLIs as a user would (subprocess), compose configs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Small, fast settings for end-to-end runs on synthetic data.
FAST_TRAIN = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=128",
    "data.val_size=64",
    "data.batch_size=32",
    "model=partialnet_t0",
    "logger=csv",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
]


def run_cli(script: str, args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run ``python <script> <args>`` from the repo root; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update({"PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"})
    full_env.pop("PARTIALNET_RUN_NAME", None)
    for k, v in (env or {}).items():  # None removes a variable
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=str(cwd or REPO),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run many small ops: one intra-op thread is as fast, and far faster on busy cores
    (spinning OpenMP threads). `make test` also sets OMP_NUM_THREADS=1 for subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo() -> Path:
    return REPO


def assert_user_error(proc, *needles: str) -> None:
    """Exit 2, one 'error' line on stderr naming the needles, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error", "config error"))]
    assert len(err_lines) == 1, proc.stderr[-3000:]
    for n in needles:
        assert n in err_lines[0], f"{n!r} not in {err_lines[0]!r}"
