"""Activation figures of Glorot & Bengio (2010): mean and std per layer over training (fig. 2), 98th
percentile and std over training (figs. 3, 10), and activation histograms (figs. 4, 6)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deepscope.plots.figure import histogram_figure, layer_color, new_figure, series
from deepscope.records import layer_order

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["activation_histograms", "activation_mean_std", "activation_percentiles"]

Rows = Sequence[Mapping[str, Any]]


def _error_every(n: int, index: int) -> tuple[int, int]:
    """Bars on about a dozen of ``n`` points, staggered by layer so they do not hide each other."""
    every = max(1, n // 12)
    return index % every, every


def activation_mean_std(stats: Rows) -> Figure | None:
    """Mean (line) and standard deviation (vertical bars) of each layer's activations over training (fig. 2)."""
    means = series(stats, "activation", "mean")
    stds = series(stats, "activation", "std")
    if not means:
        return None
    order = layer_order(stats)
    fig, ax = new_figure(squeeze=True, fixed_margins=True)
    for layer, (steps, mean) in means.items():
        std = dict(zip(*stds.get(layer, ([], [])), strict=True))
        err = [std.get(s, math.nan) for s in steps]
        ax.errorbar(steps, mean, yerr=err, color=layer_color(order[layer]), linewidth=1.2, elinewidth=0.8,
                    capsize=2, errorevery=_error_every(len(steps), order[layer]), label=layer)
    ax.set_xlabel("updates", fontsize=8)
    ax.set_ylabel("activation mean ± std", fontsize=8)
    ax.set_title("Activation mean and std per layer (fig. 2)", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return fig


def activation_percentiles(stats: Rows) -> Figure | None:
    """98th percentile (markers) and standard deviation (lines) of each layer's activations (figs. 3, 10)."""
    p98 = series(stats, "activation", "p98")
    stds = series(stats, "activation", "std")
    if not p98 and not stds:
        return None
    order = layer_order(stats)
    fig, ax = new_figure(squeeze=True, fixed_margins=True)
    for layer in sorted({*p98, *stds}, key=order.__getitem__):
        color = layer_color(order[layer])
        if layer in stds:
            ax.plot(*stds[layer], "-", color=color, linewidth=1.2, label=f"{layer} std")
        if layer in p98:
            ax.plot(*p98[layer], "o", color=color, markersize=3, alpha=0.8, label=f"{layer} p98")
    ax.set_xlabel("updates", fontsize=8)
    ax.set_ylabel("activation value", fontsize=8)
    ax.set_title("98th percentile (markers) and std (lines) (figs. 3, 10)", fontsize=10)
    ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: many entries
    return fig


def activation_histograms(histograms: Rows) -> Figure | None:
    """Normalized activation histograms per layer at initialization and at the end (figs. 4, 6)."""
    return histogram_figure(histograms, "activation", "Activation values (figs. 4, 6)", "activation value")
