"""The benchmarks' interleaving helpers (bench/models.py, used by train_step.py and runtimes.py):
``round_ratios``, before[i] / after[i] of runs in the same round, so a drift of the machine's speed
between rounds cancels out of each ratio; ``alternating``, each round's order, reversed every other
round so that a drift within a round favours no entry."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from models import alternating, round_ratios  # noqa: E402  (bench/models.py)


def test_a_drift_between_rounds_cancels():
    # the machine slows down 3x for the last rounds, which ran more "before" steps than "after" steps
    # by median: the ratio of medians says 3.6x, each round says 1.2x
    after = [1.0, 1.0, 1.0, 3.0, 3.0]
    before = [1.2, 1.2, 3.6, 3.6, 3.6]
    median, lo, hi = round_ratios(before, after)
    assert median == pytest.approx(1.2) and lo == pytest.approx(1.2) and hi == pytest.approx(3.6 - 0.4 * 2.4)


def test_percentiles_of_the_round_ratios():
    after = [1.0] * 11
    before = [1.0 + 0.1 * i for i in range(11)]  # ratios 1.0 ... 2.0
    assert round_ratios(before, after) == pytest.approx((1.5, 1.1, 1.9))
    assert round_ratios([2.0], [1.0]) == (2.0, 2.0, 2.0)


def test_every_other_round_is_reversed():
    assert [alternating(["a", "b", "c"], i) for i in range(3)] == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
