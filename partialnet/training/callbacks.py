"""Lightning callbacks: building them from the ``callbacks`` config, and partialnet's own.

Every entry of the ``callbacks`` config group is a ``_target_`` config instantiated by Hydra (the
lightning-hydra-template convention); ``callbacks.<name>=null`` removes one. A
``ModelCheckpoint`` whose ``dirpath`` is null writes into ``<run_dir>/checkpoints``.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from partialnet.utils.instantiate import instantiate_group


def build_callbacks(cb_cfg, run_dir: Path) -> list[pl.Callback]:
    """Instantiate each non-null entry of the ``callbacks`` config, in order."""
    hint = ("name its class, e.g. +callbacks.{name}._target_=pytorch_lightning.callbacks.EarlyStopping, "
            "or remove it with callbacks.{name}=null")
    callbacks = instantiate_group(cb_cfg, "callbacks", pl.Callback, hint)
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(run_dir / "checkpoints")
    return callbacks


class StopAfterEpoch(pl.Callback):
    """Stop cleanly after ``epoch`` epochs (checkpoint written), keeping the LR schedule of
    ``trainer.max_epochs``. Train a long schedule in chunks: re-launch into the same run dir
    (``run_name=...``) and it resumes where it stopped."""

    def __init__(self, epoch: int):
        self.epoch = int(epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epoch:
            trainer.should_stop = True


class PreemptionCheckpoint(pl.Callback):
    """On SIGTERM (what SLURM and spot instances send before a kill) write ``path`` at the current step.

    Lightning's signal handler turns SIGTERM into a ``SIGTERMException`` at the end of the running
    batch (on every rank at the same batch under DDP); this callback saves the full training state
    there, so the re-launch resumes exactly at the next batch. The run then exits non-zero
    (see :mod:`partialnet.training.run`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.saved_step: int | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.training:
            trainer.save_checkpoint(self.path)
            self.saved_step = int(trainer.global_step)


class ExitAfterStep(pl.Callback):
    """Fault injection for tests: hard-exit the process (like ``kill -9``: no cleanup, no
    checkpoint) when the next batch starts after ``step`` optimizer steps. Enabled only by the
    ``PARTIALNET_TEST_EXIT_AFTER_STEP`` environment variable."""

    ENV = "PARTIALNET_TEST_EXIT_AFTER_STEP"

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os._exit(137)


class SigtermAtStep(pl.Callback):
    """Fault injection for tests: send this process a real SIGTERM during the batch that follows
    ``step`` optimizer steps (``PARTIALNET_TEST_SIGTERM_AT_STEP``), as a scheduler would."""

    ENV = "PARTIALNET_TEST_SIGTERM_AT_STEP"

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), signal.SIGTERM)


class FailOnRank(pl.Callback):
    """Fault injection for tests: raise on one rank at a given step (``PARTIALNET_TEST_FAIL_RANK``
    and ``PARTIALNET_TEST_FAIL_AT_STEP``), to check that the other ranks do not hang."""

    ENV_RANK, ENV_STEP = "PARTIALNET_TEST_FAIL_RANK", "PARTIALNET_TEST_FAIL_AT_STEP"

    def __init__(self, rank: int, step: int):
        self.rank, self.step = int(rank), int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {trainer.global_step}")


def fault_injection_callbacks() -> list[pl.Callback]:
    """The test-only callbacks switched on by their environment variables (none in normal runs)."""
    env = os.environ
    out: list[pl.Callback] = []
    if env.get(ExitAfterStep.ENV):
        out.append(ExitAfterStep(int(env[ExitAfterStep.ENV])))
    if env.get(SigtermAtStep.ENV):
        out.append(SigtermAtStep(int(env[SigtermAtStep.ENV])))
    if env.get(FailOnRank.ENV_RANK):
        out.append(FailOnRank(int(env[FailOnRank.ENV_RANK]), int(env.get(FailOnRank.ENV_STEP, "0"))))
    return out
