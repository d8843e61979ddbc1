"""Probe cost: the same training loop with and without ``Probe(every=100, monitor=128 examples)``.

The 5 x 1000 tanh MLP of Glorot & Bengio (input 1024, 9 classes), plain SGD on pre-generated random data,
batch 10 and batch 128. One model trains in chunks of 100 steps, every other chunk inside ``with probe:``
(one record per probed chunk), in ABBA order so that drifts in machine load hit both; the same model and
memory serve both, so only the probe differs. Printed: total wall time of each, their ratio, and the median
of the per-chunk-pair ratios, which the target is checked on: a burst of load from another process hits one
chunk and moves the totals, not the median. The verdict reads the median's 90 % bootstrap interval over the pairs
(``spread.py``): ``ok`` when all of it is under the target, ``OVER`` when all of it is above, ``undecided`` when
the target lies inside it (this machine's noise is then larger than the distance to the target). The ratio of the
CPU time this process used (``time.process_time``) is printed too: on a machine shared with other jobs it is the
steadier figure. The monitor set has the default size of ``TrainerProbe`` and the callbacks, 128 examples
(``--monitor 300`` for the paper's; the statistics' error at 128 is measured by ``benchmarks/probe_monitor.py``).

The probe's first record (at ``with Probe(...)``, the initialization, with the Jacobians on 10 monitor
examples) is a one-off, printed separately. Then the floor: the model's own forward and backward pass on the
monitor set with no hook and no statistic, in plain steps, which bounds from below the loop ratio and the
recording step of any implementation that runs the monitor pass in the training process's own time. Then the
cost of one record relative to a plain step at batch 128 (target <= 2; see :func:`recording_step`), with every
instrument including the Jacobian singular values on 10 monitor examples, and without the Jacobians (the steady
state with the default ``jacobian_every=None``). Last, the memory the probe keeps per record, for widths 250 and
1000 (it must not depend on width).

The same loop on ``torch.compile(model)`` (inductor; compiled during the warm-up) at batch 10: the overhead
(target <= 1.05), the graph breaks and recompilations counted by ``torch._dynamo`` (target 0), and whether a
compiled run trained with the probe ends bit-identical to the same compiled run without it.

    python benchmarks/probe.py [--chunks10 16] [--chunks128 8] [--chunks-compiled 8] [--cycles 7] [--monitor 128]
                               [--threads N] [--only loops]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deepscope.models import mlp
from deepscope.probe import Probe

sys.path.insert(0, str(Path(__file__).parent))
from spread import interval, verdict  # noqa: E402

DEPTH, WIDTH, INPUTS, CLASSES, LR, EVERY = 5, 1000, 1024, 9, 0.01, 100
MONITOR = 128  # the default monitor set of TrainerProbe and the callbacks


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return mlp(INPUTS, CLASSES, depth=DEPTH, width=WIDTH, activation="tanh")


class Loop:
    """One model, its optimizer and its position in the pre-generated data."""

    def __init__(self, model, x, y, batch, probe=None):
        self.model, self.x, self.y, self.batch, self.probe = model, x, y, batch, probe
        self.opt = torch.optim.SGD(model.parameters(), lr=LR)
        self.index = 0
        self.cpu = 0.0  # CPU time of this process in the last run (other jobs on the machine do not count)

    def run(self, steps: int) -> float:
        n = len(self.x) // self.batch
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(steps):
            i = (self.index % n) * self.batch
            loss = F.cross_entropy(self.model(self.x[i : i + self.batch]), self.y[i : i + self.batch])
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            if self.probe is not None:
                self.probe.step()
            self.index += 1
        self.cpu = time.process_time() - cpu
        return time.perf_counter() - start


TARGETS = {10: 1.03, 128: 1.01, "compiled": 1.05}
PROBE_GRAPHS = [0]  # graphs the compiled loop's probe compiled for its statistics (deepscope.probe.compiled)


def loop_ratio(batch: int, chunks: int, data, monitor, compiled: bool = False) -> float:
    x, y = data
    loop = Loop(torch.compile(make_model()) if compiled else make_model(), x, y, batch)
    # one probe, entered for every other chunk of EVERY steps; start_step=EVERY // 2 puts exactly one record in the
    # middle of each chunk (the monitor pass, the instrumented training step, and the deferred statistics of the
    # steps after it all fall inside the chunk, which is timed with its `with probe:` entry and exit). The
    # Jacobians are left out: by default they are computed at the first record only (see first_record below).
    probe = Probe(loop.model, every=EVERY, monitor=monitor, jacobian_examples=0, start_step=EVERY // 2)
    loop.run(EVERY)  # warm-up (and compilation)
    with probe:  # the probed path warmed up too: a compiled model's statistics graphs compile at its first record
        loop.probe = probe
        warm = loop.run(EVERY)
    loop.probe = None
    times = {"plain": 0.0, "probe": 0.0}
    cpu = {"plain": 0.0, "probe": 0.0}
    ratios, pairs = [], []
    for r in range(chunks):
        spent = {}
        for name in ("plain", "probe") if r % 4 in (0, 3) else ("probe", "plain"):  # ABBA order
            if name == "probe":
                start, cpu_start = time.perf_counter(), time.process_time()
                with probe:
                    loop.probe = probe
                    loop.run(EVERY)
                loop.probe = None
                spent[name] = time.perf_counter() - start  # with whatever the exit runs
                loop.cpu = time.process_time() - cpu_start
            else:
                spent[name] = loop.run(EVERY)
            cpu[name] += loop.cpu
        times["plain"] += spent["plain"]
        times["probe"] += spent["probe"]
        ratios.append(spent["probe"] / spent["plain"])
        pairs.append((spent["probe"], spent["plain"]))
    ratio, median = times["probe"] / times["plain"], statistics.median(ratios)
    low, high = interval(pairs, "median")
    records = len({r["step"] for r in probe.records if r["source"] == "train"}) - 1  # the warm-up chunk's
    if compiled:
        PROBE_GRAPHS[0] = len(probe._cap.compiled.signatures)
    target = TARGETS["compiled" if compiled else batch]
    print(
        f"loop{' compiled' if compiled else ''} batch={batch}: plain {times['plain']:.2f} s, probe "
        f"{times['probe']:.2f} s, {chunks * EVERY} steps each ({records} records, every={EVERY}, "
        f"monitor={len(monitor[0])}); "
        f"ratio of totals {ratio:.3f}, median over chunk pairs {median:.3f}, its 90 % interval {low:.3f}-{high:.3f} "
        f"(target <= {target}: {verdict((low, high), target)}); "
        f"CPU time of this process {cpu['probe'] / cpu['plain']:.3f}; "
        f"the probed warm-up chunk (not counted) {warm:.2f} s"
    )
    return median


def bare_pass(model: torch.nn.Module, first: torch.nn.Module, monitor) -> float:
    """Seconds of a forward pass on the monitor set in eval mode and a backward pass to the input of ``first``."""
    kept = []
    handle = first.register_forward_pre_hook(lambda m, a: kept.append(a[0]))
    start = time.perf_counter()
    model.eval()
    out = model(monitor[0])
    torch.autograd.grad(F.cross_entropy(out, monitor[1]), kept)
    model.train()
    spent = time.perf_counter() - start
    handle.remove()
    return spent


def floor(data, monitor) -> None:
    """The part of a record no faster statistics can remove: the model's own pass on the monitor set.

    A forward pass of the monitor set in eval mode and the backward pass to the first pre-activation (so
    through every hidden layer, no weight gradient), with no hook and no statistic, relative to a plain
    training step. Every ``every`` steps the probe must spend at least this, so ``1 + floor / every`` is the
    lowest loop ratio any implementation with the same monitor set reaches; ``1 + floor`` bounds the recording
    step (plus its Jacobians and instrumented batch).
    """
    x, y = data
    for batch in (10, 128):
        model = make_model()
        loop = Loop(model, x, y, batch)
        loop.run(3)
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Tanh))

        pairs = [(bare_pass(model, first, monitor), loop.run(1)) for _ in range(9)]
        ratio = statistics.median(b / p for b, p in pairs)
        print(
            f"floor batch={batch}: the bare monitor pass (forward of {len(monitor[0])} examples, backward to the "
            f"pre-activations, no statistics) = {ratio:.2f} plain steps; lowest reachable loop ratio at every={EVERY}: "
            f"{1 + ratio / EVERY:.3f} (target <= {TARGETS[batch]})"
            + (f"; lowest reachable recording step ratio {1 + ratio:.2f} (target <= 2)" if batch == 128 else "")
        )


def first_record(data, monitor) -> None:
    """The one-off record at ``with Probe(...)``: the initialization, Jacobians included."""
    x, y = data
    loop = Loop(make_model(), x, y, 10)
    loop.run(5)
    plain = statistics.median(loop.run(1) for _ in range(10))
    start = time.perf_counter()
    with Probe(loop.model, every=EVERY, monitor=monitor):
        spent = time.perf_counter() - start
    print(
        f"first record at entry (monitor pass, Jacobians on 10 examples): {spent:.2f} s "
        f"= {spent / plain:.0f} plain steps at batch 10"
    )


def recording_step(data, monitor, cycles: int) -> None:
    """One record at batch 128 against a plain step, every instrument on (Jacobians on 10 monitor examples).

    One ``Probe(every=15, jacobian_every=15)`` stays entered over ``cycles`` + 1 cycles of 15 steps (the first,
    whose record also watches for functional non-linearities once, is left out); each step (training step and
    ``probe.step()``) is timed alone. A record lands on two steps: the step whose ``probe.step()`` arms it (runs the
    monitor pass, or on a model under the copy limit copies the weights for it), and the next, instrumented one.
    Steps 8-12 of each cycle, where the probe does nothing, are the plain steps of that cycle. The recording step
    ratio is ``1 + (time of the two steps - 2 plain steps) / plain step``: one step plus everything the record costs on
    them. Printed too: the costlier of the two steps alone against a plain step. On this model (20 MB of weights,
    under the probe's 64 MB limit) a record after the first copies the weights at the first of the two steps and
    runs the monitor pass on the copy at the step after the second; the percentiles and histograms of the
    record's subsamples and the Jacobian products then run one item per step (the monitor pass's statistics,
    four Jacobian maps, the training step's statistics). Steps 1-6 after the record are printed as their own
    ratios (the training step's statistics land on step 7).
    Medians over cycles; the CPU time of this process likewise.
    """
    x, y = data
    model = make_model()
    loop = Loop(model, x, y, 128)
    loop.run(3)
    for label, mon, kw in (
        (f"every instrument, Jacobians (Lanczos) on 10 of the {len(monitor[0])}-example monitor set", monitor,
         dict(jacobian_examples=10, jacobian_every=15)),
        (f"without Jacobians (the default after the first record), {len(monitor[0])}-example monitor set", monitor,
         dict(jacobian_examples=0)),
    ):
        rec, jac, single = [], [], []
        with Probe(model, every=15, monitor=mon, start_step=1, **kw) as probe:
            loop.probe = probe
            for cycle in range(cycles + 1):
                steps = {}
                for _ in range(15):
                    phase = probe._step % 15
                    steps[phase] = loop.run(1), loop.cpu
                if cycle == 0:
                    continue
                wall, cpu = (statistics.median(v) for v in zip(*(steps[k] for k in range(8, 13)), strict=True))
                extra, extra_cpu = (steps[14][i] + steps[0][i] - 2 * base for i, base in ((0, wall), (1, cpu)))
                rec.append((1 + extra / wall, 1 + extra_cpu / cpu))
                single.append(max(steps[14][0], steps[0][0]) / wall)
                jac.append([steps[k][0] / wall for k in range(1, 7)])
        loop.probe = None
        ratio, ratio_cpu = (statistics.median(v) for v in zip(*rec, strict=True))
        verdict = "ok" if ratio <= 2 else "OVER"
        line = (f"recording step batch=128, {label}: ratio {ratio:.2f} (target <= 2: {verdict}); "
                f"CPU time of this process {ratio_cpu:.2f}; the costlier of its two steps alone "
                f"{statistics.median(single):.2f}")
        following = [statistics.median(v) for v in zip(*jac, strict=True)]
        line += ("; the next steps (deferred percentiles/histograms, one Jacobian map each): "
                 + " ".join(f"{r:.2f}" for r in following if r > 0) + ", max " + f"{max(following):.2f}")
        print(line + f" ({cycles} cycles)")


def compiled_graph(data, monitor) -> None:
    """Graph breaks and recompilations of the compiled loop, and a compiled run with and without the probe."""
    counters = torch._dynamo.utils.counters
    breaks = sum(counters["graph_break"].values())
    print(f"compiled loop: graph breaks {breaks}, graphs compiled {counters['stats']['unique_graphs']}, of which "
          f"the probe's statistics {PROBE_GRAPHS[0]} (target: 0 breaks, 1 training graph)"
          f"{'' if breaks == 0 else ' OVER'}")
    x, y = data
    ends = []
    for probed in (False, True):
        model = make_model()
        loop = Loop(torch.compile(model), x, y, 10)
        torch.manual_seed(2)
        probe = Probe(loop.model, every=EVERY, monitor=monitor, jacobian_every=EVERY) if probed else None
        if probe is not None:
            probe.__enter__()
            loop.probe = probe
        loop.run(2 * EVERY)
        if probe is not None:
            probe.__exit__(None, None, None)
        ends.append([p.detach().clone() for p in model.parameters()] + [torch.get_rng_state()])
    same = all(torch.equal(a, b) for a, b in zip(*ends, strict=True))
    print(f"compiled run, {2 * EVERY} steps with the probe (3 records, Jacobians at each) vs without: parameters "
          f"and random state bit-identical: {'yes' if same else 'NO'}")


def retained_memory(data) -> None:
    """What the probe keeps: bytes of its rows after 2 and 4 records, for widths 250 and 1000."""
    x, y = data
    sizes = {}
    for width in (250, 1000):
        torch.manual_seed(0)
        model = mlp(INPUTS, CLASSES, depth=DEPTH, width=width, activation="tanh")
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        with Probe(model, every=1, monitor=(x[:50], y[:50]), jacobian_examples=0) as probe:
            for step in range(4):
                F.cross_entropy(model(x[:32]), y[:32]).backward()
                opt.step()
                opt.zero_grad()
                probe.step()
                if step in (1, 3):
                    sizes[width, step + 1] = len(pickle.dumps((probe.records, probe.histograms)))
    per_record = {w: (sizes[w, 4] - sizes[w, 2]) / 2 for w in (250, 1000)}
    ratio = per_record[1000] / per_record[250]
    verdict = "ok" if abs(ratio - 1) < 0.01 else "OVER"
    print(
        f"retained rows per record: {per_record[250] / 1e3:.1f} kB at width 250, {per_record[1000] / 1e3:.1f} kB at "
        f"width 1000; ratio {ratio:.2f} (target: independent of width, 1.00: {verdict})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks10", type=int, default=16, help="chunks of 100 steps per variant at batch 10")
    parser.add_argument("--chunks128", type=int, default=8, help="chunks of 100 steps per variant at batch 128")
    parser.add_argument("--chunks-compiled", type=int, default=8, help="chunks per variant, compiled, batch 10")
    parser.add_argument("--cycles", type=int, default=7, help="record cycles per recording-step variant")
    parser.add_argument("--monitor", type=int, default=MONITOR, help=f"monitor examples (default {MONITOR})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", choices=["loops"], help="loops: the three loop lines alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    data = torch.rand(12_800, INPUTS, generator=g), torch.randint(0, CLASSES, (12_800,), generator=g)
    monitor = torch.rand(args.monitor, INPUTS, generator=g), torch.randint(0, CLASSES, (args.monitor,), generator=g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    loop_ratio(10, args.chunks10, data, monitor)
    loop_ratio(128, args.chunks128, data, monitor)
    loop_ratio(10, args.chunks_compiled, data, monitor, compiled=True)
    if args.only == "loops":
        return
    compiled_graph(data, monitor)
    first_record(data, monitor)
    floor(data, monitor)
    recording_step(data, monitor, args.cycles)
    retained_memory(data)


if __name__ == "__main__":
    main()
