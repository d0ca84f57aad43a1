"""CIFAR-10 from the JPEG folder layout (``train/<class>/*.jpg``), decoded once into memory.

Where the data comes from:

* ``root`` given: ``root/train/<class>/*`` (and ``root/test`` or ``root/val`` if present);
* otherwise ``archive`` (default ``../shared/data/cifar10-train.tar.gz``, relative paths are
  resolved against the repository root) is extracted ONCE into ``cache_dir``
  (default ``~/.cache/partialnet/cifar10``; ``$PARTIALNET_CACHE`` moves it) — to a temporary
  directory first, then renamed into place, so an interrupted or concurrent extraction
  never leaves a half-written tree. Nothing is ever written into the repository.

Decoding: every image is decoded once (torchvision.io, a few threads) into one uint8
array ``[N, 3, 32, 32]`` and saved as ``decoded-<hash>.npz`` in ``cache_dir`` (atomically),
keyed by the file list with sizes and mtimes, so later runs load it in well under a second.
Unreadable images are skipped, counted (``num_corrupt``) and reported in one warning.

Validation: the ``test``/``val`` folder if there is one; otherwise a deterministic,
class-stratified split of the training folder: per class (sorted file order), a
permutation from ``numpy.random.default_rng(split_seed)`` puts ``round(n * val_fraction)``
files into validation. It depends only on the file list and ``split_seed`` (not on
``seed`` or any global RNG), so runs with different seeds validate on the same images.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from partialnet.data.base import (
    DECODE_ERRORS,
    ImageClassificationDataModule,
    default_cache_dir,
    find_class_folders,
    repo_root,
    scan_image_folder,
)
from partialnet.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    InMemoryImageDataset,
    fix_posterize,
    resize_uint8,
)
from partialnet.errors import UserError

DEFAULT_ARCHIVE = "../shared/data/cifar10-train.tar.gz"
NATIVE_SIZE = 32
_CACHE_VERSION = 1


# --------------------------------------------------------------------------- archive


def resolve_archive(archive: str | os.PathLike) -> Path:
    """Absolute archive path (relative paths are relative to the repo root); must exist."""
    p = Path(os.path.expanduser(str(archive)))
    resolved = p if p.is_absolute() else (repo_root() / p).resolve()
    if not resolved.is_file():
        how = "" if p.is_absolute() else f" (data.archive={archive} relative to the repo root {repo_root()})"
        raise UserError(
            f"CIFAR-10 archive {resolved} not found{how}: put cifar10-train.tar.gz there, set "
            f"data.archive=/path/to/cifar10-train.tar.gz, or set data.root to a folder holding train/<class>/"
        )
    return resolved


def extract_once(archive: Path, cache_dir: Path) -> Path:
    """Extract ``archive`` into ``cache_dir/<name>-<size>-<mtime>`` unless already there."""
    st = archive.stat()
    stem = archive.name.split(".")[0]
    final = cache_dir / f"{stem}-{st.st_size}-{int(st.st_mtime)}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"cannot extract CIFAR-10 archive {archive} ({type(e).__name__}: {e}): replace the archive "
            f"or set data.root to an extracted folder"
        ) from None
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    return final


def find_split_root(extracted: Path, archive: Path) -> Path:
    """The directory inside an extraction that holds ``train/`` (itself or one level down)."""
    if (extracted / "train").is_dir():
        return extracted
    subdirs = sorted(p for p in extracted.iterdir() if p.is_dir() and (p / "train").is_dir())
    if len(subdirs) != 1:
        raise UserError(
            f"CIFAR-10 archive {archive} has no single train/ folder (expected cifar10/train/<class>/*.jpg): "
            f"use the archive described in ../shared/data/README.md or set data.root"
        )
    return subdirs[0]


# --------------------------------------------------------------------------- decoding


def _decode_one(path: str) -> np.ndarray | None:
    """uint8 [H, W, 3] or None if unreadable.

    PIL (libjpeg-turbo) rather than torchvision.io, whose decoders are deprecated since
    torchvision 0.29 (a DeprecationWarning per call); PIL releases the GIL while decoding,
    so the threads in :func:`decode_images` still overlap.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except DECODE_ERRORS:
        return None


