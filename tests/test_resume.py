"""Resume is exact: 2 epochs straight == 1 epoch + automatic resume for 1 more epoch."""
from __future__ import annotations

import csv

import torch

from conftest import FAST_TRAIN, run_cli


def _lr_sequence(run_dir):
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    seq = {}
    for r in rows:
        v = r.get("lr-AdamW/pg1")
        if v not in (None, ""):
            seq[int(r["step"])] = float(v)
    return [seq[k] for k in sorted(seq)]


def _weights(path):
    sd = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith(("model.", "ema."))}


def test_resume_is_exact(tmp_path):
    common = FAST_TRAIN + [
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "sched.warmup_epochs=1",
        "ema=default",
        "ema.decay=0.9",
        "aug=imagenet",  # mixup/cutmix draw random numbers: they must replay too
        "model.drop_path_rate=0.1",  # drop-path draws random numbers too
        f"paths.log_dir={tmp_path}",
    ]
    straight = run_cli("train.py", common + ["run_name=straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]

    first = run_cli("train.py", common + ["run_name=chunked", "stop_after_epoch=1"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("train.py", common + ["run_name=chunked"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout

    a_dir = tmp_path / "train" / "runs" / "straight"
    b_dir = tmp_path / "train" / "runs" / "chunked"
    wa, wb = _weights(a_dir / "checkpoints" / "last.ckpt"), _weights(b_dir / "checkpoints" / "last.ckpt")
    assert wa.keys() == wb.keys() and any(k.startswith("ema.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
    lra, lrb = _lr_sequence(a_dir), _lr_sequence(b_dir)
    assert len(lra) == 8 and lra == lrb
    # the resumed run appended to the same metrics.csv: steps of both epochs are there
    ckb = torch.load(b_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckb["epoch"] == 1 and ckb["global_step"] == 8
