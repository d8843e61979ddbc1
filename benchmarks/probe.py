"""Probe cost: the same training loop with and without ``Probe(every=100, monitor=300 examples)``.

The 5 x 1000 tanh MLP of Glorot & Bengio (input 1024, 9 classes), plain SGD on pre-generated random data,
batch 10 and batch 128. Two copies of the model train side by side, one probed; rounds alternate between
them (plain first, then probed first, ...) so drifts in machine load hit both. Every round holds the same
number of records. Printed: total wall time of each and their ratio (target <= 1.05).

The probe's first record (at ``with Probe(...)``, the initialization, with the Jacobians on 10 monitor
examples) is a one-off, printed separately. Last, the cost of one recording step -- a training step whose
batch is instrumented, followed by ``probe.step()`` with the monitor pass -- relative to a plain step at
batch 128 (target <= 3), with every instrument including the Jacobian singular values, and without them
(the steady state with the default ``jacobian_every=None``).

    python benchmarks/probe.py [--rounds 3] [--steps10 300] [--steps128 200] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from deepscope.nn.models import mlp
from deepscope.probe import Probe

DEPTH, WIDTH, INPUTS, CLASSES, LR, MONITOR, EVERY = 5, 1000, 1024, 9, 0.01, 300, 100


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return mlp(INPUTS, CLASSES, depth=DEPTH, width=WIDTH, activation="tanh")


class Loop:
    """One model, its optimizer and its position in the pre-generated data."""

    def __init__(self, model, x, y, batch, probe=None):
        self.model, self.x, self.y, self.batch, self.probe = model, x, y, batch, probe
        self.opt = torch.optim.SGD(model.parameters(), lr=LR)
        self.index = 0

    def run(self, steps: int) -> float:
        n = len(self.x) // self.batch
        start = time.perf_counter()
        for _ in range(steps):
            i = (self.index % n) * self.batch
            loss = F.cross_entropy(self.model(self.x[i : i + self.batch]), self.y[i : i + self.batch])
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            if self.probe is not None:
                self.probe.step()
            self.index += 1
        return time.perf_counter() - start


def loop_ratio(batch: int, steps: int, rounds: int, data, monitor) -> float:
    x, y = data
    model = make_model()
    plain = Loop(model, x, y, batch)
    probed_model = copy.deepcopy(model)
    probe = Probe(probed_model, every=EVERY, monitor=monitor)
    start = time.perf_counter()
    with probe:
        first = time.perf_counter() - start
        probed = Loop(probed_model, x, y, batch, probe)
        plain.run(EVERY), probed.run(EVERY)  # warm-up, one record
        times = {"plain": 0.0, "probe": 0.0}
        ratios = []
        for r in range(rounds):
            order = [("plain", plain), ("probe", probed)]
            spent = {name: loop.run(steps) for name, loop in (order if r % 2 == 0 else order[::-1])}
            times["plain"] += spent["plain"]
            times["probe"] += spent["probe"]
            ratios.append(spent["probe"] / spent["plain"])
    ratio = times["probe"] / times["plain"]
    records = rounds * steps // EVERY
    print(
        f"loop batch={batch}: plain {times['plain']:.2f} s, probe {times['probe']:.2f} s over {rounds} x {steps} "
        f"steps ({records} records, every={EVERY}, monitor={MONITOR}); ratio {ratio:.3f} "
        f"(rounds {min(ratios):.3f}-{max(ratios):.3f}; target <= 1.05: {'ok' if ratio <= 1.05 else 'OVER'})"
    )
    per_step = times["plain"] / (rounds * steps)
    print(f"  first record at entry (Jacobians on 10 examples): {first:.2f} s = {first / per_step:.0f} plain steps")
    return ratio


def recording_step(data, monitor, repeats: int = 3) -> None:
    """Median time of a recording step relative to a plain step, batch 128."""
    x, y = data
    model = make_model()
    loop = Loop(model, x, y, 128)
    loop.run(3)
    plain = statistics.median(loop.run(1) for _ in range(10))
    for label, kw in (
        ("every instrument, Jacobians on 10 examples", dict(jacobian_examples=10, jacobian_every=1)),
        ("every instrument, Jacobians on 1 example", dict(jacobian_examples=1, jacobian_every=1)),
        ("without Jacobians (default steady state)", dict(jacobian_examples=0)),
    ):
        probe = Probe(model, every=1, monitor=monitor, **kw)
        with probe:
            loop.probe = probe
            loop.run(1)
            rec = statistics.median(loop.run(1) for _ in range(repeats))
        loop.probe = None
        ratio = rec / plain
        print(
            f"recording step batch=128, {label}: {rec * 1e3:.0f} ms vs plain {plain * 1e3:.1f} ms; "
            f"ratio {ratio:.2f} (target <= 3: {'ok' if ratio <= 3 else 'OVER'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps10", type=int, default=300, help="steps per round at batch 10 (multiple of 100)")
    parser.add_argument("--steps128", type=int, default=200, help="steps per round at batch 128 (multiple of 100)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    data = torch.rand(12_800, INPUTS, generator=g), torch.randint(0, CLASSES, (12_800,), generator=g)
    monitor = torch.rand(MONITOR, INPUTS, generator=g), torch.randint(0, CLASSES, (MONITOR,), generator=g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    loop_ratio(10, args.steps10, args.rounds, data, monitor)
    loop_ratio(128, args.steps128, args.rounds, data, monitor)
    recording_step(data, monitor)


if __name__ == "__main__":
    main()
