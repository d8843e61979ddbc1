"""sigmoid-saturation: the top hidden layer of a sigmoid net is driven to 0 early in training.

Glorot & Bengio (2010), sec. 3.1 and fig. 2: in a sigmoid net with 4 hidden layers and the standard
initialization, the top hidden layer's activations are quickly pushed to 0 -- the lower saturation of the
sigmoid -- while the lower layers keep means around 0.5; tanh, symmetric around 0, shows no such collapse.
Seed 004 (fig. 7.24, via the issue): with N(0, 1) weights a sigmoid net is saturated from the start.

Three runs on Shapeset-3x2 are probed on the first ``n_monitor`` test examples:

- ``sigmoid``: sigmoid, 4 hidden layers, standard init U[-1/sqrt(n), 1/sqrt(n)];
- ``sigmoid_normal1``: the same with W ~ N(0, 1) (measured at initialization);
- ``tanh_n``: tanh with the normalized init, the paper's remedy.

Measured from the probe records: the step of the early window (the first ``window`` fraction of training)
where the sigmoid's top layer has its lowest mean, that mean against the lower layers' there, and the top
layer's saturated fraction (sigmoid outside [0.01, 0.99], tanh |y| > 0.99) there and at initialization. The
``demo`` profile (the paper's central contrast in about three minutes, for ``make demo``) also writes the
HTML report of the runs.
"""

from __future__ import annotations

import numpy as np

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.glorot2010_figures import ProbedRun, probed_runs, shapeset_spec, write_report
from deepscope.plots.common import layer_color

# label -> (activation, init scheme, depth, init kwargs)
RUNS = {
    "sigmoid": ("sigmoid", "standard", 4, {}),
    "sigmoid_normal1": ("sigmoid", "normal", 4, {"std": 1.0}),
    "tanh_n": ("tanh", "glorot_uniform", 4, {}),
}
TITLES = {"sigmoid": "sigmoid, standard init", "sigmoid_normal1": "sigmoid, N(0, 1) init",
          "tanh_n": "tanh, normalized init"}


def run(ctx: Context) -> dict[str, ProbedRun]:
    s, seed = ctx.settings, ctx.seeds[0]
    specs = {label: shapeset_spec(label, seed, activation, init, depth, s, kwargs)
             for label, (activation, init, depth, kwargs) in RUNS.items()}
    return probed_runs(ctx, specs, s["every"], s["n_monitor"])


def early_collapse(r: ProbedRun, window: float) -> dict[str, float]:
    """Where, in the first ``window`` of training, the top layer's mean is lowest: the step, that mean, the
    mean of the lower layers there, and the top layer's saturated fraction there and at initialization."""
    layers = r.layers()
    top, lower = layers[-1], layers[:-1]
    steps, means = r.series("activation", "mean", top)
    early = steps <= steps[0] + window * (steps[-1] - steps[0])
    i = int(np.argmin(np.where(early, means, np.inf)))
    step = int(steps[i])
    return {
        "step": step,
        "top_mean_init": r.value("activation", "mean", top),
        "top_mean": float(means[i]),
        "lower_mean": float(np.mean([r.value("activation", "mean", layer, step) for layer in lower])),
        "top_saturated_init": r.value("activation", "saturated", top),
        "top_saturated": r.value("activation", "saturated", top, step),
        "top_saturated_max": float(np.nanmax(r.series("activation", "saturated", top)[1][early])),
    }


