"""augmentation: label-preserving distortions of the training images shrink the train/test gap.

Jen (2020): "Modern models have millions of parameters ... But data sets are not that huge. To tackle this
problem, we can generate new examples through applying distortions, such as flips, rotations, color shifts,
scaling ... When we distort that image, the cats are still the cats." A Shapeset class is the set of shapes in
the image, which flips and rotations of any angle leave unchanged.

Measured: a small convnet trained for many epochs on a small Shapeset training set, with and without random
horizontal / vertical flips and rotations (kornia, drawn per image and per batch, training batches only). The
training error is measured after training on the whole clean training set in eval mode; the gap is test error -
training error.
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

OVERFITS = 0.3  # the gap without augmentation must be at least this, or there is nothing to shrink


def grid(ctx: Context) -> list[dict]:
    cfg = ctx.settings
    augment = {"augment": list(cfg["augment"]), "augment_options": dict(cfg["augment_options"])}
    return [
        run_spec(
            f"augmentation:{setting}", seed, data=shapeset_data(cfg, seed, **extra),
            model={"builder": "convnet", "channels": list(cfg["channels"]), "activation": "relu"},
            init={"scheme": "he_normal"}, optim={"name": "momentum", "lr": cfg["lr"]},
            train={"epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "eval_every": cfg["eval_every"]},
        )
        for seed in ctx.seeds for setting, extra in (("plain", {}), ("augmented", augment))
    ]


def run(ctx: Context) -> list[TrainedRun]:
    return train_runs(ctx, grid(ctx), measure=train_set_error)


def verdict(results: list[TrainedRun], ctx: Context) -> Verdict:
    cfg, groups = ctx.settings, by_setting(results)
    plain, aug = generalization(groups["plain"]), generalization(groups["augmented"])
    numbers = {f"plain/{k}": v for k, v in plain.items()} | {f"augmented/{k}": v for k, v in aug.items()}
    what = ", ".join(cfg["augment"])
    checks = {
        f"without augmentation the convnet overfits {cfg['n_train']} examples: train error "
        f"{plain['train_error']:.1%}, test {plain['test_error']:.1%}, gap {plain['gap']:.2f} >= {OVERFITS}":
            plain["gap"] >= OVERFITS,
        f"augmentation ({what}) shrinks the gap: {aug['gap']:.2f} (train {aug['train_error']:.1%}, test "
        f"{aug['test_error']:.1%}) <= {plain['gap']:.2f} - 0.1": aug["gap"] <= plain["gap"] - 0.1,
        f"and the test error does not rise: {aug['test_error']:.1%} <= {plain['test_error']:.1%}":
            aug["test_error"] <= plain["test_error"],
    }
    summary = (
        f"train/test error gap: {plain['gap']:.2f} without augmentation, {aug['gap']:.2f} with {what}; "
        f"test error {plain['test_error']:.1%} -> {aug['test_error']:.1%}"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[TrainedRun], ctx: Context) -> list:
    cfg = ctx.settings
    return generalization_figure(
        results, ctx, f"convnet {cfg['channels']}, {cfg['n_train']} training images",
        f"Data augmentation ({', '.join(cfg['augment'])}): the train/test gap shrinks (Jen (2020))",
    )


_COMMON = {"channels": [16, 32], "lr": 0.01, "batch_size": 32, "augment": ["hflip", "vflip", "rotate"],
           "augment_options": {"degrees": 180.0}}

EXPERIMENT = Experiment(
    name="augmentation",
    claim="Random flips and rotations of the training images (which keep Shapeset's labels) shrink the gap between "
    "training and test error of a convnet that overfits a small training set.",
    source="Jen (2020) (data augmentation); kornia.augmentation",
    profiles={
        "tiny": {**_COMMON, "size": 8, "n_train": 128, "n_valid": 32, "n_test": 64, "channels": [4, 8], "epochs": 4,
                 "eval_every": 8},
        "quick": {**_COMMON, "size": 16, "n_train": 1000, "n_valid": 200, "n_test": 1000, "epochs": 40,
                  "eval_every": 250, "seeds": 2},
        "paper": {**_COMMON, "size": 32, "n_train": 5000, "n_valid": 1000, "n_test": 10000, "channels": [32, 64],
                  "epochs": 100, "eval_every": 1000, "seeds": 3},
    },
    grid=grid,
    run=run,
    verdict=verdict,
    figure=figure,
)
