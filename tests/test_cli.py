"""train.py / eval.py end to end as a user runs them, and their one-line errors."""
from __future__ import annotations

import json

import pytest

from conftest import FAST_TRAIN, run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run_cli("train.py", FAST_TRAIN + [f"hydra.run.dir={out}", "trainer.max_epochs=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_train_writes_the_run_dir(trained_run):
    out, proc = trained_run
    assert "final val/acc1:" in proc.stdout
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "checkpoints").glob("best-epoch*.ckpt"))
    assert (out / "metrics.csv").is_file() and (out / "config_resolved.yaml").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()
    assert not list(out.glob("checkpoints/.*.tmp"))  # no temp files left behind


def test_eval_reports_and_writes_json(trained_run):
    out, _ = trained_run
    ckpt = out / "checkpoints" / "last.ckpt"
    proc = run_cli("eval.py", [f"ckpt={ckpt}", "speed.runs=2", "speed.warmup=1", "speed.batch_size=2",
                               f"hydra.run.dir={out}/eval"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MACs (G, the papers' FLOPs)" in proc.stdout and "threads" in proc.stdout
    res = json.loads((out / "checkpoints" / "eval.json").read_text())
    assert res["model"] == "partialnet_t0" and 0 <= res["val/acc1"] <= 100
    assert res["params"] > 1e6 and res["macs"] > 1e6 and res["eval_form"]["throughput"]["images_per_s"] > 0
    ev = res["eval_form"]
    assert ev["latency"]["batch_size"] == 1 and ev["throughput"]["batch_size"] == 2 and ev["throughput"]["threads"] >= 1
    assert isinstance(res["fused_form"], (dict, str))
    assert (out / "eval" / "eval.md").is_file() and (out / "eval" / "eval.csv").is_file()


def test_eval_many_checkpoints_and_models_with_plot(trained_run, tmp_path):
    out, _ = trained_run
    ckpts = sorted(str(p) for p in (out / "checkpoints").glob("*.ckpt"))
    proc = run_cli("eval.py", [f"ckpts=[{','.join(ckpts)}]", "speed.runs=2", "speed.warmup=1", "speed.batch_size=2",
                               "plot=true", f"hydra.run.dir={tmp_path}/a"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert len(rows) == len(ckpts) and all("val/acc1" in r for r in rows)
    assert (tmp_path / "a" / "eval.png").stat().st_size > 1000
    proc = run_cli("eval.py", ["models=[partialnet_t0,fasternet_t0]", "input_size=64", "speed.runs=2", "speed.warmup=1",
                               "speed.batch_size=2", "plot=true", f"hydra.run.dir={tmp_path}/b"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert [r["model"] for r in rows] == ["partialnet_t0", "fasternet_t0"] and "val/acc1" not in rows[0]
    assert "random init" in proc.stdout and (tmp_path / "b" / "eval.png").is_file()


def test_relaunch_into_same_dir_resumes(trained_run):
    out, _ = trained_run
    proc = run_cli("train.py", FAST_TRAIN + [f"hydra.run.dir={out}", "trainer.max_epochs=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {out}/checkpoints/last.ckpt" in proc.stdout


def test_multirun_sweep_gives_separate_runs(tmp_path):
    proc = run_cli(
        "train.py",
        ["-m", *FAST_TRAIN, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
         "model.split_ratio=0.5,0.25", f"paths.log_dir={tmp_path}"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.parent for p in tmp_path.glob("train/multiruns/*/*/checkpoints/last.ckpt"))
    assert len(runs) == 2 and len({r.name for r in runs}) == 2
    assert {"0", "1"} == {r.name for r in runs}
    for r, ratio in zip(runs, ("0.5", "0.25")):
        assert f"split_ratio: {ratio}" in (r / "config_resolved.yaml").read_text()
        assert (r / "metrics.csv").is_file()
