"""Gumbel-Softmax sampling statistics, straight-through behaviour and the temperature schedule."""
from __future__ import annotations

import math

import pytest
import torch

from partialnet.errors import UserError
from partialnet.search.gumbel import gumbel_softmax, masked_logits, temperature_at


def test_hard_sample_frequencies_match_softmax_probs():
    torch.manual_seed(0)
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    probs = logits.softmax(-1)
    n = 40_000
    for tau in (0.2, 1.0, 5.0):  # the categorical law of the hard sample does not depend on tau
        w = gumbel_softmax(logits.expand(n, 4), tau, hard=True)
        freq = w.sum(0) / n
        # 4 standard errors of a binomial proportion
        se = torch.sqrt(probs * (1 - probs) / n)
        assert torch.all((freq - probs).abs() < 4 * se), (tau, freq, probs)


def test_hard_sample_is_exactly_one_hot_with_soft_gradient():
    torch.manual_seed(1)
    logits = torch.randn(6, 4, requires_grad=True)
    w = gumbel_softmax(logits, 0.7, hard=True)
    assert set(w.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(w.detach().sum(-1), torch.ones(6))
    (w * torch.arange(4.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_temperature_shapes_the_soft_sample():
    torch.manual_seed(2)
    logits = torch.zeros(20_000, 4)
    cold = gumbel_softmax(logits, 0.05, hard=False)
    hot = gumbel_softmax(logits, 50.0, hard=False)
    assert cold.max(-1).values.mean() > 0.95  # nearly one-hot
    assert hot.max(-1).values.mean() < 0.30  # nearly uniform (0.25)

    def entropy(p):
        return -(p * p.clamp_min(1e-12).log()).sum(-1).mean()

    assert entropy(hot) > 0.99 * math.log(4) > entropy(cold) * 5


def test_masked_candidates_are_never_drawn():
    torch.manual_seed(3)
    valid = torch.tensor([[True, True, False, True]])
    w = gumbel_softmax(masked_logits(torch.zeros(5000, 4), valid.expand(5000, 4)), 1.0, hard=True)
    assert w[:, 2].sum() == 0 and torch.all(w.sum(-1) == 1)
    soft = gumbel_softmax(masked_logits(torch.zeros(10, 4), valid.expand(10, 4)), 1.0, hard=False)
    assert torch.all(soft[:, 2] == 0) and torch.isfinite(soft).all()


@pytest.mark.parametrize("schedule", ["exponential", "cosine", "linear"])
def test_temperature_schedule_endpoints_and_monotone(schedule):
    taus = [temperature_at(t / 20, 5.0, 0.1, schedule) for t in range(21)]
    assert taus[0] == pytest.approx(5.0) and taus[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    assert temperature_at(-1, 5.0, 0.1, schedule) == pytest.approx(5.0)  # clamped
    assert temperature_at(2, 5.0, 0.1, schedule) == pytest.approx(0.1)
    assert temperature_at(0.5, 5.0, 0.1, "constant") == 5.0
    if schedule == "exponential":
        assert taus[10] == pytest.approx(math.sqrt(5.0 * 0.1))


def test_bad_temperature_settings_are_user_errors():
    with pytest.raises(UserError, match="tau_schedule"):
        temperature_at(0.5, 5.0, 0.1, "step")
    with pytest.raises(UserError, match="> 0"):
        temperature_at(0.5, 5.0, 0.0)
    with pytest.raises(UserError, match="temperature"):
        gumbel_softmax(torch.zeros(3), 0.0)
