"""``FFCVDataModule``: ImageNet-style classification from FFCV ``.beton`` files.

Derives from :class:`~partialnet.data.base.ImageClassificationDataModule`, which owns the
global-batch contract (``batch_size`` is GLOBAL, each process loads ``batch_size // world_size``,
an indivisible batch is a one-line error), the seed and the mid-epoch resume position.

- Sample order is a pure function of ``(seed, epoch)`` (FFCV ``Loader`` with ``OrderOption.RANDOM``,
  sharded under DDP), so a resume replays the exact order, also mid-epoch. Crop/flip randomness
  comes from numba's per-thread generators and is not bit-reproducible.
- FFCV's ``num_workers`` are numba threads inside the training process (FFCV also sets
  ``torch.set_num_threads(num_workers)``). More than the cores this process may run on
  (``os.sched_getaffinity``) is clamped to that number with a one-line warning; 0 means all of them.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch

from partialnet.data.base import ImageClassificationDataModule
from partialnet.data.ffcv.beton import check_beton, labels_from_beton
from partialnet.data.ffcv.loader import FFCVEpochLoader, build_pipelines
from partialnet.data.ffcv.requirement import require_ffcv
from partialnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from partialnet.errors import UserError
from partialnet.training.multiscale import resolution_at, validate_schedule

__all__ = ["FFCVDataModule", "available_threads", "clamp_threads"]


def available_threads() -> int:
    """Threads FFCV can use here: the cores this process may run on, capped by numba's limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    import numba

    return max(1, min(cores, int(numba.config.NUMBA_NUM_THREADS)))


def clamp_threads(requested: int) -> int:
    """``requested`` FFCV threads (0: all), clamped to :func:`available_threads` with a one-line warning."""
    avail = available_threads()
    if requested == 0:
        return avail
    if requested > avail:
        warnings.warn(
            f"data.num_workers={requested} is more than the {avail} cores this process may use: "
            f"using {avail} FFCV threads (set data.num_workers<={avail} to silence this)",
            stacklevel=3,
        )
        return avail
    return requested


def _as_pair(x, name: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in x)
    except (TypeError, ValueError):
        raise UserError(f"data.{name}={x!r}: use two numbers, e.g. [0.08, 1.0]") from None
    if not (0 < a <= b):
        raise UserError(f"data.{name}={x!r}: use 0 < low <= high")
    return a, b


