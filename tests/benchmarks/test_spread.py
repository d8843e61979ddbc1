"""The cost benchmarks' bootstrap interval (benchmarks/spread.py) against the normal-theory interval of a mean."""

import math
import random
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from spread import interval, verdict  # noqa: E402


def test_equal_ratios_give_a_point():
    pairs = [(1.03 * t, t) for t in (1.0, 2.0, 0.5, 3.0)]
    assert interval(pairs) == pytest.approx((1.03, 1.03))
    assert interval(pairs, "median") == pytest.approx((1.03, 1.03))


def test_the_interval_of_the_totals_matches_the_normal_theory_one():
    rng = random.Random(3)
    pairs = [(1.02 + rng.gauss(0, 0.03), 1.0) for _ in range(400)]  # chunks of equal plain time: totals = mean
    ratios = [a for a, _ in pairs]
    half = 1.645 * statistics.stdev(ratios) / math.sqrt(len(ratios))  # a 90 % interval of the mean, by hand
    low, high = interval(pairs)
    mean = statistics.fmean(ratios)
    assert low == pytest.approx(mean - half, abs=0.25 * half) and high == pytest.approx(mean + half, abs=0.25 * half)


def test_the_verdict_reads_the_whole_interval():
    assert verdict((1.00, 1.019), 1.02) == "ok"
    assert verdict((1.021, 1.05), 1.02) == "OVER"
    assert verdict((1.01, 1.03), 1.02) == "undecided"


def test_an_unknown_statistic_is_named():
    with pytest.raises(ValueError, match="kind='mean'.*totals, median"):
        interval([(1.0, 1.0)], "mean")
