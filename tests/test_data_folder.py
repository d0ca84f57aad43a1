"""ImageFolder DataModule: layout errors, ignored files, corrupt images, timm transforms."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partialnet.data import ImageFolderDataModule, TolerantImageFolder
from partialnet.data.transforms import folder_transforms
from partialnet.errors import UserError


def make_split(root: Path, classes=("a", "b", "c"), n: int = 4, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.jpg")
    return root


def make_dataset(root: Path, **kw) -> Path:
    make_split(root / "train", **kw)
    make_split(root / "val", **kw)
    return root


def test_missing_root(tmp_path):
    dm = ImageFolderDataModule(root=str(tmp_path / "nope"))  # no disk access in __init__
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'} does not exist"):
        dm.num_classes


def test_root_without_train_dir(tmp_path):
    with pytest.raises(UserError, match="has no train/ folder"):
        ImageFolderDataModule(root=str(tmp_path)).num_classes


def test_empty_train_dir(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="has no class folders") as e:
        ImageFolderDataModule(root=str(tmp_path)).num_classes
    assert str(tmp_path / "train") in str(e.value) and "\n" not in str(e.value)


def test_empty_class_folder(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train" / "d").mkdir()
    (root / "train" / "d" / "notes.txt").write_text("x")
    dm = ImageFolderDataModule(root=str(root))
    assert dm.num_classes == 4
    with pytest.raises(UserError, match=f"class folder {root / 'train' / 'd'} has no image files"):
        dm.setup()


def test_val_must_match_train_classes(tmp_path):
    root = make_dataset(tmp_path)
    make_split(root / "val", classes=("zzz",), n=1)
    with pytest.raises(UserError, match="zzz"):
        ImageFolderDataModule(root=str(root)).setup()


def test_non_image_files_ignored_with_one_warning(tmp_path):
    root = make_split(tmp_path)
    (root / "a" / "readme.txt").write_text("x")
    (root / "b" / "labels.csv").write_text("x")
    with pytest.warns(UserWarning, match=r"ignored 2 non-image file\(s\)") as rec:
        ds = TolerantImageFolder(root)
    assert len([w for w in rec if "non-image" in str(w.message)]) == 1
    assert len(ds) == 12 and ds.classes == ["a", "b", "c"]


def test_corrupt_images_skipped_and_counted(tmp_path):
    root = make_split(tmp_path)
    (root / "a" / "000.jpg").write_bytes(b"not a jpeg")
    good = (root / "b" / "000.jpg").read_bytes()
    (root / "b" / "001.jpg").write_bytes(good[: len(good) // 3])  # truncated
    ds = TolerantImageFolder(root)
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        img, target = ds[0]
    assert ds.num_corrupt == 1 and target == 0  # substituted by a/001.jpg
    assert ds.samples[1][0].endswith("001.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = [ds[i] for i in range(len(ds))]
    assert len(out) == 12
    assert ds.num_corrupt == 3  # index 0 twice, b/001 once
    assert ds.corrupt_paths == {str(root / "a" / "000.jpg"), str(root / "b" / "001.jpg")}
    # deterministic: the same index always gives the same substitute
    assert np.array_equal(np.asarray(ds[0][0]), np.asarray(img))


def _flat(transform) -> list:
    out = []
    for t in getattr(transform, "transforms", [transform]):
        out.extend(_flat(t) if hasattr(t, "transforms") else [t])
    return out


def test_transform_sizes_and_the_train_pipeline_holds_the_augmentations(tmp_path):
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    root = make_dataset(tmp_path, size=50)
    dm = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0,
                               auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    # the transform the training set really applies carries both augmentations, as configured
    steps = _flat(dm.train_dataset.transform)
    ra = [t for t in steps if isinstance(t, RandAugment)]
    er = [t for t in steps if isinstance(t, RandomErasing)]
    assert len(ra) == 1 and ra[0].num_layers == 2 and ra[0].ops, steps
    assert {(op.magnitude, op.magnitude_std) for op in ra[0].ops} == {(9, 0.5)}
    assert len(er) == 1 and er[0].probability == 0.25
    assert not any(isinstance(t, (RandAugment, RandomErasing)) for t in _flat(dm.val_dataset.transform))


def _first_train_image(root: Path, **kw) -> torch.Tensor:
    from partialnet.data.transforms import seeded_host_rngs

    dm = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, **kw)
    dm.setup()
    with warnings.catch_warnings(), seeded_host_rngs(0):
        warnings.simplefilter("ignore")
        return dm.train_dataset[0][0]


def test_randaugment_and_random_erasing_change_the_images(tmp_path):
    root = make_dataset(tmp_path, size=50)
    # RandAugment with no layers is the identity: with the same RNG state, 3 layers at magnitude
    # 10 must change the image (it would not if auto_augment were dropped on the way)
    identity = _first_train_image(root, auto_augment="rand-m10-n0-mstd0")
    assert torch.equal(identity, _first_train_image(root, auto_augment="rand-m10-n0-mstd0"))
    assert not torch.equal(identity, _first_train_image(root, auto_augment="rand-m10-n3-mstd0"))
    # random erasing at p=1 in const mode zeroes a rectangle of the normalised image
    plain = _first_train_image(root, re_prob=0.0, re_mode="const")
    erased = _first_train_image(root, re_prob=1.0, re_mode="const")
    assert (plain == 0).all(0).sum() == 0
    zero = (erased == 0).all(0)
    assert zero.sum() >= 4, "no erased pixels"
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all(), "the erased area is a rectangle"


def test_eval_transform_resize_then_center_crop():
    t = folder_transforms(224, False, crop_pct=0.9)
    resize = t.transforms[0]
    assert resize.size == 248 and "BICUBIC" in str(resize.interpolation)
    img = Image.fromarray(np.zeros((300, 400, 3), np.uint8))
    assert t(img).shape == (3, 224, 224)
    tr = folder_transforms(192, True)
    assert tr(img).shape == (3, 192, 192)


def test_randaugment_posterize_at_max_magnitude_does_not_crash():
    t = folder_transforms(32, True, auto_augment="rand-m10-n1-inc1")
    ra = next(tt for tt in t.transforms if hasattr(tt, "ops"))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob = 1.0
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    out = np.asarray(op(img))  # Pillow >= 13 rejects 0 bits; we clamp to 1
    assert out.max() == 128
