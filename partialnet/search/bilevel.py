"""Bilevel data for the search: the architecture logits learn on data the weights never train on.

With ``search.arch_split=f`` (0 < f < 1) the search's training set is split once,
deterministically (class-stratified when the dataset has ``labels``, split seed
``data.seed``), into a weight part (1 - f) and an architecture part (f), as DARTS and FBNet do.
:class:`ArchSplitDataset` serves the weight part; item ``i`` also carries the architecture-part
sample ``a_idx[i % len(a_idx)]``, so one shuffled loader (same sampler, same resume, same DDP
sharding) yields ``(x_w, y_w, x_a, y_a)`` batches. The search module then takes a weight step
on ``(x_w, y_w)`` and a logits step on ``(x_a, y_a)`` (first-order alternation).

Why: with one batch for both, the cross-entropy rewards the candidates whose shared weights
fit the *training* batch best -- after a warm-up at r = 1/4 that is r = 1/4 itself -- rather
than the architecture that generalises.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from partialnet.errors import UserError

__all__ = ["ArchSplitDataset", "attach_arch_split", "split_indices"]


def split_indices(dataset: Dataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(weight_idx, arch_idx)``: disjoint, together all of ``dataset``; stratified by ``labels``."""
    n = len(dataset)
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) == n:
        from partialnet.data.cifar10 import stratified_split

        w, a = stratified_split(np.asarray(labels), fraction, seed)
    else:
        perm = np.random.default_rng(seed).permutation(n)
        n_a = int(round(n * fraction))
        w, a = np.sort(perm[n_a:]), np.sort(perm[:n_a])
    if len(w) == 0 or len(a) == 0:
        raise UserError(f"search.arch_split={fraction} leaves an empty part of the {n}-sample training set; "
                        f"use a value in (0, 1) such as 0.2, or search.arch_split=0 (one batch for both)")
    return w, a


class ArchSplitDataset(Dataset):
    """Item ``i``: ``(*dataset[w_idx[i]], *dataset[a_idx[i % len(a_idx)]])``; length ``len(w_idx)``."""

    def __init__(self, dataset: Dataset, fraction: float, seed: int):
        self.dataset = dataset
        self.fraction = float(fraction)
        self.w_idx, self.a_idx = split_indices(dataset, self.fraction, seed)
        labels = getattr(dataset, "labels", None)
        if labels is not None and len(labels) == len(dataset):  # the weight part's labels
            import torch

            idx = torch.from_numpy(self.w_idx.astype(np.int64))
            self.labels = labels.index_select(0, idx) if torch.is_tensor(labels) else np.asarray(labels)[self.w_idx]

    def __len__(self) -> int:
        return len(self.w_idx)

    def __getitem__(self, i: int):
        x_w, y_w = self.dataset[int(self.w_idx[i])]
        x_a, y_a = self.dataset[int(self.a_idx[i % len(self.a_idx)])]
        return x_w, y_w, x_a, y_a

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        """A whole batch at once (the DataLoader's fast path), through the wrapped dataset's own
        ``__getitems__`` when it has one (batched augmentation)."""
        w = [int(self.w_idx[i]) for i in indices]
        a = [int(self.a_idx[i % len(self.a_idx)]) for i in indices]
        fetch = getattr(self.dataset, "__getitems__", None)
        if fetch is None:
            part_w, part_a = [self.dataset[j] for j in w], [self.dataset[j] for j in a]
        else:
            part_w, part_a = fetch(w), fetch(a)
        return [(*sw, *sa) for sw, sa in zip(part_w, part_a)]

    def __getattr__(self, name):  # classes, image_size, ... of the wrapped dataset (never a dunder)
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def attach_arch_split(datamodule, fraction: float, seed: int) -> None:
    """Make ``datamodule``'s training set an :class:`ArchSplitDataset` (validation unchanged)."""
    if not 0.0 < float(fraction) < 1.0:
        raise UserError(f"search.arch_split={fraction} must be in (0, 1), e.g. 0.2, or 0 to train the logits on "
                        f"the weights' batches")
    from partialnet.data.base import ImageClassificationDataModule

    base = ImageClassificationDataModule.train_dataloader
    if not isinstance(datamodule, ImageClassificationDataModule) or type(datamodule).train_dataloader is not base:
        raise UserError(f"search.arch_split needs a map-style training set; {type(datamodule).__name__} has its own "
                        f"loader (FFCV?): search on an ImageFolder/CIFAR/Fashion-MNIST copy, or set search.arch_split=0")
    if datamodule.train_dataset is not None:  # already set up
        if not isinstance(datamodule.train_dataset, ArchSplitDataset):
            datamodule.train_dataset = ArchSplitDataset(datamodule.train_dataset, fraction, seed)
        return
    build = datamodule.build_datasets

    def build_with_split():
        train, val = build()
        return ArchSplitDataset(train, fraction, seed), val

    datamodule.build_datasets = build_with_split
