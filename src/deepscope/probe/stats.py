"""On-device reductions behind the probe's instruments (Glorot & Bengio 2010, figures 2-10).

Every function takes a tensor and returns one flat tensor on the same device: the statistics in
the order of the matching ``*_STATS`` names, then, for the histogram, ``lo, hi, counts...``. The
probe concatenates these small tensors and moves them to the CPU once per record.

Mean, std, norm, min/max and the saturated/dead fractions use every value. Percentiles, histogram
counts and update/weight ratios of large tensors use an evenly spread subsample (exactly
:data:`MAX_PERCENTILE_VALUES` / :data:`MAX_HISTOGRAM_VALUES` / :data:`MAX_UPDATE_VALUES` values,
every unit visited), which bounds their cost independently of width and batch size; histogram
counts then sum to the sample size, not to the number of values (plots and diagnoses normalize
them), and the ratio of a 1000 x 1000 weight is about 0.5 % off (a 300 x 300 one, 73 % sampled, less).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from deepscope.nn.activations import ActivationSpec

__all__ = [
    "GRADIENT_STATS",
    "Finish",
    "MAX_HISTOGRAM_VALUES",
    "MAX_PERCENTILE_VALUES",
    "MAX_UPDATE_VALUES",
    "WEIGHT_GRADIENT_STATS",
    "activation_stat_names",
    "activation_stats",
    "gradient_stats",
    "histogram",
    "mean_std",
    "percentiles",
    "topk_percentiles",
    "sample_index",
    "subsample",
    "update_ratio",
    "weight_gradient_stats",
    "weight_sample",
]

Finish = Callable[[], Tensor]
"""The rest of a deferred statistic: returns the tensor the non-deferred call returns."""

GRADIENT_STATS = ("mean", "std")
WEIGHT_GRADIENT_STATS = ("mean", "std", "norm")

# The sampling error of a 2nd/98th percentile from 2**14 values is about 0.0011 / (density there);
# 50 histogram bins from 2**16 values hold about 1300 values each, counted to about 3 %.
MAX_PERCENTILE_VALUES = 2**14
MAX_HISTOGRAM_VALUES = 2**16
# The update/weight ratio of larger weights compares the same sample before and after the step.
MAX_UPDATE_VALUES = 2**16


def _flat(x: Tensor) -> Tensor:
    x = x.detach().reshape(-1)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


_SAMPLE_INDEX: dict[tuple, Tensor] = {}


def subsample(x: Tensor, limit: int, row: int = 1) -> Tensor:
    """``limit`` evenly spread values of flat ``x`` (``x`` itself if it has at most ``limit`` values).

    ``x`` is read as rows of ``row`` values (one example, or one weight row): sample ``j`` takes
    column ``j mod row`` of row ``floor(j * rows / limit)``, so every unit (column) is visited
    ``limit / row`` times, at rows spread evenly over the tensor, whatever the shape. (A plain
    stride visits only every ``gcd(stride, row)``-th unit, and widening it until it is coprime to
    ``row`` can cut the sample to a fraction of ``limit``.) When ``row`` exceeds ``limit`` the sample
    is evenly spaced over the flat tensor.
    """
    index = sample_index(x.numel(), limit, row, x.device)
    return x if index is None else x.index_select(0, index)  # (4x faster than x[index] on the CPU)


def sample_index(n: int, limit: int, row: int, device: torch.device) -> Tensor | None:
    """The indices :func:`subsample` takes from ``n`` values (None: all of them), cached per shape."""
    if n <= limit:
        return None
    key = (n, row, limit, device)
    index = _SAMPLE_INDEX.get(key)
    if index is None:
        j = torch.arange(limit, device=device)
        if 1 < row <= limit and n % row == 0:
            index = (j * (n // row) // limit) * row + j % row
        else:
            index = j * n // limit
        if len(_SAMPLE_INDEX) > 256:
            _SAMPLE_INDEX.clear()
        _SAMPLE_INDEX[key] = index
    return index


def histogram(x: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """Counts of ``x`` in ``bins`` equal-width bins from ``lo`` to ``hi`` (0-dim tensors, lo <= x <= hi).

    ``lo`` and ``hi`` stay on the device (``torch.histc`` alone wants Python floats, which would
    synchronize): the data are mapped to bin coordinates first, the top edge counted in the last bin.
    """
    width = (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
    if x.device.type != "cpu":  # histc is fast on accelerators, where bincount would synchronize
        return torch.histc(x.sub(lo).div_(width), bins=bins, min=0.0, max=1.0)
    # on the CPU, bincount of the bin indices is about 3x faster than histc (non-finite values land in bin 0)
    index = x.sub(lo).mul_(bins / width).to(torch.int32).clamp_(0, bins - 1)
    return torch.bincount(index, minlength=bins).to(x.dtype)


def mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population standard deviation of a flat tensor.

    Two passes (mean, then the centered sum of squares): as accurate as ``torch.std_mean`` and
    several times faster on the CPU.
    """
    mean = x.mean()
    d = x - mean
    return mean, torch.sqrt(torch.dot(d, d) / x.numel())


