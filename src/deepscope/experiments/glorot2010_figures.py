"""glorot2010-figures: the paper's figures 2, 3, 4, 6, 7, 8, 9 and 10, redrawn from probed training runs.

Glorot & Bengio (2010) watch activations and gradients layer by layer on 300 fixed test examples while
deep nets learn Shapeset-3x2 online. Four runs are probed here (every ``every`` updates, monitor = the
first ``n_monitor`` test examples; one seed, the first of ``ctx.seeds``):

- ``sigmoid4``: sigmoid, 4 hidden layers, standard init -- fig. 2 (mean and std of activations);
- ``tanh``: tanh, 5 hidden layers, standard init U[-1/sqrt(n), 1/sqrt(n)] -- figs. 3 (top), 4 (top), and the
  "standard" half of figs. 6-9;
- ``tanh_n``: tanh, normalized init (Var(W) = 2 / (fan_in + fan_out)) -- fig. 10 and the "normalized" half
  of figs. 6-9;
- ``softsign``: softsign, standard init -- figs. 3 (bottom) and 4 (bottom).

The verdict checks what is robust at initialization (fig. 6: with standard init the activations narrow
toward the upper layers; fig. 7: the back-propagated gradients dCost/ds shrink toward the lower layers; the
layer Jacobians' mean singular value is higher with normalized init, ~0.8 vs ~0.5 in the paper). The
figures are drawn with :mod:`deepscope.plots` and gathered, with the diagnosis of each run, in one HTML report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.training import run_spec
from deepscope.parallel import run_many
from deepscope.plots.figure import layer_color
from deepscope.records import Records

# label -> (activation, init scheme, depth)
RUNS = {
    "sigmoid4": ("sigmoid", "standard", 4),
    "tanh": ("tanh", "standard", 5),
    "tanh_n": ("tanh", "glorot_uniform", 5),
    "softsign": ("softsign", "standard", 5),
}


# --- probed runs (shared with sigmoid-saturation) ----------------------------------------------------------


@dataclass
class ProbedRun:
    """A training run watched by a :class:`~deepscope.probe.Probe`: its records and learning curves."""

    label: str
    spec: dict[str, Any]
    run_id: str | None
    status: str
    metrics: dict[str, float]
    stats: list[dict] = field(default_factory=list)
    histograms: list[dict] = field(default_factory=list)
    scalars: list[dict] = field(default_factory=list)

    @cached_property
    def records(self) -> Records:
        return Records(self.stats)

    def value(self, quantity: str, stat: str, layer: str, step: int | None = None, source: str = "monitor") -> float:
        """One recorded statistic at ``step`` (default: the first record), NaN if it was not recorded."""
        return self.records.value(quantity, stat, layer, step, source)

    def series(self, quantity: str, stat: str, layer: str, source: str = "monitor") -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one statistic of one layer over training."""
        steps, values = self.records.series(quantity, stat, source).get(layer, ([], []))
        return np.array(steps, dtype=int), np.array(values, dtype=float)

    def layers(self, quantity: str = "activation") -> list[str]:
        """The probed layers that recorded ``quantity``, in depth order (input first)."""
        return self.records.layers(quantity)


