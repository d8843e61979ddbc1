"""Rules on the training curves: learning rate, loss spikes, gradient-norm spikes, plateaus, overfitting, and
layers that do not learn (update/weight ratios).

They read the trainer's scalar rows ``dict(step, name, value)`` -- ``"train/loss"`` (every update in a
doctor run, or the mean per evaluation in a stored run), ``"train/grad_norm"`` (the gradient norm of every
update, recorded by doctor), ``"valid/loss"`` (the evaluations) -- and the probe's update/weight ratios.
Each threshold is a module-level constant below with the reasoning next to it. Every rule answers on any
rows: missing, non-finite or malformed values are skipped, never fatal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import median
from typing import Any

from deepscope.diagnosis.advice import spec_value
from deepscope.diagnosis.findings import Finding
from deepscope.records import Records

__all__ = ["curve", "training_rules"]

# --- thresholds -----------------------------------------------------------------------------------
# Learning rate (seed 004 section 7.2, fig. 7.6), read from the "train/loss" curve, smoothed by taking
# the median of LR_WINDOWS equal windows (robust to mini-batch noise):
LR_WINDOWS = 10
LR_MIN_POINTS = 6  # fewer loss points than this -> only the NaN/Inf check runs
LR_RISE = 0.25  # smoothed loss rising 25% above its running minimum (or its start) -> too high
# Too low: "a slow decrease in the loss" (seed 004 fig. 7.6) -- the smoothed loss falls less than
# LR_SLOW_DROP -- *and* small steps: the probe's update/weight ratio |dW| / |W| of the fastest-moving layer,
# median over records, below LR_UPDATE_RATIO_LOW (a common rule of thumb puts a healthy ratio near 1e-3).
# The loss alone cannot tell a low rate from a hard task early in training (Shapeset's loss falls a few
# percent in the first hundreds of updates at any good rate), so without update ratios this rule is silent.
LR_SLOW_DROP = 0.1
LR_UPDATE_RATIO_LOW = 1e-4

# --- learning-rate rules on the loss curve --------------------------------------------------------


def _windows(values: Sequence[float], n: int) -> list[float]:
    """Medians of ``n`` (or fewer) consecutive equal windows."""
    n = max(1, min(n, len(values)))
    size = len(values) / n
    return [median(values[round(i * size): max(round((i + 1) * size), round(i * size) + 1)]) for i in range(n)]


def curve(scalars: Iterable[Any], name: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of the scalar rows named ``name``, steps ascending (the last row of a step wins);
    malformed rows are skipped."""
    points: dict[int, float] = {}
    for row in scalars:
        try:
            if row["name"] == name:
                points[int(row["step"])] = float(row["value"])
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
    return sorted(points.items())


def _rule_learning_rate(loss: list[tuple[int, float]], rec: Records, spec: Any, explained: bool) -> list[Finding]:
    if not loss:
        return []
    lr = spec_value(spec, "lr")
    evidence_lr = {"lr": float(lr)} if isinstance(lr, int | float) else {}
    bad = [s for s, v in loss if not math.isfinite(v)]
    lower = "Lower the learning rate (e.g. 10x) and anneal it (step decay, or reduce on plateau; seed 004 " \
            "section 7.2); gradient clipping guards against the occasional huge step."
    if bad:
        return [Finding("lr_too_high", "error", f"the training loss became NaN/Inf at update {bad[0]}",
                        first_step=bad[0], recovers=False, evidence={"nan_step": float(bad[0]), **evidence_lr},
                        advice=lower)]
    if len(loss) < LR_MIN_POINTS:
        return []
    steps = [s for s, _ in loss]
    values = [v for _, v in loss]
    smooth = _windows(values, LR_WINDOWS)
    start = median(values[: max(1, min(3, len(values) // LR_WINDOWS))])
    running, rise, rise_at = start, 0.0, None
    for i, v in enumerate(smooth):
        if running > 0 and v / running - 1.0 > rise:
            rise, rise_at = v / running - 1.0, i
        running = min(running, v)
    if rise > LR_RISE:
        step = steps[min(len(steps) - 1, round(rise_at * len(steps) / len(smooth)))]
        return [Finding("lr_too_high", "error",
                        f"the smoothed training loss rose {rise:.0%} above its lowest value (around update {step})",
                        first_step=step, recovers=smooth[-1] <= start,
                        evidence={"rise": rise, "loss_start": start, "loss_end": smooth[-1], "threshold": LR_RISE,
                                  **evidence_lr},
                        advice=lower)]
    if explained or start <= 0:
        return []
    drop = (start - smooth[-1]) / start
    step_ratio = _median_fastest_update_ratio(rec)
    if step_ratio is not None and step_ratio < LR_UPDATE_RATIO_LOW and drop < LR_SLOW_DROP:
        evidence = {"relative_drop": drop, "update_ratio": step_ratio, "drop_threshold": LR_SLOW_DROP,
                    "ratio_threshold": LR_UPDATE_RATIO_LOW, **evidence_lr}
        return [Finding("lr_too_low", "warning",
                        f"the training loss fell only {drop:.1%} over {steps[-1] - steps[0]} updates, in steps that "
                        f"change the weights by {step_ratio:.1e} of their norm",
                        first_step=steps[0], recovers=None, evidence=evidence,
                        advice="Raise the learning rate (e.g. 3-10x) and anneal it later (seed 004 section 7.2), "
                        "or use an adaptive optimizer (Adam, RMSProp).")]
    return []


def _median_fastest_update_ratio(rec: Records) -> float | None:
    """Median over records of the largest update/weight ratio among the layers (None without ratios)."""
    per_step = rec.by_step("update_ratio", "ratio")
    fastest = [max(v for v in values.values() if math.isfinite(v)) for values in per_step.values()
               if any(math.isfinite(v) for v in values.values())]
    return median(fastest) if fastest else None




def training_rules(scalars: Iterable[Any], rec: Records, spec: Any, explained: bool) -> list[Finding]:
    """Every rule on the training curves; ``explained``: another finding already explains a flat loss."""
    scalars = list(scalars or ())
    loss = curve(scalars, "train/loss")
    return _rule_learning_rate(loss, rec, spec, explained)
