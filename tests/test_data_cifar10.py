"""CIFAR-10 JPEG folders: archive resolution/extraction, decode cache, stratified split."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partialnet.data import CIFAR10DataModule
from partialnet.data.base import repo_root
from partialnet.data.cifar10 import DEFAULT_ARCHIVE, resolve_archive, stratified_split
from partialnet.errors import UserError

CLASSES = ("airplane", "cat", "ship")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_tree(root: Path, split: str = "train", n: int = 20, classes=CLASSES) -> Path:
    rng = np.random.default_rng(len(split))
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.jpg")
    return root


def make_archive(tmp_path: Path, n: int = 4, classes=CIFAR_CLASSES) -> Path:
    src = make_tree(tmp_path / "src" / "cifar10", n=n, classes=classes)
    archive = tmp_path / "fake-cifar10.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="cifar10")
    return archive


@pytest.mark.skipif(not (repo_root().parent / "shared/data/cifar10-train.tar.gz").is_file(),
                    reason="the shared CIFAR-10 archive is not present")
def test_default_archive_resolves_relative_to_repo_root():
    path = resolve_archive(DEFAULT_ARCHIVE)
    assert path == (repo_root().parent / "shared/data/cifar10-train.tar.gz").resolve()
    with tarfile.open(path, "r:gz") as tf:
        names = [tf.next().name for _ in range(4)]
    assert names[0].startswith("cifar10")
    assert any(n.startswith("cifar10/train/") for n in names)


def test_missing_archive_is_a_user_error(tmp_path):
    dm = CIFAR10DataModule(archive="no/such/archive.tar.gz", cache_dir=str(tmp_path))
    assert dm.num_classes == 10  # known without touching the archive
    with pytest.raises(UserError, match=r"archive .*no/such/archive.tar.gz not found.*repo root"):
        dm.setup()


def test_archive_decoded_once_then_cached(tmp_path):
    archive = make_archive(tmp_path)
    cache = tmp_path / "cache"
    dm = CIFAR10DataModule(archive=str(archive), cache_dir=str(cache), batch_size=8, val_fraction=0.25)
    dm.setup()
    assert dm.loaded_from_cache is False and dm.classes == list(CIFAR_CLASSES)
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (30, 10)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].startswith("decoded-") and files[0].endswith(".npz")  # no tmp left

    dm2 = CIFAR10DataModule(archive=str(archive), cache_dir=str(cache), batch_size=8, val_fraction=0.25)
    dm2.setup()
    assert dm2.loaded_from_cache is True
    assert torch.equal(dm.train_dataset.images, dm2.train_dataset.images)
    assert torch.equal(dm.val_dataset.labels, dm2.val_dataset.labels)
    x, y = next(iter(dm2.train_dataloader()))
    assert x.shape == (8, 3, 32, 32)
    assert not (repo_root() / "cifar10").exists()

    # images match a direct decode of the archive members
    with tarfile.open(archive) as tf:
        m = tf.getmember("cifar10/train/airplane/0000.jpg")
        ref = np.array(Image.open(tf.extractfile(m)).convert("RGB")).transpose(2, 0, 1)
    all_imgs = torch.cat([dm.train_dataset.images, dm.val_dataset.images])
    assert any(torch.equal(torch.from_numpy(ref), im) for im in all_imgs)

    # a changed archive (new mtime) is decoded again
    os.utime(archive, ns=(1, 1))
    dm3 = CIFAR10DataModule(archive=str(archive), cache_dir=str(cache), val_fraction=0.25)
    dm3.setup()
    assert dm3.loaded_from_cache is False


def test_archive_layout_errors(tmp_path):
    src = tmp_path / "src"
    (src / "cifar10" / "train" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "cifar10" / "train" / "cat" / "0.jpg")
    (src / "cifar10" / "train" / "cat" / "README").write_text("x")
    (src / "cifar10" / "train" / "dog").mkdir()
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "cifar10", arcname="cifar10")
    with pytest.raises(UserError, match="class folder train/dog .* has no image files"):
        CIFAR10DataModule(archive=str(archive), cache_dir=str(tmp_path / "c")).setup()
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(UserError, match=f"cannot read CIFAR-10 archive {junk}"):
        CIFAR10DataModule(archive=str(junk), cache_dir=str(tmp_path / "c")).setup()


def test_archive_with_wrong_class_count(tmp_path):
    archive = make_archive(tmp_path, n=2, classes=CLASSES)
    dm = CIFAR10DataModule(archive=str(archive), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match="has 3 class folders, expected 10"):
        dm.setup()


def test_stratified_split_deterministic_and_disjoint():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    tr, va = stratified_split(labels, 0.1, seed=0)
    tr2, va2 = stratified_split(labels, 0.1, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va]).tolist() == [5, 3, 2, 1]
    _, va3 = stratified_split(labels, 0.1, seed=1)
    assert not np.array_equal(va, va3)


def test_datamodule_split_independent_of_seed_and_global_rng(tmp_path):
    root = make_tree(tmp_path / "data")
    kw = dict(root=str(root), cache_dir=str(tmp_path / "cache"), val_fraction=0.25)
    a = CIFAR10DataModule(seed=0, **kw)
    a.setup()
    torch.manual_seed(123)
    np.random.seed(7)
    b = CIFAR10DataModule(seed=99, **kw)
    b.setup()
    assert a.num_classes == 3
    assert (len(a.train_dataset), len(a.val_dataset)) == (45, 15)
    assert torch.equal(a.val_dataset.images, b.val_dataset.images)
    assert torch.bincount(a.val_dataset.labels).tolist() == [5, 5, 5]
    tr = {bytes(t.numpy()) for t in a.train_dataset.images}
    va = {bytes(t.numpy()) for t in a.val_dataset.images}
    assert not tr & va


def test_root_with_test_split_and_corrupt_file(tmp_path):
    root = make_tree(tmp_path / "data", n=6)
    make_tree(root, split="test", n=2)
    (root / "train" / "cat" / "0003.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "train" / "cat" / "notes.txt").write_text("x")
    dm = CIFAR10DataModule(root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=4)
    with pytest.warns(UserWarning) as rec:
        dm.setup()
    msgs = [str(w.message) for w in rec]
    assert any("skipped 1 unreadable image" in m for m in msgs)
    assert any("ignored 1 non-image" in m for m in msgs)
    assert dm.num_corrupt == 1 and dm.corrupt_files[0].endswith("cat/0003.jpg")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (17, 6)


def test_root_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        CIFAR10DataModule(root=str(tmp_path / "nope"), cache_dir=str(tmp_path)).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no train/ folder"):
        CIFAR10DataModule(root=str(tmp_path / "empty"), cache_dir=str(tmp_path)).setup()
    (tmp_path / "empty" / "train").mkdir()
    with pytest.raises(UserError, match="has no class folders"):
        CIFAR10DataModule(root=str(tmp_path / "empty"), cache_dir=str(tmp_path)).setup()
    with pytest.raises(UserError, match="val_fraction"):
        CIFAR10DataModule(val_fraction=0.0)


def test_auto_augment_path(tmp_path):
    root = make_tree(tmp_path / "data", n=10)
    dm = CIFAR10DataModule(root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=8,
                           auto_augment="rand-m9-mstd0.5-inc1")
    loader = dm.train_dataloader()
    x1, _ = next(iter(loader))
    x2, _ = next(iter(loader))
    assert x1.shape == (8, 3, 32, 32) and torch.equal(x1, x2)  # deterministic per (seed, epoch)
    # the training set applies RandAugment as configured, and it changes the images: the same
    # batch (same seed, same crops and flips) without it differs
    from timm.data.auto_augment import RandAugment

    ra = [t for t in getattr(dm.train_dataset.sample_transform, "transforms", [dm.train_dataset.sample_transform])
          if isinstance(t, RandAugment)]
    assert len(ra) == 1 and {(op.magnitude, op.magnitude_std) for op in ra[0].ops} == {(9, 0.5)}
    plain = CIFAR10DataModule(root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=8)
    x0, _ = next(iter(plain.train_dataloader()))
    assert plain.train_dataset.sample_transform is None
    assert x0.shape == x1.shape and not torch.equal(x0, x1)