def decode_images(paths: Sequence[str], size: int = NATIVE_SIZE, threads: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``paths`` into ``(images uint8 [M, 3, size, size], ok bool [N])``.

    Images of another size are resized (bilinear, antialiased); unreadable ones are left
    out and marked ``ok=False``.
    """
    n = len(paths)
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    ok = np.zeros(n, dtype=bool)

    def work(lo_hi):
        lo, hi = lo_hi
        for i in range(lo, hi):
            arr = _decode_one(paths[i])
            if arr is None:
                continue
            img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
            if img.shape[-2:] != (size, size):
                img = resize_uint8(img[None], size)[0]
            out[i] = img
            ok[i] = True

    threads = threads or min(4, os.cpu_count() or 1)
    step = 512
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(work, [(i, min(i + step, n)) for i in range(0, n, step)]))
    keep = torch.from_numpy(ok)
    images = out if keep.all() else out[keep]
    return images.numpy(), ok


def _manifest_key(root: Path, paths: Sequence[str]) -> str:
    h = hashlib.sha1(f"v{_CACHE_VERSION}|{NATIVE_SIZE}|{root.resolve()}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"|{os.path.relpath(p, root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def load_or_decode(root: Path, paths: Sequence[str], cache_dir: Path | None
                   ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Decoded images of ``paths`` (see :func:`decode_images`), through the npz cache.

    Returns ``(images, ok, from_cache)``. ``cache_dir=None`` disables the cache.
    """
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"decoded-{_manifest_key(root, paths)}.npz"
        if cache_file.is_file():
            try:
                with np.load(cache_file) as z:
                    images, ok = z["images"], z["ok"]
                if len(ok) == len(paths) and len(images) == int(ok.sum()):
                    return images, ok, True
            except (OSError, ValueError, KeyError, zlib.error):
                pass  # unreadable cache: decode again and overwrite it
    images, ok = decode_images(paths)
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".decoded-", suffix=".npz.tmp", dir=cache_file.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, ok=ok)
            os.replace(tmp, cache_file)
        except OSError as e:
            warnings.warn(f"could not write the decoded-image cache {cache_file}: {e}", stacklevel=2)
    return images, ok, False


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic class-stratified ``(train_idx, val_idx)`` (both sorted, disjoint)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = rng.permutation(len(idx))
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[perm[:n_val]])
        train.append(idx[perm[n_val:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def timm_auto_augment(config: str, image_size: int, mean: Sequence[float]) -> Callable:
    """A timm AutoAugment/RandAugment/AugMix transform (PIL → PIL) from its config string."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = dict(translate_const=int(image_size * 0.45), img_mean=tuple(round(255 * m) for m in mean))
    try:
        if config.startswith("rand"):
            return fix_posterize(rand_augment_transform(config, hparams))
        if config.startswith("augmix"):
            hparams["translate_pct"] = 0.3
            return fix_posterize(augment_and_mix_transform(config, hparams))
        return fix_posterize(auto_augment_transform(config, hparams))
    except (ValueError, KeyError, AssertionError) as e:
        raise UserError(f"data.auto_augment={config!r} is not a valid timm augment string ({e}): "
                        f"use e.g. 'rand-m9-mstd0.5-inc1' or null") from None


# --------------------------------------------------------------------------- datamodule


class CIFAR10DataModule(ImageClassificationDataModule):
    """CIFAR-10 JPEG folders, decoded once and held in memory (train aug: pad-4 crop + flip)."""

    mean = CIFAR10_MEAN
    std = CIFAR10_STD

    def __init__(
        self,
        root: str | None = None,
        archive: str = DEFAULT_ARCHIVE,
        cache_dir: str | None = None,
        image_size: int = 32,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        seed: int = 0,
        padding: int | None = None,
        hflip: float = 0.5,
        auto_augment: str | None = None,
        val_batch_size: int | None = None,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, seed=seed, image_size=image_size,
                         val_batch_size=val_batch_size)
        if not 0.0 < float(val_fraction) < 1.0:
            raise UserError(f"data.val_fraction={val_fraction} must be in (0, 1): e.g. 0.1")
        self.root = root
        self.archive = archive
        self.cache_dir = Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_dir("cifar10")
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.padding = image_size // 8 if padding is None else int(padding)
        self.hflip = float(hflip)
        self.auto_augment = auto_augment
        self.classes: list[str] | None = None
        self.num_corrupt = 0
        self.corrupt_files: list[str] = []
        self.loaded_from_cache: bool | None = None
        if root is None:
            self._num_classes = 10  # the archive is CIFAR-10; checked in build_datasets

    def _count_classes(self) -> int:
        return len(find_class_folders(Path(self.root) / "train", self._root_fix))

    @property
    def _root_fix(self) -> str:
        return (f"set data.root to a folder holding train/<class>/*.jpg, or data.root=null to use "
                f"the archive {self.archive}")

    def data_root(self) -> Path:
        """The folder holding ``train/`` (extracting the archive into the cache if needed)."""
        if self.root is not None:
            root = Path(os.path.expanduser(self.root))
            if not root.is_dir():
                raise UserError(f"data root {root} does not exist: {self._root_fix}")
            if not (root / "train").is_dir():
                raise UserError(f"data root {root} has no train/ folder: {self._root_fix}")
            return root
        archive = resolve_archive(self.archive)
        return find_split_root(extract_once(archive, self.cache_dir), archive)

    def train_transform(self) -> Callable | None:
        """Per-sample PIL → PIL train transform applied after crop/flip (None: batched path only).

        Default: timm AutoAugment/RandAugment from ``auto_augment``. Override to customise.
        """
        if not self.auto_augment:
            return None
        return timm_auto_augment(self.auto_augment, self.image_size, self.mean)

    def prepare_data(self) -> None:
        # Lightning calls this on local rank 0 only, before setup() on every rank: extract
        # the archive and fill the decode cache there (building the datasets on the way);
        # the other ranks then load the cache in setup().
        self.setup()

    def _load(self):
        root = self.data_root()
        classes, train_samples = scan_image_folder(root / "train", fix=self._root_fix)
        val_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        val_samples = scan_image_folder(val_dir, classes=classes)[1] if val_dir else []
        samples = train_samples + val_samples
        paths = [p for p, _ in samples]
        images, ok, from_cache = load_or_decode(root, paths, self.cache_dir)
        return root, classes, samples, len(train_samples), images, ok, from_cache

    def build_datasets(self):
        root, classes, samples, n_train, images, ok, from_cache = self._load()
        if self._num_classes is not None and len(classes) != self._num_classes:
            raise UserError(f"{root / 'train'} has {len(classes)} class folders, expected "
                            f"{self._num_classes} for CIFAR-10: {self._root_fix}")
        self.classes, self._num_classes, self.loaded_from_cache = classes, len(classes), from_cache
        labels = np.array([c for _, c in samples], dtype=np.int64)
        if n_train < len(samples):
            train_idx, val_idx = np.arange(n_train), np.arange(n_train, len(samples))
        else:
            train_idx, val_idx = stratified_split(labels, self.val_fraction, self.split_seed)
        self.corrupt_files = [samples[i][0] for i in np.flatnonzero(~ok)]
        self.num_corrupt = len(self.corrupt_files)
        if self.num_corrupt:
            warnings.warn(
                f"skipped {self.num_corrupt} unreadable image(s) under {root} (e.g. {self.corrupt_files[0]}): "
                f"delete or replace them",
                stacklevel=2,
            )
        # Map manifest positions → rows of the decoded array (which holds only ok images).
        row = np.cumsum(ok) - 1
        all_images = torch.from_numpy(images)
        label_t = torch.from_numpy(labels)

        def make(idx: np.ndarray, train: bool) -> InMemoryImageDataset:
            idx = idx[ok[idx]]
            if len(idx) == 0:
                raise UserError(f"no readable images left in the {'train' if train else 'val'} split "
                                f"under {root}: replace the corrupt files")
            sel = torch.from_numpy(idx)
            return InMemoryImageDataset(
                all_images.index_select(0, torch.from_numpy(row[idx])), label_t.index_select(0, sel),
                image_size=self.image_size, mean=self.mean, std=self.std, train=train,
                padding=self.padding, hflip=self.hflip, seed=self.seed,
                sample_transform=self.train_transform() if train else None, classes=classes,
            )

        return make(train_idx, True), make(val_idx, False)
