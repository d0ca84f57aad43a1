"""Fashion-MNIST: IDX parsing/validation and the in-memory DataModule."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from partialnet.data import FashionMNISTDataModule
from partialnet.data.fashion_mnist import DEFAULT_ROOT, read_idx
from partialnet.errors import UserError


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def fake_root(tmp_path: Path, n_train: int = 64, n_val: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / "x-idx3-ubyte", arr, gz=gz)
    out = read_idx(p, expected_ndim=3)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = np.zeros((4, 28, 28), np.uint8)
    bad_magic = tmp_path / "magic-idx3-ubyte"
    bad_magic.write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 40)
    with pytest.raises(UserError, match=f"{bad_magic}.*bad magic"):
        read_idx(bad_magic)

    truncated = tmp_path / "trunc-idx3-ubyte"
    raw = write_idx(tmp_path / "ok-idx3-ubyte", good, gz=False).read_bytes()
    truncated.write_bytes(raw[:-10])
    with pytest.raises(UserError, match=f"{truncated}.*data bytes"):
        read_idx(truncated)

    not_gzip = tmp_path / "junk-idx3-ubyte.gz"
    not_gzip.write_bytes(b"this is not gzip data at all")
    with pytest.raises(UserError, match=f"{not_gzip}.*unreadable"):
        read_idx(not_gzip)

    cut_gzip = tmp_path / "cut-idx3-ubyte.gz"
    full = gzip.compress(raw)
    cut_gzip.write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match=str(cut_gzip)):
        read_idx(cut_gzip)

    with pytest.raises(UserError, match="3 dimensions, expected 1"):
        read_idx(tmp_path / "ok-idx3-ubyte", expected_ndim=1)


def test_datamodule_on_fake_files(tmp_path):
    dm = FashionMNISTDataModule(root=str(fake_root(tmp_path)), batch_size=16)
    assert dm.num_classes == 10
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (64, 32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey → RGB
    assert y.min() >= 0 and y.max() <= 9
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (16, 3, 32, 32)


def test_on_the_fly_resize_matches_size(tmp_path):
    dm = FashionMNISTDataModule(root=str(fake_root(tmp_path, 32, 16)), batch_size=8, image_size=48)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 48, 48)


def test_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist.*dataset-fashion-mnist"):
        FashionMNISTDataModule(root=str(tmp_path / "nope")).setup()
    root = fake_root(tmp_path)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is missing"):
        FashionMNISTDataModule(root=str(root)).setup()


def test_label_image_count_mismatch(tmp_path):
    root = fake_root(tmp_path)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(10))
    with pytest.raises(UserError, match="64 images but .* has 10 labels"):
        FashionMNISTDataModule(root=str(root)).setup()


@pytest.mark.skipif(not Path(DEFAULT_ROOT).is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    dm = FashionMNISTDataModule()
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (60000, 10000)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (256, 3, 32, 32)
    assert 0 <= int(y.min()) and int(y.max()) <= 9
    counts = torch.bincount(dm.val_dataset.labels, minlength=10)
    assert counts.tolist() == [1000] * 10
    xv, _ = next(iter(dm.val_dataloader()))
    assert abs(float(xv.mean())) < 0.3 and 0.7 < float(xv.std()) < 1.3  # normalised
