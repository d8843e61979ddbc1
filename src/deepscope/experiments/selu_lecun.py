"""selu-lecun: self-normalization across depth.

SELU with LeCun normal weights (Var(W) = 1 / fan_in) maps zero-mean, unit-variance inputs to zero-mean,
unit-variance outputs, and that fixed point attracts: through a deep stack the activations keep mean ~0
and variance ~1 (Klambauer et al. 2017; Kekulawala (blog): "SELU should be used with LeCun initialization"). ReLU
with the same weights halves the second moment at every layer (He et al. 2015) and SELU with He weights
(Var(W) = 2 / fan_in) leaves the fixed point and grows.

Measured with one forward pass of N(0, 1) inputs through a fresh net: per hidden layer the mean and the
variance of the activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.small_init_vanishing import layer_activations
from deepscope.models import mlp

# name -> (activation, init scheme)
SETTINGS = {
    "selu_lecun": ("selu", "lecun_normal"),
    "relu_lecun": ("relu", "lecun_normal"),
    "selu_he": ("selu", "he_normal"),
}


@dataclass
class Stats:
    setting: str
    seed: int
    mean: np.ndarray  # per layer
    var: np.ndarray


def measure(setting: str, seed: int, cfg: dict) -> Stats:
    activation, scheme = SETTINGS[setting]
    g = torch.Generator().manual_seed(seed)
    model = mlp(cfg["width"], 10, cfg["depth"], cfg["width"], activation=activation, init=scheme,
                init_kwargs={"generator": g})
    acts = layer_activations(model, torch.randn(cfg["batch_size"], cfg["width"], generator=g))
    mean, var = torch.stack([a.mean() for a in acts]), torch.stack([a.var() for a in acts])
    return Stats(setting, seed, mean.numpy(), var.numpy())


def run(ctx: Context) -> list[Stats]:
    return [measure(setting, seed, ctx.settings) for setting in SETTINGS for seed in ctx.seeds]


def verdict(results: list[Stats], ctx: Context) -> Verdict:
    depth = ctx.settings["depth"]
    numbers: dict[str, float] = {}
    for setting in SETTINGS:
        runs = [r for r in results if r.setting == setting]
        mean, var = np.stack([r.mean for r in runs]), np.stack([r.var for r in runs])
        numbers[f"{setting}/max_abs_mean"] = np.abs(mean).max()
        numbers[f"{setting}/max_var_error"] = np.abs(var - 1).max()
        numbers[f"{setting}/var_last"] = var[:, -1].mean()
    selu_mean, selu_err = numbers["selu_lecun/max_abs_mean"], numbers["selu_lecun/max_var_error"]
    relu_var, he_var = numbers["relu_lecun/var_last"], numbers["selu_he/var_last"]
    checks = {
        f"SELU + LeCun: |mean| <= {selu_mean:.3f} < 0.1 at every one of {depth} layers": selu_mean < 0.1,
        f"SELU + LeCun: |var - 1| <= {selu_err:.3f} < 0.15 at every layer": selu_err < 0.15,
        f"ReLU + LeCun: variance at layer {depth} = {relu_var:.2g} < 0.01 (halves per layer)": relu_var < 0.01,
        f"SELU + He: variance at layer {depth} = {he_var:.3g} > 2 (off the fixed point)": he_var > 2.0,
    }
    summary = (
        f"variance at layer {depth}: SELU+LeCun {numbers['selu_lecun/var_last']:.3f} (max |var-1| {selu_err:.3f}, "
        f"max |mean| {selu_mean:.3f}); ReLU+LeCun {relu_var:.2g}; SELU+He {he_var:.3g}"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[Stats], ctx: Context) -> list:
    seed = ctx.seeds[0]
    fig, axes = new_figure(1, 2, size=(10.0, 3.8))
    for setting in SETTINGS:
        r = next(r for r in results if r.setting == setting and r.seed == seed)
        layers = np.arange(1, len(r.mean) + 1)
        axes[0, 0].plot(layers, r.mean, "o-", ms=3, label=setting)
        axes[0, 1].semilogy(layers, r.var, "o-", ms=3, label=setting)
    axes[0, 0].set(title="activation mean per layer", xlabel="layer")
    axes[0, 1].axhline(1.0, color="grey", ls="--", lw=0.8)
    axes[0, 1].set(title="activation variance per layer", xlabel="layer")
    for ax in axes[0]:
        ax.legend(fontsize=8)
    fig.suptitle("Self-normalization: SELU needs LeCun normal weights (Klambauer et al. 2017)")
    return [save_figure(fig, ctx.path())]


EXPERIMENT = Experiment(
    name="selu-lecun",
    claim="A deep SELU net with LeCun normal weights keeps every layer's activations at mean ~0 and variance ~1; "
    "ReLU with the same weights shrinks the variance and SELU with He weights inflates it.",
    source="Klambauer et al. 2017 (self-normalizing networks); Kekulawala (blog) (SELU with LeCun initialization)",
    profiles={
        "tiny": {"depth": 8, "width": 64, "batch_size": 256},
        "quick": {"depth": 30, "width": 256, "batch_size": 1024, "seeds": 3},
        "paper": {"depth": 64, "width": 1024, "batch_size": 1024, "seeds": 5},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
