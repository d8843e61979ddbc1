"""How far the monitor records of a smaller monitor set are from those of the paper's 300 examples.

The 300-example monitor pass is most of what a record costs at small batches. This script measures what a
smaller set gives up: for ``--draws`` random sets of 300 Shapeset-3x2 examples, the probe records the
monitor set once on all 300 and once on the first n of them (n = 50, 100, 150), on 5 x 1000 MLPs of tanh,
sigmoid (saturates) and ReLU (dead units) at initialization and after ``--updates`` SGD updates. Printed per n,
over every layer, draw and model, the median and the largest deviation of each statistic from the
300-example record: mean, p2 and p98 in units of the layer's activation std, std and dLoss/ds std as a
relative error (dLoss/ds of n examples times n/300: the monitor loss is a mean, so dLoss/ds scales as 1/n),
saturated and dead fractions as absolute differences.

    python benchmarks/probe_monitor.py [--draws 3] [--updates 300]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from deepscope.data.shapeset import generate
from deepscope.models import mlp
from deepscope.probe import Probe

SIZES, REFERENCE = (50, 100, 150), 300


def monitor_stats(model, x, y) -> dict:
    with Probe(model, every=10**9, monitor=(x, y), jacobian_examples=0) as probe:
        pass
    return {(r["layer"], r["quantity"], r["stat"]): r["value"] for r in probe.records}


def deviations(small: dict, ref: dict, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for (layer, quantity, stat), value in ref.items():
        if (layer, quantity, stat) not in small:
            continue
        # the monitor loss is a mean over the examples: dLoss/ds of n examples is 300/n times that of 300
        scale = n / REFERENCE if quantity == "preact_grad" else 1.0
        d = small[layer, quantity, stat] * scale - value
        if quantity == "activation" and stat in ("mean", "p2", "p98"):
            scale = ref[layer, "activation", "std"]
            key, err = f"activation {stat} (/std)", abs(d) / scale if scale > 0 else 0.0
        elif stat == "std":
            key, err = f"{quantity} std (rel.)", abs(d) / abs(value) if value else 0.0
        elif stat in ("saturated", "dead"):
            key, err = f"{stat} fraction (abs.)", abs(d)
        else:
            continue
        out.setdefault(key, []).append(err)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--updates", type=int, default=300)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x, y = generate(REFERENCE * args.draws + 2000, g)
    x = x.flatten(1)
    train_x, train_y = x[REFERENCE * args.draws :], y[REFERENCE * args.draws :]
    found: dict[int, dict[str, list[float]]] = {n: {} for n in SIZES}
    for activation in ("tanh", "sigmoid", "relu"):
        torch.manual_seed(1)
        model = mlp(x.shape[1], 9, depth=5, width=1000, activation=activation)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for phase in ("init", "trained"):
            if phase == "trained":
                for i in range(args.updates):
                    j = (i * 10) % (len(train_x) - 10)
                    F.cross_entropy(model(train_x[j : j + 10]), train_y[j : j + 10]).backward()
                    opt.step()
                    opt.zero_grad()
            for d in range(args.draws):
                mx, my = x[d * REFERENCE : (d + 1) * REFERENCE], y[d * REFERENCE : (d + 1) * REFERENCE]
                ref = monitor_stats(model, mx, my)
                for n in SIZES:
                    for key, errs in deviations(monitor_stats(model, mx[:n], my[:n]), ref, n).items():
                        found[n].setdefault(key, []).extend(errs)
    for n in SIZES:
        parts = [f"{k}: median {statistics.median(v):.4f}, max {max(v):.4f}" for k, v in sorted(found[n].items())]
        print(f"monitor {n} vs {REFERENCE} examples ({args.draws} draws, tanh/sigmoid/relu, init and trained): "
              + "; ".join(parts))


if __name__ == "__main__":
    main()
