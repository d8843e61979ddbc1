"""dead-relu: ReLU units die under a bad initialization or a too-high learning rate; Leaky ReLU and PReLU units
pushed to the same place keep learning and come back.

Varma & Das, ch. 7, section 7.4 (figs 7.13-7.15): a ReLU unit whose hyperplane misses the data cloud outputs 0 for every
input and "will kill all gradients backpropagating down", so it never changes again -- "most often caused due to
bad initializations". Jen (2020): "if we're unlucky during the initialization ... this neuron will never update";
Leaky ReLU max(ax, x) keeps "a small non-zero gradient ... so that the neuron can keep alive"; PReLU (He et al.
2015) learns the slope a.

Measured: MLPs on Shapeset trained with Adam under
- healthy: He init, zero biases, Adam's default rate 1e-3;
- bad init: the same with every hidden bias set to a large negative value (most pre-activations start < 0);
- high lr: zero biases, 10x Adam's default rate.
A unit is counted *inactive* when its pre-activation is <= 0 on every monitor example (held-out images); for
ReLU that is a dead unit (output and gradient exactly 0 on all of them). The fraction of inactive hidden units
(all layers pooled) is counted directly at initialization, during and after training; "revived" is the share of
the units inactive half-way that are active again at the end. Leaky ReLU uses slope 0.1 here (with the usual
0.01 the units come back too, but more slowly: within a quick run only partly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from deepscope.data import get_dataset
from deepscope.data.preprocess import Preprocessor
from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.training import train_module
from deepscope.models import mlp

ACTIVATIONS = ("relu", "leaky_relu", "prelu")
CONDITIONS = ("bad_init", "high_lr")
SETTINGS = [("relu", "healthy")] + [(act, cond) for cond in CONDITIONS for act in ACTIVATIONS]


def inactive_units(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    """For each hidden block of an :func:`~deepscope.models.mlp`, a boolean per unit: pre-activation <= 0 on
    every example of ``x`` (for ReLU: a dead unit)."""
    masks = []
    with torch.no_grad():
        h = model.flatten(x)
        for name, block in model.named_children():
            if name.startswith("hidden"):
                s = block.linear(h)
                masks.append((s <= 0).all(dim=0))
                h = block.act(s)
    return masks


@dataclass
class Trained:
    activation: str
    condition: str
    seed: int
    steps: list[int]  # updates done at each record
    inactive: np.ndarray  # (records, layers): fraction of each layer's units inactive on the monitor set
    revived: float  # of the units inactive half-way, the fraction active at the end
    loss: np.ndarray  # per-update training loss

    @property
    def final_inactive(self) -> float:
        return float(self.inactive[-1].mean())


def train_one(activation: str, condition: str, seed: int, data: tuple[Tensor, Tensor, Tensor], cfg: dict) -> Trained:
    x, y, monitor = data
    generator = torch.Generator().manual_seed(seed)
    kwargs = {"slope": cfg["leaky_slope"]} if activation == "leaky_relu" else None
    model = mlp(x.shape[1], 9, cfg["depth"], cfg["width"], activation=activation, init="he_normal",
                activation_kwargs=kwargs, init_kwargs={"generator": generator})
    if condition == "bad_init":
        with torch.no_grad():
            for name, block in model.named_children():
                if name.startswith("hidden"):
                    block.linear.bias.fill_(cfg["bad_bias"])
    lr = cfg["high_lr"] if condition == "high_lr" else cfg["lr"]
    steps, records, found = [], [], {}

    def record(step: int) -> None:
        found["masks"] = masks = inactive_units(model, monitor)
        steps.append(step)
        records.append(torch.stack([m.float().mean() for m in masks]))
        if "half" not in found and step >= cfg["updates"] // 2:
            found["half"] = torch.cat(masks)

    losses = train_module(model, x, y, optim="adam", lr=lr, updates=cfg["updates"], batch_size=cfg["batch_size"],
                          seed=seed, every=cfg["record_every"], record=record)
    half, masks = found["half"], found["masks"]
    end = torch.cat(masks)
    revived = float((half & ~end).sum() / half.sum().clamp_min(1))
    return Trained(activation, condition, seed, steps, torch.stack(records).numpy(), revived, losses.numpy())


def load(cfg: dict, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Standardized Shapeset training inputs and labels (flattened) and the monitor inputs."""
    ds = get_dataset("shapeset", n_train=cfg["n_train"], n_valid=cfg["n_monitor"], n_test=0, size=cfg["size"],
                     seed=seed)
    pre = Preprocessor("standardize").fit(ds.train[0])
    return pre(ds.train[0]).flatten(1), ds.train[1], pre(ds.valid[0]).flatten(1)


def run(ctx: Context) -> list[Trained]:
    out = []
    for seed in ctx.seeds:
        data = load(ctx.settings, seed)
        out += [train_one(act, cond, seed, data, ctx.settings) for act, cond in SETTINGS]
    return out


