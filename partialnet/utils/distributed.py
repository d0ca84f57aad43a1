"""Rank and world size: the one place the project asks "which process am I?".

Inside a running Trainer, ask the trainer (``trainer.global_rank`` / ``trainer.world_size``).
Outside it (before the Trainer exists: run-dir creation, printing, writing files) these ask
``torch.distributed`` when a process group is up, else Lightning's own rank detection
(``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``, ``JSM_NAMESPACE_RANK``, in Lightning's order),
so the answer is the one Lightning will use.
"""
from __future__ import annotations

import os

__all__ = ["global_rank", "world_size", "is_rank_zero"]


def global_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    from lightning_fabric.utilities.rank_zero import _get_rank

    return int(_get_rank() or 0)


def world_size() -> int:
    """Processes in the job: the process group's size, else ``WORLD_SIZE`` (torchrun, SLURM via Lightning), else 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(key, "").isdigit():
            return max(1, int(os.environ[key]))
    return 1


def is_rank_zero() -> bool:
    return global_rank() == 0
