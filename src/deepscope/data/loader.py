"""The training batches of a run: the batch of update ``t`` is a function of ``t`` alone (so resume is exact)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from deepscope.data.datasets import Dataset, batches, derive_seed

__all__ = ["STREAM_CHUNK", "TrainBatches", "compose"]

STREAM_CHUNK = 2000  # stream examples generated per call (batches of one chunk are consecutive updates)


class TrainBatches:
    """The training batch of update ``t`` (0-based), a function of ``t`` alone.

    From a stream: the stream is read in chunks of ``K`` batches (one ``stream.batch(t // K, K * B)`` call
    serves updates ``K * (t // K)`` ... ``K * (t // K) + K - 1``), since generating a few thousand examples at
    once is far cheaper than ten at a time. In memory: epoch ``t // per_epoch``, shuffled by a generator
    seeded with ``(seed, epoch)``. Without augmentation the preprocessing is applied once per chunk (or once
    to the whole training set); with it, each batch is augmented and then preprocessed.
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int, device: torch.device,
                 augment: Callable[[Tensor], Tensor] | None, pre: Callable[[Tensor], Tensor] | None):
        self.stream = data.stream if data.train is None else None
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.augment, self.pre = augment, pre
        self.per_batch = compose(augment, pre) if augment is not None else None
        if self.stream is None:
            x, y = data.train
            x = x.to(device)
            self.x, self.y = (pre(x) if pre is not None and augment is None else x), y.to(device)
            self.per_epoch = math.ceil(len(x) / batch_size)
        else:
            self.per_chunk = max(1, STREAM_CHUNK // batch_size)
        self._chunk: tuple[int, Tensor, Tensor] | None = None
        self._it: Iterator | None = None
        self._next = -1  # the update index the open epoch iterator yields next

    def __call__(self, t: int) -> tuple[Tensor, Tensor]:
        if self.stream is not None:
            index, k = divmod(t, self.per_chunk)
            if self._chunk is None or self._chunk[0] != index:
                x, y = self.stream.batch(index, self.per_chunk * self.batch_size)
                x = x.to(self.device)
                self._chunk = (index, self.pre(x) if self.pre is not None and self.augment is None else x,
                               y.to(self.device))
            start = k * self.batch_size
            x, y = self._chunk[1][start : start + self.batch_size], self._chunk[2][start : start + self.batch_size]
        else:
            if t != self._next or t % self.per_epoch == 0:
                epoch, k = divmod(t, self.per_epoch)
                generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
                self._it = batches(self.x, self.y, self.batch_size, generator=generator)
                for _ in range(k):
                    next(self._it)
            x, y = next(self._it)
            self._next = t + 1
        return (self.per_batch(x), y) if self.per_batch is not None else (x, y)


def compose(*fns: Callable | None) -> Callable | None:
    fns = [f for f in fns if f is not None]
    if len(fns) == 1:
        return fns[0]

    def composed(x: Tensor) -> Tensor:
        for f in fns:
            x = f(x)
        return x

    return composed


