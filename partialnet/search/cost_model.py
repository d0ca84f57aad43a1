"""Per-layer cost table ``T[l][r]`` of one metric and the differentiable expected cost E[T].

Metrics (``search.constraint``):

- ``macs`` (default): :func:`partialnet.measure.count` MACs (fvcore, the papers' "FLOPs");
- ``params``: parameters counted by the same :func:`~partialnet.measure.count`, exact as MACs;
- ``latency``: milliseconds from a per-layer lookup table (:mod:`partialnet.search.latency_table`).

MACs and params are built the same way:

- the input shape of every searchable split is recorded at the search resolution;
- ``T[l][r]`` = ``count`` of a fresh ``static_split(spec, r)`` alone, at that input shape
  (everything that depends on r: the 3x3 conv, PAT_ch's statistics conv and norms, PAT_sf's
  LayerNorm, qkv, attention matmuls and projection, its relative-position table);
- ``T_fixed`` = ``count(model)`` minus the splits' own counts at the model's ratios.

For any one-hot choice ``T_fixed + sum_l T[l][r_l]`` equals ``count`` of the static model with
those ratios exactly (tested). ``E[T] = sum_l sum_r p_{l,r} T[l][r] + T_fixed``.

The attribute names of the MAC-only table (``macs``, ``reference_macs``, ``macs_of``,
``min_macs``, ``max_macs``) are kept as aliases of the generic ones (``values``, ``reference``,
``value_of``, ``min_value``, ``max_value``): for another metric they hold that metric's values.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.measure.count import _input_shape, count
from partialnet.search.supernet import LayerSpec, static_split

__all__ = ["METRICS", "CostTable", "build_cost_table", "split_input_shapes", "format_value"]

METRICS = ("macs", "params", "latency")
# How each metric is shown: (scale, unit)
_DISPLAY = {"macs": (1e9, "GMACs"), "params": (1e6, "M params"), "latency": (1.0, "ms")}


def log_key(metric: str) -> tuple[str, float]:
    """(suffix, scale) of the per-step log names: ``search/expected_<suffix>`` = value / scale
    (``gmacs``, ``params_m``, ``latency_ms``)."""
    return {"macs": "gmacs", "params": "params_m", "latency": "latency_ms"}[metric], _DISPLAY[metric][0]


def format_value(metric: str, value: float) -> str:
    """``value`` (raw units: MACs, parameters, ms) in the metric's display unit, e.g. ``'0.2473 GMACs'``."""
    scale, unit = _DISPLAY[metric]
    return f"{value / scale:.4g} {unit}"


