"""``ResumableDistributedSampler``: the train sampler of every DataModule.

The shuffle order is a pure function of (seed, epoch) — torch's DistributedSampler — and a
run resumed from a mid-epoch checkpoint skips exactly the samples this rank already consumed
in that epoch, so an interrupted run replays the same batches as an uninterrupted one.
"""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_epoch: int | None = None
        self._resume_skip = 0

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """On the next pass over ``epoch``, skip its first ``samples_done`` samples (once)."""
        self._resume_epoch, self._resume_skip = int(epoch), int(samples_done)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume_epoch is not None and self.epoch == self._resume_epoch:
            skip = self._resume_skip
            self._resume_epoch, self._resume_skip = None, 0
            indices = indices[skip:]  # all of them when the checkpoint was taken at the epoch's end
        return iter(indices)
