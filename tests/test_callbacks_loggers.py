"""Callbacks and loggers are `_target_` configs (lightning-hydra-template convention); fine-tuning
from a weights file; the CPU fallbacks of the CUDA-only switches warn in one line. In-process
(Hydra's compose API + the task function) except where the exit code is what is tested."""
from __future__ import annotations

import pytest
import torch

from conftest import FAST_TRAIN, assert_user_error, hydra_task, run_cli, run_task
from partialnet.errors import UserError

ES = "+callbacks.early_stopping"


def _train(run_dir, *overrides):
    return run_task("train", [*FAST_TRAIN, *overrides], run_dir)


def test_early_stopping_from_config_stops_the_run(tmp_path):
    _train(tmp_path, "trainer.max_epochs=4", f"{ES}._target_=pytorch_lightning.callbacks.EarlyStopping",
           f"{ES}.monitor=val/acc1", f"{ES}.mode=max", f"{ES}.patience=0", f"{ES}.min_delta=1000")
    # no epoch improves by 1000 points: stopped after the 2nd epoch, not at max_epochs=4
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["epoch"] == 1


def test_callback_and_logger_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"callbacks.early_stopping .*monitr"):
        _train(tmp_path, f"{ES}._target_=pytorch_lightning.callbacks.EarlyStopping", f"{ES}.monitr=val/acc1")
    with pytest.raises(UserError, match=r"callbacks.early_stopping has no _target_"):
        _train(tmp_path, f"{ES}.monitor=val/acc1")
    with pytest.raises(UserError, match=r"logger.csv .*sav_dir"):
        _train(tmp_path, "+logger.csv.sav_dir=x")
    assert not list(tmp_path.rglob("*.ckpt"))


def test_misspelt_callback_key_through_the_cli(tmp_path):
    proc = run_cli("train.py", FAST_TRAIN + [f"hydra.run.dir={tmp_path}/r",
                                             f"{ES}._target_=pytorch_lightning.callbacks.EarlyStopping",
                                             f"{ES}.monitr=val/acc1"])
    assert_user_error(proc, "callbacks.early_stopping", "monitr")
    assert not list(tmp_path.rglob("*.ckpt"))


def test_loggers_from_config_csv_always_first(tmp_path, monkeypatch):
    from partialnet.training.loggers import AppendingCSVLogger, build_loggers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tb = {"_target_": "pytorch_lightning.loggers.TensorBoardLogger", "save_dir": None, "name": "tb", "version": ""}
    loggers = build_loggers({"tensorboard": tb, "csv": None}, tmp_path)
    assert [type(lg).__name__ for lg in loggers] == ["AppendingCSVLogger", "TensorBoardLogger"]
    assert isinstance(loggers[0], AppendingCSVLogger) and loggers[1].save_dir == str(tmp_path)


def test_finetune_a_1000_class_file_on_10_class_data(tmp_path):
    from partialnet.models import create_model
    from partialnet.training.init_from import _classifier_keys

    src = create_model("partialnet_t0", num_classes=1000, depths=(1, 1, 1, 1))  # FAST_TRAIN's depths
    torch.save({"model": src.state_dict()}, tmp_path / "converted.pth")
    run = _train(tmp_path / "run", f"model.init_from={tmp_path / 'converted.pth'}", "trainer.limit_train_batches=1",
                 "trainer.limit_val_batches=1")
    out = run.stdout
    assert "classifier re-initialised: 1000 classes there, 10 here" in out
    ck = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    assert ck["global_step"] == 1  # a fresh schedule, not a resume
    sd = ck["state_dict"]
    head = _classifier_keys(src)
    assert head and all(sd["model." + k].shape[0] == 10 and src.state_dict()[k].shape[0] == 1000 for k in head)
    # one optimizer step moved the weights a little: the body starts from the file, not from scratch
    body = [k for k in src.state_dict() if k.endswith("weight") and src.state_dict()[k].dim() == 4][:3]
    for k in body:
        assert torch.allclose(sd["model." + k], src.state_dict()[k], atol=0.05), k


def test_init_from_a_train_checkpoint_and_mismatches(tmp_path):
    from partialnet.models import create_model
    from partialnet.training.init_from import init_model_from

    trained = create_model("partialnet_t0", num_classes=10)
    ck = {"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}
    torch.save(ck, tmp_path / "run.ckpt")
    fresh = create_model("partialnet_t0", num_classes=10)
    msg = init_model_from(fresh, str(tmp_path / "run.ckpt"))
    assert "raw weights of checkpoint" in msg and "re-initialised" not in msg
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))
    other = create_model("fasternet_t0", num_classes=10)
    with pytest.raises(UserError, match="does not fit this model"):
        init_model_from(other, str(tmp_path / "run.ckpt"))
    with pytest.raises(UserError, match="does not exist"):
        init_model_from(fresh, str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("override,needle", [
    ("compile=true", "compile=true needs a CUDA GPU"),
    ("trainer.precision=bf16-mixed", "trainer.precision=bf16-mixed needs a CUDA GPU"),
    ("trainer.sync_batchnorm=true", "trainer.sync_batchnorm needs CUDA"),
])
def test_cuda_only_switches_warn_on_cpu(tmp_path, override, needle):
    from partialnet.training.builders import check_trainer_cfg

    with hydra_task("train", [*FAST_TRAIN, override], tmp_path) as cfg, pytest.warns(UserWarning) as rec:
        check_trainer_cfg(cfg)
    msgs = [str(w.message) for w in rec if needle in str(w.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0], [str(w.message) for w in rec]
    assert cfg.trainer.precision == "32-true" and not cfg.trainer.sync_batchnorm


def test_channels_last_is_applied_on_cpu(tmp_path):
    """channels_last is not a CUDA-only switch: on CPU the weights and batches go NHWC."""
    import torch

    from partialnet.training.classifier import ClassificationModule

    with hydra_task("train", [*FAST_TRAIN, "channels_last=true"], tmp_path) as cfg:
        from partialnet.training.builders import check_trainer_cfg

        check_trainer_cfg(cfg)  # no warning needed for it
    module = ClassificationModule(model={"name": "partialnet_t0", "kwargs": {"num_classes": 10}},
                                  num_classes=10, optim={"base_lr": 1e-3, "ref_batch_size": 1024},
                                  sched={}, channels_last=True)
    module.setup("fit")
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = module._prepare(torch.randn(2, 3, 32, 32))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
