"""bench/search_quality.py's protocol: the search never sees the scoring hold-out; random arms
are distinct architectures within +-3 % of the r=1/4 model's MACs."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import search_quality  # noqa: E402
from partialnet.data.cifar10 import CIFAR10DataModule  # noqa: E402
from partialnet.data.transforms import InMemoryImageDataset  # noqa: E402


def _numbered(first: int, n: int) -> InMemoryImageDataset:
    """n 8x8 images whose pixel [0, 0, 0] is their id (first .. first+n-1), 10 balanced classes."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(first, first + n, dtype=torch.uint8)
    return InMemoryImageDataset(images, torch.arange(n) % 10, 8, (0.0,) * 3, (1.0,) * 3, train=False)


def test_search_split_drops_the_holdout_and_splits_the_rest(monkeypatch):
    monkeypatch.setattr(CIFAR10DataModule, "build_datasets", lambda self: (_numbered(0, 100), _numbered(100, 50)))
    dm = search_quality.SearchSplitCIFAR10(search_val_fraction=0.2, image_size=8)
    train, val = dm.build_datasets()
    ids_train = set(train.images[:, 0, 0, 0].tolist())
    ids_val = set(val.images[:, 0, 0, 0].tolist())
    assert ids_train.isdisjoint(ids_val) and ids_train | ids_val == set(range(100))  # never an id >= 100
    assert len(ids_val) == 20 and torch.bincount(val.labels).tolist() == [2] * 10  # stratified
    assert train.train and not val.train


def test_random_architectures_are_distinct_and_within_three_percent():
    specs, cost = search_quality._cost_table(32)
    archs = search_quality.random_architectures(3, seed=5)
    assert len({tuple(a) for a in archs}) == 3
    for ratios in archs:
        choice = [list(s.candidates).index(r) for s, r in zip(specs, ratios)]
        assert abs(cost.macs_of(choice) / cost.reference_macs - 1) <= 0.03
        assert len(set(ratios)) > 1  # not a uniform model
    assert archs == search_quality.random_architectures(3, seed=5)
