"""The benchmarks' per-round ratio (bench/models.py ``round_ratios``, used by train_step.py and
runtimes.py): before[i] / after[i] of runs in the same round, so a drift of the machine's speed
between rounds cancels out of each ratio."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from models import round_ratios  # noqa: E402  (bench/models.py)


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
