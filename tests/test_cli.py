"""train.py / eval.py end to end. The happy paths run in this process (the config composed
as the CLI composes it, then the task function); Hydra's own launcher (multirun, .hydra/ files)
runs through the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import FAST_TRAIN, run_cli, run_task


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run = run_task("train", FAST_TRAIN + ["trainer.max_epochs=2"], out)
    return out, run


def test_train_writes_the_run_dir(trained_run):
    out, run = trained_run
    assert f"final val/acc1: {run.result['val/acc1']:.2f}" in run.stdout
    assert 0 <= run.result["val/acc1"] <= 100
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "checkpoints").glob("best-epoch*.ckpt"))
    assert (out / "metrics.csv").is_file() and (out / "config_resolved.yaml").is_file()
    assert not list(out.glob("checkpoints/.*.tmp"))  # no temp files left behind


def test_eval_reports_and_writes_json(trained_run):
    out, _ = trained_run
    ckpt = out / "checkpoints" / "last.ckpt"
    run = run_task("eval", [f"ckpt={ckpt}", "speed.runs=2", "speed.warmup=1", "speed.batch_size=2"], out / "eval")
    assert "MACs (G, the papers' FLOPs)" in run.stdout and "threads" in run.stdout
    res = json.loads((out / "checkpoints" / "eval.json").read_text())
    assert res["model"] == "partialnet_t0" and 0 <= res["val/acc1"] <= 100
    assert res["params"] > 1e6 and res["macs"] > 1e6 and res["eval_form"]["throughput"]["images_per_s"] > 0
    ev = res["eval_form"]
    assert ev["latency"]["batch_size"] == 1 and ev["throughput"]["batch_size"] == 2 and ev["throughput"]["threads"] >= 1
    # PartialNet has a deploy form: its speed is measured, not replaced by an "n/a" text
    fused = res["fused_form"]
    assert isinstance(fused, dict), fused
    assert fused["throughput"]["images_per_s"] > 0 and fused["latency"]["batch_size"] == 1
    assert (out / "eval" / "eval.md").is_file() and (out / "eval" / "eval.csv").is_file()


def test_eval_many_checkpoints_and_models_with_plot(trained_run, tmp_path):
    out, _ = trained_run
    ckpts = sorted(str(p) for p in (out / "checkpoints").glob("*.ckpt"))
    speed = ["speed.runs=2", "speed.warmup=1", "speed.batch_size=2", "plot=true"]
    run_task("eval", [f"ckpts=[{','.join(ckpts)}]", *speed], tmp_path / "a")
    rows = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert len(rows) == len(ckpts) and all("val/acc1" in r for r in rows)
    assert (tmp_path / "a" / "eval.png").stat().st_size > 1000
    run = run_task("eval", ["models=[partialnet_t0,fasternet_t0]", "input_size=64", *speed], tmp_path / "b")
    rows = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert [r["model"] for r in rows] == ["partialnet_t0", "fasternet_t0"] and "val/acc1" not in rows[0]
    assert "random init" in run.stdout and (tmp_path / "b" / "eval.png").is_file()


def test_relaunch_into_same_dir_resumes(trained_run):
    out, _ = trained_run
    run = run_task("train", FAST_TRAIN + ["trainer.max_epochs=3"], out)
    assert f"resuming from {out}/checkpoints/last.ckpt" in run.stdout
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 3 * 4  # 3 epochs of 4 steps in all, not 2 + 3


def test_multirun_sweep_gives_separate_runs(tmp_path):
    """Through the CLI: Hydra's launcher, the per-job run dirs and the .hydra/ files it writes."""
    proc = run_cli(
        "train.py",
        ["-m", *FAST_TRAIN, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
         "model.split_ratio=0.5,0.25", f"paths.log_dir={tmp_path}"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final val/acc1:") == 2
    runs = sorted(p.parent.parent for p in tmp_path.glob("train/multiruns/*/*/checkpoints/last.ckpt"))
    assert len(runs) == 2 and len({r.name for r in runs}) == 2
    assert {"0", "1"} == {r.name for r in runs}
    for r, ratio in zip(runs, ("0.5", "0.25")):
        assert f"split_ratio: {ratio}" in (r / "config_resolved.yaml").read_text()
        assert (r / "metrics.csv").is_file()
        assert (r / ".hydra" / "config.yaml").is_file()
        assert f"model.split_ratio={ratio}" in (r / ".hydra" / "overrides.yaml").read_text()
        assert (r / "train.log").is_file()  # Hydra's job logging, in the run dir
