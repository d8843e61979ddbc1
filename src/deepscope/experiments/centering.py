"""centering: zero-centred (and scaled) inputs make gradient descent converge faster than raw ones.

Varma & Das, ch. 7, section 7.6 ("Why Zero Centering Helps", fig 7.20): with inputs x_j >= 0, the update of every weight
into an output unit, -eta x_j (y_k - t_k), has the same sign, so the weights can only move together and descent
zig-zags toward the minimum; subtracting the per-feature mean (centering) removes that constraint, and dividing
by the standard deviation (scaling) "balances out the rate at which the weights connected to the input nodes
learn".

Measured: a ReLU MLP (He init) trained with plain SGD on Shapeset pixels as they are (in [0, 1], all >= 0),
centred (per-pixel training mean removed) and standardized (also divided by the per-pixel std). Each variant
gets its best learning rate of a small grid (by the mean over seeds), so the comparison is not an artefact of
one rate suiting one scale. Compared: the loss on the whole training set after N updates, and the update at
which each variant's training loss first reaches the final loss of the raw inputs.
"""

from __future__ import annotations

import math

import numpy as np

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.training import TrainedRun, by_setting, run_spec, shapeset_data, train_runs, train_set_error

VARIANTS = {"raw": [], "centered": ["center"], "standardized": ["standardize"]}  # name -> data.preprocess


def grid(ctx: Context) -> list[dict]:
    cfg = ctx.settings
    return [
        run_spec(
            f"centering:{variant}@{lr:g}", seed, data=shapeset_data(cfg, seed, preprocess),
            model={"depth": cfg["depth"], "width": cfg["width"], "activation": "relu"}, init={"scheme": "he_normal"},
            optim={"name": "sgd", "lr": lr},
            train={"updates": cfg["updates"], "batch_size": cfg["batch_size"], "eval_every": cfg["eval_every"]},
        )
        for seed in ctx.seeds for variant, preprocess in VARIANTS.items() for lr in cfg["lrs"]
    ]


def run(ctx: Context) -> list[TrainedRun]:
    return train_runs(ctx, grid(ctx), measure=train_set_error)


def _final(run: TrainedRun) -> float:
    return math.inf if run.status == "diverged" else run.extra.get("train_set/loss", math.inf)


def best_settings(results: list[TrainedRun], ctx: Context) -> dict[str, tuple[str, float]]:
    """variant -> (setting of its best learning rate, mean final training loss over the seeds)."""
    groups = by_setting(results)
    best = {}
    for variant in VARIANTS:
        losses = {f"{variant}@{lr:g}": float(np.mean([_final(r) for r in groups[f"{variant}@{lr:g}"]]))
                  for lr in ctx.settings["lrs"]}
        setting = min(losses, key=losses.get)
        best[variant] = (setting, losses[setting])
    return best


def first_reaching(runs: list[TrainedRun], level: float) -> float:
    """Mean over ``runs`` of the first update whose training loss (window mean) is <= ``level`` (inf: never)."""
    steps = []
    for run in runs:
        s, v = run.curve("train/loss")
        hit = np.nonzero(v <= level)[0]
        steps.append(float(s[hit[0]]) if len(hit) else math.inf)
    return float(np.mean(steps))