def shapeset_spec(label: str, seed: int, activation: str, init: str, depth: int, settings: dict,
                  init_kwargs: dict | None = None) -> dict:
    """A run spec: an MLP on online Shapeset with plain SGD and cross-entropy, sized by ``settings``."""
    s = settings
    return run_spec(
        label, seed,
        data={"name": "shapeset", "options": {"n_valid": s["n_valid"], "n_test": s["n_test"],
                                              "value_range": s["value_range"], "seed": seed}},
        model={"depth": depth, "width": s["width"], "activation": activation},
        init={"scheme": init, **(init_kwargs or {})},
        optim={"name": "sgd", "lr": s["lr"]},
        train={"updates": s["updates"], "batch_size": s["batch_size"],
               "eval_every": max(1, s["updates"] // s.get("evals", 10))},
    )


def probed_run(label: str, spec: dict, every: int, n_monitor: int, store_root: str | None = None) -> ProbedRun:
    """Train ``spec`` with a Probe recording every ``every`` updates on its first ``n_monitor`` test examples.

    The Jacobians are taken at every record. With ``store_root`` the run and its records also go to that store.
    """
    from deepscope.config import validate_spec
    from deepscope.data import get_dataset
    from deepscope.store import Store
    from deepscope.training.loop import train
    from deepscope.training.probe import TrainerProbe

    spec = validate_spec(spec)
    if spec.data.preprocess:
        raise ValueError(f"probed_run: data.preprocess={spec.data.preprocess!r}; the monitor set is not preprocessed")
    data = get_dataset(spec.data.name, **spec.data.options)
    x, y = (t[:n_monitor] for t in data.test)  # the paper monitors a fixed set of 300 test examples
    probe = TrainerProbe(every, monitor=(x, y), jacobian_every=every)
    scalars: list[dict] = []

    def keep_scalars(ctx) -> None:
        if ctx.event == "eval":
            scalars.extend({"step": ctx.step, "name": k, "value": v} for k, v in ctx.metrics.items())

    store = Store(store_root) if store_root is not None else None
    try:
        result = train(spec, store=store, callbacks=[probe, keep_scalars], quiet=True, dataset=data)
    finally:
        probe.close()  # training raised: remove the hooks all the same
        if store is not None:
            store.close()
    return ProbedRun(label, spec.to_dict(), result.run_id, result.status, dict(result.metrics),
                     probe.records, probe.histograms, scalars)


def probed_runs(ctx: Context, specs: dict[str, dict], every: int, n_monitor: int) -> dict[str, ProbedRun]:
    """Run ``probed_run`` for every ``label -> spec`` on local processes (``ctx.jobs``; Ray is not used here)."""
    root = None if ctx.store_root is None else str(ctx.store_root)
    jobs = [(label, spec, every, n_monitor, root) for label, spec in specs.items()]
    runs, interrupted = run_many(probed_run, jobs, workers=ctx.jobs)
    if interrupted:
        raise KeyboardInterrupt
    ctx.run_ids.extend(r.run_id for r in runs if r.run_id)
    return {r.label: r for r in runs}


# --- the experiment ----------------------------------------------------------------------------------------


def run(ctx: Context) -> dict[str, ProbedRun]:
    s, seed = ctx.settings, ctx.seeds[0]
    specs = {label: shapeset_spec(label, seed, act, init, depth, s) for label, (act, init, depth) in RUNS.items()}
    return probed_runs(ctx, specs, s["every"], s["n_monitor"])


def init_numbers(r: ProbedRun) -> dict[str, float]:
    """At initialization: activation std, gradient std (dCost/ds) and Jacobian mean singular value, top vs bottom."""
    layers = r.layers()
    jac = [r.value("jacobian", "sv_mean", layer) for layer in layers]
    jac = [v for v in jac if np.isfinite(v)]
    return {
        "act_std_bottom": r.value("activation", "std", layers[0]),
        "act_std_top": r.value("activation", "std", layers[-1]),
        "act_std_ratio": r.value("activation", "std", layers[-1]) / r.value("activation", "std", layers[0]),
        "grad_std_ratio": r.value("preact_grad", "std", layers[-1]) / r.value("preact_grad", "std", layers[0]),
        "jacobian_sv_mean": float(np.mean(jac)) if jac else float("nan"),
    }


def verdict(runs: dict[str, ProbedRun], ctx: Context) -> Verdict:
    std, nrm = init_numbers(runs["tanh"]), init_numbers(runs["tanh_n"])
    numbers = {f"tanh/{k}": v for k, v in std.items()} | {f"tanh_n/{k}": v for k, v in nrm.items()}
    for label, r in runs.items():
        numbers[f"{label}/test_error"] = 100 * r.metrics.get("test/error", float("nan"))
    checks = {
        f"fig. 7: at init the top/bottom std of dCost/ds is larger with standard init ({std['grad_std_ratio']:.2f}) "
        f"than normalized ({nrm['grad_std_ratio']:.2f}): gradients shrink toward the lower layers":
            std["grad_std_ratio"] > nrm["grad_std_ratio"],
        f"fig. 6: at init, standard init narrows the activations upward (top/bottom std {std['act_std_ratio']:.2f} "
        f"< normalized {nrm['act_std_ratio']:.2f})": std["act_std_ratio"] < nrm["act_std_ratio"] < np.inf,
        f"Jacobian mean singular value at init: normalized {nrm['jacobian_sv_mean']:.2f} > standard "
        f"{std['jacobian_sv_mean']:.2f} (paper ~0.8 vs ~0.5)": nrm["jacobian_sv_mean"] > std["jacobian_sv_mean"],
    }
    summary = (
        f"tanh at init, standard vs normalized: activation std top/bottom {std['act_std_ratio']:.2f} vs "
        f"{nrm['act_std_ratio']:.2f}; dCost/ds std top/bottom {std['grad_std_ratio']:.2f} vs "
        f"{nrm['grad_std_ratio']:.2f}; Jacobian mean singular value {std['jacobian_sv_mean']:.2f} vs "
        f"{nrm['jacobian_sv_mean']:.2f}. Test error after {ctx.settings['updates']} updates: "
        + ", ".join(f"{label} {numbers[f'{label}/test_error']:.1f}%" for label in runs)
    )
    return Verdict.from_checks(checks, numbers, summary)


# paper figure -> (run label, plotting function name in deepscope.plots, kind of rows)
FIGURES = {
    "fig2-sigmoid4": ("sigmoid4", "activations.activation_mean_std", "stats"),
    "fig3-tanh": ("tanh", "activations.activation_percentiles", "stats"),
    "fig3-softsign": ("softsign", "activations.activation_percentiles", "stats"),
    "fig6-fig4-tanh": ("tanh", "activations.activation_histograms", "histograms"),  # init (fig. 6), end (fig. 4)
    "fig6-tanh_n": ("tanh_n", "activations.activation_histograms", "histograms"),
    "fig4-softsign": ("softsign", "activations.activation_histograms", "histograms"),
    "fig7-tanh": ("tanh", "gradients.backprop_histograms", "histograms"),
    "fig7-tanh_n": ("tanh_n", "gradients.backprop_histograms", "histograms"),
    "fig8-tanh": ("tanh", "gradients.weight_gradient_histograms", "histograms"),
    "fig8-tanh_n": ("tanh_n", "gradients.weight_gradient_histograms", "histograms"),
    "fig9-tanh": ("tanh", "gradients.weight_gradient_intervals", "stats"),
    "fig9-tanh_n": ("tanh_n", "gradients.weight_gradient_intervals", "stats"),
    "fig10-tanh_n": ("tanh_n", "activations.activation_percentiles", "stats"),
    "jacobian-tanh": ("tanh", "jacobian.jacobian_singular_values", "stats"),
    "jacobian-tanh_n": ("tanh_n", "jacobian.jacobian_singular_values", "stats"),
}

_TITLES = {"sigmoid4": "sigmoid, 4 layers, standard init", "tanh": "tanh, standard init",
           "tanh_n": "tanh, normalized init", "softsign": "softsign, standard init"}


def _plot(name: str):
    import importlib

    module, function = name.split(".")
    return getattr(importlib.import_module(f"deepscope.plots.{module}"), function)


def write_report(runs: dict[str, ProbedRun], path, title: str):
    """The HTML report (findings, curves and every figure family, runs side by side) of ``runs``."""
    from deepscope.plots.html import RunData
    from deepscope.workflows.report import report

    data = [RunData(f"{label}: {_TITLES.get(label, label)}", run_id=r.run_id, spec=r.spec, status=r.status,
                    stats=r.stats, histograms=r.histograms, scalars=r.scalars) for label, r in runs.items()]
    return report(data, out_path=path, title=title)


def init_profile(ax, runs: dict[str, ProbedRun], quantity: str, stat: str, title: str) -> None:
    """One statistic per layer at initialization, standard vs normalized tanh (the verdict's evidence)."""
    for i, label in enumerate(("tanh", "tanh_n")):
        r = runs[label]
        layers = [layer for layer in r.layers() if layer in r.layers(quantity)]  # bottom to top
        values = [r.value(quantity, stat, layer) for layer in layers]
        ax.plot(range(1, len(layers) + 1), values, "o-", color=layer_color(i), label=_TITLES[label])
        ax.set_xticks(range(1, len(layers) + 1), layers, fontsize=7)
    ax.set(title=title, xlabel="layer")
    ax.legend(fontsize=7)


def figure(runs: dict[str, ProbedRun], ctx: Context) -> list:
    fig, axes = new_figure(1, 3, size=(13, 3.6))
    init_profile(axes[0, 0], runs, "activation", "std", "activation std (fig. 6)")
    init_profile(axes[0, 1], runs, "preact_grad", "std", "back-propagated dCost/ds std (fig. 7)")
    init_profile(axes[0, 2], runs, "jacobian", "sv_mean", "Jacobian mean singular value")
    axes[0, 1].set_yscale("log")
    fig.suptitle("At initialization: tanh with standard vs normalized init (Glorot & Bengio 2010)")
    paths = [save_figure(fig, ctx.path())]
    if ctx.settings.get("report", True):  # every paper figure as a PNG, and all of them in one HTML report
        for name, (label, plot, rows) in FIGURES.items():
            fig = _plot(plot)(getattr(runs[label], rows))
            if fig is not None:
                fig.suptitle(" -- ".join(t for t in (fig.get_suptitle(), _TITLES[label]) if t), fontsize=9)
                paths.append(save_figure(fig, ctx.path(name)))
        paths.append(write_report(runs, ctx.path("report", ext="html"), "Glorot & Bengio 2010: figures 2-10"))
    return paths


EXPERIMENT = Experiment(
    name="glorot2010-figures",
    claim="With standard init, a deep tanh net's activations narrow and its back-propagated gradients shrink "
    "across layers at initialization, and its layer Jacobians have smaller singular values than with "
    "normalized init.",
    source="Glorot & Bengio 2010, figs. 2-4, 6-10 and sec. 4.2.2",
    profiles={
        "tiny": {"width": 16, "batch_size": 10, "lr": 0.1, "updates": 20, "every": 10, "evals": 2, "n_monitor": 20,
                 "n_valid": 50, "n_test": 50, "value_range": [-1, 1], "report": False},
        "quick": {"width": 256, "batch_size": 10, "lr": 0.1, "updates": 10_000, "every": 500, "evals": 10,
                  "n_monitor": 300, "n_valid": 1000, "n_test": 1000, "value_range": [-1, 1]},
        "paper": {"width": 1000, "batch_size": 10, "lr": 0.1, "updates": 1_000_000, "every": 20_000, "evals": 50,
                  "n_monitor": 300, "n_valid": 10_000, "n_test": 10_000, "value_range": [-1, 1]},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
