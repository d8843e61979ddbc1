"""dropout: dropping hidden units at random during training shrinks the gap between training and test error.

Srivastava et al. 2014; Jen (2020): "There is one more regularization technique which is known as dropout. It is
used to reduce overfitting ... we sample the network during training ... During testing, all neurons are
present" (PyTorch's inverted dropout scales by 1/(1-p) during training instead of by p at test time). Seeds
000/001: "a model with millions of parameters would severely risk overfitting the training set".

Measured: a wide ReLU MLP trained for many epochs on a small Shapeset training set, so that it memorizes it,
with and without dropout (p = 0.5 after every hidden layer). The training error is measured after training on
the whole training set in eval mode (dropout off), so that it is comparable with the test error; the gap is
test error - training error.
"""

from __future__ import annotations

from deepscope.experiments.base import Context, Experiment, Verdict
from deepscope.experiments.training import (
    TrainedRun,
    by_setting,
    generalization,
    generalization_figure,
    run_spec,
    shapeset_data,
    train_runs,
    train_set_error,
)

OVERFITS = 0.3  # the gap without regularization must be at least this, or there is nothing to shrink


def grid(ctx: Context) -> list[dict]:
    cfg = ctx.settings
    return [
        run_spec(
            f"dropout:{setting}", seed, data=shapeset_data(cfg, seed),
            model={"depth": cfg["depth"], "width": cfg["width"], "activation": "relu", "dropout": p},
            init={"scheme": "he_normal"}, optim={"name": "momentum", "lr": cfg["lr"]},
            train={"epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "eval_every": cfg["eval_every"]},
        )
        for seed in ctx.seeds for setting, p in (("plain", 0.0), (f"dropout {cfg['dropout']:g}", cfg["dropout"]))
    ]


def run(ctx: Context) -> list[TrainedRun]:
    return train_runs(ctx, grid(ctx), measure=train_set_error)


def verdict(results: list[TrainedRun], ctx: Context) -> Verdict:
    cfg, groups = ctx.settings, by_setting(results)
    plain, drop = generalization(groups["plain"]), generalization(groups[f"dropout {cfg['dropout']:g}"])
    numbers = {f"plain/{k}": v for k, v in plain.items()} | {f"dropout/{k}": v for k, v in drop.items()}
    checks = {
        f"without dropout the net overfits {cfg['n_train']} examples: train error {plain['train_error']:.1%}, test "
        f"{plain['test_error']:.1%}, gap {plain['gap']:.2f} >= {OVERFITS}": plain["gap"] >= OVERFITS,
        f"dropout {cfg['dropout']:g} shrinks the gap: {drop['gap']:.2f} (train {drop['train_error']:.1%}, test "
        f"{drop['test_error']:.1%}) <= {plain['gap']:.2f} - 0.05": drop["gap"] <= plain["gap"] - 0.05,
    }
    summary = (
        f"train/test error gap: {plain['gap']:.2f} without dropout, {drop['gap']:.2f} with p = {cfg['dropout']:g}; "
        f"test error {plain['test_error']:.1%} -> {drop['test_error']:.1%}"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[TrainedRun], ctx: Context) -> list:
    cfg = ctx.settings
    return generalization_figure(
        results, ctx, f"{cfg['depth']}x{cfg['width']} ReLU MLP, {cfg['n_train']} training images",
        "Dropout: the train/test gap shrinks (Srivastava et al. 2014; Jen (2020))",
    )


_COMMON = {"depth": 2, "width": 512, "dropout": 0.5, "lr": 0.01, "batch_size": 32}

EXPERIMENT = Experiment(
    name="dropout",
    claim="Dropout shrinks the gap between training and test error of a net that overfits a small training set.",
    source="Srivastava et al. 2014; Jen (2020) (dropout); Kekulawala (blog); Géron (2017), ch. 11 (overfitting)",
    profiles={
        "tiny": {**_COMMON, "size": 8, "n_train": 128, "n_valid": 32, "n_test": 64, "width": 32, "epochs": 4,
                 "eval_every": 8},
        "quick": {**_COMMON, "size": 16, "n_train": 500, "n_valid": 200, "n_test": 1000, "epochs": 60,
                  "eval_every": 100, "seeds": 2},
        "paper": {**_COMMON, "size": 32, "n_train": 2000, "n_valid": 1000, "n_test": 10000, "width": 1000,
                  "epochs": 200, "eval_every": 500, "seeds": 3},
    },
    grid=grid,
    run=run,
    verdict=verdict,
    figure=figure,
)
