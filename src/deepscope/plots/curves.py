"""Learning curves: error during training for several runs (Glorot & Bengio 2010, figs. 11-12), and the
loss curve whose shape tells the learning rate (Varma & Das, ch. 7, section 7.2, fig. 7.6)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deepscope.plots.figure import layer_color, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["error_curves", "loss_curves"]

_ERROR_STYLES = {"test/error": "-", "valid/error": ":", "train/error": "--"}


def _curve(scalars: Sequence[Mapping[str, Any]], name: str) -> tuple[list[int], list[float]]:
    points = sorted((int(r["step"]), float(r["value"])) for r in scalars if r["name"] == name)
    return [s for s, _ in points], [v for _, v in points]


def error_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure | None:
    """Test (solid), validation (dotted) and training (dashed) error in % against updates, one colour per run.

    ``runs`` maps a run's label to its scalar rows ``dict(step, name, value)``.
    """
    fig, ax = new_figure(size=(6.4, 3.6), squeeze=True, fixed_margins=True)
    drawn = False
    for i, (label, scalars) in enumerate(runs.items()):
        for name, style in _ERROR_STYLES.items():
            steps, values = _curve(scalars, name)
            if steps:
                ax.plot(steps, [100 * v for v in values], style, color=layer_color(i), linewidth=1.4,
                        label=f"{label} {name.split('/')[0]}")
                drawn = True
    if not drawn:
        return None
    ax.set_xlabel("updates", fontsize=9)
    ax.set_ylabel("error (%)", fontsize=9)
    ax.set_title("Error during training (figs. 11-12)", fontsize=10)
    ax.legend(fontsize=7, frameon=False, ncols=2)
    return fig


def loss_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure | None:
    """Training loss against updates (log scale when it spans 10x), one colour per run: Varma & Das, ch. 7, fig. 7.6."""
    fig, ax = new_figure(size=(6.4, 3.6), squeeze=True, fixed_margins=True)
    drawn: list[float] = []
    for i, (label, scalars) in enumerate(runs.items()):
        for name, style in (("train/loss", "-"), ("valid/loss", ":")):
            steps, values = _curve(scalars, name)
            values = [v if math.isfinite(v) and v > 0 else math.nan for v in values]
            if steps and any(math.isfinite(v) for v in values):
                ax.plot(steps, values, style, color=layer_color(i), linewidth=1.2, label=f"{label} {name}")
                drawn += [v for v in values if math.isfinite(v)]
    if not drawn:
        return None
    if max(drawn) > 10 * min(drawn):  # a diverging run next to a converging one: log scale shows both
        ax.set_yscale("log")
    ax.set_xlabel("updates", fontsize=9)
    ax.set_ylabel("loss", fontsize=9)
    ax.set_title("Loss during training (learning rate: Varma & Das, ch. 7, fig. 7.6)", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return fig
