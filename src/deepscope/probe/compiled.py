"""The statistics of a ``torch.compile``d model's records, computed by compiled (inductor) kernels.

For a compiled model the hooks only keep the tensors of a record (the replay's activations and dLoss/ds, the
monitor pass's); when the record is finished, one ``torch.compile``d function (``dynamic=False``,
``fullgraph=True``: no ``.item()``, no hook, no break inside) takes them all and returns one flat tensor with
every layer's statistics, in the order and with the values of :mod:`deepscope.probe.stats`:

- mean, std (two passes), min/max, saturated and dead fractions over every value, as in eager mode;
- the 2nd/98th percentiles from ``torch.topk`` of the shorter tail of the same subsample (eager mode selects with
  ``numpy.partition`` on the CPU, which does not trace: ``torch._dynamo`` reports it unsupported; the order
  statistics and the interpolation are the same);
- the histogram of the same subsample by ``index_add_`` of ones at the same bin indices (eager mode:
  ``torch.bincount`` on the CPU, ``torch.histc`` elsewhere).

One graph per record kind and shapes (the monitor pass, the training step): the layers of a record are batched
into it. Weight-gradient statistics and update ratios are read when the optimizer steps and stay eager (one
reduction per weight, as in eager mode). If compiling or running the function fails, the record's statistics
are computed eagerly and ``probe.unavailable["compiled statistics"]`` says why.
"""

from __future__ import annotations

import math
import types
from itertools import count

import torch
from torch import Tensor

from deepscope.nn.activations import ActivationSpec
from deepscope.probe.stats import (
    MAX_HISTOGRAM_VALUES,
    MAX_PERCENTILE_VALUES,
    Finish,
    activation_stat_names,
    activation_stats,
    gradient_stats,
    sample_index,
    topk_percentiles,
)

__all__ = ["PART", "Batch", "CompiledStats"]

PART = "compiled statistics"
_ids = count()


def _histogram(s: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    width = (hi - lo).clamp_min(torch.finfo(s.dtype).tiny)
    index = s.sub(lo).mul(bins / width).to(torch.int32).clamp(0, bins - 1)
    return torch.zeros(bins, dtype=s.dtype, device=s.device).index_add_(0, index, torch.ones_like(s))


def _percentiles(s: Tensor, qs: tuple[float, ...]) -> Tensor:
    """By ``torch.topk`` of the shorter tail (a selection: a full ``torch.sort`` of the 16,384-value subsample took
    1.3 ms per tensor on one CPU thread, most of a record's compiled statistics)."""
    n, ranks = s.numel(), []
    for q in qs:
        h = (n - 1) * q
        i = math.floor(h)
        ranks.append((i, min(i + 1, n - 1), h - i))
    return topk_percentiles(s, ranks)


def _take(x: Tensor, index: Tensor | None) -> Tensor:
    return x if index is None else x.index_select(0, index)


def _record(tensors: list[Tensor], indices: list[tuple], plan: tuple, bins: int) -> Tensor:
    """Every layer's statistics of one record in one flat tensor (traced by ``torch.compile``)."""
    out = []
    for t, (ip, ih), (kind, spec) in zip(tensors, indices, plan, strict=True):
        x = t.reshape(-1)
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        mean = x.mean()
        d = x - mean
        std = torch.sqrt(torch.dot(d, d) / x.numel())
        if kind == "preact_grad":
            lo, hi = torch.aminmax(x)
            m = torch.maximum(-lo, hi)
            out += [torch.stack([mean, std, -m, m]), _histogram(_take(x, ih), -m, m, bins)]
            continue
        zmin, zmax = torch.aminmax(x)
        head = [mean, std, _percentiles(_take(x, ip), (0.02, 0.98))]
        lo, hi = zmin, zmax
        if spec is not None:
            if spec.saturated is not None:
                head.append((torch.count_nonzero(spec.saturated(t)) / t.numel()).to(x.dtype)[None])
            if spec.dead is not None:
                inactive = spec.dead(t)
                if t.dim() >= 4:
                    dead = inactive.transpose(0, 1).reshape(t.shape[1], -1).all(dim=1)
                else:
                    dead = inactive.reshape(t.shape[0], -1).all(dim=0)
                head.append((torch.count_nonzero(dead) / dead.numel()).to(x.dtype)[None])
            lo = torch.clamp(zmin, max=spec.range[0])
            hi = torch.clamp(zmax, min=spec.range[1])
        head = [h if h.dim() else h[None] for h in head]
        out += [torch.cat(head), torch.stack([lo, hi]), _histogram(_take(x, ih), lo, hi, bins)]
    return torch.cat(out)


class CompiledStats:
    """One probe's compiled reduction (its own code object, so its graphs and recompilation limit are its own)."""

    def __init__(self, bins: int, unavailable: dict[str, str]):
        self.bins, self.unavailable = bins, unavailable
        code = _record.__code__.replace(co_name=f"_deepscope_record_stats_{next(_ids)}")
        fn = types.FunctionType(code, _record.__globals__, code.co_name)
        self.fn = torch.compile(fn, dynamic=False, fullgraph=True)
        self.failed = False
        self.signatures: set[tuple] = set()  # the records' kinds and shapes run so far: one graph each
    def batch(self) -> Batch:
        return Batch(self)


class Batch:
    """The tensors one record keeps; :meth:`add` returns the :data:`Finish` of each, all computed by one call."""

    def __init__(self, owner: CompiledStats):
        self.owner = owner
        self.items: list[tuple[str, Tensor, ActivationSpec | None]] = []
        self.result: list[Tensor] | None = None

    def add(self, kind: str, t: Tensor, spec: ActivationSpec | None) -> Finish:
        k = len(self.items)
        self.items.append((kind, t.detach().clone(), spec))
        return lambda: self._run()[k]

    def _run(self) -> list[Tensor]:
        if self.result is None:
            owner = self.owner
            if not owner.failed:
                try:
                    self.result = self._compiled()
                except Exception as e:  # the eager statistics instead, and the reason
                    owner.failed = True
                    reason = f"{type(e).__name__}: {e}"
                    owner.unavailable[PART] = f"computed eagerly: the compiled reduction failed: {reason}"
            if self.result is None:
                self.result = [self._eager(kind, t, spec) for kind, t, spec in self.items]
            self.items = []
        return self.result

    def _compiled(self) -> list[Tensor]:
        tensors = [t for _, t, _ in self.items]
        indices = []
        for _, t, _ in self.items:
            n, row = t.numel(), t[0].numel() if t.dim() else 1
            indices.append(tuple(sample_index(n, limit, row, t.device)
                                 for limit in (MAX_PERCENTILE_VALUES, MAX_HISTOGRAM_VALUES)))
        plan = tuple((kind, spec) for kind, _, spec in self.items)
        bins = self.owner.bins
        with torch.compiler.set_stance("default"), torch.no_grad():
            flat = self.owner.fn(tensors, indices, plan, bins)
        self.owner.signatures.add(tuple((kind, id(spec), t.shape, t.dtype, t.device) for kind, t, spec in self.items))
        out, at = [], 0
        for kind, _, spec in self.items:
            n = 4 + bins if kind == "preact_grad" else _activation_size(spec) + 2 + bins
            out.append(flat[at : at + n])
            at += n
        return out

    def _eager(self, kind: str, t: Tensor, spec: ActivationSpec | None) -> Tensor:
        if kind == "preact_grad":
            return gradient_stats(t, self.owner.bins)
        return activation_stats(t, spec, self.owner.bins)


def _activation_size(spec: ActivationSpec | None) -> int:
    return len(activation_stat_names(spec))
