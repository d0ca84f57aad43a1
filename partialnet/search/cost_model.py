"""Exact per-layer MAC table F[l][r] and the differentiable expected cost E[F].

Built with :func:`partialnet.measure.count` (fvcore MACs, the papers' "FLOPs"), the same
counter as everywhere else:

- the input shape of every searchable split is recorded at the search resolution;
- ``F[l][r]`` = ``count`` of a fresh static split of layer l's kind and width at candidate r,
  alone, at that input shape (everything that depends on r: the 3x3 conv, PAT_ch's statistics
  conv and norms, PAT_sf's LayerNorm, qkv, attention matmuls and projection);
- ``F_fixed`` = ``count(model)`` minus the splits' own counts at the model's ratios.

For any one-hot choice ``F_fixed + sum_l F[l][r_l]`` equals ``count`` of the static model with
those ratios exactly (tested). ``E[F] = sum_l sum_r p_{l,r} F[l][r] + F_fixed``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.measure.count import _input_shape, count
from partialnet.search.supernet import LayerSpec, static_split

__all__ = ["CostTable", "build_cost_table", "split_input_shapes"]


@dataclass
class CostTable:
    """``macs[l][c]``: MACs of layer l at candidate c (None where the candidate is dropped)."""

    macs: list[list[int | None]]
    fixed: int
    input_size: tuple[int, int, int]
    reference_macs: int  # every layer at the reference ratio (the default r = 1/4 model)
    reference_ratio: float

    @property
    def num_layers(self) -> int:
        return len(self.macs)

    def valid(self) -> torch.Tensor:
        return torch.tensor([[v is not None for v in row] for row in self.macs], dtype=torch.bool)

    def tensor(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """(L, K) table with 0 where a candidate is dropped."""
        return torch.tensor([[0 if v is None else v for v in row] for row in self.macs], dtype=dtype, device=device)

    def macs_of(self, choice: Sequence[int]) -> int:
        """Exact MACs of the static model with candidate ``choice[l]`` at layer l."""
        if len(choice) != self.num_layers:
            raise ValueError(f"{len(choice)} choices for {self.num_layers} layers")
        total = self.fixed
        for row, c in zip(self.macs, choice):
            if row[c] is None:
                raise ValueError(f"candidate {c} is not available at this layer")
            total += row[c]
        return int(total)

    @property
    def min_macs(self) -> int:
        return int(self.fixed + sum(min(v for v in row if v is not None) for row in self.macs))

    @property
    def max_macs(self) -> int:
        return int(self.fixed + sum(max(v for v in row if v is not None) for row in self.macs))

    def expected(self, probs: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """E[F] in MACs (float64, differentiable in ``probs`` (L, K))."""
        t = self.tensor(device=probs.device) if table is None else table
        return (probs.to(torch.float64) * t).sum() + float(self.fixed)


def split_input_shapes(model: nn.Module, input_size) -> list[tuple[int, int, int]]:
    """(C, H, W) entering every ``model.searchable_splits()`` module for one image of ``input_size``."""
    shape = _input_shape(input_size)
    splits = list(model.searchable_splits())
    shapes: dict[int, tuple] = {}
    hooks = [
        s.register_forward_pre_hook(lambda mod, args, i=i: shapes.__setitem__(i, tuple(args[0].shape[1:])))
        for i, s in enumerate(splits)
    ]
    was_training = model.training
    try:
        model.eval()
        ref = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=ref.device, dtype=ref.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [tuple(int(v) for v in shapes[i]) for i in range(len(splits))]


def _split_macs(spec: LayerSpec, ratio: float, shape: tuple, cache: dict) -> int:
    key = (spec.kind, spec.dim, float(ratio), shape, tuple(sorted(spec.extra.items())))
    if key not in cache:
        cache[key] = count(static_split(spec, ratio), shape)["macs"]
    return cache[key]


def build_cost_table(
    model: nn.Module, specs: Sequence[LayerSpec], input_size, reference_ratio: float = 0.25
) -> CostTable:
    """The cost table of ``specs`` for the **static** ``model`` they were taken from (call this
    before :func:`~partialnet.search.supernet.to_supernet` converts it)."""
    splits = list(model.searchable_splits())
    if len(splits) != len(specs):
        raise ValueError(f"the model has {len(splits)} searchable splits, {len(specs)} specs given")
    shape = _input_shape(input_size)
    shapes = split_input_shapes(model, shape)
    total = count(model, shape)["macs"]
    cache: dict = {}
    own = 0
    table: list[list[int | None]] = []
    reference = 0
    for spec, split, s in zip(specs, splits, shapes):
        own += _split_macs(spec, split.ratio, s, cache)
        table.append([None if k is None else _split_macs(spec, r, s, cache) for r, k in zip(spec.candidates, spec.ks)])
        try:
            reference += _split_macs(spec, reference_ratio, s, cache)
        except UserError as e:
            raise UserError(f"{spec.describe()}: the reference ratio {reference_ratio}: {e}") from None
    fixed = total - own
    return CostTable(
        macs=table, fixed=int(fixed), input_size=tuple(shape), reference_macs=int(fixed + reference),
        reference_ratio=float(reference_ratio),
    )
