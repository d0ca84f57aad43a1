"""What the writer reads: ``--src`` resolved through the project's own dataset readers.

* ``DIR``: an ImageFolder root (``DIR/<class>/*.jpg``), listed by
  :class:`~partialnet.data.folder.TolerantImageFolder`;
* ``fashion_mnist[:DIR]``: the IDX files, read by :func:`partialnet.data.fashion_mnist.load_split`
  (``test`` is the ``val`` split);
* ``cifar10[:PATH]``: the CIFAR-10 archive read by :func:`partialnet.data.cifar10.read_archive`
  (default: the archive the CIFAR-10 DataModule uses), or a folder with ``<split>/<class>/*.jpg``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialnet.errors import UserError

_SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


@dataclass
class Source:
    """Samples to write: encoded images (``blobs``), image files (``names``) or decoded ``arrays``."""

    kind: str  # folder | cifar10 | fashion_mnist
    path: str
    split: str
    classes: list[str]
    names: list[str]  # file path / archive member per sample (for reports)
    labels: list[int]
    blobs: list[bytes] | None = None  # encoded images held in memory (archives)
    arrays: np.ndarray | None = None  # decoded uint8 images (N, H, W) or (N, H, W, 3)

    def item(self, j: int):
        """What PIL opens for sample ``j``: a path or the encoded bytes (not for ``arrays``)."""
        return self.blobs[j] if self.blobs is not None else self.names[j]


def _folder(root: Path, kind: str = "folder", split: str = "") -> Source:
    from partialnet.data.folder import TolerantImageFolder

    with os.scandir(root) as it:
        subdirs = sorted(d.name for d in it if d.is_dir() and not d.name.startswith("."))
    if subdirs and set(subdirs) <= _SPLIT_NAMES:
        raise UserError(f"{root} holds split folders ({', '.join(subdirs)}), not class folders: "
                        f"pass --src {root}/{subdirs[0]}")
    if len(subdirs) == 1:
        raise UserError(f"{root} has a single class folder ({subdirs[0]}): pass the folder that holds the class folders")
    fix = f"pass --src DIR with DIR/<class>/*.jpg (got {root})"
    ds = TolerantImageFolder(root, fix=fix)
    return Source(kind, str(root), split, list(ds.classes), [p for p, _ in ds.samples], [c for _, c in ds.samples])


def _fashion_mnist(root: str, split: str) -> Source:
    from partialnet.data.fashion_mnist import CLASSES, DEFAULT_ROOT, load_split

    which = {"train": "train", "test": "val", "val": "val"}.get(split)
    if which is None:
        raise UserError(f"fashion_mnist has splits train and test (val = test), not {split!r}: use --split train|test")
    images, labels = load_split(root or DEFAULT_ROOT, which)
    prefix = "train" if which == "train" else "t10k"
    names = [f"{prefix}[{i}]" for i in range(len(labels))]
    return Source("fashion_mnist", str(root or DEFAULT_ROOT), split, list(CLASSES), names,
                  labels.astype(np.int64).tolist(), arrays=images)


def _cifar10(path: str, split: str) -> Source:
    from partialnet.data.cifar10 import DEFAULT_ARCHIVE, read_archive, resolve_archive

    p = Path(os.path.expanduser(path)) if path else None
    if p is not None and p.is_dir():
        for cand in (p / split, p / "cifar10" / split):
            if cand.is_dir():
                src = _folder(cand, "cifar10", split)
                src.path = str(p)
                return src
        raise UserError(f"cifar10:{p}: no {split}/<class>/*.jpg folders found (or pass the archive)")
    archive = resolve_archive(path or DEFAULT_ARCHIVE)
    classes, items, _ = read_archive(archive)
    want = 0 if split == "train" else 1
    chosen = [(name, label, data) for name, label, s, data in items if s == want]
    if not chosen:
        raise UserError(f"cifar10:{archive} has no {split}/<class>/*.jpg members: use --split train")
    return Source("cifar10", str(archive), split, list(classes), [f"{archive.name}:{n}" for n, _, _ in chosen],
                  [int(c) for _, c, _ in chosen], blobs=[d for _, _, d in chosen])


def resolve_source(spec: str, split: str = "train") -> Source:
    """``--src`` → samples: a folder, ``fashion_mnist[:DIR]`` or ``cifar10[:PATH]``."""
    if spec == "fashion_mnist" or spec.startswith("fashion_mnist:"):
        return _fashion_mnist(spec.partition(":")[2], split)
    if spec == "cifar10" or spec.startswith("cifar10:"):
        return _cifar10(spec.partition(":")[2], split)
    root = Path(spec)
    if not root.is_dir():
        raise UserError(f"--src {spec}: not a folder (use DIR with DIR/<class>/*.jpg, fashion_mnist or cifar10:PATH)")
    return _folder(root)