class FFCVDataModule(ImageClassificationDataModule):
    """Classification data from FFCV ``.beton`` files (see the module docstring).

    Args:
        train_beton, val_beton: files written by ``python -m partialnet.data.ffcv write``
            (``val_beton`` may be None: no validation loader).
        batch_size: GLOBAL batch size; each process loads ``batch_size // world_size``.
        num_workers: FFCV decoding threads per process (0: all available cores; more than
            available: clamped, with a warning).
        image_size: training resolution without a multi-scale schedule, and the eval resolution.
        crop_pct: eval center crop = ``crop_pct`` x the short side, resized to ``image_size``.
        multiscale: ``[[first_epoch, resolution], ...]`` for training (``resolution_at``).
        os_cache: memory-map the file (shared page cache across ranks) instead of FFCV's
            process cache.
        seed: order seed; the order of epoch ``e`` is a function of ``(seed, e)``.
        mean, std: normalisation in [0, 1] units.
        channels_last: return channels_last tensors (otherwise contiguous NCHW).
        rrc_scale, rrc_ratio, flip: train augmentation.
        drop_last: drop the last partial training batch (always kept for validation).
        batches_ahead: FFCV's prefetch depth.
        val_batch_size: GLOBAL validation batch (default: ``batch_size``).
    """

    def __init__(
        self,
        train_beton: str,
        val_beton: str | None = None,
        batch_size: int = 1024,
        num_workers: int = 8,
        image_size: int = 224,
        crop_pct: float = 0.9,
        multiscale: Sequence[Sequence[int]] | None = None,
        os_cache: bool = False,
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = True,
        rrc_scale: Sequence[float] = (0.08, 1.0),
        rrc_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
        drop_last: bool = True,
        batches_ahead: int = 3,
        val_batch_size: int | None = None,
    ):
        require_ffcv()
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=False, seed=seed,
                         image_size=image_size, val_batch_size=val_batch_size)
        if train_beton is None or str(train_beton) in ("", "???"):
            raise UserError("data.train_beton is not set: pass data.train_beton=/path/train.beton")
        if int(image_size) < 8:
            raise UserError(f"data.image_size={image_size}: use at least 8 px")
        if not (0.0 < float(crop_pct) <= 1.0):
            raise UserError(f"data.crop_pct={crop_pct}: use a ratio in (0, 1]")
        mean = tuple(float(v) for v in mean)
        std = tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3 or max(mean) > 1.0 or min(std) <= 0 or max(std) > 1.0:
            raise UserError(f"data.mean={list(mean)} / data.std={list(std)}: use 3 values each in [0, 1] units")
        self.train_beton = str(train_beton)
        self.val_beton = None if val_beton in (None, "") else str(val_beton)
        self.num_workers = clamp_threads(int(num_workers))
        self.crop_pct = float(crop_pct)
        self.multiscale = [list(e) for e in validate_schedule(multiscale)] or None
        self.os_cache = bool(os_cache)
        self.mean, self.std = mean, std
        self.channels_last = bool(channels_last)
        self.rrc_scale = _as_pair(rrc_scale, "rrc_scale")
        self.rrc_ratio = _as_pair(rrc_ratio, "rrc_ratio")
        self.flip = bool(flip)
        self.drop_last = bool(drop_last)
        self.batches_ahead = max(1, int(batches_ahead))

        info = check_beton(self.train_beton, what="data.train_beton")
        if self.val_beton is not None:
            check_beton(self.val_beton, what="data.val_beton")
        side = info["sidecar"]
        if side is not None:
            self.class_names = list(side.get("class_names") or [])
            self._num_classes = int(side["num_classes"])
        else:
            labels = labels_from_beton(self.train_beton)
            self._num_classes = int(labels.max()) + 1 if labels.size else 0
            self.class_names = [str(i) for i in range(self._num_classes)]
        self.num_train_samples = info["num_samples"]
        self._loaders: dict[str, FFCVEpochLoader] = {}
        self._epoch = 0  # the next training epoch when no trainer is attached

    # -- epochs and resolution -------------------------------------------------------------
    def current_epoch(self) -> int:
        return int(self.trainer.current_epoch) if self.trainer is not None else int(self._epoch)

    def epoch_started(self, epoch: int) -> None:
        """Called by the train loader at each ``iter()``: without a trainer, the next one is ``epoch + 1``."""
        if self.trainer is None:
            self._epoch = epoch + 1

    def train_resolution(self, epoch: int) -> int:
        return resolution_at(epoch, self.multiscale, self.image_size)

    def _device_and_dtype(self) -> tuple[torch.device | None, torch.dtype]:
        t = self.trainer
        if t is None or not torch.cuda.is_available():
            return None, torch.float32
        dev = t.strategy.root_device
        if dev.type != "cuda":
            return None, torch.float32
        prec = str(getattr(t, "precision", "16-mixed"))
        if prec.startswith("bf16"):
            return dev, torch.bfloat16
        if prec.startswith("32"):
            return dev, torch.float32
        if prec.startswith("64"):
            return dev, torch.float64
        return dev, torch.float16

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.per_device_batch_size  # noqa: B018  (raises a UserError for an indivisible global batch)

    def _build(self, split: str) -> FFCVEpochLoader:
        if split in self._loaders:
            return self._loaders[split]
        require_ffcv()
        from ffcv.loader import Loader, OrderOption

        device, dtype = self._device_and_dtype()
        train = split == "train"
        res = self.train_resolution(self.current_epoch()) if train else self.image_size
        pipelines, decoder = build_pipelines(
            "train" if train else "val", res, device=device, dtype=dtype, mean=self.mean, std=self.std,
            crop_pct=self.crop_pct, rrc_scale=self.rrc_scale, rrc_ratio=self.rrc_ratio, flip=self.flip,
        )
        path = self.train_beton if train else self.val_beton
        batch = self.per_device_batch_size if train else self.per_device_val_batch_size
        try:
            loader = Loader(
                path, batch_size=batch, num_workers=self.num_workers, os_cache=self.os_cache,
                order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL, distributed=self.world_size > 1,
                seed=self.seed, pipelines=pipelines, drop_last=self.drop_last if train else False,
                batches_ahead=self.batches_ahead,
            )
        except (ValueError, AssertionError, OSError, IndexError) as e:
            raise UserError(
                f"FFCV could not set up its loader for {path} (data.num_workers={self.num_workers}, per-device "
                f"batch {batch}, data.os_cache={self.os_cache}): {type(e).__name__}: {e}"
            ) from None
        if train and len(loader) == 0:
            raise UserError(
                f"{path}: {self.num_train_samples} samples make no full batch of {batch} "
                "per device; lower data.batch_size or set data.drop_last=false"
            )
        resolution_fn = self.train_resolution if train else (lambda _epoch: self.image_size)
        wrapped = FFCVEpochLoader(self, split, loader, decoder, self.channels_last, resolution_fn)
        self._loaders[split] = wrapped
        return wrapped

    def train_dataloader(self) -> FFCVEpochLoader:
        loader = self._build("train")
        if self._resume_position is not None:  # a mid-epoch checkpoint: skip what was consumed
            loader.resume_at(*self._resume_position)
            self._resume_position = None
        return loader

    def val_dataloader(self):
        if self.val_beton is None:
            return []
        return self._build("val")

    def test_dataloader(self):
        return self.val_dataloader()

    # -- checkpoint state ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        epoch = self.current_epoch()
        state.update(epoch=epoch, train_resolution=self.train_resolution(epoch), global_batch_size=self.batch_size,
                     world_size=self.world_size)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._epoch = int(state_dict.get("epoch", self._epoch))
