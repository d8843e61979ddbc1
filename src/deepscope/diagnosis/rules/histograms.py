"""Saturation rows read from activation histograms, for records whose stats rows lack them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["saturation_from_histograms"]


def saturation_from_histograms(histograms: Iterable[Mapping[str, Any]], have: set) -> list[dict]:
    """Saturated fraction of bounded activations from their histograms: the mass in the outer 1% of [lo, hi].

    Used only where the stats rows lack a "saturated" value and the histogram range is that of a bounded
    activation ([-1, 1] for tanh/softsign, [0, 1] for sigmoid).
    """
    out = []
    for h in histograms:
        try:
            if h["quantity"] != "activation" or (h["layer"], h["step"]) in have:
                continue
            lo, hi, counts = float(h["lo"]), float(h["hi"]), [float(c) for c in h["counts"]]
        except (KeyError, TypeError, ValueError):
            continue  # a malformed row says nothing
        total = sum(counts)
        if (lo, hi) not in ((-1.0, 1.0), (0.0, 1.0)) or not counts or not 0 < total < math.inf:
            continue
        edge = max(1, round(0.01 * len(counts)))
        fraction = (sum(counts[:edge]) + sum(counts[-edge:])) / total
        out.append(dict(step=h["step"], source=h["source"], layer=h["layer"], quantity="activation",
                        stat="saturated", value=fraction))
    return out
