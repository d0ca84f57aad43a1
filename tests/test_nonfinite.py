"""A NaN/Inf loss stops training with one line naming the step (last good checkpoint kept),
or, with nonfinite=skip, the batch is skipped and counted."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from partialnet.data import SyntheticDataModule
from partialnet.errors import UserError
from partialnet.training.checkpoint_io import AtomicCheckpointIO
from partialnet.training.classifier import ClassificationModule


class NaNAtStep(torch.nn.Module):
    """A tiny classifier whose output is NaN on the forward passes listed in ``bad``."""

    def __init__(self, bad: set[int]):
        super().__init__()
        self.fc = torch.nn.Linear(3, 10)
        self.bad, self.calls = bad, 0

    def forward(self, x):
        out = self.fc(x.mean((2, 3)))
        if self.training:
            self.calls += 1
            if self.calls - 1 in self.bad:
                out = out * float("nan")
        return out


def _fit(tmp_path, nonfinite, bad):
    dm = SyntheticDataModule(num_classes=10, image_size=8, train_size=64, val_size=16, batch_size=8)
    module = ClassificationModule(NaNAtStep(bad), 10, {"name": "adamw", "base_lr": 1e-3, "ref_batch_size": 1024},
                                  {"name": "constant"}, nonfinite=nonfinite, image_size=8)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None, every_n_train_steps=1,
                                        enable_version_counter=False)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ckpt], plugins=[AtomicCheckpointIO()],
                         use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return trainer, module


def test_nonfinite_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(UserError, match=r"loss is nan at step 3 .*checkpoint is kept"):
        _fit(tmp_path, "stop", {3})
    good = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert good["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


def test_nonfinite_loss_skip_counts_and_keeps_training(tmp_path):
    with pytest.warns(UserWarning, match="non-finite loss"):
        trainer, module = _fit(tmp_path, "skip", {2, 5})
    assert module.skipped_batches == 2
    assert trainer.global_step == 8  # Lightning counts the step; no gradient reached the weights
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["partialnet"]["skipped_batches"] == 2
