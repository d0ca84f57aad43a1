"""kill -9 mid-epoch, then the same command again: the run resumes by itself from its latest
step-interval checkpoint and ends with exactly the weights of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import FAST_TRAIN, REPO, run_cli


def _weights(path):
    sd = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith(("model.", "ema."))}


def _common(tmp_path):
    return FAST_TRAIN + [
        "data.train_size=320", "callbacks.checkpoint.every_n_train_steps=2",
        "aug=imagenet", "ema=default", "ema.decay=0.9", "model.drop_path_rate=0.1", f"paths.log_dir={tmp_path}",
    ]


# 6: mid-epoch (fast tier); 10: the epoch's last batch (make test-all; epoch-boundary resume is also
# checked by test_resume.py)
@pytest.mark.parametrize("exit_step", [6, pytest.param(10, marks=pytest.mark.slow)])
def test_mid_epoch_stop_and_resume_is_exact(tmp_path, exit_step):
    """Deterministic version: the process dies (os._exit, like kill -9) right after the step
    checkpoint at `exit_step` (10 steps per epoch: 6 is mid-epoch, 10 is the epoch's last batch).
    The dying run is a real process; the uninterrupted run and the relaunch run in this one."""
    epochs = 1 if exit_step < 10 else 2  # the relaunch still has the rest of an epoch to run
    common = [*_common(tmp_path), f"trainer.max_epochs={epochs}"]
    straight = run_cli("train.py", common + ["run_name=straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    env = {"PARTIALNET_TEST_EXIT_AFTER_STEP": str(exit_step)}
    first = run_cli("train.py", common + ["run_name=killed"], env=env)
    assert first.returncode != 0  # died abruptly mid-epoch
    ck = torch.load(tmp_path / "train/runs/killed/checkpoints/last.ckpt", weights_only=False)
    assert ck["global_step"] == exit_step and ck["epoch"] == 0
    second = run_cli("train.py", common + ["run_name=killed"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout
    ck = torch.load(tmp_path / "train/runs/killed/checkpoints/last.ckpt", weights_only=False)
    assert ck["global_step"] == 10 * epochs
    wa = _weights(tmp_path / "train/runs/straight/checkpoints/last.ckpt")
    wb = _weights(tmp_path / "train/runs/killed/checkpoints/last.ckpt")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after a mid-epoch resume"


@pytest.mark.slow  # a real SIGKILL (two processes); the fast tier has the deterministic mid-epoch death above
def test_kill_9_then_relaunch_resumes(tmp_path):
    """A real SIGKILL at whatever step the run reached: relaunching finishes the run."""
    common = _common(tmp_path) + ["run_name=k9", "trainer.max_epochs=3"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("PARTIALNET_RUN_NAME", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *common], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "train/runs/k9/checkpoints/last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists()
    torch.load(last, weights_only=False)  # the checkpoint on disk is whole (atomic writes)
    again = run_cli("train.py", common)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    assert torch.load(last, weights_only=False)["global_step"] == 30
