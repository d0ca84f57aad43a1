"""Gumbel-Softmax sampling of per-layer split-ratio choices, and the temperature schedule.

Every searchable layer l has logits over the candidate ratios. A *sample* is a weight vector
``w_l`` over the candidates:

- soft:  ``w = softmax((logits + g) / tau)`` with i.i.d. Gumbel(0, 1) noise ``g``;
- hard (straight-through): the forward value is the one-hot of ``argmax(logits + g)`` -- a
  real architecture, exactly -- while the backward pass uses the gradient of the soft sample.
  The one-hot is written as ``onehot + (soft - soft.detach())``, so its value is *exactly*
  0 or 1 (not ``1 - s + s``, which can be off by one ulp).

``argmax(logits + g)`` is distributed as ``Categorical(softmax(logits))`` whatever ``tau``
is; ``tau`` only shapes the soft relaxation (small = near one-hot, large = near uniform).
Candidates that do not exist at a layer are masked with ``-inf`` and never drawn.

Randomness comes from torch's global RNG (or an explicit ``generator``): the training module
re-seeds it at every epoch start, so a resumed search draws the same architectures.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from partialnet.errors import UserError

__all__ = ["SCHEDULES", "masked_logits", "gumbel_noise", "gumbel_softmax", "temperature_at"]

SCHEDULES = ("exponential", "cosine", "linear", "constant")


def masked_logits(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``logits`` with the entries where ``valid`` is False set to ``-inf``."""
    return logits.masked_fill(~valid, float("-inf"))


def gumbel_noise(shape, device=None, dtype=torch.float32, generator: torch.Generator | None = None) -> torch.Tensor:
    """I.i.d. Gumbel(0, 1) samples ``-log(-log(U))`` with ``U`` uniform in (0, 1) (both ends excluded)."""
    u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
    tiny = torch.finfo(dtype).tiny
    u = u.clamp(min=tiny, max=1.0 - torch.finfo(dtype).eps)
    return -torch.log(-torch.log(u))


def gumbel_softmax(
    logits: torch.Tensor,
    tau: float,
    hard: bool = True,
    dim: int = -1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A Gumbel-Softmax sample of ``logits`` (``-inf`` entries are never chosen).

    ``hard=True``: exact one-hot values, straight-through gradient of the soft sample.
    """
    if not tau > 0:
        raise UserError(f"Gumbel-Softmax temperature must be > 0, got {tau}")
    g = gumbel_noise(logits.shape, logits.device, logits.dtype, generator)
    soft = F.softmax((logits + g) / tau, dim=dim)
    if not hard:
        return soft
    index = soft.argmax(dim=dim, keepdim=True)
    onehot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return onehot + (soft - soft.detach())


def temperature_at(progress: float, start: float, end: float, schedule: str = "exponential") -> float:
    """Temperature at ``progress`` in [0, 1] of the search phase (clamped outside).

    exponential: ``start * (end / start) ** t``; cosine: ``end + (start - end) * (1 + cos(pi t)) / 2``;
    linear: ``start + (end - start) * t``; constant: ``start``.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"search.tau_schedule={schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    if not (start > 0 and end > 0):
        raise UserError(f"search.tau_start={start} and search.tau_end={end} must both be > 0 (e.g. 5 and 0.1)")
    t = min(1.0, max(0.0, float(progress)))
    if schedule == "constant":
        return float(start)
    if schedule == "exponential":
        return float(start * (end / start) ** t)
    if schedule == "cosine":
        return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t)))
    return float(start + (end - start) * t)
