"""small-init-vanishing: activation statistics across depth at initialization.

Varma & Das, ch. 7, section 7.8 (figs 7.23, 7.24): initialized with N(0, 0.01) weights, a deep tanh net's first layer
has a healthy spread but deeper layers' activations shrink toward 0 -- the weights are tiny and each
layer multiplies by them again, so the gradients dz * delta vanish too. N(0, 1) weights "did not solve the
problem either": sigmoid units saturate. A properly scaled init (Glorot's normalized init, Var(W) =
2 / (fan_in + fan_out)) keeps the spread through all layers.

Measured with one forward pass of N(0, 1) inputs (centered, scaled data) through a fresh net: per hidden
layer the mean, standard deviation and saturated fraction of the activations (saturation as defined by
the activation registry: |tanh| > 0.99, sigmoid outside [0.01, 0.99]). "N(0, 0.01)" is read as a standard
deviation of 0.01, as in the CS231n experiment the figures come from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.models import mlp
from deepscope.nn.activations import get_activation

# name -> (activation, init scheme, scheme kwargs)
SETTINGS = {
    "tanh_normal_0.01": ("tanh", "normal", {"std": 0.01}),
    "tanh_glorot": ("tanh", "glorot_normal", {}),
    "sigmoid_normal_1": ("sigmoid", "normal", {"std": 1.0}),
}


def layer_activations(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    """The output of every hidden block of an :func:`~deepscope.models.mlp`, in order."""
    outs = []
    with torch.no_grad():
        h = model.flatten(x)
        for name, block in model.named_children():
            if name.startswith("hidden"):
                h = block(h)
                outs.append(h)
    return outs


@dataclass
class Stats:
    setting: str
    seed: int
    mean: np.ndarray  # per layer
    std: np.ndarray
    saturated: np.ndarray
    hists: list[tuple[np.ndarray, np.ndarray]]  # per layer (counts, edges)


def measure(setting: str, seed: int, cfg: dict) -> Stats:
    activation, scheme, kwargs = SETTINGS[setting]
    g = torch.Generator().manual_seed(seed)
    model = mlp(cfg["width"], 10, cfg["depth"], cfg["width"], activation=activation, init=scheme,
                init_kwargs={**kwargs, "generator": g})
    x = torch.randn(cfg["batch_size"], cfg["width"], generator=g)
    spec = get_activation(activation)
    acts = layer_activations(model, x)
    mean = torch.stack([a.mean() for a in acts]).numpy()
    std = torch.stack([a.std() for a in acts]).numpy()
    saturated = torch.stack([spec.saturated(a).float().mean() for a in acts]).numpy()
    hists = [np.histogram(a.numpy(), bins=50, range=spec.range) for a in acts]
    return Stats(setting, seed, mean, std, saturated, hists)


def run(ctx: Context) -> list[Stats]:
    return [measure(setting, seed, ctx.settings) for setting in SETTINGS for seed in ctx.seeds]


def _avg(results: list[Stats], setting: str, field: str) -> np.ndarray:
    return np.mean([getattr(r, field) for r in results if r.setting == setting], axis=0)


def verdict(results: list[Stats], ctx: Context) -> Verdict:
    depth = ctx.settings["depth"]
    numbers: dict[str, float] = {}
    for setting in SETTINGS:
        std, sat = _avg(results, setting, "std"), _avg(results, setting, "saturated")
        numbers[f"{setting}/std_first"] = std[0]
        numbers[f"{setting}/std_last"] = std[-1]
        numbers[f"{setting}/std_ratio"] = std[-1] / std[0]
        numbers[f"{setting}/saturated_last"] = sat[-1]
    small, glorot = numbers["tanh_normal_0.01/std_ratio"], numbers["tanh_glorot/std_ratio"]
    sat = numbers["sigmoid_normal_1/saturated_last"]
    checks = {
        f"N(0, 0.01) tanh: std of layer {depth} / layer 1 = {small:.2g} < 0.01 (collapse toward 0)": small < 0.01,
        f"Glorot tanh: std of layer {depth} / layer 1 = {glorot:.2f} > 0.2 (spread kept)": glorot > 0.2,
        f"N(0, 1) sigmoid: {sat:.0%} of layer-{depth} units saturated (> 50%)": sat > 0.5,
    }
    summary = (
        f"activation std, layer 1 -> {depth}: N(0,0.01) tanh {numbers['tanh_normal_0.01/std_first']:.3g} -> "
        f"{numbers['tanh_normal_0.01/std_last']:.2g}; Glorot tanh {numbers['tanh_glorot/std_first']:.3g} -> "
        f"{numbers['tanh_glorot/std_last']:.3g}; N(0,1) sigmoid saturated {sat:.0%}"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[Stats], ctx: Context) -> list:
    depth, seed = ctx.settings["depth"], ctx.seeds[0]
    shown = sorted({0, depth // 4, depth // 2, (3 * depth) // 4, depth - 1})
    fig, axes = new_figure(len(SETTINGS), 1 + len(shown), size=(2.6 * (1 + len(shown)) + 1.5, 2.6 * len(SETTINGS)))
    layers = np.arange(1, depth + 1)
    for row, setting in enumerate(SETTINGS):
        r = next(r for r in results if r.setting == setting and r.seed == seed)
        ax = axes[row, 0]
        ax.plot(layers, r.mean, "o-", label="mean")
        ax.plot(layers, r.std, "s-", label="std")
        ax.set(title=setting, xlabel="layer")
        ax.legend(fontsize=7)
        for ax, layer in zip(axes[row, 1:], shown, strict=True):
            counts, edges = r.hists[layer]
            ax.stairs(counts / max(counts.sum(), 1), edges, fill=True)
            ax.set(title=f"layer {layer + 1}", yticks=[])
    fig.suptitle("Activations at initialization across depth (Varma & Das, ch. 7, figs 7.23, 7.24)")
    return [save_figure(fig, ctx.path())]


EXPERIMENT = Experiment(
    name="small-init-vanishing",
    claim="With N(0, 0.01) weights a deep tanh net's activations collapse toward 0 with depth while Glorot's "
    "normalized init keeps their spread; N(0, 1) weights saturate sigmoid units instead.",
    source="Varma & Das, ch. 7, section 7.8 (figs 7.23, 7.24); Glorot & Bengio 2010",
    profiles={
        "tiny": {"depth": 4, "width": 64, "batch_size": 128},
        "quick": {"depth": 10, "width": 500, "batch_size": 1000, "seeds": 3},
        "paper": {"depth": 10, "width": 1000, "batch_size": 2000, "seeds": 10},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
