"""sigmoid-saturation: the top hidden layer of a sigmoid net is driven to 0 early in training.

Glorot & Bengio (2010), sec. 3.1 and fig. 2: in a sigmoid net with 4 hidden layers and the standard
initialization, the top hidden layer's activations are quickly pushed to 0 -- the lower saturation of the
sigmoid -- while the lower layers keep means around 0.5; tanh, symmetric around 0, shows no such collapse.
Varma & Das, ch. 7 (sec. 7.8, text by fig. 7.23): N(0, 1) weights drive sigmoid units into saturation from the start.

Three runs on Shapeset-3x2 are probed on the first ``n_monitor`` test examples (one seed, the first of
``ctx.seeds``):

- ``sigmoid``: sigmoid, 4 hidden layers, standard init U[-1/sqrt(n), 1/sqrt(n)];
- ``sigmoid_normal1``: the same with W ~ N(0, 1) (measured at initialization);
- ``tanh_n``: tanh with the normalized init, the paper's remedy.

Measured from the probe records over the early window (the first ``window`` fraction of training): the
first update where the sigmoid's top-layer mean is below a quarter of the lower layers' mean; where it is
lowest, that mean, its 98th percentile against the lower layers' 2nd, and its share of activations on the
sigmoid's flat lower tail (below 0.04, read from the probe's histogram; the registry's stricter "saturated",
outside [0.01, 0.99], is reported too). For tanh: the top layer's largest |mean| and saturated fraction
(|y| > 0.99) in the same window. At initialization: the N(0, 1) sigmoid net's saturated fraction.

The ``demo`` profile (``make demo``) is ``quick`` with fewer updates: the paper's central contrast in about a
minute on 2 cores. Both write the figure and the HTML report of the three runs.
"""

from __future__ import annotations

import numpy as np

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.glorot2010_figures import ProbedRun, probed_runs, shapeset_spec, write_report
from deepscope.plots.figure import layer_color

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


NEAR_ZERO = 0.04  # sigmoid outputs below this sit on its flat lower tail: slope y(1 - y) < 0.04, a sixth of its max


def fraction_below(r: ProbedRun, layer: str, step: int, threshold: float = NEAR_ZERO) -> float:
    """Fraction of ``layer``'s monitor activations below ``threshold`` at ``step``, from the probe's histogram
    (the bins lying wholly below it: exact when ``threshold`` is a bin edge, a lower bound otherwise)."""
    row = next((h for h in r.histograms if h["quantity"] == "activation" and h["layer"] == layer
                and h["step"] == step and h["source"] == "monitor"), None)
    if row is None:
        return float("nan")
    counts = np.asarray(row["counts"], dtype=float)
    upper = row["lo"] + (row["hi"] - row["lo"]) * np.arange(1, len(counts) + 1) / len(counts)
    return float(counts[upper <= threshold + 1e-9].sum() / max(counts.sum(), 1.0))


def early_collapse(r: ProbedRun, window: float) -> dict[str, float]:
    """The top layer over the first ``window`` of training: the first update where its mean is below a quarter
    of the lower layers' mean (``collapse_step``, NaN if never); the update where its mean is lowest (``step``)
    and there its mean, the lower layers' mean, its 98th percentile against the lower layers' lowest 2nd
    percentile, its share of activations below ``NEAR_ZERO`` and its saturated fraction (the activation
    registry's definition); those at initialization; the largest |mean| and saturated fraction in the window."""
    layers = r.layers()
    top, lower = layers[-1], layers[:-1]
    steps, means = r.series("activation", "mean", top)
    _, saturated = r.series("activation", "saturated", top)
    early = steps <= steps[0] + window * (steps[-1] - steps[0])
    lower_means = np.array([np.mean([r.value("activation", "mean", layer, int(t)) for layer in lower]) for t in steps])
    collapsed = np.flatnonzero(early & (means < 0.25 * lower_means))
    i = int(np.argmin(np.where(early, means, np.inf)))
    step, first = int(steps[i]), int(steps[0])
    return {
        "collapse_step": float(steps[collapsed[0]]) if len(collapsed) else float("nan"),
        "step": step,
        "top_mean_init": float(means[0]),
        "top_mean": float(means[i]),
        "lower_mean": float(lower_means[i]),
        "top_p98": r.value("activation", "p98", top, step),
        "lower_p2": float(np.min([r.value("activation", "p2", layer, step) for layer in lower])),
        "top_near_zero_init": fraction_below(r, top, first),
        "top_near_zero": fraction_below(r, top, step),
        "top_saturated_init": float(saturated[0]),
        "top_saturated": float(saturated[i]),
        "top_saturated_max": float(np.nanmax(saturated[early])),
        "top_abs_mean_max": float(np.max(np.abs(means[early]))),
    }


