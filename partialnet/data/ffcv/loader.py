"""FFCV pipelines and the per-epoch loader the DataModule hands to Lightning.

- train: FFCV's RandomResizedCrop decoder (area scale ``rrc_scale``, aspect ``rrc_ratio``, resize
  with OpenCV ``INTER_AREA``) + horizontal flip; the decoder's output size is set at the start of
  every epoch (multi-scale schedule), no reloads.
- val: FFCV's center crop: a square of ``crop_pct`` x the short side, resized to the image size
  (= timm's ``crop_pct`` semantics, i.e. resize 256 / crop 224 for 0.875), ``INTER_AREA``.
- CPU: float32 normalised on CPU. GPU: uint8 copied to the GPU (non_blocking), normalised there
  to ``dtype``, channels_last.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch

from partialnet.data.ffcv.internals import start_epoch, torch_normalize_op
from partialnet.data.ffcv.requirement import require_ffcv
from partialnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from partialnet.data.ffcv.datamodule import FFCVDataModule

__all__ = ["build_pipelines", "FFCVEpochLoader"]


def build_pipelines(
    kind: str,
    resolution: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float16,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 0.9,
    rrc_scale: Sequence[float] = (0.08, 1.0),
    rrc_ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip: bool = True,
):
    """FFCV pipelines for ``kind`` in {"train", "val"}: returns ``(pipelines, decoder)``.

    ``device=None``: decode + normalise on CPU to float32 NHWC memory (channels_last view).
    ``device`` given: uint8 to ``device`` (non_blocking), normalised there to ``dtype``.
    """
    require_ffcv()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    size = (int(resolution), int(resolution))
    if kind == "train":
        decoder = RandomResizedCropRGBImageDecoder(size, scale=tuple(rrc_scale), ratio=tuple(rrc_ratio))
        ops: list = [decoder] + ([RandomHorizontalFlip()] if flip else [])
    elif kind == "val":
        decoder = CenterCropRGBImageDecoder(size, ratio=float(crop_pct))
        ops = [decoder]
    else:
        raise ValueError(kind)
    mean255 = np.asarray(mean, np.float64) * 255.0
    std255 = np.asarray(std, np.float64) * 255.0
    if device is None:
        ops += [NormalizeImage(mean255, std255, np.float32), ToTensor(), ToTorchImage(channels_last=True)]
        label_ops = [IntDecoder(), ToTensor()]
    else:
        norm = torch_normalize_op()(mean255.tolist(), std255.tolist(), dtype)
        ops += [ToTensor(), ToDevice(device, non_blocking=True), norm,
                ToTorchImage(channels_last=True, convert_back_int16=False)]
        label_ops = [IntDecoder(), ToTensor(), ToDevice(device, non_blocking=True)]
    return {"image": ops, "label": label_ops}, decoder


class FFCVEpochLoader:
    """What ``train_dataloader()`` / ``val_dataloader()`` return: a thin iterable over an FFCV ``Loader``.

    Every ``iter()`` reads the epoch (``epoch_fn()``: the trainer's ``current_epoch``, else the
    DataModule's own counter), sets the decoder's output size (``resolution_fn(epoch)``) and
    replays FFCV's order for ``(seed, epoch)``. :meth:`resume_at` makes the next ``iter()`` of
    that epoch skip the batches a checkpoint had already consumed.
    """

    def __init__(self, dm: "FFCVDataModule", split: str, loader, decoder, channels_last: bool,
                 resolution_fn: Callable[[int], int]):
        self.dm = dm
        self.split = split
        self.loader = loader
        self.decoder = decoder
        self.channels_last = channels_last
        self.resolution_fn = resolution_fn
        self._pending: tuple[int, int] | None = None  # (epoch, batches consumed)

    def current_epoch(self) -> int:
        return self.dm.current_epoch()

    def resolution(self, epoch: int | None = None) -> int:
        return self.resolution_fn(self.current_epoch() if epoch is None else epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int:
        return int(self.loader.batch_size)

    def resume_at(self, epoch: int, batches_consumed: int) -> None:
        self._pending = (int(epoch), int(batches_consumed))

    # The resume position lives in the DataModule's checkpoint state (``position``, see
    # :mod:`partialnet.data.base`), which calls :meth:`resume_at`. These two tell Lightning the
    # loader is resumable (it warns about mid-epoch checkpoints otherwise) without a second copy.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __iter__(self) -> Iterator:
        return self._generate()

    def _generate(self) -> Iterator:
        # a generator: nothing is decoded before the first next(), i.e. after Lightning's
        # epoch bookkeeping, and the FFCV thread is closed when the generator is dropped
        epoch = self.current_epoch()
        self.decoder.output_size = (self.resolution(epoch),) * 2
        skip = 0
        if self._pending is not None:
            if self._pending[0] == epoch:
                skip = min(self._pending[1], len(self))
            self._pending = None
        if self.split == "train":
            self.dm.epoch_started(epoch)
        if skip >= len(self):
            return
        it = start_epoch(self.loader, epoch, skip)
        try:
            for images, labels in it:
                if not self.channels_last:
                    images = images.contiguous()
                yield images, labels.reshape(-1)
        finally:
            it.close()
