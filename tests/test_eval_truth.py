"""eval.py tells the truth: the same val/acc1 as the training run's last validation (EMA and raw
weights), val/* from the EMA weights and val_raw/* from the raw ones, EMA state exact across a
resume, and a fusion failure is an error, not a blank table cell."""
from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from conftest import FAST_TRAIN, run_task
from partialnet.errors import UserError

EMA_RUN = FAST_TRAIN + ["ema=default", "ema.decay=0.5", "trainer.limit_train_batches=2"]
EVAL_FAST = ["speed.runs=1", "speed.warmup=0", "speed.batch_size=2", "fused=false"]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema_run")
    run = run_task("train", EMA_RUN, out)
    return out, run.result


def _eval_acc(ckpt, weights, out) -> float:
    run_task("eval", [f"ckpt={ckpt}", f"weights={weights}", *EVAL_FAST], out)
    row = json.loads((ckpt.parent / "eval.json").read_text())
    assert row["weights"] == weights
    return row["val/acc1"]


def test_eval_reports_the_training_runs_last_validation(ema_run, tmp_path):
    out, metrics = ema_run
    ckpt = out / "checkpoints" / "last.ckpt"
    assert {"val/acc1", "val_raw/acc1"} <= set(metrics)
    assert _eval_acc(ckpt, "ema", tmp_path / "e") == pytest.approx(metrics["val/acc1"], abs=1e-4)
    assert _eval_acc(ckpt, "raw", tmp_path / "r") == pytest.approx(metrics["val_raw/acc1"], abs=1e-4)


def _constant_head(model: torch.nn.Module, cls: int) -> None:
    """Make ``model`` predict class ``cls`` for every input."""
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-10.0)
        model.head.bias[cls] = 10.0


def test_val_uses_ema_weights_and_val_raw_the_raw_ones(ema_run, tmp_path):
    """Raw weights that always answer class a and EMA weights that always answer class b, with
    a and b of different frequency in the validation split: each metric must give its own
    class's share, and eval.py must report the same for weights=raw / weights=ema."""
    from partialnet.training.builders import build_datamodule
    from partialnet.training.classifier import ClassificationModule

    out, _ = ema_run
    module = ClassificationModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    dm = build_datamodule(module.config["data"])
    dm.setup("validate")
    labels = torch.cat([y for _, y in dm.val_dataloader()])
    counts = torch.bincount(labels, minlength=module.num_classes)
    a = int(counts.argmin())
    b = int(counts.argmax())
    assert counts[a] != counts[b], "the check needs two classes of different frequency"
    _constant_head(module.model, a)
    _constant_head(module.ema.module, b)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    (res,) = trainer.validate(module, datamodule=dm, verbose=False)
    share = (counts.double() / counts.sum() * 100).tolist()
    assert res["val/acc1"] == pytest.approx(share[b], abs=1e-4)
    assert res["val_raw/acc1"] == pytest.approx(share[a], abs=1e-4)

    ckpt = tmp_path / "swapped" / "last.ckpt"
    ckpt.parent.mkdir()
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    saved["state_dict"] = module.state_dict()
    torch.save(saved, ckpt)
    assert _eval_acc(ckpt, "ema", tmp_path / "e") == pytest.approx(share[b], abs=1e-4)
    assert _eval_acc(ckpt, "raw", tmp_path / "r") == pytest.approx(share[a], abs=1e-4)


def test_resume_keeps_the_ema_state_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_task("train", EMA_RUN + ["trainer.max_epochs=2"], straight)
    run_task("train", EMA_RUN + ["trainer.max_epochs=2", "stop_after_epoch=1"], resumed)  # same schedule
    run = run_task("train", EMA_RUN + ["trainer.max_epochs=2"], resumed)
    assert "resuming from" in run.stdout
    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    ema_keys = [k for k in a if k.startswith("ema.module.")]
    assert ema_keys and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the EMA did move away from the raw weights (so comparing it checks something of its own)
    assert any(not torch.equal(a[k], a["model." + k[len("ema.module."):]]) for k in ema_keys)


def test_a_fusion_failure_is_an_error_not_a_cell(tmp_path, monkeypatch):
    import partialnet.deploy

    def broken(model, **kw):
        raise RuntimeError("simulated fusion bug")

    monkeypatch.setattr(partialnet.deploy, "fuse", broken)
    speed = ["speed.runs=1", "speed.warmup=0", "speed.batch_size=2", "input_size=32"]
    with pytest.raises(UserError, match=r"fusing partialnet_t0 failed \(RuntimeError: simulated fusion bug\).*fused=false"):
        run_task("eval", ["models=[partialnet_t0]", *speed], tmp_path / "a")
    run = run_task("eval", ["models=[partialnet_t0]", "fused=false", *speed], tmp_path / "b")
    (row,) = run.result
    assert "fused_form" not in row and "n/a" not in run.stdout
