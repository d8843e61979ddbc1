"""Shapeset-3x2 generator: images per second for both fills, and the objects measured against the authors' images.

Throughput: batches of ``--batch`` 32x32 images from the Shapeset stream (as online training does), several
times, median reported: with torch's default number of threads, with one thread, and with one thread timed by the
process's CPU clock (the generator's own cost per core, unaffected by other processes competing for the cores;
wall-clock numbers on a busy machine are lower). Ratio to the 20,000 images/s budget.

Faithfulness: ``--images`` images of each fill, read as a user would see them (foreground = pixels that differ
from the background level, taken from the image border). Per class, the mean area of single-object images against
the authors' 98.9 / 143.8 / 215.2 px; the share of single objects in more than one 4-connected piece (authors:
20 %, detached tip pixels); how much of the first object the second one covers in two-object images (authors:
mean 0.122, median 0.076). The authors' numbers: 20,000 images of their generator (glorotxa/Shapeset, "Shapeset-3*2").
Run: ``.venv/bin/python benchmarks/shapeset.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepscope.data import get_dataset
from deepscope.data import shapeset as S

BUDGET = 20_000  # images/s on 2 CPU cores (DESIGN.md, budgets)
AUTHORS_AREAS = (98.9, 143.8, 215.2)  # mean pixels of a single triangle, parallelogram, ellipse
AUTHORS_PIECES = 0.20  # single objects in more than one 4-connected piece
AUTHORS_COVERED = (0.122, 0.076)  # mean and median share of the first object covered by the second


def measure(stream, batch: int, repeats: int, clock=time.perf_counter) -> list[float]:
    stream.batch(0, batch)  # warm-up
    rates = []
    for index in range(1, repeats + 1):
        start = clock()
        stream.batch(index, batch)
        rates.append(batch / (clock() - start))
    return rates


def pieces(mask: torch.Tensor) -> torch.Tensor:
    """Number of 4-connected pieces of each mask (n, h, w), by union-find over horizontal runs.

    Each row's runs of foreground pixels are the nodes (Rosenfeld & Pfaltz, "Sequential operations in digital picture
    processing", J. ACM 13(4), 1966); runs that touch in adjacent rows are joined by hooking each tree's root onto the
    smaller label seen across an edge and pointer jumping (parent = parent[parent]), Shiloach & Vishkin, "An O(log n)
    parallel connectivity algorithm", J. Algorithms 3(1), 1982: a few rounds, however long the path through a piece.
    A piece is a tree whose root is its own parent.
    """
    n, h, w = mask.shape
    start = mask.contiguous().clone()
    start[..., 1:] &= ~mask[..., :-1]  # first pixel of each run
    run = start.view(-1).cumsum(0).view(n, h, w) - 1  # run number of every foreground pixel
    link = mask[:, :-1] & mask[:, 1:]  # pixel above pixel, both foreground
    first = link.clone()
    first[..., 1:] &= ~link[..., :-1]  # one edge per stretch of overlap between two runs
    upper, lower = run[:, :-1][first], run[:, 1:][first]
    parent = torch.arange(int(start.sum()))
    while True:
        a, b = parent[upper], parent[lower]
        least = torch.minimum(a, b)
        new = parent.scatter_reduce(0, a, least, "amin").scatter_reduce_(0, b, least, "amin")
        new = new[new][new]  # parent <= own index throughout, so labels only fall and the loop ends
        if torch.equal(new, parent):
            break
        parent = new
    image = start.view(n, h * w).nonzero()[:, 0]  # the image of each run, in run order
    return torch.bincount(image[parent == torch.arange(len(parent))], minlength=n)


def faithfulness(raster: str, n: int, chunk: int = 20_000) -> None:
    g = torch.Generator().manual_seed(0)
    areas, labels, split, covered, dropped = [], [], [], [], 0
    for start in range(0, n, chunk):
        scene = S.sample_scenes(min(chunk, n - start), g, raster=raster)
        x = S.render(scene)[:, 0]
        border = torch.cat([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], dim=1)
        foreground = x != border.median(1).values.view(-1, 1, 1)
        single, two = scene.count == 1, scene.count == 2
        areas.append(foreground[single].sum((-1, -2)).double())
        labels.append(scene.labels[single])
        split.append(pieces(foreground[single]) > 1)
        first = scene.masks[two, 0]
        covered.append(((first & scene.masks[two, 1]).sum((-1, -2)) / first.sum((-1, -2)).clamp(min=1)).double())
        dropped += int((single & (scene.draws > 0)).sum())
    area, label, covered = torch.cat(areas), torch.cat(labels), torch.cat(covered)
    means = [area[label == c].mean().item() for c in range(3)]
    parts = [f"{name} {ours:.1f} vs {theirs} ({ours / theirs - 1:+.1%})"
             for name, ours, theirs in zip(S.SHAPE_NAMES, means, AUTHORS_AREAS, strict=True)]  # fmt: skip
    within = all(abs(ours / theirs - 1) < 0.03 for ours, theirs in zip(means, AUTHORS_AREAS, strict=True))
    print(f"shapeset raster={raster}: mean area of single objects from {n:,} images, ours vs the authors' px: "
          f"{', '.join(parts)} ({'all within 3 %' if within else 'NOT within 3 %'})")  # fmt: skip
    print(f"shapeset raster={raster}: single objects in several 4-connected pieces "
          f"{torch.cat(split).double().mean():.1%} (authors {AUTHORS_PIECES:.0%}); first object covered: mean "
          f"{covered.mean():.3f}, median {covered.median():.3f} (authors {AUTHORS_COVERED[0]}, "
          f"{AUTHORS_COVERED[1]}); second object dropped after {S.MAX_DRAWS} rejected draws: {dropped / n:.3%} "
          "of images")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--balanced", action="store_true")
    parser.add_argument("--images", type=int, default=200_000, help="images per fill for the area measurement")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    for raster in S.RASTERS:
        options = dict(n_valid=0, n_test=0, size=args.size, balanced=args.balanced, raster=raster)
        stream = get_dataset("shapeset", **options).stream
        runs = [(default_threads, "wall", time.perf_counter), (1, "wall", time.perf_counter)]
        runs.append((1, "CPU", time.process_time))  # images per second of one core's own time: blind to other load
        for threads, clock_name, clock in runs:
            torch.set_num_threads(threads)
            rates = measure(stream, args.batch, args.repeats, clock)
            rate = statistics.median(rates)
            print(
                f"shapeset raster={raster} {args.size}x{args.size} batch={args.batch} threads={threads} "
                f"{clock_name} clock: {rate:,.0f} images/s (median of {args.repeats}; min {min(rates):,.0f}, "
                f"max {max(rates):,.0f}); ratio to {BUDGET:,} images/s = {rate / BUDGET:.2f} "
                f"({'ok' if rate >= BUDGET else 'BELOW BUDGET'})"
            )
    torch.set_num_threads(1)  # the measurement below is not timed; one thread is fastest on a shared machine
    if args.images > 0:
        for raster in S.RASTERS:
            faithfulness(raster, args.images)


if __name__ == "__main__":
    main()
