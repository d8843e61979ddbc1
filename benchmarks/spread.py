"""How far a cost ratio measured on a shared machine can be trusted: a bootstrap interval over the chunk pairs.

The cost benchmarks time chunks of the same loop with and without deepscope, in pairs, in ABBA order. One run's
ratio moves by several points from run to run on a machine other jobs share, so a verdict against a budget of 1-3 %
means something only with its spread. :func:`interval` resamples the pairs (Efron 1979, "Bootstrap methods: another
look at the jackknife", Annals of Statistics 7) and gives the central ``level`` interval of the statistic:
``"totals"``, the ratio of the summed times (what a whole run pays), or ``"median"``, the median of the per-pair
ratios (what a burst of load on one chunk does not move). :func:`verdict` reads the interval against a target:
``ok`` when all of it is under, ``OVER`` when all of it is above, ``undecided`` when the target lies inside.
"""

from __future__ import annotations

import random
import statistics

__all__ = ["interval", "verdict"]


def _statistic(pairs: list[tuple[float, float]], kind: str) -> float:
    if kind == "totals":
        return sum(a for a, _ in pairs) / sum(b for _, b in pairs)
    return statistics.median(a / b for a, b in pairs)


def interval(pairs: list[tuple[float, float]], kind: str = "totals", level: float = 0.9, draws: int = 2000,
             seed: int = 0) -> tuple[float, float]:
    """The bootstrap ``level`` interval of the ratio ``kind`` ("totals" or "median") over ``(with, without)`` pairs."""
    if kind not in ("totals", "median"):
        raise ValueError(f"interval: kind={kind!r} is not allowed; choose one of: totals, median")
    rng = random.Random(seed)
    n = len(pairs)
    values = sorted(_statistic([pairs[rng.randrange(n)] for _ in range(n)], kind) for _ in range(draws))
    tail = (1 - level) / 2
    return values[int(tail * (draws - 1))], values[int((1 - tail) * (draws - 1))]


def verdict(bounds: tuple[float, float], target: float) -> str:
    """``ok`` (the whole interval at or under ``target``), ``OVER`` (all of it above) or ``undecided``."""
    low, high = bounds
    return "ok" if high <= target else "OVER" if low > target else "undecided"
