"""Lightning's CheckpointIO plugin for atomic checkpoint writes.

``AtomicCheckpointIO`` writes through :func:`partialnet.training.checkpoint_file.atomic_torch_save`
(temporary file, fsync, ``os.replace``): a kill at any moment leaves either the previous
checkpoint or the new one, never a truncated file.
"""
from __future__ import annotations

from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from partialnet.training.checkpoint_file import atomic_torch_save

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin: tmp file + fsync + os.replace."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)
