"""CIFAR-10 from the JPEG folder layout (``train/<class>/*.jpg``), decoded once into memory.

Where the data comes from:

* ``root`` given: ``root/train/<class>/*`` (and ``root/test`` or ``root/val`` if present);
* otherwise ``archive`` (default ``../shared/data/cifar10-train.tar.gz``; relative paths are
  resolved against the repository root, the parent of the ``partialnet`` package). The
  archive is **not** extracted: its members are streamed once (``tarfile``, nothing is
  written but the cache below), which takes ~2 s where extracting 50k small files took
  20-60 s on a busy 2-core box. Layout inside: ``<anything>/train/<class>/<file>``
  (``test``/``val`` siblings are used for validation when present).

Decode cache: every image is decoded once (PIL/libjpeg-turbo, a few threads) into one
uint8 array ``[N, 3, 32, 32]`` (images of another size are resized to 32x32) and saved
with the file names, labels and split as ``decoded-<hash>.npz`` in ``cache_dir`` (default
``~/.cache/partialnet/cifar10``; ``$PARTIALNET_CACHE`` moves the base). It is written to a
temporary file and renamed into place (atomic; concurrent ranks at worst both write it).
The hash covers the archive's path/size/mtime, or for ``root`` every file's relative
path/size/mtime, so a changed dataset is decoded again. Nothing is written into the repo.
Unreadable images are skipped, counted (``num_corrupt``) and reported in one warning.

Validation: the ``test``/``val`` split if there is one; otherwise a deterministic,
class-stratified split of the training images: per class (sorted file order), a
permutation from ``numpy.random.default_rng(split_seed)`` puts ``round(n * val_fraction)``
files into validation. It depends only on the file list and ``split_seed`` (not on
``seed`` or any global RNG), so runs with different seeds validate on the same images.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from partialnet.data.base import (
    DECODE_ERRORS,
    IMG_EXTENSIONS,
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
from partialnet.utils.atomic import atomic_write

DEFAULT_ARCHIVE = "../shared/data/cifar10-train.tar.gz"
NATIVE_SIZE = 32
_CACHE_VERSION = 2
_SPLITS = {"train": 0, "val": 1, "test": 1}


@dataclass
class DecodedSet:
    """Everything read from a CIFAR-style source; ``images`` holds only the ``ok`` entries."""

    classes: list[str]
    names: np.ndarray   # str [N], relative file names (for messages)
    labels: np.ndarray  # int64 [N]
    split: np.ndarray   # int8 [N], 0 = train, 1 = val/test
    ok: np.ndarray      # bool [N], decoded fine
    images: np.ndarray  # uint8 [ok.sum(), 3, 32, 32]
    ignored: int = 0    # non-image files skipped while listing


# --------------------------------------------------------------------------- sources


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


def read_archive(archive: Path) -> tuple[list[str], list[tuple[str, int, int, bytes]], int]:
    """Stream a tar archive: ``(classes, [(name, label, split, bytes)], n_ignored)``.

    Members are matched as ``.../<train|val|test>/<class>/<file>``; a class folder without
    images, a missing ``train`` split or val classes unknown to train are :class:`UserError`.
    """
    fix = ("use a tar(.gz) of JPEG/PNG files laid out as train/<class>/<image> (optionally val/ or test/ "
           "beside it), or set data.root to a folder in that layout")
    files: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    dirs: set[tuple[str, str]] = set()
    ignored = 0
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                parts = m.name.strip("/").split("/")
                k = next((i for i, part in enumerate(parts) if part in _SPLITS), None)
                if k is None or len(parts) < k + 2 or parts[k + 1].startswith("."):
                    continue
                split_name, cls = ("val" if parts[k] == "test" else parts[k]), parts[k + 1]
                if m.isdir():
                    if len(parts) == k + 2:
                        dirs.add((split_name, cls))
                    continue
                if not m.isfile() or len(parts) < k + 3:
                    continue
                if not m.name.lower().endswith(IMG_EXTENSIONS):
                    ignored += 1
                    continue
                files.setdefault(split_name, {}).setdefault(cls, []).append((m.name, tf.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read CIFAR-10 archive {archive} ({type(e).__name__}: {e}): {fix}") from None
    if "train" not in files:
        raise UserError(f"CIFAR-10 archive {archive} has no train/<class>/<image> members: {fix}")
    for split_name, cls in sorted(dirs):
        if cls not in files.get(split_name, {}):
            raise UserError(f"class folder {split_name}/{cls} in {archive} has no image files: {fix}")
    classes = sorted(files["train"])
    unknown = sorted(set(files.get("val", {})) - set(classes))
    if unknown:
        raise UserError(f"{archive} has val/test class folder(s) not in train: {', '.join(unknown[:5])}: {fix}")
    items = []
    for split_name in ("train", "val"):
        for ci, cls in enumerate(classes):
            for name, data in sorted(files.get(split_name, {}).get(cls, [])):
                items.append((name, ci, _SPLITS[split_name], data))
    return classes, items, ignored


def _decode_one(src: str | bytes) -> np.ndarray | None:
    """uint8 [H, W, 3] from a path or encoded bytes, or None if unreadable.

    PIL (libjpeg-turbo) rather than torchvision.io, whose decoders are deprecated since
    torchvision 0.29; PIL releases the GIL while decoding, so threads overlap.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            return np.array(im.convert("RGB"))
    except DECODE_ERRORS:
        return None


