"""Lightning callback cost: one Lightning run whose chunks of 100 steps alternate between
``DeepscopeCallback(every=100)`` active and absent, against each other.

The 5 x 1000 tanh MLP of ``benchmarks/probe.py`` (input 1024, 9 classes), plain SGD on pre-generated
random data, a CSV logger (the callback logs its statistics through it), the monitor set taken by the
callback from the validation loader (300 examples). As in ``benchmarks/probe.py``, the same model, data
and Trainer serve both, and chunks alternate, so drifts in machine load hit both: the chunk from global
step 100c to 100c + 100 has the callback when c is odd (its record at step 100c: the monitor pass, the
instrumented training step, the rows logged) and is plain when c is even. Chunk 0 (the first record, with
the Jacobians, and start-up) is left out. Printed: the totals, their ratio and the median of the ratios of
each callback chunk to the plain chunk after it, which the target (<= 1.05) is checked on. The diagnosis
and report at the end of training are timed separately (once per run, not per step).

    python benchmarks/integrations.py [--pairs 8] [--batch 10] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from deepscope.models import mlp

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
    """Wall time at the end of every ``EVERY``-th step (before deepscope's callback runs) and at the end."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % EVERY == 0:
            self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


class Alternating(DeepscopeCallback):
    """The callback in chunk 0 and in odd chunks of ``EVERY`` global steps; absent from even chunks."""

    @staticmethod
    def active(step: int) -> bool:
        return step < EVERY or (step // EVERY) % 2 == 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.active(trainer.global_step + 1):
            super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.active(trainer.global_step):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8, help="pairs of chunks of 100 steps (callback, plain)")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = EVERY * (2 * args.pairs + 1)
    g = torch.Generator().manual_seed(0)
    n = steps * args.batch
    x, y = torch.rand(n, INPUTS, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    vx, vy = torch.rand(MONITOR, INPUTS, generator=g), torch.randint(0, CLASSES, (MONITOR,), generator=g)
    first, last = Clock(), Clock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp),
                            callbacks=[first, Alternating(every=EVERY, monitor_size=MONITOR), last],
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=args.batch, shuffle=False),
                    DataLoader(TensorDataset(vx, vy), batch_size=100))
    marks = first.marks  # at steps 100, 200, ..., steps
    chunks = [b - a for a, b in zip(marks, marks[1:], strict=False)]  # chunk 1, 2, ...: callback, plain, ...
    probed, plain = chunks[0::2], chunks[1::2]
    ratios = [p / q for p, q in zip(probed, plain, strict=True)]
    median = statistics.median(ratios)
    print(f"lightning batch={args.batch}: plain {sum(plain):.2f} s, callback {sum(probed):.2f} s, {len(plain)} "
          f"chunks of {EVERY} steps each (one record per callback chunk, every={EVERY}, monitor={MONITOR}, CSV "
          f"logger); ratio of totals {sum(probed) / sum(plain):.3f}, median over chunk pairs {median:.3f} "
          f"(target <= 1.05: {'ok' if median <= 1.05 else 'OVER'})")
    print(f"lightning end of training (diagnosis, findings table, HTML report): {last.end - first.end:.2f} s, once")


if __name__ == "__main__":
    main()
