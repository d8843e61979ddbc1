"""Lightning callback cost: the same Lightning run with and without ``DeepscopeCallback(every=100)``.

The 5 x 1000 tanh MLP of ``benchmarks/probe.py`` (input 1024, 9 classes), plain SGD on pre-generated
random data, a CSV logger in both runs (the callback logs its statistics through it), the monitor set taken
by the callback from the validation loader (300 examples). Runs alternate in ABBA order so that drifts in
machine load hit both. Timed: from ``on_train_start`` to ``on_train_end`` (the training loop, with every
record the callback takes, the first one at step 0 included), measured by a callback placed before
deepscope's; the diagnosis and report the callback writes at the end are timed separately (a one-off cost
per run, not per step). Target: loop ratio <= 1.05.

    python benchmarks/integrations.py [--steps 1000] [--pairs 2] [--batch 10] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from deepscope.nn.models import mlp

try:
    import lightning as L

    from deepscope.integrations.lightning import DeepscopeCallback
except ImportError as e:  # `make bench` without the extra: say so, do not fail the other benchmarks
    print(f"benchmarks/integrations.py skipped: {e}")
    sys.exit(0)

DEPTH, WIDTH, INPUTS, CLASSES, LR, MONITOR, EVERY = 5, 1000, 1024, 9, 0.01, 300, 100


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = mlp(INPUTS, CLASSES, depth=DEPTH, width=WIDTH, activation="tanh")

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


class Clock(L.Callback):
    """Wall time of ``on_train_start`` .. ``on_train_end`` as seen at its place in the callback list."""

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def run(steps: int, batch: int, data, probed: bool) -> tuple[float, float]:
    """(loop seconds, end-of-training seconds of the callback)."""
    first, last = Clock(), Clock()
    callbacks = [first, DeepscopeCallback(every=EVERY, monitor_size=MONITOR), last] if probed else [first, last]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp),
                            callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0)
        x, y, vx, vy = data
        trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False),
                    DataLoader(TensorDataset(vx, vy), batch_size=100))
    return first.end - first.start, last.end - first.end


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per run")
    parser.add_argument("--pairs", type=int, default=2, help="ABBA pairs of runs (each pair: one of each)")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.steps * args.batch
    data = (torch.rand(n, INPUTS, generator=g), torch.randint(0, CLASSES, (n,), generator=g),
            torch.rand(MONITOR, INPUTS, generator=g), torch.randint(0, CLASSES, (MONITOR,), generator=g))
    run(50, args.batch, data, True)  # warm-up: imports, allocator, first report
    times: dict[bool, list[float]] = {False: [], True: []}
    ends: list[float] = []
    for i in range(args.pairs):
        for probed in ((False, True) if i % 2 == 0 else (True, False)):
            gc.collect()  # the previous run's Trainer and model go now, not inside the next timed loop
            loop, end = run(args.steps, args.batch, data, probed)
            times[probed].append(loop)
            if probed:
                ends.append(end)
    ratios = [b / a for a, b in zip(times[False], times[True], strict=True)]
    total = sum(times[True]) / sum(times[False])
    median = statistics.median(ratios)
    records = args.steps // EVERY + 1
    print(f"lightning batch={args.batch}: plain {sum(times[False]):.2f} s, callback {sum(times[True]):.2f} s, "
          f"{args.pairs} runs of {args.steps} steps each ({records} records per run, every={EVERY}, "
          f"monitor={MONITOR}, CSV logger); ratio of totals {total:.3f}, per pair "
          f"{', '.join(f'{r:.3f}' for r in ratios)}, median {median:.3f} "
          f"(target <= 1.05: {'ok' if median <= 1.05 else 'OVER'})")
    print(f"lightning end of training (diagnosis, findings table, HTML report): {statistics.median(ends):.2f} s "
          f"per run, once")


if __name__ == "__main__":
    main()