class CostTable:
    """``values[l][c]``: cost of layer l at candidate c (None where the candidate is dropped),
    in raw units of ``metric`` (MACs, parameters or ms); ``fixed`` the rest of the model;
    ``reference`` the whole model with every layer at ``reference_ratio`` (the default r = 1/4
    model); ``meta`` what a measured table was measured on (latency)."""

    def __init__(
        self,
        values: list[list[float | None]] | None = None,
        fixed: float = 0,
        input_size: tuple[int, int, int] = (3, 224, 224),
        reference: float | None = None,
        reference_ratio: float = 0.25,
        metric: str = "macs",
        meta: dict | None = None,
        *,
        macs: list[list[int | None]] | None = None,
        reference_macs: float | None = None,
    ):
        if metric not in METRICS:
            raise UserError(f"search.constraint={metric!r} is unknown; choose one of {', '.join(METRICS)}")
        self.values = values if values is not None else macs
        if self.values is None:
            raise TypeError("CostTable needs values (or macs)")
        self.metric = metric
        self.exact = metric != "latency"
        cast = int if self.exact else float
        self.values = [[None if v is None else cast(v) for v in row] for row in self.values]
        self.fixed = cast(fixed)
        self.input_size = tuple(int(s) for s in input_size)
        ref = reference if reference is not None else reference_macs
        self.reference = cast(ref) if ref is not None else None
        self.reference_ratio = float(reference_ratio)
        self.meta = dict(meta or {})

    # ---- generic
    @property
    def num_layers(self) -> int:
        return len(self.values)

    def format(self, value: float) -> str:
        return format_value(self.metric, value)

    def valid(self) -> torch.Tensor:
        return torch.tensor([[v is not None for v in row] for row in self.values], dtype=torch.bool)

    def tensor(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """(L, K) table with 0 where a candidate is dropped."""
        return torch.tensor([[0 if v is None else v for v in row] for row in self.values], dtype=dtype, device=device)

    def value_of(self, choice: Sequence[int]):
        """Cost of the static model with candidate ``choice[l]`` at layer l (exact for macs/params)."""
        if len(choice) != self.num_layers:
            raise ValueError(f"{len(choice)} choices for {self.num_layers} layers")
        total = self.fixed
        for row, c in zip(self.values, choice):
            if row[c] is None:
                raise ValueError(f"candidate {c} is not available at this layer")
            total += row[c]
        return int(total) if self.exact else float(total)

    @property
    def min_value(self):
        return self.fixed + sum(min(v for v in row if v is not None) for row in self.values)

    @property
    def max_value(self):
        return self.fixed + sum(max(v for v in row if v is not None) for row in self.values)

    def expected(self, probs: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """E[T] in raw units (float64, differentiable in ``probs`` (L, K))."""
        t = self.tensor(device=probs.device) if table is None else table
        return (probs.to(torch.float64) * t).sum() + float(self.fixed)

    # ---- names of the MAC-only table, kept for the code that uses them
    @property
    def macs(self) -> list[list]:
        return self.values

    @property
    def reference_macs(self):
        return self.reference

    def macs_of(self, choice: Sequence[int]):
        return self.value_of(choice)

    @property
    def min_macs(self):
        return self.min_value

    @property
    def max_macs(self):
        return self.max_value

    def __repr__(self) -> str:
        return (f"CostTable(metric={self.metric!r}, layers={self.num_layers}, fixed={self.fixed}, "
                f"reference={self.reference}, input_size={self.input_size})")


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


def split_key(spec: LayerSpec, ratio: float, shape: tuple) -> tuple:
    """What a static split's cost depends on: kind, width, ratio, input shape, extra arguments."""
    return (spec.kind, spec.dim, float(ratio), tuple(shape), tuple(sorted(spec.extra.items())))


def _split_counts(spec: LayerSpec, ratio: float, shape: tuple, cache: dict, metric: str) -> dict:
    """The split's counts, with ``metric`` among them (a params table traces nothing: see :func:`count`)."""
    key = split_key(spec, ratio, shape)
    if metric not in cache.get(key, {}):
        cache[key] = count(static_split(spec, ratio), shape, macs=metric == "macs")
    return cache[key]


def build_cost_table(
    model: nn.Module,
    specs: Sequence[LayerSpec],
    input_size,
    reference_ratio: float = 0.25,
    metric: str = "macs",
    cache: dict | None = None,
) -> CostTable:
    """The exact ``macs`` or ``params`` table of ``specs`` for the **static** ``model`` they were
    taken from (call this before :func:`~partialnet.search.supernet.to_supernet` converts it).
    ``cache`` (a dict) shares the per-split counts between the two metrics' tables. Latency
    tables are measured by :func:`partialnet.search.latency_table.measure_latency_table`."""
    if metric not in ("macs", "params"):
        raise ValueError(f"build_cost_table counts macs or params, not {metric!r} (latency: latency_table)")
    cache = {} if cache is None else cache

    def cost_of(spec: LayerSpec, ratio: float, s: tuple) -> int:
        return _split_counts(spec, ratio, s, cache, metric)[metric]

    splits = list(model.searchable_splits())
    if len(splits) != len(specs):
        raise ValueError(f"the model has {len(splits)} searchable splits, {len(specs)} specs given")
    shape = _input_shape(input_size)
    shapes = split_input_shapes(model, shape)
    total = count(model, shape, macs=metric == "macs")[metric]
    own = 0
    table: list[list[int | None]] = []
    reference = 0
    for spec, split, s in zip(specs, splits, shapes):
        own += cost_of(spec, split.ratio, s)
        table.append([None if k is None else cost_of(spec, r, s) for r, k in zip(spec.candidates, spec.ks)])
        try:
            reference += cost_of(spec, reference_ratio, s)
        except UserError as e:
            raise UserError(f"{spec.describe()}: the reference ratio {reference_ratio}: {e}") from None
    fixed = total - own
    return CostTable(
        table, fixed=int(fixed), input_size=tuple(shape), reference=int(fixed + reference),
        reference_ratio=float(reference_ratio), metric=metric,
    )
