"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (the embedded default).

The package installs the original gzipped IDX files under ``/usr/share/datasets/fashion-mnist``.
They are parsed here (no torchvision download logic), validated, and held in memory as
uint8. Images are resized 28 → ``image_size`` once up front (bilinear), kept single-channel
and replicated to RGB per batch after normalisation. Train augmentation is a batched
random crop (zero padding ``image_size // 8``) + horizontal flip, see
:mod:`partialnet.data.transforms`. ``num_workers=0`` is the default: the data is in memory
and a batch costs well under a millisecond.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from partialnet.data.base import ImageClassificationDataModule
from partialnet.data.transforms import FASHION_MNIST_MEAN, FASHION_MNIST_STD, InMemoryImageDataset
from partialnet.errors import UserError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes (third magic byte) → numpy dtype (multi-byte types are big-endian).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FIX = ("reinstall the Debian package dataset-fashion-mnist (`make install`) or point "
        "data.root at a directory with intact IDX files")


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (gzipped if it ends in ``.gz``) into a read-only numpy array.

    The magic number is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian uint32
    dimensions and the data. Bad magic, truncated or oversized data, or a broken gzip
    stream raise :class:`UserError` naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"IDX file {path} does not exist: {_FIX}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"IDX file {path} is unreadable ({type(e).__name__}: {e}): {_FIX}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"IDX file {path} has a bad magic number {raw[:4].hex() or '(empty)'}: {_FIX}")
    ndim = raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise UserError(f"IDX file {path} has {ndim} dimensions, expected {expected_ndim}: {_FIX}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated inside its header: {_FIX}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(
            f"IDX file {path} holds {len(raw) - header} data bytes but its header {list(dims)} "
            f"needs {expected}: {_FIX}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise UserError(f"Fashion-MNIST file {root / (stem + '.gz')} is missing: {_FIX}")


def load_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels uint8 [N])`` of ``split`` ("train" or "val")."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"Fashion-MNIST root {root} does not exist: install the Debian package "
                        f"dataset-fashion-mnist (`make install`) or set data.root")
    img_path, lbl_path = (_find(root, s) for s in _FILES[split])
    images = read_idx(img_path, expected_ndim=3)
    labels = read_idx(lbl_path, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise UserError(f"Fashion-MNIST files {img_path} / {lbl_path} are not uint8 IDX files: {_FIX}")
    if images.shape[1:] != (28, 28):
        raise UserError(f"Fashion-MNIST images in {img_path} are {images.shape[1:]}, expected (28, 28): {_FIX}")
    if len(images) != len(labels) or len(images) == 0:
        raise UserError(f"Fashion-MNIST {img_path} has {len(images)} images but {lbl_path} has "
                        f"{len(labels)} labels: {_FIX}")
    if labels.max() >= len(CLASSES):
        raise UserError(f"Fashion-MNIST labels in {lbl_path} go up to {labels.max()}, expected 0..9: {_FIX}")
    return images, labels


class FashionMNISTDataModule(ImageClassificationDataModule):
    """Fashion-MNIST (60k train / 10k val, 10 classes), in memory, upsampled and RGB."""

    mean = FASHION_MNIST_MEAN
    std = FASHION_MNIST_STD

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        image_size: int = 32,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        seed: int = 0,
        padding: int | None = None,
        hflip: float = 0.5,
        val_batch_size: int | None = None,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, seed=seed, image_size=image_size,
                         val_batch_size=val_batch_size)
        self.root = root
        self.padding = image_size // 8 if padding is None else int(padding)
        self.hflip = float(hflip)
        self.classes = list(CLASSES)
        self._num_classes = len(CLASSES)

    def build_datasets(self):
        out = []
        for split in ("train", "val"):
            images, labels = load_split(self.root, split)
            out.append(InMemoryImageDataset(
                torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)),
                image_size=self.image_size, mean=self.mean, std=self.std,
                train=split == "train", padding=self.padding, hflip=self.hflip,
                seed=self.seed, out_channels=3, classes=self.classes,
            ))
        return out[0], out[1]