def percentiles(x: Tensor, qs: tuple[float, ...], row: int = 1) -> Tensor:
    """Percentiles ``qs`` (fractions) of a tensor, linear interpolation as ``numpy.percentile``.

    Selection, not a full sort: ``numpy.partition`` on the CPU (one call for every order statistic),
    ``torch.topk`` of the shorter tail elsewhere; above :data:`MAX_PERCENTILE_VALUES` values, on a
    contiguous copy of a :func:`subsample`.
    """
    x = subsample(_flat(x), MAX_PERCENTILE_VALUES, row).contiguous()
    n = x.numel()
    ranks = []
    for q in qs:
        h = (n - 1) * q
        i = math.floor(h)
        ranks.append((i, min(i + 1, n - 1), h - i))
    if x.device.type == "cpu":
        part = np.partition(x.numpy(), sorted({k for i, j, _ in ranks for k in (i, j)}))
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf of a diverged network: NaN, as torch gives
            return torch.tensor([part[i] + (part[j] - part[i]) * f for i, j, f in ranks], dtype=x.dtype)
    return topk_percentiles(x, ranks)


def topk_percentiles(x: Tensor, ranks: list[tuple[int, int, float]]) -> Tensor:
    """``x[i] + (x[j] - x[i]) * f`` of the sorted flat ``x`` for each ``(i, j, f)``, by ``torch.topk``."""
    n = x.numel()
    out = []
    for i, j, f in ranks:
        if j < n - 1 - i:  # order statistics i and j (from 0, ascending) among the j + 1 smallest
            a, b = torch.topk(x, j + 1, largest=False, sorted=True).values[[i, j]]
        else:  # ... or among the n - i largest, in descending order
            a, b = torch.topk(x, n - i, largest=True, sorted=True).values[[n - 1 - i, n - 1 - j]]
        out.append(a + (b - a) * f)
    return torch.stack(out)


def activation_stat_names(spec: ActivationSpec | None) -> tuple[str, ...]:
    """Names of the statistics :func:`activation_stats` returns for an activation ``spec``."""
    names = ("mean", "std", "p2", "p98")
    if spec is not None and spec.saturated is not None:
        names += ("saturated",)
    if spec is not None and spec.dead is not None:
        names += ("dead",)
    return names


