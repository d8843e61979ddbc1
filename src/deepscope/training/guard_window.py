"""The guard's detection rules: a window of the last healthy (loss, gradient norm) pairs, on the host.

Each update the guard reads two numbers from the device (the loss and the gradients' total 2-norm, in one transfer:
the one host read a conditional ``optimizer.step()`` needs anyway) and asks :meth:`Window.check` what they are:

- ``nonfinite``: the loss or the norm is NaN or infinite;
- ``loss_spike`` / ``grad_spike``: its logarithm above ``median + z x spread`` of the last ``size`` healthy updates
  (after ``warmup`` of them; spread = the larger of 1.4826 x the median absolute deviation and the standard
  deviation; limits recomputed every ``refresh`` updates). The log scale matters: the loss of a small batch late
  in training varies by factors, not by amounts. During the warm-up, where there is no spread to trust yet, a loss
  above ``WARMUP_LOSS`` = 10 x the largest healthy loss so far (Megatron-LM's rule for a spiky loss) or a gradient
  norm above ``WARMUP_GRAD`` = 100 x the largest so far is a spike: a poisoned example met in the first updates is
  skipped too;
- ``divergence``: the window's median loss above ``EXPLOSION`` x its median at the end of the warm-up, or a moving
  average of the last ~4 log losses (each capped at the spike limit) above ``SUSTAINED`` x the median;
- ``rise``: a loss that stays high without any single spike -- a one-sided CUSUM (Page 1954, "Continuous
  Inspection Schemes", Biometrika 41) of the robust z-scores of the log loss, ``S = max(0, S + min(z, z_max) - K)``
  over the updates under the spike limit, crosses ``H``. ``K = 1.5`` and ``H = 20``: a loss held ~2.5 spreads
  above its median for ~20 updates (what a learning rate x50 did to a CNN under Adam), while the clean runs of
  ``benchmarks/guard.py`` (3 x 1,200 updates) never took S past 8.

A loss that can be negative (a Gaussian negative log-likelihood, a loss with a baseline subtracted) has no
logarithm: at the first negative loss the loss is watched on its own (linear) scale from then on -- the window's
values are converted, the spike and rise rules go on in loss units, and the divergence and warm-up rules, which
are factors over a level, are off for the loss (the gradient norm, always positive, keeps them). On the log scale a
loss hovering around zero flagged almost every update (the negative ones all clamped to one value).

A loss or gradient norm under ``NEGLIGIBLE`` (1 %) of the largest healthy one so far is never flagged: a network
that fits its batches exactly has losses of 0 (clamped on the log scale) and then of 4e-9, a jump of 8 log units
that is no trouble. The rules look at values above that floor only.

Nothing here touches the device: a step costs a few float operations, and a sort of ``size`` floats every
``refresh`` updates.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["CUSUM_H", "CUSUM_K", "EXPLOSION", "NEGLIGIBLE", "SUSTAINED", "WARMUP_GRAD", "WARMUP_LOSS", "Window"]

EXPLOSION = 10.0  # divergence: the window's median loss above this many times its median at the end of warm-up
SUSTAINED = 10.0  # divergence: the moving average of the last ~4 losses above this many times the window's median
WARMUP_LOSS, WARMUP_GRAD = 10.0, 100.0  # spikes during the warm-up: factors over the largest healthy values so far
CUSUM_K, CUSUM_H = 1.5, 10.0  # rise: the CUSUM's allowance and decision interval, in spreads of the log loss
_TINY = 1e-12
NEGLIGIBLE = 1e-2  # a loss or gradient norm under this x the largest healthy one so far is never flagged
_LOG_NEGLIGIBLE = math.log(NEGLIGIBLE)


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class Window:
    """The logarithms of the last ``size`` healthy (loss, gradient norm) pairs (two ring buffers of floats) and
    the limits above which a new pair is flagged. See the module's documentation for the rules."""

    def __init__(self, size: int, warmup: int, z: float, refresh: int):
        self.size, self.warmup, self.zmax, self.refresh = size, warmup, z, refresh
        self.values: tuple[list[float], list[float]] = ([], [])
        self.count = 0
        self.center, self.spread, self.limit = [0.0, 0.0], [1.0, 1.0], [math.inf, math.inf]
        self.reference: float | None = None
        self.diverged = False
        self.recent, self.sustained = 0.0, math.inf  # the ~4-update moving average of the log loss, and its limit
        self.cusum = 0.0
        self.highest = [-math.inf, -math.inf]  # the largest healthy log loss and log norm (the warm-up's limits)
        self.last: tuple[float, float] = (0.0, 0.0)  # the logarithms of the pair last checked
        self.linear = False  # the loss on its own scale (it went negative once): no logarithm, no ratio rules

    def check(self, loss: float, norm: float) -> str | None:
        """The kind of trouble of a (loss, gradient norm) pair, or None when it is healthy."""
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return "nonfinite"
        if loss < 0 and not self.linear:
            self._to_linear()
        ll, lg = loss if self.linear else math.log(max(loss, _TINY)), math.log(max(norm, _TINY))
        self.last = (ll, lg)
        self.recent = 0.75 * self.recent + 0.25 * min(ll, self.limit[0])  # one spike moves it by 1/4 of the limit
        # values under NEGLIGIBLE x the largest healthy one so far cannot be trouble, whatever their ratio to the
        # window (a net that fits its batches exactly: losses of 0 then 4e-9, gradient norms of 0 then 7e-8)
        level = self.highest
        loss_counts = self.linear or ll > level[0] + _LOG_NEGLIGIBLE
        if not self.linear and loss_counts and (self.diverged or self.recent > self.sustained):
            return "divergence"
        early = 0 < self.count < self.warmup
        if loss_counts and (ll > self.limit[0] or (early and not self.linear and
                                                   ll > self.highest[0] + math.log(WARMUP_LOSS))):
            return "loss_spike"
        if lg > level[1] + _LOG_NEGLIGIBLE and (lg > self.limit[1] or
                                                       (early and lg > self.highest[1] + math.log(WARMUP_GRAD))):
            return "grad_spike"
        if self.count >= self.warmup:
            z = (ll - self.center[0]) / self.spread[0] if loss_counts else 0.0
            self.cusum = max(0.0, self.cusum + min(z, self.zmax) - CUSUM_K)
            if self.cusum > CUSUM_H:
                return "rise"
        return None

    def add(self) -> None:
        """Keep the pair last checked (it was healthy and applied)."""
        ll, lg = self.last
        highest, (losses, norms) = self.highest, self.values
        if ll > highest[0]:
            highest[0] = ll
        if lg > highest[1]:
            highest[1] = lg
        if len(losses) < self.size:
            losses.append(ll)
            norms.append(lg)
        else:
            i = self.count % self.size
            losses[i], norms[i] = ll, lg
        self.count += 1
        if self.count >= self.warmup and self.count % self.refresh == 0:
            self._update_limits()

    def _update_limits(self) -> None:
        for k, values in enumerate(self.values):
            n = len(values)
            center = _median(values)
            mad = _median([abs(v - center) for v in values])
            mean = sum(values) / n
            var = max(sum([v * v for v in values]) / n - mean * mean, 0.0) * n / max(n - 1, 1)
            self.center[k], self.spread[k] = center, max(1.4826 * mad, math.sqrt(var)) + 1e-3
        if self.reference is None:
            self.reference = self.center[0]
        self.diverged = not self.linear and self.center[0] > math.log(EXPLOSION) + self.reference
        self.sustained = self.center[0] + math.log(SUSTAINED)
        self.limit = [-math.inf] * 2 if self.diverged else \
            [c + self.zmax * s for c, s in zip(self.center, self.spread, strict=True)]

    def _to_linear(self) -> None:
        """The loss went negative: its window's values back to the loss's own scale, the limits recomputed."""
        self.linear, self.cusum, self.diverged = True, 0.0, False
        self.values[0][:] = [math.exp(v) for v in self.values[0]]
        self.highest[0] = math.exp(self.highest[0]) if self.values[0] else -math.inf
        if self.count >= self.warmup and self.values[0]:
            self._update_limits()

    def z(self) -> tuple[float, float]:
        """The z-scores of the pair last checked (NaN during the warm-up)."""
        if self.count < self.warmup:
            return math.nan, math.nan
        return tuple((v - c) / s for v, c, s in zip(self.last, self.center, self.spread, strict=True))  # type: ignore

    def reset_rise(self) -> None:
        self.cusum = 0.0

    def state(self, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """A copy of the window's state (plain numbers and lists: it goes into checkpoints); with ``state``: load
        a copy of it."""
        for k, v in (state or {}).items():
            setattr(self, k, _copy(v))
        return {k: _copy(v) for k, v in vars(self).items()}


def _copy(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return type(v)(_copy(x) for x in v)
    return v
