"""Singular values of each layer's Jacobian dz^{i+1}/dz^i (Glorot & Bengio 2010, sec. 4.2.2: about 0.8 on
average with normalized initialization, 0.5 with standard initialization)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deepscope.plots.figure import layer_color, new_figure, series
from deepscope.records import layer_order

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["jacobian_singular_values"]


def jacobian_singular_values(stats: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Mean singular value per layer (line) with the min-max range (bars), at the first and the last record.

    Lanczos estimates carry no minimum: their bars run from the mean to the maximum, and the title says so.
    """
    sv_mean = series(stats, "jacobian", "sv_mean")
    if not sv_mean:
        return None
    sv_min = series(stats, "jacobian", "sv_min")
    sv_max = series(stats, "jacobian", "sv_max")
    order = layer_order(stats)
    layers = sorted(sv_mean, key=order.__getitem__)
    steps = sorted({s for steps, _ in sv_mean.values() for s in steps})
    fig, ax = new_figure(squeeze=True, fixed_margins=True)
    for k, step in enumerate([steps[0]] if len(steps) == 1 else [steps[0], steps[-1]]):
        xs, mean, low, high = [], [], [], []
        for x, layer in enumerate(layers):
            at = dict(zip(*sv_mean[layer], strict=True))
            if step not in at:
                continue
            lo = dict(zip(*sv_min.get(layer, ([], [])), strict=True)).get(step, at[step])
            hi = dict(zip(*sv_max.get(layer, ([], [])), strict=True)).get(step, at[step])
            xs.append(x + 0.12 * k)
            mean.append(at[step])
            low.append(at[step] - lo)
            high.append(hi - at[step])
        ax.errorbar(xs, mean, yerr=[low, high], fmt="-o", markersize=4, capsize=3, linewidth=1.2,
                    color=layer_color(k), label="initialization" if step == 0 else f"update {step}")
    ax.axhline(1.0, color="#555", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(layers)), layers, fontsize=8, rotation=30 if len(layers) > 6 else 0)
    ax.set_ylabel("singular value", fontsize=8)
    span = "min-max" if sv_min else "bar up to the max"
    ax.set_title(f"Layer Jacobian singular values (mean, {span})", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return fig
