"""W&B works offline with no account: one offline run per job, id kept across resume."""
from __future__ import annotations

import pytest

from conftest import FAST_TRAIN, run_cli


def test_wandb_offline_run_and_resume_keeps_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no account, no mode set: offline by default
    monkeypatch.delenv("WANDB_MODE", raising=False)
    args = [a for a in FAST_TRAIN if not a.startswith("logger=")] + [
        "logger=default", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", f"hydra.run.dir={tmp_path}",
    ]
    first = run_cli("train.py", args + ["trainer.max_epochs=1"])
    assert first.returncode == 0, first.stderr[-3000:]
    rid = (tmp_path / "wandb_id").read_text().strip()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(rid)
    assert (tmp_path / "metrics.csv").is_file()  # CSV next to W&B, readable without syncing

    second = run_cli("train.py", args + ["trainer.max_epochs=2"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout
    assert (tmp_path / "wandb_id").read_text().strip() == rid
    assert all(p.name.endswith(rid) for p in (tmp_path / "wandb").glob("offline-run-*"))


def test_online_without_credentials_falls_back_to_offline(tmp_path, monkeypatch):
    from pathlib import Path

    from partialnet.training.loggers import build_loggers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.warns(UserWarning, match="offline"):
        loggers = build_loggers({"wandb": {"_target_": "partialnet.training.loggers.wandb_logger", "save_dir": None,
                                           "mode": "online"}}, Path(tmp_path))
    wb = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"][0]
    assert wb._wandb_init["mode"] == "offline"


def test_tensorboard_logger_writes_events(tmp_path):
    args = [a for a in FAST_TRAIN if not a.startswith("logger=")] + [
        "logger=tensorboard", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", f"hydra.run.dir={tmp_path}"]
    proc = run_cli("train.py", args + ["trainer.max_epochs=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert (tmp_path / "metrics.csv").is_file()


@pytest.mark.slow  # multirun is in the fast tier through test_cli.py; W&B offline runs through the test above
def test_multirun_gives_one_wandb_run_per_job(tmp_path):
    args = ["-m"] + [a for a in FAST_TRAIN if not a.startswith("logger=")] + [
        "logger=default", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
        "model.split_ratio=0.5,0.25", f"paths.log_dir={tmp_path}"]
    proc = run_cli("train.py", args, env={"WANDB_API_KEY": None, "WANDB_MODE": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.glob("train/multiruns/*/*") if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    ids = [(j / "wandb_id").read_text().strip() for j in jobs]
    assert len(set(ids)) == 2
    for job, rid in zip(jobs, ids):
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and runs[0].name.endswith(rid)  # no cross-talk between jobs
