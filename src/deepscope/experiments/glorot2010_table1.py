"""glorot2010-table1: test error of 5-hidden-layer nets by activation and initialization (Table 1).

Glorot & Bengio (2010), Table 1: deep nets with 5 hidden layers, cross-entropy, plain SGD on mini-batches
of 10, the learning rate tuned on validation error for each model. On Shapeset-3x2, learned online, the
sigmoid net is by far the worst (82.61 %) and the normalized initialization ("N", Var(W) =
2 / (fan_in + fan_out)) helps tanh most (27.15 % -> 15.60 %).

Each model is trained for every learning rate of its grid and every seed; as in the paper the learning
rate is chosen on the validation error (each run stopped at its best evaluation, averaged over seeds) and
the test error there is reported beside the paper's. MNIST and CIFAR-10 columns are added when their files are
given (``mnist_root`` / ``cifar10_root`` settings, or the environment variables ``DEEPSCOPE_MNIST_ROOT`` /
``DEEPSCOPE_CIFAR10_ROOT``: directories with the IDX files / the python batches); without them they are
skipped with a note. The verdict checks the Shapeset ordering only: sigmoid worst, Tanh N below Tanh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.training import TrainedRun, run_spec, train_runs

# label -> (slug for number keys, activation, init scheme). No "N" = the standard U[-1/sqrt(n), 1/sqrt(n)].
MODELS = {
    "Softsign": ("softsign", "softsign", "standard"),
    "Softsign N": ("softsign_n", "softsign", "glorot_uniform"),
    "Tanh": ("tanh", "tanh", "standard"),
    "Tanh N": ("tanh_n", "tanh", "glorot_uniform"),
    "Sigmoid": ("sigmoid", "sigmoid", "standard"),
}

# Table 1 of the paper, test error in %.
PAPER = {
    "shapeset": {"Softsign": 16.27, "Softsign N": 16.06, "Tanh": 27.15, "Tanh N": 15.60, "Sigmoid": 82.61},
    "mnist": {"Softsign": 1.64, "Softsign N": 1.72, "Tanh": 1.76, "Tanh N": 1.64, "Sigmoid": 2.21},
    "cifar10": {"Softsign": 55.78, "Softsign N": 53.8, "Tanh": 55.9, "Tanh N": 52.92, "Sigmoid": 57.28},
}
DATASET_LABELS = {"shapeset": "Shapeset-3x2", "mnist": "MNIST", "cifar10": "CIFAR-10"}
FILE_DATASETS = {"mnist": "DEEPSCOPE_MNIST_ROOT", "cifar10": "DEEPSCOPE_CIFAR10_ROOT"}


def data_roots(settings: dict) -> dict[str, str]:
    """The file datasets whose directory was given (setting ``<name>_root``, else its environment variable)."""
    roots = {}
    for name, variable in FILE_DATASETS.items():
        root = settings.get(f"{name}_root") or os.environ.get(variable)
        if root:
            roots[name] = str(root)
    return roots


def _data(dataset: str, seed: int, settings: dict, roots: dict[str, str]) -> dict:
    if dataset == "shapeset":
        options = {"n_valid": settings["n_valid"], "n_test": settings["n_test"],
                   "value_range": settings["value_range"], "seed": seed}
        return {"name": "shapeset", "options": options}
    return {"name": dataset, "options": {"root": roots[dataset], "seed": seed}}


def grid(ctx: Context) -> list[dict]:
    """One run per (dataset, model, learning rate, seed), in that order."""
    s = ctx.settings
    roots = data_roots(s)
    specs = []
    for dataset in ["shapeset", *roots]:
        for slug, activation, init in MODELS.values():
            for lr in s["lrs"][slug]:
                for seed in ctx.seeds:
                    specs.append(run_spec(
                        f"table1-{dataset}-{slug}-lr{lr:g}", seed,
                        data=_data(dataset, seed, s, roots),
                        model={"depth": s["depth"], "width": s["width"], "activation": activation},
                        init={"scheme": init},
                        optim={"name": "sgd", "lr": lr},
                        train={"updates": s["updates"], "batch_size": s["batch_size"],
                               "eval_every": max(1, s["updates"] // s["evals"])},
                    ))
    return specs


@dataclass
class Cell:
    """One model on one dataset: the chosen learning rate and, per seed, the chosen stopping point and its errors."""

    dataset: str
    model: str
    lr: float
    valid_error: float  # mean over seeds, in %
    test_errors: list[float]  # per seed, in %, at the evaluation with the lowest validation error
    steps: list[int]  # per seed, the update of that evaluation
    runs: list[TrainedRun]
    valid_by_lr: dict[float, float]

    @property
    def test_error(self) -> float:
        return float(np.mean(self.test_errors))


def best_point(run: TrainedRun) -> tuple[int, float, float]:
    """(update, validation error, test error) at the evaluation with the lowest validation error; errors are
    infinite when the run diverged. Online SGD with a fixed learning rate wobbles from one evaluation to the
    next, so the last one alone is a noisy pick."""
    steps, valid = run.curve("valid/error")
    test_steps, test = run.curve("test/error")
    if run.status == "diverged" or len(valid) == 0:
        return run.step, float("inf"), float("inf")
    i = int(np.argmin(valid))
    return int(steps[i]), float(valid[i]), float(test[list(test_steps).index(steps[i])])


def choose(runs: list[TrainedRun], dataset: str, model: str) -> Cell:
    """Pick the learning rate (and each seed's stopping point) on the validation error, as the paper did: the
    learning rate whose runs reach the lowest validation error, averaged over seeds."""
    _, activation, init = MODELS[model]
    mine = [r for r in runs if r.spec["data"]["name"] == dataset
            and (r.spec["model"]["activation"], r.spec["init"]["scheme"]) == (activation, init)]
    by_lr: dict[float, list[TrainedRun]] = {}
    for r in mine:
        by_lr.setdefault(float(r.spec["optim"]["lr"]), []).append(r)
    points = {lr: [best_point(r) for r in rs] for lr, rs in by_lr.items()}
    valid = {lr: 100 * float(np.mean([v for _, v, _ in p])) for lr, p in points.items()}
    lr = min(valid, key=lambda k: (valid[k], k))
    chosen = points[lr]
    return Cell(dataset, model, lr, valid[lr], [100 * t for _, _, t in chosen], [s for s, _, _ in chosen],
                by_lr[lr], valid)


def run(ctx: Context) -> list[Cell]:
    runs = train_runs(ctx, grid(ctx))
    datasets = list(dict.fromkeys(r.spec["data"]["name"] for r in runs))
    return [choose(runs, dataset, model) for dataset in datasets for model in MODELS]


def _table(cells: list[Cell]) -> str:
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    head = "model        " + "".join(f"| {DATASET_LABELS[d]:<14} measured (paper)  lr     " for d in datasets)
    lines = [head]
    for model in MODELS:
        line = f"{model:<13}"
        for d in datasets:
            c = next(c for c in cells if c.dataset == d and c.model == model)
            spread = f"±{np.std(c.test_errors):.1f}" if len(c.test_errors) > 1 else ""
            line += f"| {c.test_error:6.2f}{spread:<5} ({PAPER[d][model]:6.2f})       {c.lr:<6g} "
        lines.append(line)
    return "\n".join(lines)


def verdict(cells: list[Cell], ctx: Context) -> Verdict:
    numbers: dict[str, float] = {}
    for c in cells:
        slug = MODELS[c.model][0]
        numbers[f"{c.dataset}/{slug}/test_error"] = c.test_error
        numbers[f"{c.dataset}/{slug}/lr"] = c.lr
    shapeset = {c.model: c.test_error for c in cells if c.dataset == "shapeset"}
    others = {m: e for m, e in shapeset.items() if m != "Sigmoid"}
    runner_up = max(others, key=others.get)
    sig, tanh, tanh_n = shapeset["Sigmoid"], shapeset["Tanh"], shapeset["Tanh N"]
    checks = {
        f"Shapeset: Sigmoid is the worst, {sig:.2f}% > {runner_up} {others[runner_up]:.2f}% "
        f"(paper 82.61% vs 27.15%)": sig > others[runner_up],
        f"Shapeset: normalized init helps tanh, Tanh N {tanh_n:.2f}% < Tanh {tanh:.2f}% "
        f"(paper 15.60% < 27.15%)": tanh_n < tanh,
    }
    skipped = [DATASET_LABELS[d] for d in FILE_DATASETS if d not in {c.dataset for c in cells}]
    note = ""
    if skipped:
        variables = " / ".join(f"{FILE_DATASETS[d]}" for d in FILE_DATASETS if DATASET_LABELS[d] in skipped)
        note = f"\n{', '.join(skipped)} skipped: set {variables} to the directory with their files to add them."
    s = ctx.settings
    summary = (f"test error % (learning rate chosen on validation), {s['depth']} hidden layers of {s['width']}, "
               f"batch {s['batch_size']}, {s['updates']} updates, seeds {ctx.seeds}:\n{_table(cells)}{note}")
    return Verdict.from_checks(checks, numbers, summary)


def figure(cells: list[Cell], ctx: Context) -> list:
    from deepscope.plots.curves import error_curves

    paths = []
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    for d in datasets:  # fig. 11: test error during online training, every activation / init
        curves = {}
        for c in (c for c in cells if c.dataset == d):
            n = min(len(r.curve("test/error")[0]) for r in c.runs)  # a diverged run stops early
            steps = c.runs[0].curve("test/error")[0][:n]
            values = np.mean([r.curve("test/error")[1][:n] for r in c.runs], axis=0)  # mean over seeds
            curves[f"{c.model} (lr {c.lr:g})"] = [{"step": int(t), "name": "test/error", "value": float(v)}
                                                  for t, v in zip(steps, values, strict=True)]
        fig = error_curves(curves)
        if fig is not None:
            fig.axes[0].set_title(f"{DATASET_LABELS[d]}: test error during training (fig. 11)", fontsize=10)
            paths.append(save_figure(fig, ctx.path(f"curves-{d}")))

    fig, axes = new_figure(1, len(datasets), size=(5.2 * len(datasets), 3.6))
    x = np.arange(len(MODELS))
    for ax, d in zip(axes[0], datasets, strict=True):
        measured = [next(c for c in cells if c.dataset == d and c.model == m) for m in MODELS]
        ax.bar(x - 0.2, [c.test_error for c in measured], 0.4, yerr=[np.std(c.test_errors) for c in measured],
               label="measured", color="#1f77b4")
        ax.bar(x + 0.2, [PAPER[d][m] for m in MODELS], 0.4, label="paper (Table 1)", color="#bbbbbb")
        ax.set_xticks(x, list(MODELS), fontsize=8)
        ax.set(title=DATASET_LABELS[d], ylabel="test error (%)")
        ax.legend(fontsize=8)
    fig.suptitle("Glorot & Bengio 2010, Table 1: measured beside the paper")
    paths.append(save_figure(fig, ctx.path("table")))
    return paths


_GRID = {slug: [0.1, 0.3] for slug, _, _ in MODELS.values()}

EXPERIMENT = Experiment(
    name="glorot2010-table1",
    claim="With 5 hidden layers on Shapeset, the sigmoid net is the worst and the normalized initialization "
    "lowers the test error of tanh nets.",
    source="Glorot & Bengio 2010, Table 1 and fig. 11",
    profiles={
        "tiny": {"depth": 2, "width": 16, "batch_size": 10, "updates": 20, "evals": 2, "n_valid": 50, "n_test": 50,
                 "value_range": [-1, 1], "lrs": {k: [0.1] for k in _GRID}},
        "quick": {"depth": 5, "width": 256, "batch_size": 32, "updates": 30_000, "evals": 20, "n_valid": 2000,
                  "n_test": 2000, "value_range": [-1, 1], "lrs": _GRID},
        "paper": {"depth": 5, "width": 1000, "batch_size": 10, "updates": 5_000_000, "evals": 50, "n_valid": 10_000,
                  "n_test": 10_000, "value_range": [-1, 1],
                  "lrs": {k: [0.01, 0.03, 0.1, 0.3] for k in _GRID}},
    },
    grid=grid,
    run=run,
    verdict=verdict,
    figure=figure,
)
