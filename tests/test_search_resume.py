"""The search resumes exactly: 2 search epochs straight == 1 epoch + automatic resume for the 2nd
(no warm-up, so the logits' optimiser state and the dual-ascent weight are in the checkpoint)."""
from __future__ import annotations

import csv

import torch
import yaml

from conftest import run_cli
from test_search_cli import FAST_SEARCH


def _column(run_dir, key):
    seq = {}
    for r in csv.DictReader(open(run_dir / "metrics.csv")):
        if r.get(key) not in (None, ""):
            seq[int(r["step"])] = float(r[key])
    return [seq[k] for k in sorted(seq)]


def test_search_resume_is_exact(tmp_path):
    common = [*FAST_SEARCH, "trainer.max_epochs=2", "data.train_size=96", "data.val_size=32", "sched.warmup_epochs=1",
              "search.warmup_epochs=0",
              "model.drop_path_rate=0.1", f"paths.log_dir={tmp_path}"]
    straight = run_cli("search_dpconv.py", common + ["run_name=straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run_cli("search_dpconv.py", common + ["run_name=chunked", "stop_after_epoch=1"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "no ratios.yaml yet" in first.stdout
    second = run_cli("search_dpconv.py", common + ["run_name=chunked"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout

    a, b = tmp_path / "search" / "runs" / "straight", tmp_path / "search" / "runs" / "chunked"
    ca = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    cb = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 6  # 3 batches x 2 epochs: the arch step is not counted
    assert ca["state_dict"].keys() == cb["state_dict"].keys() and "arch_logits" in ca["state_dict"]
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), f"{k} differs after resume"
    assert ca["state_dict"]["arch_logits"].abs().sum() > 0  # the logits did learn
    assert len(ca["optimizer_states"]) == 2  # weights' AdamW + logits' Adam, both restored
    for key in ("search/tau", "lr-AdamW/pg1", "search/expected_gmacs_step"):
        sa, sb = _column(a, key), _column(b, key)
        assert len(sa) == 6 and sa == sb, key
    ra, rb = yaml.safe_load((a / "ratios.yaml").read_text()), yaml.safe_load((b / "ratios.yaml").read_text())
    assert ra == rb
