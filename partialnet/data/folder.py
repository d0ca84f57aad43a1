"""ImageNet-style folders (``root/train/<class>/*``, ``root/val/<class>/*``) with timm transforms.

:class:`TolerantImageFolder` is torchvision's ImageFolder with partialnet's checks:

* missing root / no class folders / a class folder without images → :class:`UserError`;
* non-image files are ignored with one warning (their count);
* an image that fails to decode is **skipped**: the sample at the next index (wrapping
  around) that decodes is returned instead — deterministic, so a given index always maps
  to the same substitute — ``num_corrupt`` is incremented and a warning naming the file is
  issued once per file. Counts are per process: with ``num_workers > 0`` each worker counts
  its own (the warnings from the workers still reach stderr). Transform errors are not
  caught (they are bugs, not bad data).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from torchvision.datasets import ImageFolder

from partialnet.data.base import (
    DECODE_ERRORS,
    IMG_EXTENSIONS,
    ImageClassificationDataModule,
    find_class_folders,
    scan_image_folder,
)
from partialnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, folder_transforms
from partialnet.errors import UserError


class TolerantImageFolder(ImageFolder):
    """ImageFolder with clear errors for bad layouts and skipping of corrupt images."""

    def __init__(self, root: str | Path, transform=None, classes: Sequence[str] | None = None,
                 fix: str = "", **kwargs: Any):
        self._fixed_classes = list(classes) if classes is not None else None
        self._fix = fix
        self.num_corrupt = 0
        self.corrupt_paths: set[str] = set()
        super().__init__(str(root), transform=transform, **kwargs)

    def find_classes(self, directory):
        classes = self._fixed_classes if self._fixed_classes is not None else find_class_folders(directory, self._fix)
        return list(classes), {c: i for i, c in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        classes = sorted(class_to_idx, key=class_to_idx.get)
        return scan_image_folder(directory, classes=classes, extensions=extensions or IMG_EXTENSIONS,
                                 fix=self._fix)[1]

    def __getitem__(self, index: int):
        n = len(self.samples)
        for k in range(n):
            path, target = self.samples[(index + k) % n]
            try:
                sample = self.loader(path)
            except DECODE_ERRORS as e:
                self._record_corrupt(path, e)
                continue
            if self.transform is not None:
                sample = self.transform(sample)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return sample, target
        raise UserError(f"no image under {self.root} can be decoded: replace the corrupt files")

    def _record_corrupt(self, path: str, err: BaseException) -> None:
        self.num_corrupt += 1
        if path not in self.corrupt_paths:
            self.corrupt_paths.add(path)
            warnings.warn(
                f"skipped unreadable image {path} ({type(err).__name__}: {err}); "
                f"{self.num_corrupt} decode failure(s) so far in this process, substituting the next sample",
                stacklevel=2,
            )


class ImageFolderDataModule(ImageClassificationDataModule):
    """torchvision ImageFolder + timm transforms (RRC, flip, RandAugment, random erasing)."""

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str = "val",
        image_size: int = 224,
        eval_image_size: int | None = None,
        crop_pct: float = 0.9,
        interpolation: str = "bicubic",
        auto_augment: str | None = None,
        re_prob: float = 0.0,
        re_mode: str = "pixel",
        re_count: int = 1,
        hflip: float = 0.5,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        color_jitter: float | None = 0.4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 256,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        seed: int = 0,
        val_batch_size: int | None = None,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, seed=seed, image_size=image_size,
                         val_batch_size=val_batch_size)
        if not 0.0 < float(crop_pct) <= 1.0:
            raise UserError(f"data.crop_pct={crop_pct} must be in (0, 1]: e.g. 0.9 (resize 248, crop 224)")
        self.root = root
        self.train_dir, self.val_dir = train_dir, val_dir
        self.eval_image_size = eval_image_size or image_size
        self.crop_pct = float(crop_pct)
        self.interpolation = interpolation
        self.auto_augment = auto_augment
        self.re_prob, self.re_mode, self.re_count = float(re_prob), re_mode, int(re_count)
        self.hflip = float(hflip)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.color_jitter = color_jitter
        self.mean, self.std = tuple(mean), tuple(std)
        self.classes: list[str] | None = None

    @property
    def _fix(self) -> str:
        return (f"set data.root to a folder holding {self.train_dir}/<class>/ and {self.val_dir}/<class>/ "
                f"(or data.train_dir / data.val_dir)")

    def _split_dir(self, name: str) -> Path:
        root = Path(os.path.expanduser(str(self.root)))
        if not root.is_dir():
            raise UserError(f"data root {root} does not exist: {self._fix}")
        d = root / name
        if not d.is_dir():
            raise UserError(f"data root {root} has no {name}/ folder: {self._fix}")
        return d

    def _count_classes(self) -> int:
        self.classes = find_class_folders(self._split_dir(self.train_dir), self._fix)
        return len(self.classes)

    def train_transform(self):
        return folder_transforms(
            self.image_size, True, interpolation=self.interpolation, auto_augment=self.auto_augment,
            re_prob=self.re_prob, re_mode=self.re_mode, re_count=self.re_count, hflip=self.hflip,
            scale=self.scale, ratio=self.ratio, color_jitter=self.color_jitter, mean=self.mean, std=self.std,
        )

    def eval_transform(self):
        return folder_transforms(
            self.image_size, False, eval_image_size=self.eval_image_size, crop_pct=self.crop_pct,
            interpolation=self.interpolation, mean=self.mean, std=self.std,
        )

    def build_datasets(self):
        train_dir, val_dir = self._split_dir(self.train_dir), self._split_dir(self.val_dir)
        train = TolerantImageFolder(train_dir, transform=self.train_transform(), fix=self._fix)
        self.classes, self._num_classes = train.classes, len(train.classes)
        extra = sorted(set(find_class_folders(val_dir, self._fix)) - set(train.classes))
        if extra:
            raise UserError(f"{val_dir} has class folder(s) not in {train_dir}: {', '.join(extra[:5])}"
                            f"{' ...' if len(extra) > 5 else ''}: make both splits use the same class folders")
        val = TolerantImageFolder(val_dir, transform=self.eval_transform(), classes=train.classes, fix=self._fix)
        return train, val