def verdict(results: list[TrainedRun], ctx: Context) -> Verdict:
    cfg, groups = ctx.settings, by_setting(results)
    best = best_settings(results, ctx)
    raw_runs = groups[best["raw"][0]]
    raw_level = float(np.mean([r.curve("train/loss")[1][-1] for r in raw_runs]))  # raw's final window loss
    numbers, reach = {}, {}
    for variant, (setting, loss) in best.items():
        reach[variant] = first_reaching(groups[setting], raw_level)
        numbers[f"{variant}/best_lr"] = float(setting.partition("@")[2])
        numbers[f"{variant}/final_loss"] = loss
        numbers[f"{variant}/updates_to_raw_loss"] = reach[variant]
    loss = {v: best[v][1] for v in VARIANTS}
    n = cfg["updates"]
    checks = {
        f"standardized inputs: loss {loss['standardized']:.3f} after {n} updates, >= 0.05 below raw "
        f"{loss['raw']:.3f}": loss["standardized"] <= loss["raw"] - 0.05,
        f"centred inputs: loss {loss['centered']:.3f} < raw {loss['raw']:.3f}": loss["centered"] < loss["raw"],
        f"standardized inputs reach the raw inputs' final loss ({raw_level:.3f}) in {reach['standardized']:.0f} "
        f"updates <= 0.75 x {n}": reach["standardized"] <= 0.75 * n,
    }
    summary = (
        f"training loss after {n} updates (best lr each): "
        + ", ".join(f"{v} {loss[v]:.3f} (lr {numbers[f'{v}/best_lr']:g})" for v in VARIANTS)
        + f"; raw's final loss reached after {reach['standardized']:.0f} updates when standardized, "
        f"{reach['centered']:.0f} when centred"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[TrainedRun], ctx: Context) -> list:
    cfg, seed, groups = ctx.settings, ctx.seeds[0], by_setting(results)
    best = best_settings(results, ctx)
    fig, axes = new_figure(1, 2, size=(10, 3.8))
    for variant, (setting, _) in best.items():
        run = next(r for r in groups[setting] if r.seed == seed)
        steps, values = run.curve("train/loss")
        axes[0, 0].plot(steps, values, label=f"{variant} (lr {setting.partition('@')[2]})")
        finals = [np.mean([_final(r) for r in groups[f"{variant}@{lr:g}"]]) for lr in cfg["lrs"]]
        axes[0, 1].plot(cfg["lrs"], np.minimum(finals, 10.0), "o-", label=variant)
    axes[0, 0].set(title=f"training loss at each variant's best lr (seed {seed})", xlabel="update",
                   ylabel="cross-entropy (window mean)")
    axes[0, 1].set(title=f"training-set loss after {cfg['updates']} updates", xlabel="learning rate", xscale="log",
                   ylabel="mean over seeds")
    axes[0, 1].set_xticks(cfg["lrs"], [f"{lr:g}" for lr in cfg["lrs"]], minor=False)
    axes[0, 1].minorticks_off()
    for ax in axes[0]:
        ax.legend(fontsize=8)
    fig.suptitle("Raw [0, 1] vs centred vs standardized inputs (Varma & Das, ch. 7, section 7.6)")
    return [save_figure(fig, ctx.path())]


_COMMON = {"depth": 2, "batch_size": 32, "lrs": [0.03, 0.1, 0.3]}

EXPERIMENT = Experiment(
    name="centering",
    claim="Centred and scaled (standardized) inputs converge faster than raw, all-positive ones: at each one's best "
    "learning rate they reach a lower loss after N updates and the raw inputs' final loss well before N.",
    source="Varma & Das, ch. 7, section 7.6 (Data Preprocessing, fig 7.20 'Why Zero Centering Helps')",
    profiles={
        "tiny": {**_COMMON, "size": 8, "n_train": 256, "n_valid": 64, "n_test": 64, "width": 16, "updates": 60,
                 "eval_every": 10, "lrs": [0.1]},
        "quick": {**_COMMON, "size": 16, "n_train": 4000, "n_valid": 500, "n_test": 500, "width": 128,
                  "updates": 1000, "eval_every": 50, "seeds": 2},
        "paper": {**_COMMON, "size": 32, "n_train": 50000, "n_valid": 5000, "n_test": 5000, "width": 1000,
                  "depth": 5, "updates": 20000, "eval_every": 500, "lrs": [0.01, 0.03, 0.1, 0.3], "seeds": 3},
    },
    grid=grid,
    run=run,
    verdict=verdict,
    figure=figure,
)