def decode_images(sources: Sequence[str | bytes], size: int = NATIVE_SIZE, threads: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Decode paths/bytes into ``(images uint8 [M, 3, size, size], ok bool [N])``.

    Images of another size are resized (bilinear, antialiased); unreadable ones are left
    out and marked ``ok=False``.
    """
    n = len(sources)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)

    def work(lo_hi):
        lo, hi = lo_hi
        for i in range(lo, hi):
            arr = _decode_one(sources[i])
            if arr is None:
                continue
            if arr.shape[:2] != (size, size):
                arr = resize_uint8(torch.from_numpy(arr).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
            out[i] = arr.transpose(2, 0, 1)
            ok[i] = True

    threads = threads or min(4, os.cpu_count() or 1)
    step = 1024
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(work, [(i, min(i + step, n)) for i in range(0, n, step)]))
    return (out if ok.all() else out[ok]), ok


def _save_npz(path: Path, d: DecodedSet) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, classes=np.array(d.classes), names=d.names, labels=d.labels,
                                              split=d.split, ok=d.ok, images=d.images, ignored=np.int64(d.ignored)))
    except OSError as e:
        warnings.warn(f"could not write the decoded-image cache {path}: {e}", stacklevel=3)


def _load_npz(path: Path) -> DecodedSet | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            d = DecodedSet(classes=[str(c) for c in z["classes"]], names=z["names"], labels=z["labels"],
                           split=z["split"], ok=z["ok"], images=z["images"], ignored=int(z["ignored"]))
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        return None  # unreadable cache: decode again and overwrite it
    if not (len(d.names) == len(d.labels) == len(d.split) == len(d.ok) and len(d.images) == int(d.ok.sum())):
        return None
    return d


def load_decoded(source: Path, cache_dir: Path | None, fix: str = "") -> tuple[DecodedSet, bool]:
    """Decode ``source`` (a tar archive, or a folder with ``train/``) through the npz cache.

    Returns ``(decoded, from_cache)``; ``cache_dir=None`` disables the cache.
    """
    h = hashlib.sha1(f"v{_CACHE_VERSION}|{NATIVE_SIZE}|{source.resolve()}".encode())
    if source.is_file():
        st = source.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
        listing = None
    else:
        classes, samples = scan_image_folder(source / "train", fix=fix)
        val_dir = next((source / d for d in ("test", "val") if (source / d).is_dir()), None)
        if val_dir is not None:
            extra = sorted(set(find_class_folders(val_dir, fix)) - set(classes))
            if extra:
                raise UserError(f"{val_dir} has class folder(s) not in {source / 'train'}: "
                                f"{', '.join(extra[:5])}: make both splits use the same class folders")
        val = scan_image_folder(val_dir, classes=classes, fix=fix)[1] if val_dir else []
        listing = (classes, [(p, c, 0) for p, c in samples] + [(p, c, 1) for p, c in val])
        for p, _, _ in listing[1]:
            st = os.stat(p)
            h.update(f"|{os.path.relpath(p, source)}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache_file = Path(cache_dir) / f"decoded-{h.hexdigest()[:20]}.npz" if cache_dir is not None else None
    if cache_file is not None and (d := _load_npz(cache_file)) is not None:
        return d, True
    if listing is None:
        classes, items, ignored = read_archive(source)
        names = [n for n, _, _, _ in items]
        sources: list = [b for _, _, _, b in items]
    else:
        classes, entries = listing
        ignored = 0  # already warned about by scan_image_folder
        names = [os.path.relpath(p, source) for p, _, _ in entries]
        sources = [p for p, _, _ in entries]
        items = [(n, c, s, None) for n, (_, c, s) in zip(names, entries)]
    images, ok = decode_images(sources)
    d = DecodedSet(classes=list(classes), names=np.array(names, dtype=str),
                   labels=np.array([c for _, c, _, _ in items], dtype=np.int64),
                   split=np.array([s for _, _, s, _ in items], dtype=np.int8),
                   ok=ok, images=images, ignored=ignored)
    if cache_file is not None:
        _save_npz(cache_file, d)
    return d, False


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

    def source(self) -> Path:
        """The archive file or the ``root`` folder to read."""
        if self.root is None:
            return resolve_archive(self.archive)
        root = Path(os.path.expanduser(self.root))
        if not root.is_dir():
            raise UserError(f"data root {root} does not exist: {self._root_fix}")
        if not (root / "train").is_dir():
            raise UserError(f"data root {root} has no train/ folder: {self._root_fix}")
        return root

    def train_transform(self) -> Callable | None:
        """Per-sample PIL → PIL train transform applied after crop/flip (None: batched path only).

        Default: timm AutoAugment/RandAugment from ``auto_augment``. Override to customise.
        """
        if not self.auto_augment:
            return None
        return timm_auto_augment(self.auto_augment, self.image_size, self.mean)

    def prepare_data(self) -> None:
        # Lightning calls this on local rank 0 only, before setup() on every rank: decode and
        # fill the cache there (building the datasets on the way); other ranks load the cache.
        self.setup()

    def build_datasets(self):
        source = self.source()
        d, self.loaded_from_cache = load_decoded(source, self.cache_dir, self._root_fix)
        if self._num_classes is not None and len(d.classes) != self._num_classes:
            raise UserError(f"{source} has {len(d.classes)} class folders, expected "
                            f"{self._num_classes} for CIFAR-10: {self._root_fix}")
        self.classes, self._num_classes = d.classes, len(d.classes)
        if d.ignored:
            warnings.warn(f"ignored {d.ignored} non-image file(s) in {source}; only "
                          f"{', '.join(IMG_EXTENSIONS)} files are read", stacklevel=2)
        if (d.split == 1).any():
            train_idx, val_idx = np.flatnonzero(d.split == 0), np.flatnonzero(d.split == 1)
        else:
            train_idx, val_idx = stratified_split(d.labels, self.val_fraction, self.split_seed)
        self.corrupt_files = [str(n) for n in d.names[~d.ok]]
        self.num_corrupt = len(self.corrupt_files)
        if self.num_corrupt:
            warnings.warn(
                f"skipped {self.num_corrupt} unreadable image(s) in {source} (e.g. {self.corrupt_files[0]}): "
                f"delete or replace them",
                stacklevel=2,
            )
        row = np.cumsum(d.ok) - 1  # manifest position → row of the decoded array (ok images only)
        all_images, labels = torch.from_numpy(d.images), torch.from_numpy(d.labels)

        def make(idx: np.ndarray, train: bool) -> InMemoryImageDataset:
            idx = idx[d.ok[idx]]
            if len(idx) == 0:
                raise UserError(f"no readable images in the {'train' if train else 'val'} split of "
                                f"{source}: replace the corrupt files")
            return InMemoryImageDataset(
                all_images.index_select(0, torch.from_numpy(row[idx])),
                labels.index_select(0, torch.from_numpy(idx)),
                image_size=self.image_size, mean=self.mean, std=self.std, train=train,
                padding=self.padding, hflip=self.hflip, seed=self.seed,
                sample_transform=self.train_transform() if train else None, classes=d.classes,
            )

        return make(train_idx, True), make(val_idx, False)
