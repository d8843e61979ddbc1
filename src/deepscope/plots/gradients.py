"""Gradient figures of Glorot & Bengio (2010): back-propagated gradient histograms (fig. 7), weight-gradient
histograms (fig. 8) and the standard-deviation intervals of weight gradients over training (fig. 9)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deepscope.plots.figure import histogram_figure, layer_color, new_figure, series
from deepscope.records import layer_order

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["backprop_histograms", "weight_gradient_histograms", "weight_gradient_intervals"]

Rows = Sequence[Mapping[str, Any]]


def backprop_histograms(histograms: Rows) -> Figure | None:
    """Normalized histograms of dCost/ds (s = pre-activation) per layer, first and last record (fig. 7)."""
    return histogram_figure(histograms, "preact_grad", "Back-propagated gradients dCost/ds (fig. 7)", "gradient")


def weight_gradient_histograms(histograms: Rows) -> Figure | None:
    """Normalized histograms of dCost/dW per layer, first and last record (fig. 8)."""
    return histogram_figure(histograms, "weight_grad", "Weight gradients dCost/dW (fig. 8)", "gradient")


def weight_gradient_intervals(stats: Rows) -> Figure | None:
    """Mean ± one standard deviation of each layer's weight gradients at every record (fig. 9).

    Layers are drawn side by side around each recorded update, lowest layer left.
    """
    means = series(stats, "weight_grad", "mean")
    stds = series(stats, "weight_grad", "std")
    layers = [layer for layer in stds if layer in means]
    if not layers:
        return None
    fig, ax = new_figure(squeeze=True, fixed_margins=True)
    all_steps = sorted({s for layer in layers for s in stds[layer][0]})
    gap = (all_steps[-1] - all_steps[0]) / max(1, len(all_steps) - 1) if len(all_steps) > 1 else 1.0
    order = layer_order(stats)
    for i, layer in enumerate(layers):
        mean = dict(zip(*means[layer], strict=True))
        steps, std = stds[layer]
        offset = (i - (len(layers) - 1) / 2) * 0.6 * gap / max(1, len(layers))
        ax.errorbar([s + offset for s in steps], [mean.get(s, 0.0) for s in steps], yerr=std, fmt="none",
                    ecolor=layer_color(order[layer]), elinewidth=1.6, capsize=2, label=layer)
    ax.set_xlabel("updates", fontsize=8)
    ax.set_ylabel("dCost/dW mean ± std", fontsize=8)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title("Weight-gradient std intervals over training (fig. 9)", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return fig
