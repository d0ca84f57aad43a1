"""Budget target, constraint loss and the final projection onto the +-tolerance band.

- Target (``search.constraint``): ``macs``: ``search.flops_target`` GMACs, or
  ``search.flops_ratio`` x the MACs of the default (r = 1/4) model when ``flops_target`` is
  null; ``params``: ``params_target`` (M) or ``params_ratio``; ``latency``:
  ``latency_target_ms`` or ``latency_ratio``. A target outside [cheapest, dearest]
  configuration, or one no configuration reaches within the tolerance, is a :class:`UserError`
  raised before training.
- Loss on the expected cost E[F] (MACs, params or ms): ``squared``: lambda * (E/T - 1)^2; ``hinge``:
  lambda * max(0, E/T - 1) (only exceeding the target costs).
- Projection: the most probable configuration (max sum_l log p_l(r_l)) whose exact cost lies
  within ``T * (1 +- tol)``, by dynamic programming over layers on a fine cost grid (a
  multiple-choice knapsack), checked with the exact table. Deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from partialnet.errors import UserError
from partialnet.search.cost_model import CostTable

__all__ = [
    "LOSSES", "BUDGET_KEYS", "flops_loss", "resolve_target", "Projection", "project_to_band", "check_reachable", "argmax_choice",
]

LOSSES = ("squared", "hinge")


def flops_loss(expected: torch.Tensor, target: float, kind: str = "squared", weight: float = 1.0) -> torch.Tensor:
    """Constraint loss on the cost ``expected`` (a scalar tensor, E[F] or the argmax's) for ``target``."""
    rel = expected / float(target) - 1.0
    if kind == "squared":
        return float(weight) * rel * rel
    if kind == "hinge":
        return float(weight) * torch.relu(rel)
    raise UserError(f"search.loss={kind!r} is unknown; choose one of {', '.join(LOSSES)}")


def _g(macs: float) -> str:
    return f"{macs / 1e9:.4g}"


# Per metric: (absolute key, its unit, scale of that unit, ratio key, an example value)
BUDGET_KEYS = {
    "macs": ("flops_target", "GMACs", 1e9, "flops_ratio", 0.25),
    "params": ("params_target", "M params", 1e6, "params_ratio", 3.0),
    "latency": ("latency_target_ms", "ms", 1.0, "latency_ratio", 10.0),
}


def _positive(key: str, value, example, unit: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        of = f" of {unit}" if unit else ""
        raise UserError(f"search.{key}={value!r} must be a positive number{of}, e.g. {example}")
    return float(value)


def resolve_target(cost: CostTable, target: float | None, ratio: float | None) -> float:
    """Target in the table's raw units (MACs, parameters, ms) from the config's absolute budget
    (GMACs, M params, ms) or its ratio to the reference model; a :class:`UserError` when it is
    not a feasible target."""
    metric = cost.metric
    key, unit, scale, ratio_key, example = BUDGET_KEYS[metric]
    size = "x".join(str(s) for s in cost.input_size[1:])
    if target is not None:
        value = _positive(key, target, example, unit) * scale
        what = f"search.{key}={target:g} {unit}"
    elif ratio is not None:
        value = _positive(ratio_key, ratio, 1.0) * cost.reference
        what = (f"search.{ratio_key}={ratio:g} (= {value / scale:.4g} {unit}; the r={cost.reference_ratio:g} model "
                f"has {cost.reference / scale:.4g})")
    else:
        if metric == "macs":
            raise UserError("set search.flops_target (GMACs) or search.flops_ratio (x the r=1/4 model's MACs)")
        raise UserError(f"set search.{key} ({unit}) or search.{ratio_key} (x the r=1/4 model's) "
                        f"for search.constraint={metric}")
    lo, hi = cost.min_value, cost.max_value
    if not lo <= value <= hi:
        if metric == "macs":
            raise UserError(
                f"{what} is not feasible at {size}: the candidates give {_g(lo)} to {_g(hi)} GMACs "
                f"(flops_ratio {lo / cost.reference:.3f} to {hi / cost.reference:.3f}; MACs = the papers' FLOPs); "
                "pick a target in that range or change search.candidates"
            )
        raise UserError(
            f"{what} is not feasible at {size}: the candidates give {lo / scale:.4g} to {hi / scale:.4g} {unit} "
            f"({ratio_key} {lo / cost.reference:.3f} to {hi / cost.reference:.3f}); "
            "pick a target in that range or change search.candidates"
        )
    return value


@dataclass
class Projection:
    choice: list[int]
    macs: float  # the table's metric (MACs for a MAC table)
    in_band: bool
    log_prob: float


def project_to_band(
    cost: CostTable, log_probs: np.ndarray, target: float, tol: float, max_bins: int = 400_000
) -> Projection:
    """The highest-log-probability configuration within ``target * (1 +- tol)`` (the table's
    exact values; the DP grid is only a search aid).

    ``log_probs`` (L, K): -inf (or any value) where a candidate is dropped is ignored. When no
    configuration is found in the band, the one closest to the target is returned with
    ``in_band=False``.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    rows = cost.values
    n_layers = len(rows)
    options = [[c for c, v in enumerate(row) if v is not None] for row in rows]
    base = cost.min_macs
    deltas = [
        [None if rows[l][c] is None else rows[l][c] - min(rows[l][o] for o in options[l]) for c in range(len(rows[l]))]
        for l in range(n_layers)
    ]
    span = sum(max(deltas[l][c] for c in options[l]) for l in range(n_layers))
    lo, hi = target * (1.0 - tol), target * (1.0 + tol)
    floor = 1.0 if cost.exact else 0.0  # integer tables need no grid finer than 1
    quantum = max(tol * target / (8.0 * max(1, n_layers)), span / max_bins, floor, 1e-12)
    nb = int(math.ceil(span / quantum)) + n_layers + 2
    score = np.full(nb, -np.inf)
    exact = np.zeros(nb)
    score[0] = 0.0
    picks = np.zeros((n_layers, nb), dtype=np.int16)
    for l in range(n_layers):
        new_score = np.full(nb, -np.inf)
        new_exact = np.zeros(nb)
        new_pick = np.zeros(nb, dtype=np.int16)
        for c in options[l]:
            q = int(round(deltas[l][c] / quantum))
            s = lp[l, c] if np.isfinite(lp[l, c]) else -1e30
            cand = np.full(nb, -np.inf)
            cand[q:] = score[: nb - q] + s
            cand_exact = np.zeros(nb)
            cand_exact[q:] = exact[: nb - q] + deltas[l][c]
            better = cand > new_score
            new_score = np.where(better, cand, new_score)
            new_exact = np.where(better, cand_exact, new_exact)
            new_pick = np.where(better, c, new_pick)
        score, exact, picks[l] = new_score, new_exact, new_pick

    reach = np.isfinite(score)
    totals = base + exact
    inside = reach & (totals >= lo) & (totals <= hi)
    if inside.any():
        idx = int(np.argmax(np.where(inside, score, -np.inf)))
        in_band = True
    else:
        idx = int(np.argmin(np.where(reach, np.abs(totals - target), np.inf)))
        in_band = False
    choice = [0] * n_layers
    b = idx
    for l in range(n_layers - 1, -1, -1):
        c = int(picks[l, b])
        choice[l] = c
        b -= int(round(deltas[l][c] / quantum))
    macs = cost.macs_of(choice)
    in_band = in_band and lo <= macs <= hi
    log_prob = float(sum(lp[l, c] for l, c in enumerate(choice)))
    return Projection(choice=choice, macs=macs, in_band=in_band, log_prob=log_prob)


def check_reachable(cost: CostTable, target: float, tol: float) -> list[int]:
    """A configuration within ``target * (1 +- tol)``; :class:`UserError` when there is none."""
    proj = project_to_band(cost, np.zeros((cost.num_layers, len(cost.values[0]))), target, tol)
    if not proj.in_band:
        if cost.metric == "macs":
            where, closest = f"{_g(target)} GMACs", _g(proj.macs)
        else:
            where, closest = cost.format(target), cost.format(proj.macs)
        raise UserError(
            f"no configuration of the candidates lands within +-{tol * 100:g} % of the target {where} "
            f"(closest: {closest}); pick another target, more candidates or a larger search.tolerance"
        )
    return proj.choice


def argmax_choice(log_probs: torch.Tensor, valid: torch.Tensor, prefer: Sequence[int]) -> list[int]:
    """Per-layer argmax over the valid candidates; exact ties go to ``prefer[l]``, then the first."""
    lp = log_probs.detach().masked_fill(~valid, float("-inf"))
    best = lp.max(dim=-1).values
    out = []
    for l in range(lp.shape[0]):
        p = int(prefer[l])
        if bool(valid[l, p]) and bool(lp[l, p] == best[l]):
            out.append(p)
        else:
            out.append(int(lp[l].argmax()))
    return out