SIGMOID_NUMBERS = ("collapse_step", "step", "top_mean_init", "top_mean", "lower_mean", "top_p98", "lower_p2",
                   "top_near_zero_init", "top_near_zero", "top_saturated_init", "top_saturated")
TANH_NUMBERS = ("top_abs_mean_max", "top_saturated_init", "top_saturated_max")


def verdict(runs: dict[str, ProbedRun], ctx: Context) -> Verdict:
    window, updates = ctx.settings["window"], ctx.settings["updates"]
    sig, tanh = early_collapse(runs["sigmoid"], window), early_collapse(runs["tanh_n"], window)
    normal1 = runs["sigmoid_normal1"]
    saturated_n1 = float(np.mean([normal1.value("activation", "saturated", layer) for layer in normal1.layers()]))
    numbers = {f"sigmoid/{k}": sig[k] for k in SIGMOID_NUMBERS} | {f"tanh_n/{k}": tanh[k] for k in TANH_NUMBERS}
    numbers["sigmoid_normal1/saturated_init"] = saturated_n1
    for label, r in runs.items():
        numbers[f"{label}/test_error"] = 100 * r.metrics.get("test/error", float("nan"))
    err_sig, err_tanh = numbers["sigmoid/test_error"], numbers["tanh_n/test_error"]
    collapse = "never" if np.isnan(sig["collapse_step"]) else f"by update {sig['collapse_step']:.0f}"
    checks = {
        f"sigmoid: early in training ({collapse} of {updates}) the top layer's mean falls below a quarter of the "
        f"lower layers'; it reaches {sig['top_mean']:.3f} (from {sig['top_mean_init']:.2f} at init; lower layers "
        f"{sig['lower_mean']:.2f})": sig["collapse_step"] <= window * updates
                                     and sig["top_mean"] < 0.25 * sig["top_mean_init"],
        f"sigmoid: the whole top layer is pushed below the layers beneath: its 98th percentile {sig['top_p98']:.3f} "
        f"< their 2nd percentile {sig['lower_p2']:.3f}": sig["top_p98"] < sig["lower_p2"],
        f"sigmoid: the top layer's share of activations on the flat tail below {NEAR_ZERO} rises from "
        f"{sig['top_near_zero_init']:.0%} to {sig['top_near_zero']:.0%} (> 50%)":
            sig["top_near_zero"] > max(0.5, sig["top_near_zero_init"]),
        f"sigmoid with N(0, 1) weights: {saturated_n1:.0%} of the activations saturated at init (> 50%)":
            saturated_n1 > 0.5,
        f"tanh N: no top-layer collapse, |mean| <= {tanh['top_abs_mean_max']:.2f} and at most "
        f"{tanh['top_saturated_max']:.0%} saturated in the same window (< 0.2, < 20%)":
            tanh["top_abs_mean_max"] < 0.2 and tanh["top_saturated_max"] < 0.2,
        f"tanh N learns faster: test error {err_tanh:.1f}% < sigmoid {err_sig:.1f}%": err_tanh < err_sig,
    }
    summary = (
        f"sigmoid (standard init), top hidden layer: mean {sig['top_mean_init']:.2f} at init -> "
        f"{sig['top_mean']:.3f} at update {sig['step']} (lower layers {sig['lower_mean']:.2f}), below {NEAR_ZERO}: "
        f"{sig['top_near_zero_init']:.0%} -> {sig['top_near_zero']:.0%}, saturated (< 0.01) "
        f"{sig['top_saturated_init']:.0%} -> {sig['top_saturated']:.0%}; tanh N top layer |mean| <= "
        f"{tanh['top_abs_mean_max']:.2f}, saturated <= {tanh['top_saturated_max']:.0%}; sigmoid N(0, 1) saturated "
        f"at init {saturated_n1:.0%}. Test error after {updates} updates: sigmoid {err_sig:.1f}%, "
        f"tanh N {err_tanh:.1f}%"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(runs: dict[str, ProbedRun], ctx: Context) -> list:
    fig, axes = new_figure(1, 3, size=(14, 3.8))
    for ax, label in zip(axes[0, :2], ("sigmoid", "tanh_n"), strict=True):  # fig. 2
        r = runs[label]
        for i, layer in enumerate(r.layers()):
            steps, mean = r.series("activation", "mean", layer)
            _, std = r.series("activation", "std", layer)
            ax.plot(steps, mean, "-o", markersize=2.5, color=layer_color(i), label=layer)
            ax.fill_between(steps, mean - std, mean + std, color=layer_color(i), alpha=0.1)
        ax.set(title=f"{TITLES[label]}: activation mean ± std", xlabel="updates")
        ax.legend(fontsize=7)
    ax = axes[0, 2]
    for label, style in (("sigmoid", "-"), ("tanh_n", "--")):
        r = runs[label]
        top = r.layers()[-1]
        steps, saturated = r.series("activation", "saturated", top)
        ax.plot(steps, saturated, style, color="#d62728", label=f"{TITLES[label]}: saturated")
        if label == "sigmoid":
            ax.plot(steps, [fraction_below(r, top, int(t)) for t in steps], style, color="#1f77b4",
                    label=f"{TITLES[label]}: below {NEAR_ZERO}")
    ax.set(title="top hidden layer", xlabel="updates", ylabel="fraction of activations", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    fig.suptitle("The top hidden layer of a sigmoid net is driven to 0 (Glorot & Bengio 2010, fig. 2)")
    paths = [save_figure(fig, ctx.path())]
    if ctx.settings.get("report", True):
        paths.append(write_report(runs, ctx.path("report", ext="html"), "Saturation of the top hidden layer"))
    return paths


_COMMON = {"batch_size": 10, "lr": 0.1, "n_monitor": 300, "value_range": [-1, 1], "window": 0.5}

EXPERIMENT = Experiment(
    name="sigmoid-saturation",
    claim="In a 4-layer sigmoid net with standard init the top hidden layer is driven to 0 (saturated) early in "
    "training while tanh is not; with N(0, 1) weights the sigmoid net is saturated from the start.",
    source="Glorot & Bengio 2010, sec. 3.1 and fig. 2; Varma & Das, ch. 7, sec. 7.8",
    profiles={
        "tiny": {**_COMMON, "width": 16, "updates": 20, "every": 5, "evals": 2, "n_monitor": 20, "n_valid": 50,
                 "n_test": 50, "report": False},
        "demo": {**_COMMON, "width": 256, "updates": 16_000, "every": 400, "evals": 16, "n_valid": 1000,
                 "n_test": 1000},
        "quick": {**_COMMON, "width": 256, "updates": 30_000, "every": 1000, "evals": 15, "n_valid": 2000,
                  "n_test": 2000},
        "paper": {**_COMMON, "width": 1000, "updates": 1_000_000, "every": 10_000, "evals": 50, "n_valid": 10_000,
                  "n_test": 10_000},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