def verdict(runs: dict[str, ProbedRun], ctx: Context) -> Verdict:
    window = ctx.settings["window"]
    sig, tanh = early_collapse(runs["sigmoid"], window), early_collapse(runs["tanh_n"], window)
    normal1 = runs["sigmoid_normal1"]
    saturated_n1 = float(np.mean([normal1.value("activation", "saturated", layer) for layer in normal1.layers()]))
    numbers = {f"sigmoid/{k}": v for k, v in sig.items()} | {f"tanh_n/{k}": v for k, v in tanh.items()}
    numbers["sigmoid_normal1/saturated_init"] = saturated_n1
    for label, r in runs.items():
        numbers[f"{label}/test_error"] = 100 * r.metrics.get("test/error", float("nan"))
    err_sig, err_tanh = numbers["sigmoid/test_error"], numbers["tanh_n/test_error"]
    checks = {
        f"sigmoid: the top layer's mean falls to {sig['top_mean']:.3f} at update {sig['step']} (from "
        f"{sig['top_mean_init']:.2f} at init), below half the lower layers' {sig['lower_mean']:.2f}":
            sig["top_mean"] < 0.5 * sig["lower_mean"] and sig["top_mean"] < 0.5 * sig["top_mean_init"],
        f"sigmoid: the top layer's saturated fraction rises to {sig['top_saturated']:.0%} "
        f"(from {sig['top_saturated_init']:.0%} at init)":
            sig["top_saturated"] > max(0.2, 2 * sig["top_saturated_init"]),
        f"sigmoid with N(0, 1) weights: {saturated_n1:.0%} of the activations saturated at init (> 50%)":
            saturated_n1 > 0.5,
        f"tanh N shows no top-layer collapse: at most {tanh['top_saturated_max']:.0%} saturated in the same window "
        f"(< 20% and below the sigmoid's {sig['top_saturated']:.0%})":
            tanh["top_saturated_max"] < min(0.2, sig["top_saturated"]),
        f"tanh N learns faster: test error {err_tanh:.1f}% < sigmoid {err_sig:.1f}%": err_tanh < err_sig,
    }
    summary = (
        f"sigmoid (standard init), top hidden layer: mean {sig['top_mean_init']:.2f} at init -> "
        f"{sig['top_mean']:.3f} at update {sig['step']} (lower layers {sig['lower_mean']:.2f}), saturated "
        f"{sig['top_saturated_init']:.0%} -> {sig['top_saturated']:.0%}; tanh N top layer saturated at most "
        f"{tanh['top_saturated_max']:.0%}; sigmoid N(0, 1) saturated at init {saturated_n1:.0%}. Test error after "
        f"{ctx.settings['updates']} updates: sigmoid {err_sig:.1f}%, tanh N {err_tanh:.1f}%"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(runs: dict[str, ProbedRun], ctx: Context) -> list:
    fig, axes = new_figure(1, 3, size=(14, 3.8))
    for ax, (label, stat) in zip(axes[0], [("sigmoid", "mean"), ("sigmoid", "saturated"), ("tanh_n", "saturated")],
                                 strict=True):
        r = runs[label]
        for i, layer in enumerate(r.layers()):
            steps, values = r.series("activation", stat, layer)
            ax.plot(steps, values, "-o", markersize=2.5, color=layer_color(i), label=layer)
            if stat == "mean":
                _, std = r.series("activation", "std", layer)
                ax.fill_between(steps, values - std, values + std, color=layer_color(i), alpha=0.1)
        ax.set(title=f"{TITLES[label]}: activation {stat}", xlabel="updates",
               ylabel="mean ± std" if stat == "mean" else "saturated fraction")
        ax.legend(fontsize=7)
    fig.suptitle("Top hidden layer driven to saturation (Glorot & Bengio 2010, fig. 2)")
    paths = [save_figure(fig, ctx.path())]
    if ctx.settings.get("report", True):
        paths.append(write_report(runs, ctx.path("report", ext="html"), "Saturation of the top hidden layer"))
    return paths


_COMMON = {"batch_size": 10, "lr": 0.1, "n_monitor": 300, "value_range": [-1, 1], "window": 0.5}

EXPERIMENT = Experiment(
    name="sigmoid-saturation",
    claim="In a 4-layer sigmoid net with standard init the top hidden layer is driven to 0 (saturated) early in "
    "training while tanh is not; with N(0, 1) weights the sigmoid net is saturated from the start.",
    source="Glorot & Bengio 2010, sec. 3.1 and fig. 2; seed 004 fig. 7.24",
    profiles={
        "tiny": {**_COMMON, "width": 16, "updates": 20, "every": 5, "evals": 2, "n_monitor": 20, "n_valid": 50,
                 "n_test": 50, "report": False},
        "demo": {**_COMMON, "width": 256, "updates": 6000, "every": 200, "evals": 10, "n_valid": 1000,
                 "n_test": 1000},
        "quick": {**_COMMON, "width": 256, "updates": 20_000, "every": 500, "evals": 10, "n_valid": 2000,
                  "n_test": 2000},
        "paper": {**_COMMON, "width": 1000, "updates": 1_000_000, "every": 10_000, "evals": 50, "n_valid": 10_000,
                  "n_test": 10_000},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
