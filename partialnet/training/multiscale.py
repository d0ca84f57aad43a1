"""Multi-scale training as a pure function of the epoch.

The recipe "192 px until epoch 280, then 224" is written ``[[0, 192], [280, 224]]``: each
entry is ``[first_epoch, resolution]``. No dataloader reloads: the data pipeline produces
crops at the largest size and the LightningModule resizes each batch to
``resolution_at(epoch, schedule)`` (an FFCV pipeline may instead decode at that size).
"""
from __future__ import annotations

from typing import Sequence

from partialnet.errors import UserError


def validate_schedule(schedule: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """Check and normalise a schedule; ``None`` or ``[]`` means a single resolution."""
    if not schedule:
        return []
    out: list[tuple[int, int]] = []
    for entry in schedule:
        if len(entry) != 2 or int(entry[0]) < 0 or int(entry[1]) < 1:
            raise UserError(
                f"bad multi-scale entry {list(entry)!r}: use [first_epoch, resolution], e.g. [[0, 192], [280, 224]]"
            )
        out.append((int(entry[0]), int(entry[1])))
    firsts = [e for e, _ in out]
    if firsts != sorted(firsts) or len(set(firsts)) != len(firsts) or firsts[0] != 0:
        raise UserError(
            f"multi-scale schedule {schedule!r} must start at epoch 0 with strictly increasing epochs"
        )
    return out


def resolution_at(epoch: int, schedule: Sequence[Sequence[int]] | None, default: int) -> int:
    """Training resolution at ``epoch`` (0-based); ``default`` when there is no schedule."""
    res = default
    for first, size in validate_schedule(schedule):
        if epoch >= first:
            res = size
    return res


def max_resolution(schedule: Sequence[Sequence[int]] | None, default: int) -> int:
    """The largest resolution the schedule ever asks for (the crop size data must produce)."""
    sizes = [s for _, s in validate_schedule(schedule)]
    return max(sizes) if sizes else default