def _mean(results: list[Trained], activation: str, condition: str, field: str) -> float:
    runs = [r for r in results if r.activation == activation and r.condition == condition]
    if field == "final_loss":
        return float(np.mean([r.loss[-max(1, len(r.loss) // 10):].mean() for r in runs]))
    return float(np.mean([getattr(r, field) for r in runs]))


def verdict(results: list[Trained], ctx: Context) -> Verdict:
    cfg = ctx.settings
    numbers: dict[str, float] = {}
    for act, cond in SETTINGS:
        numbers[f"{act}/{cond}/inactive"] = _mean(results, act, cond, "final_inactive")
        numbers[f"{act}/{cond}/revived"] = _mean(results, act, cond, "revived")
        numbers[f"{act}/{cond}/final_loss"] = _mean(results, act, cond, "final_loss")
    dead = {cond: numbers[f"relu/{cond}/inactive"] for cond in ("healthy", *CONDITIONS)}
    revived = float(np.mean([numbers[f"relu/{cond}/revived"] for cond in CONDITIONS]))
    what = {"bad_init": f"hidden biases {cfg['bad_bias']:g}", "high_lr": f"Adam lr {cfg['high_lr']:g}"}
    checks = {
        f"healthy ReLU (He init, Adam lr {cfg['lr']:g}): {dead['healthy']:.1%} dead units (<= 5%)":
            dead["healthy"] <= 0.05,
        f"bad init ReLU ({what['bad_init']}): {dead['bad_init']:.1%} dead after training (>= 30%)":
            dead["bad_init"] >= 0.3,
        f"high-lr ReLU ({what['high_lr']}): {dead['high_lr']:.1%} dead after training (>= 30%)":
            dead["high_lr"] >= 0.3,
        f"dead ReLU units stay dead: {revived:.1%} of those dead half-way are active at the end (<= 10%)":
            revived <= 0.1,
    }
    for cond in CONDITIONS:
        for act in ("leaky_relu", "prelu"):
            frac = numbers[f"{act}/{cond}/inactive"]
            checks[f"{act}, {what[cond]}: {frac:.1%} inactive units at the end, < ReLU's {dead[cond]:.1%} - 10 points "
                   f"({numbers[f'{act}/{cond}/revived']:.0%} of the inactive half-way came back)"] = (
                frac < dead[cond] - 0.1
            )
    summary = "inactive hidden units after training: " + "; ".join(
        f"{cond}: " + ", ".join(f"{act} {numbers[f'{act}/{cond}/inactive']:.0%}" for act in ACTIVATIONS)
        for cond in CONDITIONS
    ) + f"; healthy ReLU {dead['healthy']:.0%}"
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[Trained], ctx: Context) -> list:
    seed = ctx.seeds[0]
    runs = {(r.activation, r.condition): r for r in results if r.seed == seed}
    fig, axes = new_figure(1, 3, size=(13.5, 3.8))
    styles = {"relu": "C3", "leaky_relu": "C0", "prelu": "C2"}
    for col, cond in enumerate(CONDITIONS):
        ax = axes[0, col]
        for act in ACTIVATIONS:
            r = runs[act, cond]
            ax.plot(r.steps, r.inactive.mean(axis=1), color=styles[act], label=act)
        healthy = runs["relu", "healthy"]
        ax.plot(healthy.steps, healthy.inactive.mean(axis=1), color="grey", ls=":", label="relu, healthy")
        ax.set(title=cond.replace("_", " "), xlabel="update", ylabel="inactive units (all hidden layers)",
               ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    ax = axes[0, 2]
    width = 0.12
    layers = np.arange(1, ctx.settings["depth"] + 1)
    for i, (act, cond) in enumerate(SETTINGS):
        ax.bar(layers + (i - len(SETTINGS) / 2) * width, runs[act, cond].inactive[-1], width=width,
               label=f"{act}, {cond}", color=styles[act], alpha=0.4 if cond == "high_lr" else 1.0,
               hatch="//" if cond == "healthy" else None)
    ax.set(title="inactive units per layer at the end", xlabel="hidden layer", xticks=layers, ylim=(0, 1.02))
    ax.legend(fontsize=6)
    fig.suptitle("Dead ReLUs: bad init / high lr; Leaky ReLU and PReLU units come back "
                 f"(Varma & Das, ch. 7.4; seed {seed})")
    return [save_figure(fig, ctx.path())]


_COMMON = {"batch_size": 32, "lr": 1e-3, "high_lr": 1e-2, "bad_bias": -2.0, "leaky_slope": 0.1}

EXPERIMENT = Experiment(
    name="dead-relu",
    claim="A large share of ReLU units dies (inactive on every input, no gradient) with a bad init or a too-high "
    "learning rate and stays dead; Leaky ReLU / PReLU units in the same situation keep a gradient and come back.",
    source="Varma & Das, ch. 7, section 7.4 (figs 7.13-7.15); Jen (2020) (dying ReLU, Leaky ReLU); "
    "He et al. 2015 (PReLU)",
    profiles={
        "tiny": {**_COMMON, "size": 8, "n_train": 256, "n_monitor": 64, "depth": 2, "width": 16, "updates": 40,
                 "record_every": 10},
        "quick": {**_COMMON, "size": 16, "n_train": 4000, "n_monitor": 500, "depth": 3, "width": 128,
                  "updates": 1000, "record_every": 50, "seeds": 2},
        "paper": {**_COMMON, "size": 32, "n_train": 20000, "n_monitor": 1000, "depth": 5, "width": 1000,
                  "updates": 10000, "record_every": 250, "seeds": 3},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
