"""How far the monitor records of a small monitor set are from those of the paper's 300 examples and of a large set.

The monitor pass is most of what a record costs at small batches, so the probe's default monitor set is smaller
than the paper's 300 examples. This script measures what that gives up. On a pool of ``--pool`` Shapeset-3x2
test images it records, with ``Probe``'s own monitor pass, every monitor statistic of the whole pool (the
"full-set value") and of ``--draws`` disjoint random sets of 300 and of their first n examples (n = 100, 128),
on five models, each at initialization and after ``--updates`` SGD updates:

- 5 x 1000 MLPs of tanh, sigmoid (saturates) and ReLU (dead units), the nets of Glorot & Bengio (2010);
- a convnet (``deepscope.models.convnet``, ReLU, channels 16 and 32);
- a 2-layer ``nn.TransformerEncoder`` (d_model 64, GELU modules) reading the image's 32 rows as tokens.

Printed per model family and per monitor size, the median and the largest deviation of each statistic: from the
full-set value (next to the 300-example set's own deviation from it, which is what the paper's choice gives up)
and from the 300-example record of the same draw. Units: mean, p2 and p98 in units of the layer's activation
std (full set); std, dLoss/ds mean and std relative to the full-set dLoss/ds std, after scaling dLoss/ds by
n / pool (the monitor loss is a mean over the examples, so dLoss/ds scales as 1/n); saturated and dead fractions
absolute; the histogram as the total-variation distance of the normalized counts (layers whose histogram range is
the registry's, equal for every set). The rows also go to ``--json``.

    python benchmarks/probe_monitor.py [--draws 3] [--updates 200] [--pool 1500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.data.shapeset import generate
from deepscope.models import convnet, mlp
from deepscope.probe import Probe

SIZES, REFERENCE = (100, 128), 300


class RowTransformer(nn.Module):
    """The image's rows as tokens: linear embedding, ``nn.TransformerEncoder`` (GELU modules), mean pool, logits."""

    def __init__(self, size: int = 32, d: int = 64, classes: int = 9):
        super().__init__()
        self.embed = nn.Linear(size, d)
        self.pos = nn.Parameter(torch.randn(size, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, activation=nn.GELU(), batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.embed(x.flatten(1, 2)) + self.pos
        return self.head(self.encoder(h).mean(1))


def models() -> dict[str, tuple[nn.Module, bool, float]]:
    """name -> (model, flat input, learning rate)."""
    out = {}
    for act in ("tanh", "sigmoid", "relu"):
        torch.manual_seed(1)
        out[f"mlp-{act}"] = mlp(1024, 9, depth=5, width=1000, activation=act), True, 0.01 if act != "sigmoid" else 0.1
    torch.manual_seed(1)
    out["convnet-relu"] = convnet(1, 9, 32, channels=(16, 32), activation="relu"), False, 0.01
    torch.manual_seed(1)
    out["transformer"] = RowTransformer(), False, 0.01
    return out


def monitor_stats(model, x, y) -> tuple[dict, dict]:
    with Probe(model, every=10**9, monitor=(x, y), jacobian_examples=0) as probe:
        pass
    stats = {(r["layer"], r["quantity"], r["stat"]): r["value"] for r in probe.records}
    hists = {(h["layer"], h["quantity"]): h for h in probe.histograms}
    return stats, hists


def deviations(small: tuple[dict, dict], ref: tuple[dict, dict], full: tuple[dict, dict], n: int, n_ref: int,
               n_full: int) -> dict[str, list[float]]:
    """Deviation of the records of ``small`` (n examples) from ``ref`` (n_ref examples), per kind of statistic."""
    (s_stats, s_hists), (r_stats, r_hists), (f_stats, _) = small, ref, full
    out: dict[str, list[float]] = {}
    for (layer, quantity, stat), value in r_stats.items():
        if (layer, quantity, stat) not in s_stats:
            continue
        mine = s_stats[layer, quantity, stat]
        if quantity == "preact_grad":  # dLoss/ds scales as 1/n: compare n * dLoss/ds, in units of the full-set std
            unit = f_stats.get((layer, quantity, "std"), 0.0) * n_full
            key = f"dLoss/ds {stat} (/std)"
            err = abs(mine * n - value * n_ref) / unit if unit > 0 else 0.0
        elif quantity == "activation" and stat in ("mean", "p2", "p98", "std"):
            unit = f_stats.get((layer, "activation", "std"), 0.0)
            key = f"activation {stat} (/std)"
            err = abs(mine - value) / unit if unit > 0 else 0.0
        elif stat in ("saturated", "dead"):
            key, err = f"{stat} fraction (abs.)", abs(mine - value)
        else:
            continue
        out.setdefault(key, []).append(err)
    for key, h in r_hists.items():
        o = s_hists.get(key)
        if o is None or key[1] != "activation" or (o["lo"], o["hi"]) != (h["lo"], h["hi"]):
            continue
        a, b = torch.tensor(o["counts"], dtype=torch.float64), torch.tensor(h["counts"], dtype=torch.float64)
        out.setdefault("histogram (TV distance)", []).append(float((a / a.sum() - b / b.sum()).abs().sum() / 2))
    return out


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} / {max(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--pool", type=int, default=1500, help="examples of the full set (>= draws x 300)")
    parser.add_argument("--json", default=None, help="write every deviation here")
    args = parser.parse_args()
    if args.pool < args.draws * REFERENCE:
        parser.error(f"--pool={args.pool} is not allowed; give at least draws x {REFERENCE} = {args.draws * REFERENCE}")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x, y = generate(args.pool + 2000, g)
    pool_x, pool_y, train_x, train_y = x[: args.pool], y[: args.pool], x[args.pool :], y[args.pool :]
    perm = torch.randperm(args.pool, generator=g)
    found: dict[str, dict[str, dict[str, list[float]]]] = {}  # model -> comparison -> stat -> deviations
    for name, (model, flat, lr) in models().items():
        shape = (lambda t: t.flatten(1)) if flat else (lambda t: t)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for phase in ("init", "trained"):
            if phase == "trained":
                for i in range(args.updates):
                    j = (i * 10) % (len(train_x) - 10)
                    F.cross_entropy(model(shape(train_x[j : j + 10])), train_y[j : j + 10]).backward()
                    opt.step()
                    opt.zero_grad()
            full = monitor_stats(model, shape(pool_x), pool_y)
            for d in range(args.draws):
                idx = perm[d * REFERENCE : (d + 1) * REFERENCE]
                mx, my = shape(pool_x[idx]), pool_y[idx]
                ref = monitor_stats(model, mx, my)
                pairs = [(f"{REFERENCE} vs full", ref, REFERENCE, full, args.pool)]
                for n in SIZES:
                    small = monitor_stats(model, mx[:n], my[:n])
                    pairs += [(f"{n} vs full", small, n, full, args.pool),
                              (f"{n} vs {REFERENCE}", small, n, ref, REFERENCE)]
                for label, small, n, base, n_base in pairs:
                    for key, errs in deviations(small, base, full, n, n_base, args.pool).items():
                        found.setdefault(name, {}).setdefault(label, {}).setdefault(key, []).extend(errs)
    print(f"monitor-set deviations, median / max over layers, {args.draws} draws, init and after {args.updates} "
          f"updates; full set = {args.pool} Shapeset test images; {time.perf_counter() - start:.0f} s")
    for name, by_label in found.items():
        for label, by_stat in by_label.items():
            print(f"{name:13s} {label:12s} " + "; ".join(f"{k}: {summary(v)}" for k, v in sorted(by_stat.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(found, f)


if __name__ == "__main__":
    main()
