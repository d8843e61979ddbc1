"""Shapeset-3x2 generator throughput: images per second, and the ratio to the 20,000 images/s budget.

Generates batches of ``--batch`` 32x32 images from the Shapeset stream (as online training does) several times
and reports the median: with torch's default number of threads, with one thread, and with one thread timed by
the process's CPU clock (the generator's own cost per core, unaffected by other processes competing for the
cores; wall-clock numbers on a busy machine are lower).
Run: ``.venv/bin/python benchmarks/shapeset.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepscope.data import get_dataset

BUDGET = 20_000  # images/s on 2 CPU cores (DESIGN.md, budgets)


def measure(stream, batch: int, repeats: int, clock=time.perf_counter) -> list[float]:
    stream.batch(0, batch)  # warm-up
    rates = []
    for index in range(1, repeats + 1):
        start = clock()
        stream.batch(index, batch)
        rates.append(batch / (clock() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--balanced", action="store_true")
    args = parser.parse_args()

    stream = get_dataset("shapeset", n_valid=0, n_test=0, size=args.size, balanced=args.balanced).stream
    runs = [(torch.get_num_threads(), "wall", time.perf_counter), (1, "wall", time.perf_counter)]
    runs.append((1, "CPU", time.process_time))  # images per second of one core's own time: blind to other load
    for threads, clock_name, clock in runs:
        torch.set_num_threads(threads)
        rates = measure(stream, args.batch, args.repeats, clock)
        rate = statistics.median(rates)
        print(
            f"shapeset {args.size}x{args.size} batch={args.batch} threads={threads} {clock_name} clock: "
            f"{rate:,.0f} images/s (median of {args.repeats}; min {min(rates):,.0f}, max {max(rates):,.0f}); "
            f"ratio to {BUDGET:,} images/s = {rate / BUDGET:.2f} ({'ok' if rate >= BUDGET else 'BELOW BUDGET'})"
        )


if __name__ == "__main__":
    main()