def activation_stats(z: Tensor, spec: ActivationSpec | None, bins: int, defer: bool = False) -> Tensor | Finish:
    """Mean, std, 2nd/98th percentiles, [saturated], [dead], then the histogram of activations ``z``.

    ``z`` has the examples along dim 0. ``saturated`` is the fraction of values the registry calls
    saturated; ``dead`` the fraction of units inactive on every example. A unit is every non-batch
    position, except for 4-D and 5-D outputs (convolutions, ``(N, C, H, W)``), where it is a channel:
    a filter dead at every position of every example (a background pixel alone would be no sign).
    The histogram spans the activation's registry range, widened to the data when they leave it;
    without a registry entry it spans the data.

    The reductions over every value run now; with ``defer`` the selection and the binning of the two
    subsamples (copies, so ``z`` may change afterwards) are left to the returned :data:`Finish`.
    """
    z = z.detach()
    x = _flat(z)
    row = z[0].numel()
    mean, std = mean_std(x)
    zmin, zmax = torch.aminmax(x)
    head = [mean, std]
    if spec is not None:
        if spec.saturated is not None:
            head.append(torch.count_nonzero(spec.saturated(z)) / z.numel())
        if spec.dead is not None:
            inactive = spec.dead(z)
            if z.dim() >= 4:  # (N, C, H, W[, D]): a unit is a channel, its filter at every position
                inactive = inactive.transpose(0, 1).reshape(z.shape[1], -1)
                dead = inactive.all(dim=1)
            else:
                dead = inactive.reshape(z.shape[0], -1).all(dim=0)
            head.append(torch.count_nonzero(dead) / dead.numel())
        lo = torch.clamp(zmin, max=spec.range[0])
        hi = torch.clamp(zmax, min=spec.range[1])
    else:
        lo, hi = zmin, zmax
    head = torch.stack([h.to(x.dtype) for h in head] + [lo.to(x.dtype), hi.to(x.dtype)])
    sample_p = _sample(x, MAX_PERCENTILE_VALUES, row, defer)
    sample_h = _sample(x, MAX_HISTOGRAM_VALUES, row, defer)

    def finish() -> Tensor:
        p = percentiles(sample_p, (0.02, 0.98))
        return torch.cat([head[:2], p.to(head.dtype), head[2:], histogram(sample_h, head[-2], head[-1], bins)])

    return finish if defer else finish()


def _sample(x: Tensor, limit: int, row: int, copy: bool) -> Tensor:
    """:func:`subsample` of flat ``x``; a copy of its own when ``copy`` (a subsample already is one)."""
    s = subsample(x, limit, row)
    return s.clone() if copy and s is x else s


def _abs_max(x: Tensor) -> Tensor:
    lo, hi = torch.aminmax(x)
    return torch.maximum(-lo, hi)


def gradient_stats(g: Tensor, bins: int, defer: bool = False) -> Tensor | Finish:
    """Mean and std of back-propagated gradients, then their histogram over ``[-max|g|, max|g|]``
    (``defer``: the binning of the subsample left to the returned :data:`Finish`)."""
    x = _flat(g)
    mean, std = mean_std(x)
    m = _abs_max(x)
    head = torch.stack([mean, std, -m, m])
    sample = _sample(x, MAX_HISTOGRAM_VALUES, g[0].numel() if g.dim() else 1, defer)

    def finish() -> Tensor:
        return torch.cat([head, histogram(sample, head[2], head[3], bins)])

    return finish if defer else finish()


def weight_gradient_stats(g: Tensor, bins: int, defer: bool = False) -> Tensor | Finish:
    """Mean, std and L2 norm of a weight gradient, then its histogram over ``[-max|g|, max|g|]``.

    The std comes from the raw moments, ``sqrt(mean(g^2) - mean(g)^2)``, which saves a pass over
    the largest tensors of the record; gradient means are small against their spread. ``defer``: the
    histogram of the subsample is left to the returned :data:`Finish`.
    """
    g = g if g.layout == torch.strided else g.to_dense()  # a sparse gradient (nn.Embedding(sparse=True))
    x = _flat(g)
    n = x.numel()
    mean, square = x.mean(), torch.dot(x, x)
    std = torch.sqrt((square / n - mean.square()).clamp_min(0.0))
    head = torch.stack([mean, std, square.sqrt()])
    sample = _sample(x, MAX_HISTOGRAM_VALUES, g[0].numel(), defer)

    def finish() -> Tensor:
        m = _abs_max(sample)  # the histogram's range: it counts the sample only
        return torch.cat([head, -m[None], m[None], histogram(sample, -m, m, bins)])

    return finish if defer else finish()


def weight_sample(w: Tensor) -> Tensor:
    """A copy of the values of weight ``w`` that :func:`update_ratio` compares (all of them, up to
    :data:`MAX_UPDATE_VALUES`)."""
    return subsample(_flat(w), MAX_UPDATE_VALUES, w[0].numel()).clone()


def update_ratio(before: Tensor, w: Tensor) -> Tensor:
    """``||w - w_before|| / ||w_before||`` on the sample :func:`weight_sample` took before the step (shape (1,))."""
    now = subsample(_flat(w), MAX_UPDATE_VALUES, w[0].numel())
    return (torch.linalg.vector_norm(now - before) / torch.linalg.vector_norm(before))[None]
