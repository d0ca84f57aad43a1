"""DDP on CPU: 2 gloo processes under torchrun give one run dir, one W&B run, and the
same metrics as one process with the same global batch.

Tolerances, not bit equality: SyncBatchNorm is CUDA-only, so on CPU each rank normalises its
own half batch; FasterNet-T0 (no dropout) keeps every other source of difference out."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import FAST_TRAIN, REPO, full_depth


def _torchrun(args, nproc, env_extra=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", WANDB_SILENT="true")
    env.pop("PARTIALNET_RUN_NAME", None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "train.py"), *args]
    return subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)


def _val(run_dir):
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("val/loss")]
    return float(rows[-1]["val/loss"]), float(rows[-1]["val/acc1"])


@pytest.mark.slow  # three interpreters and a torchrun agent (~30 s); make test-all runs every DDP test
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    # the full model: near chance, one block per stage flips more argmax ties between the two runs
    common = [a for a in full_depth(FAST_TRAIN) if not a.startswith(("logger=", "trainer.accelerator"))] + [
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.sync_batchnorm=true",
        "logger=default", f"paths.log_dir={tmp_path}", "optim=sgd", "optim.base_lr=1.0", "trainer.max_epochs=1", "model=fasternet_t0",
    ]
    single = _torchrun(common + ["trainer.devices=1", "run_name=single"], 1)
    assert single.returncode == 0, single.stderr[-4000:]
    ddp = _torchrun(common + ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "run_name=ddp"], 2)
    assert ddp.returncode == 0, ddp.stderr[-4000:]

    runs = sorted(p.name for p in (tmp_path / "train" / "runs").iterdir())
    assert runs == ["ddp", "single"], runs  # one run dir per job, nothing made by rank 1
    ddp_dir = tmp_path / "train" / "runs" / "ddp"
    assert len(list((ddp_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run
    assert (ddp_dir / ".hydra").is_dir()

    (l1, a1), (l2, a2) = _val(tmp_path / "train" / "runs" / "single"), _val(ddp_dir)
    assert abs(l1 - l2) < 1e-3 and abs(a1 - a2) <= 100 / 64 + 1e-6, ((l1, a1), (l2, a2))
    w1 = torch.load(tmp_path / "train/runs/single/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    w2 = torch.load(ddp_dir / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    for k in w1:  # parameters; BN running stats come from per-rank half batches (no sync-BN on CPU)
        if w1[k].is_floating_point() and not k.endswith(("running_mean", "running_var")):
            assert torch.allclose(w1[k], w2[k], atol=5e-3), (k, (w1[k] - w2[k]).abs().max())


@pytest.mark.slow  # two more torchrun ranks (make test-all)
def test_ddp_rank_failure_ends_every_rank_quickly(tmp_path):
    """One rank raises mid-training: all ranks exit non-zero within 60 s, no hang, no
    half-written checkpoint."""
    import time

    args = [a for a in FAST_TRAIN if not a.startswith("trainer.accelerator")] + [
        "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=3",
        "callbacks.checkpoint.every_n_train_steps=1", f"paths.log_dir={tmp_path}", "run_name=fail",
    ]
    t0 = time.time()
    proc = _torchrun(args, 2, {"PARTIALNET_TEST_FAIL_RANK": "1", "PARTIALNET_TEST_FAIL_AT_STEP": "3"})
    elapsed = time.time() - t0
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr
    assert elapsed < 60 + 30, elapsed  # 60 s for the failure, plus start-up of two interpreters
    ckpts = tmp_path / "train" / "runs" / "fail" / "checkpoints"
    assert not list(ckpts.glob(".*.tmp"))
    for c in ckpts.glob("*.ckpt"):
        torch.load(c, weights_only=False)  # every checkpoint on disk is whole


@pytest.mark.slow
def test_ddp_kill_mid_epoch_and_relaunch_ends_with_the_uninterrupted_weights(tmp_path):
    """2 gloo processes, mixup + drop-path (both draw per-rank random numbers): killed after the
    step-6 checkpoint (mid-epoch), re-launched, the run ends bit-equal to an uninterrupted one,
    which needs every rank's RNG state restored on its own rank."""
    common = [a for a in FAST_TRAIN if not a.startswith("trainer.accelerator")] + [
        "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=2",
        "data.train_size=320", "callbacks.checkpoint.every_n_train_steps=2", "aug=imagenet",
        "model.drop_path_rate=0.1", f"paths.log_dir={tmp_path}",
    ]
    straight = _torchrun(common + ["run_name=straight"], 2)
    assert straight.returncode == 0, straight.stderr[-4000:]
    killed = _torchrun(common + ["run_name=killed"], 2, {"PARTIALNET_TEST_EXIT_AFTER_STEP": "6"})
    assert killed.returncode != 0
    last = tmp_path / "train/runs/killed/checkpoints/last.ckpt"
    ck = torch.load(last, weights_only=False)
    assert ck["global_step"] == 6 and ck["epoch"] == 0
    assert [s["rank"] for s in ck["partialnet"]["rng_per_rank"]] == [0, 1]
    again = _torchrun(common + ["run_name=killed"], 2)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming from" in again.stdout
    wa = torch.load(tmp_path / "train/runs/straight/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    wb = torch.load(last, weights_only=False)["state_dict"]
    for k in wa:
        if k.startswith("model.") and wa[k].is_floating_point():
            assert torch.equal(wa[k], wb[k]), f"{k} differs after a DDP mid-epoch resume"
