"""Trainer throughput against a minimal hand-written loop, same model, same data, same process.

The 5 x 1000 tanh MLP of Glorot & Bengio on pre-generated in-memory tensors (32 x 32 inputs, 9 classes),
plain SGD, batch 10 and batch 128. Rounds alternate (hand, trainer, trainer, hand, ...) so that drifts
in machine load hit both; the median updates/s of each is reported with their ratio (target >= 0.95).
``train()`` is timed from its "start" event to its last update (set-up and the final evaluation excluded,
as the hand-written loop has neither); it runs quiet, with no store.

    python benchmarks/trainer.py [--rounds 4] [--seconds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from deepscope.config import validate_spec
from deepscope.data import Dataset
from deepscope.models import mlp
from deepscope.training.loop import train

DEPTH, WIDTH, SHAPE, CLASSES, N_TRAIN, LR = 5, 1000, (1, 32, 32), 9, 5000, 0.01


def make_data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_TRAIN, *SHAPE, generator=g)
    y = torch.randint(0, CLASSES, (N_TRAIN,), generator=g)
    small = (x[:100].clone(), y[:100].clone())
    return Dataset("bench", SHAPE, CLASSES, [str(i) for i in range(CLASSES)], (x, y), small, small)


def hand_written(data: Dataset, batch_size: int, updates: int) -> float:
    """The minimal loop: shuffled batches by index, forward, loss, zero_grad, backward, step."""
    torch.manual_seed(1)
    model = mlp(SHAPE, CLASSES, DEPTH, WIDTH, "tanh", "glorot_uniform")
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = data.train
    generator = torch.Generator().manual_seed(2)
    done = 0
    start = time.perf_counter()
    while done < updates:
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            index = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == updates:
                break
    return updates / (time.perf_counter() - start)


def trainer(data: Dataset, batch_size: int, updates: int) -> float:
    spec = validate_spec({
        "name": "bench",
        "model": {"depth": DEPTH, "width": WIDTH, "activation": "tanh"},
        "init": {"scheme": "glorot_uniform"},
        "optim": {"name": "sgd", "lr": LR},
        "train": {"updates": updates, "batch_size": batch_size, "eval_every": updates, "device": "cpu"},
    })
    times = {}

    def clock(ctx):
        if ctx.event == "start" or (ctx.event == "step" and ctx.step == updates):
            times[ctx.event] = time.perf_counter()

    train(spec, callbacks=[clock], quiet=True, dataset=data)
    return updates / (times["step"] - times["start"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per batch size (each runs both loops twice)")
    parser.add_argument("--seconds", type=float, default=3.0, help="target duration of one timed loop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = make_data()
    print(f"trainer benchmark: {DEPTH}x{WIDTH} tanh MLP, SGD, {N_TRAIN} in-memory examples, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds")
    for batch_size in (10, 128):
        rate = hand_written(data, batch_size, 20)  # warm-up, and a first guess of the speed
        updates = max(20, int(rate * args.seconds))
        hand, ours = [], []
        for _ in range(args.rounds):  # ABBA order
            hand.append(hand_written(data, batch_size, updates))
            ours.append(trainer(data, batch_size, updates))
            ours.append(trainer(data, batch_size, updates))
            hand.append(hand_written(data, batch_size, updates))
        h, t = statistics.median(hand), statistics.median(ours)
        print(f"batch {batch_size:>3}: hand-written {h:8.1f} updates/s | train() {t:8.1f} updates/s | "
              f"ratio {t / h:.3f} (target >= 0.95; {updates} updates a loop)")


if __name__ == "__main__":
    main()
