"""Small Lightning callbacks specific to partialnet."""
from __future__ import annotations

import pytorch_lightning as pl


class StopAfterEpoch(pl.Callback):
    """Stop cleanly after ``epoch`` epochs (checkpoint written), keeping the LR schedule of
    ``trainer.max_epochs``. Train a long schedule in chunks: re-launch into the same run dir
    (``run_name=...``) and it resumes where it stopped."""

    def __init__(self, epoch: int):
        self.epoch = int(epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epoch:
            trainer.should_stop = True


class ExitAfterStep(pl.Callback):
    """Fault injection for tests: hard-exit the process (like ``kill -9``: no cleanup, no
    checkpoint) when the next batch starts after ``step`` optimizer steps. Enabled only by the
    ``PARTIALNET_TEST_EXIT_AFTER_STEP`` environment variable."""

    ENV = "PARTIALNET_TEST_EXIT_AFTER_STEP"

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            import os

            os._exit(137)


class FailOnRank(pl.Callback):
    """Fault injection for tests: raise on one rank at a given step (``PARTIALNET_TEST_FAIL_RANK``
    and ``PARTIALNET_TEST_FAIL_AT_STEP``), to check that the other ranks do not hang."""

    ENV_RANK, ENV_STEP = "PARTIALNET_TEST_FAIL_RANK", "PARTIALNET_TEST_FAIL_AT_STEP"

    def __init__(self, rank: int, step: int):
        self.rank, self.step = int(rank), int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {trainer.global_step}")
