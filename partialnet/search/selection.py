"""The search's final pick scored by its own supernet (``search.final_selection=supernet``).

By default the search exports the argmax of the learned distribution. On CIFAR-10 the argmax
was not even the architecture the search's shared weights rated best: a uniform model at the
same budget scored higher on them, and retrained better. With ``final_selection=supernet`` the
search instead scores a short list of architectures that all meet the budget (within
``search.tolerance``):

* the argmax (or its projection onto the budget band),
* every uniform architecture in the band (one candidate everywhere: each split ratio, and in
  ``split+mlp`` each pair of split ratio and MLP ratio; a row without that candidate takes its
  nearest valid one),
* ``search.selection_samples`` distinct architectures drawn from the learned distribution,

each as its static model with the supernet's weights (:func:`extract_static`), BatchNorm
statistics re-estimated on ``search.selection_calib_batches`` training batches, top-1 on (up to
``search.selection_batches`` batches of) the search's own validation split; and exports the best.
Ties keep the earlier candidate, so the argmax wins a tie. ``selection.csv`` in the run dir lists
every candidate with its cost and score.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from partialnet.errors import UserError
from partialnet.search.cost_model import CostTable
from partialnet.search.gumbel import masked_logits
from partialnet.search.supernet import LayerSpec, extract_static

__all__ = ["Candidate", "selection_candidates", "uniform_choices", "score_choice", "pick_best", "write_selection",
           "standard_error"]

SELECTIONS = ("argmax", "supernet")


@dataclass
class Candidate:
    source: str  # 'argmax' | 'uniform ...' | 'sample N'
    choice: list[int]
    value: float  # the constraint's metric (MACs, params or ms)
    score: float = math.nan  # top-1 % on the search's validation split


def _nearest_valid(spec: LayerSpec, value: float) -> int:
    valid = [(abs(float(c) - value), i) for i, c in enumerate(spec.candidates) if spec.ks[i] is not None]
    return min(valid)[1]


def uniform_choices(specs: Sequence[LayerSpec]) -> list[tuple[str, list[int]]]:
    """One candidate value everywhere: each split ratio and, with MLP rows, each (split, MLP) pair."""
    split_values = sorted({float(c) for s in specs if s.kind != "mlp" for c, k in zip(s.candidates, s.ks) if k is not None})
    mlp_values = sorted({float(c) for s in specs if s.kind == "mlp" for c, k in zip(s.candidates, s.ks) if k is not None})
    out = []
    for r in split_values:
        for e in mlp_values or [None]:
            choice = [_nearest_valid(s, e if s.kind == "mlp" else r) for s in specs]
            out.append((f"uniform r={r:g}" + (f", MLP {e:g}" if e is not None else ""), choice))
    return out


def selection_candidates(cost: CostTable, specs: Sequence[LayerSpec], logits: torch.Tensor, valid: torch.Tensor,
                         final_choice: Sequence[int], target: float, tol: float, samples: int,
                         seed: int = 0, max_draws: int = 20_000) -> list[Candidate]:
    """The argmax (``final_choice``), the uniform architectures within ``target * (1 +- tol)`` and up
    to ``samples`` distinct draws from the learned distribution within the same band; no repeats."""
    def in_band(choice) -> bool:
        return abs(float(cost.value_of(choice)) / target - 1.0) <= tol

    out: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()

    def add(source: str, choice: Sequence[int]) -> None:
        key = tuple(int(c) for c in choice)
        if key not in seen:
            seen.add(key)
            out.append(Candidate(source, list(key), float(cost.value_of(key))))

    add("argmax", final_choice)
    for label, choice in uniform_choices(specs):
        if in_band(choice):
            add(label, choice)
    probs = F.softmax(masked_logits(logits.detach().float().cpu(), valid.cpu()), dim=-1)
    gen = torch.Generator().manual_seed(int(seed))
    kept = 0
    for _ in range(max_draws):
        if kept >= samples:
            break
        choice = torch.multinomial(probs, 1, generator=gen).squeeze(1).tolist()
        if in_band(choice) and tuple(choice) not in seen:
            kept += 1
            add(f"sample {kept}", choice)
    return out


def _images(batch):
    """The images of a training or validation batch: ``(x, y)``, or a bilevel ``(x_w, y_w, x_a, y_a)``."""
    return batch[0]


@torch.no_grad()
def score_choice(supernet: nn.Module, specs: Sequence[LayerSpec], choice: Sequence[int], calib: Iterable,
                 score: Iterable, calib_batches: int, score_batches: int | None, device=None) -> tuple[float, int]:
    """(top-1 %, images scored) of ``choice``'s static model with the supernet's weights: BatchNorm
    statistics re-estimated (cumulative average) on ``calib_batches`` batches of ``calib``, then
    scored on up to ``score_batches`` batches of ``score`` (all when None)."""
    device = device or "cpu"
    static = extract_static(supernet, specs, list(choice)).to(device)
    for m in static.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    static.train()
    for i, batch in enumerate(calib):
        if i >= calib_batches:
            break
        static(_images(batch).to(device))
    static.eval()
    correct = total = 0
    for i, (x, y) in enumerate(score):
        if score_batches is not None and i >= score_batches:
            break
        y = y.to(device)
        correct += int((static(x.to(device)).argmax(1) == y).sum())
        total += int(y.numel())
    if total == 0:
        raise UserError("search.final_selection=supernet found no validation batch to score the candidates on; "
                        "give the data a validation split or use search.final_selection=argmax")
    return 100.0 * correct / total, total


def standard_error(top1: float, images: int) -> float:
    """Binomial standard error (percentage points) of a top-1 of ``top1`` % measured on ``images``
    images: how far two candidates' scores may differ by the choice of images alone."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / max(images, 1))


def pick_best(candidates: list[Candidate], scorer: Callable[[Candidate], float]) -> Candidate:
    """Scores every candidate (``scorer``) and returns the best; a tie keeps the earlier one."""
    best = None
    for c in candidates:
        c.score = float(scorer(c))
        if best is None or c.score > best.score:
            best = c
    return best


def write_selection(path: Path, candidates: Sequence[Candidate], specs: Sequence[LayerSpec], chosen: Candidate,
                    metric: str) -> Path:
    """``selection.csv``: source, chosen, the constraint's value, score, per-row candidate values."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "chosen", metric, "val_top1", *[s.name + (":mlp" if s.kind == "mlp" else "") for s in specs]])
        for c in candidates:
            w.writerow([c.source, int(c is chosen), c.value, f"{c.score:.4f}",
                        *[f"{float(s.candidates[i]):g}" for s, i in zip(specs, c.choice)]])
    return path
