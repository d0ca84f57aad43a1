"""Pre-emption: a real SIGTERM mid-epoch writes a checkpoint at the current step, the process
exits non-zero with a line saying how to resume, and the re-launch ends with exactly the
weights of an uninterrupted run."""
from __future__ import annotations

import pytest
import torch

from conftest import FAST_TRAIN, run_cli


def _weights(path):
    sd = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith(("model.", "ema."))}


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_exits_nonzero_and_resumes_exactly(tmp_path):
    common = FAST_TRAIN + [
        "trainer.max_epochs=2", "data.train_size=320", "aug=imagenet", "ema=default", "ema.decay=0.9",
        "model.drop_path_rate=0.1", f"paths.log_dir={tmp_path}",
    ]
    straight = run_cli("train.py", common + ["run_name=straight"], subprocess_only=True)  # like for like
    assert straight.returncode == 0, straight.stderr[-3000:]

    # SIGTERM arrives during the 5th batch of epoch 0 (10 batches per epoch, one checkpoint per epoch)
    first = run_cli("train.py", common + ["run_name=pre"], env={"PARTIALNET_TEST_SIGTERM_AT_STEP": "4"})
    assert first.returncode == 143, (first.returncode, first.stderr[-3000:])
    assert "Traceback" not in first.stderr
    line = [ln for ln in first.stderr.splitlines() if "pre-empted" in ln]
    assert len(line) == 1 and "step 5" in line[0] and "re-launch" in line[0], first.stderr[-2000:]
    last = tmp_path / "train/runs/pre/checkpoints/last.ckpt"
    ck = torch.load(last, weights_only=False)
    assert ck["global_step"] == 5 and ck["epoch"] == 0  # the current step, not the last epoch boundary
    assert not (tmp_path / "train/runs/pre/run.lock").exists()  # the lock is released on the way out

    second = run_cli("train.py", common + ["run_name=pre"], subprocess_only=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout
    wa, wb = _weights(tmp_path / "train/runs/straight/checkpoints/last.ckpt"), _weights(last)
    assert wa.keys() == wb.keys() and any(k.startswith("ema.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after a pre-empted run resumed"
