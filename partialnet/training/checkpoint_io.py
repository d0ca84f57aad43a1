"""Atomic checkpoint writes and safe reads.

``AtomicCheckpointIO`` serialises to a temporary file in the target directory, fsyncs it and
``os.replace``s it over the destination: a kill at any moment leaves either the previous
checkpoint or the new one, never a truncated file. ``load_checkpoint_file`` turns a missing,
truncated or foreign file into a one-line ``UserError``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from partialnet.errors import UserError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin: tmp file + fsync + os.replace."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)


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
