"""Checkpoint files: atomic writes and safe reads, without Lightning.

:func:`atomic_torch_save` writes through :func:`partialnet.utils.atomic.atomic_write` (temporary
file, fsync, ``os.replace``): a kill at any moment leaves either the previous checkpoint or the
new one, never a truncated file. :func:`load_checkpoint_file` turns a missing, truncated or
foreign file into a one-line ``UserError``. Reading a checkpoint back to a model
(``partialnet.load_checkpoint``, ``python -m partialnet.deploy``) imports nothing of Lightning;
the Lightning plugin that writes through these is :mod:`partialnet.training.checkpoint_io`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from partialnet.errors import UserError
from partialnet.utils.atomic import atomic_write

__all__ = ["atomic_torch_save", "load_checkpoint_file"]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`partialnet.utils.atomic.atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint_file(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Load a Lightning/partialnet checkpoint; clear one-line errors for bad files."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint not found: {p} (pass ckpt=PATH to an existing .ckpt file)")
    if p.is_dir():
        raise UserError(f"checkpoint path is a directory: {p} (pass the .ckpt file, e.g. {p}/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, not a torch file, ...
        raise UserError(
            f"not a readable checkpoint: {p} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "it may be truncated or another file type: use another checkpoint, e.g. the run's best or last.ckpt"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"not a partialnet/Lightning checkpoint (no state_dict): {p}")
    return ckpt
