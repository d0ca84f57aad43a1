"""Synthetic data: deterministic, label-dependent (learnable), global RNG untouched."""
from __future__ import annotations

import torch

from partialnet.data import SyntheticDataModule


def _setup(**kw):
    dm = SyntheticDataModule(**{"num_classes": 5, "image_size": 16, "train_size": 200, "val_size": 50,
                                "batch_size": 20, **kw})
    dm.setup()
    return dm


def test_shapes_and_determinism():
    state = torch.get_rng_state()
    a, b = _setup(), _setup()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.train_dataset.images, b.train_dataset.images)
    assert torch.equal(a.val_dataset.labels, b.val_dataset.labels)
    assert not torch.equal(a.train_dataset.images[:50], a.val_dataset.images)
    assert not torch.equal(a.train_dataset.images, _setup(seed=1).train_dataset.images)
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (20, 3, 16, 16) and x.dtype == torch.float32
    assert 0 <= int(y.min()) and int(y.max()) < 5
    assert torch.bincount(a.train_dataset.labels).tolist() == [40] * 5


def test_signal_is_learnable():
    dm = _setup()
    xtr, ytr = dm.train_dataset.get_batch(range(200))
    xva, yva = dm.val_dataset.get_batch(range(50))
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(5)])
    pred = torch.cdist(xva.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == yva).float().mean() > 0.9


def test_large_image_size():
    dm = _setup(image_size=64, train_size=20, val_size=10, batch_size=10)
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (10, 3, 64, 64)
