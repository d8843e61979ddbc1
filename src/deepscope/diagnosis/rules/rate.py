"""The learning-rate rules on the training loss curve: too high (NaN/Inf, a run the trainer stopped, a sustained
rise, a blow-up in the first updates the network never recovers from) and too low (tiny steps and a loss that
barely moves, or a network still at the chance level).

They read the trainer's scalar rows (``"train/loss"`` of every update, the evaluations) and the probe's
update/weight ratios; :mod:`deepscope.diagnosis.rules.training` runs them with the other curve rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import median
from typing import Any

from deepscope.diagnosis.advice import spec_value
from deepscope.diagnosis.findings import Finding
from deepscope.diagnosis.rules.scale import ACTIVATION_GROWTH_BLOWN, activation_growth
from deepscope.records import Records

__all__ = ["curve", "rule_learning_rate"]

# --- thresholds -----------------------------------------------------------------------------------
# Learning rate (Varma & Das, ch. 7, section 7.2, fig. 7.6), read from the "train/loss" curve, smoothed by taking
# the median of LR_WINDOWS equal windows (robust to mini-batch noise):
LR_WINDOWS = 10
LR_MIN_POINTS = 6  # fewer loss points than this -> only the NaN/Inf check runs
LR_RISE = 0.25  # smoothed loss rising 25% above its running minimum (or its start) -> too high ...
LR_RISE_WINDOWS = 2  # ... in this many consecutive windows: one window of a healthy run can rise 25% by chance
# ... by at least LR_RISE_MIN_JUMP x the starting loss, as for loss spikes: near a loss of 0 a relative rise is noise
# (a torch.nn TransformerEncoder classifier under Adam at lr 1e-3 went 0.72 -> 0.052 -> 0.089 -> 0.007, and with
# another seed 0.72 -> 0.005 -> 0.022 at the end: +5 % and +2.4 % of its start, at 98-99 % accuracy).
LR_RISE_MIN_JUMP = 0.1
# ... measured from the first losses only when their median lies LR_RISE_BASE_Z standard errors below the rest of the
# first window (of at least LR_RISE_BASE_MIN losses), else from the first window's median (see _rise_base).
LR_RISE_BASE_Z = 3.0
# ... and by more than LR_RISE_Z standard errors of a window's median (the losses' spread within their windows): a
# flat loss of batches of 10 (MSE +-45 %) drifts by 2 of them between the lowest of ten window medians and the next
# two (0.63 -> 0.81: "29 %" on a network that learned nothing, under SGD at lr 1e-3).
LR_RISE_Z = 3.0
LR_RISE_BASE_MIN = 5
# ... and "stayed there": the run does not end LR_SLOW_DROP (10 %) or more below the lowest value it had reached
# before the rise. A rise the loss then falls well below is a transient, not a rate too high to train at (a post-LN
# nn.TransformerEncoder regressor under Adam at lr 1e-3: 0.51 in the first updates, 0.79 over updates 1-40, 0.033 at
# update 200, R^2 0.96); a loss thrown up and settling back a little below its start (2.3 -> 6 -> 2.2) learned
# nothing past it.
# Too low: "a slow decrease in the loss" (Varma & Das, ch. 7, fig. 7.6) -- the smoothed loss falls less than
# LR_SLOW_DROP -- *and* small steps: the probe's update/weight ratio |dW| / |W| of the fastest-moving layer,
# median over records, below LR_UPDATE_RATIO_LOW (a common rule of thumb puts a healthy ratio near 1e-3).
# The loss alone cannot tell a low rate from a hard task early in training (Shapeset's loss falls a few
# percent in the first hundreds of updates at any good rate), so without update ratios this rule is silent.
LR_SLOW_DROP = 0.1
LR_UPDATE_RATIO_LOW = 1e-4
# A loss that has not moved at all -- less than LR_FLAT_DROP (3 %) over at least LR_FLAT_UPDATES updates -- in
# steps below LR_FLAT_RATIO is a rate too low for this network (a transformer trained from scratch at a
# fine-tuning rate) when no chance level was recorded to tell it from labels nothing explains (a framework
# callback; doctor records one, and its plateau rule decides there).
LR_FLAT_DROP = 0.03  # a hard task's loss falls a little more early on (4 % in 1,000 updates in the tests)
LR_FLAT_UPDATES = 150
LR_FLAT_RATIO = 1e-2
# A training loss can fall 10 % or more in tiny steps when it starts far above the chance level (a ReLU net whose
# initial logits are large, Adam at lr 1e-6: 2.0 -> 1.8 against a chance level of 1.39) while the network learns
# nothing: with the chance error recorded, tiny steps (below LR_UPDATE_RATIO_LOW) whose validation loss falls less
# than LR_SLOW_DROP over the evaluations, at a validation error still within LR_CHANCE_MARGIN of the chance
# error (or above it), are a rate too low as well. (Tuned on relu-adam-lr-1e-6 and lr-too-low of the repair
# benchmark; a converged net that takes small steps is far below the chance error, so it is not called.)
# Too high in the first updates, then stuck: the first updates blow the network up -- the loss of one of the first
# LR_EARLY_UPDATES updates is LR_EARLY_JUMP x the loss at initialization, or one update changes the fastest layer's
# weights by LR_HUGE_STEP of their norm (a healthy ratio is ~1e-3; Adam at lr 3e-3 on a 3 x 3 conv gives 0.06) --
# and the loss never falls LR_SLOW_DROP below its value at initialization afterwards: the units the first steps
# killed or saturated stay so, and the network sits at the chance level (Adam at lr 0.2 on a small CNN: the loss
# jumps 14x at the second update, the weights change by 4x their norm, then 1.39 flat). Tuned on cnn-adam-lr-0.2.
LR_EARLY_UPDATES = 20
LR_EARLY_JUMP = 3.0  # the loss of one healthy update stays within 2.5x of its neighbours (the spike rules)
# ... and the jump must stand out of the batches' own noise: its log above the median log loss after the first
# LR_EARLY_UPDATES by LR_EARLY_Z robust spreads (1.4826 x MAD) of those. The first loss of one small batch can be low
# by chance (an MSE over 10 examples: 0.49 where the run sat at 0.9, then one batch at 2.3 -- "4.7x" with nothing
# blown up, 2-3 spreads; a post-LN transformer regressor under Adam at lr 3e-4); a blow-up then flat at the chance
# level stands tens of spreads out.
LR_EARLY_Z = 4.0
LR_HUGE_STEP = 1.0
# ... or the first update changes the weights of the median layer by LR_HUGE_STEP_MEDIAN of their norm: a post-LN
# nn.TransformerEncoder under Adam at lr 0.05 moved every layer by 0.34-0.69 of its norm at once (loss 1.8 -> 2.8,
# then flat at the chance level, the lower layers' later steps 1e-6 of weights grown 100x); healthy runs measured
# here: 0.005-0.04 (a BN ResNet, a pre-LN encoder, an LSTM LM), 0 for a net whose gradients vanish. Set on that
# encoder; the LR_SLOW_DROP condition below still spares a net that then learns (0.68 with [0, 255] inputs).
LR_HUGE_STEP_MEDIAN = 0.3
LR_MIN_EVALS = 4  # evaluations needed to read the validation loss's drop
LR_CHANCE_MARGIN = 0.05  # "at the chance level": a validation error within 5 % (relative) of the chance error


# --- learning-rate rules on the loss curve --------------------------------------------------------


def _windows(values: Sequence[float], n: int) -> list[float]:
    """Medians of ``n`` (or fewer) consecutive equal windows."""
    n = max(1, min(n, len(values)))
    size = len(values) / n
    return [median(values[round(i * size): max(round((i + 1) * size), round(i * size) + 1)]) for i in range(n)]


def _window_noise(values: Sequence[float], n: int) -> float:
    """The standard error of one window's median: 1.2533 x the losses' robust spread around their own window's
    median (1.4826 x MAD, so a trend across windows does not count) / sqrt(window size)."""
    n = max(1, min(n, len(values)))
    size = len(values) / n
    deviations = []
    for i in range(n):
        window = values[round(i * size): max(round((i + 1) * size), round(i * size) + 1)]
        center = median(window)
        deviations += [abs(v - center) for v in window]
    return 1.2533 * 1.4826 * median(deviations) / math.sqrt(max(size, 1.0))


def _rise_base(values: Sequence[float], head: int, start: float, first_window: float) -> float:
    """Where the rise rule's running minimum starts: the first ``head`` losses' median ``start`` when it lies
    clearly below the rest of the first window -- by more than LR_RISE_BASE_Z standard errors of a median of
    ``head`` losses, the spread read from that window (the loss was thrown up within it: 2.3 for three updates, then
    6) --, else the first window's median. The median of three losses of small batches is noise (an MSE over 10
    examples varies by +-45 %): from a lucky low one a flat loss "rose" 78 % (a post-LN transformer regressor under
    SGD at lr 1e-3, 400 updates, whose window medians all sat at 0.8-0.95 while the median of its first three losses
    was 0.52)."""
    rest = values[head: head + round(len(values) / LR_WINDOWS)]
    if len(rest) < LR_RISE_BASE_MIN:
        return start
    center = median(rest)
    spread = 1.4826 * median([abs(v - center) for v in rest])
    return start if center - start > LR_RISE_BASE_Z * 1.2533 * spread / math.sqrt(head) else first_window


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


def _lr_evidence(spec: Any) -> dict[str, float]:
    """``{"lr": the spec's learning rate}`` when it is a number, else nothing."""
    lr = spec_value(spec, "lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float):
        return {}
    try:
        return {"lr": float(lr)}
    except OverflowError:
        return {}


def rule_learning_rate(loss: list[tuple[int, float]], rec: Records, spec: Any, explained: bool,
                        diverged: list[tuple[int, float]] = (), chance_known: bool = True,
                        valid: list[tuple[int, float]] = (), errors: list[tuple[int, float]] = (),
                        chance_error: float | None = None) -> list[Finding]:
    if not loss and not diverged:
        return []
    evidence_lr = _lr_evidence(spec)
    bad = [s for s, v in loss if not math.isfinite(v)]
    lower = "Lower the learning rate (e.g. 10x) and anneal it (step decay, or reduce on plateau; Varma & Das, ch. 7 " \
            "section 7.2); gradient clipping guards against the occasional huge step."
    if bad:
        return [Finding("lr_too_high", "error", f"the training loss became NaN/Inf at update {bad[0]}",
                        first_step=bad[0], recovers=False, evidence={"nan_step": float(bad[0]), **evidence_lr},
                        advice=lower)]
    if diverged:  # the trainer stopped the run: a finite loss that exploded ("train/diverged" at that update)
        step = int(diverged[0][0])
        return [Finding("lr_too_high", "error", f"the training loss exploded and the run was stopped at update {step}",
                        first_step=step, recovers=False, evidence={"diverged_step": float(step), **evidence_lr},
                        advice=lower)]
    if len(loss) < LR_MIN_POINTS:
        return []
    steps = [s for s, _ in loss]
    values = [v for _, v in loss]
    smooth = _windows(values, LR_WINDOWS)
    head = max(1, min(3, len(values) // LR_WINDOWS))
    start = median(values[:head])
    running, rise, rise_at = _rise_base(values, head, start, smooth[0]), 0.0, None
    noise = LR_RISE_Z * _window_noise(values, LR_WINDOWS)
    for i, v in enumerate(smooth):
        ahead = smooth[i: i + LR_RISE_WINDOWS]
        if (running > 0 and len(ahead) == LR_RISE_WINDOWS and min(ahead) / running - 1.0 > rise
                and min(ahead) - running > max(LR_RISE_MIN_JUMP * start, noise)
                and smooth[-1] > (1.0 - LR_SLOW_DROP) * running):
            rise, rise_at = min(ahead) / running - 1.0, i
        running = min(running, v)
    if rise > LR_RISE:
        step = steps[min(len(steps) - 1, round(rise_at * len(steps) / len(smooth)))]
        return [Finding("lr_too_high", "error",
                        f"the smoothed training loss rose {rise:.0%} above its lowest value and stayed there (from "
                        f"around update {step})",
                        first_step=step, recovers=smooth[-1] <= start,
                        evidence={"rise": rise, "loss_start": start, "loss_end": smooth[-1], "threshold": LR_RISE,
                                  **evidence_lr},
                        advice=lower)]
    blowup = _early_blowup(loss, smooth[-1], rec)
    if blowup is not None:
        step, evidence = blowup
        return [Finding("lr_too_high", "error",
                        f"the first updates blew the network up (the loss jumped {evidence['early_jump']:.1f}x its "
                        f"value at initialization, one update changed the weights by {evidence['early_step']:.2g} of "
                        "their norm) and "
                        + (f"the activations are still {evidence['activation_growth']:.3g}x their scale at "
                           "initialization: too high a rate blew the weights up in the first updates"
                           if "activation_growth" in evidence else "the loss has not fallen below its starting "
                           "value since: too high a rate killed or saturated the units in the first updates"),
                        first_step=step, recovers=False, evidence={**evidence, **evidence_lr}, advice=lower)]
    if explained or start <= 0:
        return []
    drop = (start - smooth[-1]) / start
    step_ratio = _median_fastest_update_ratio(rec)
    # a ratio of exactly 0 is no step at all (every unit dead, every gradient zero): not a small rate
    tiny = step_ratio is not None and 0 < step_ratio < LR_UPDATE_RATIO_LOW
    if tiny and (drop < LR_SLOW_DROP or _nothing_learned(valid, errors, chance_error)):
        what = "training"
        if drop >= LR_SLOW_DROP:  # from a start far above the chance level: the validation loss tells
            what, drop = "validation", _relative_drop(valid)
        evidence = {"relative_drop": drop, "update_ratio": step_ratio, "drop_threshold": LR_SLOW_DROP,
                    "ratio_threshold": LR_UPDATE_RATIO_LOW, **evidence_lr}
        return [Finding("lr_too_low", "warning",
                        f"the {what} loss {f'fell only {drop:.1%}' if drop >= 0 else f'rose {-drop:.1%}'} over "
                        f"{steps[-1] - steps[0]} updates, in steps that "
                        f"change the weights by {step_ratio:.1e} of their norm"
                        + (", and the error stays at the chance level" if what == "validation" else ""),
                        first_step=steps[0], recovers=None, evidence=evidence,
                        advice="Raise the learning rate (e.g. 3-10x) and anneal it later (Varma & Das, ch. 7, "
                        "section 7.2), or use an adaptive optimizer (Adam, RMSProp).")]
    if (not chance_known and step_ratio is not None and 0 < step_ratio < LR_FLAT_RATIO and drop < LR_FLAT_DROP
            and steps[-1] - steps[0] >= LR_FLAT_UPDATES):
        return [Finding("lr_too_low", "warning",
                        f"the training loss has not moved ({drop:.1%} over {steps[-1] - steps[0]} updates) while the "
                        f"weights change by {step_ratio:.1e} of their norm per step: the learning rate is too low for "
                        "this network to learn in this many updates",
                        first_step=steps[0], recovers=None,
                        evidence={"relative_drop": drop, "update_ratio": step_ratio, "drop_threshold": LR_FLAT_DROP,
                                  "ratio_threshold": LR_FLAT_RATIO, **evidence_lr},
                        advice="Raise the learning rate (a network trained from scratch needs more than a fine-tuning "
                        "rate: e.g. 1e-3 with Adam) or train longer; if it still does not move, check the labels.")]
    return []


def _early_blowup(loss: list[tuple[int, float]], end: float, rec: Records) -> tuple[int, dict[str, float]] | None:
    """``(update, evidence)`` when the first updates blew the network up and it never recovered (LR_EARLY_JUMP,
    LR_HUGE_STEP, LR_SLOW_DROP), else None."""
    first = loss[0][1]
    early = loss[: LR_EARLY_UPDATES + 1]
    jump_at, peak = max(early, key=lambda p: p[1])
    jump = peak / first if first > 0 else 0.0
    later = [math.log(v) for _, v in loss[LR_EARLY_UPDATES + 1:] if v > 0 and math.isfinite(v)]
    if len(later) >= LR_MIN_POINTS and peak > 0:  # a peak within the batches' own noise is no blow-up
        center = median(later)
        spread = 1.4826 * median([abs(v - center) for v in later])
        if math.log(peak) - center < LR_EARLY_Z * spread:
            jump = min(jump, LR_EARLY_JUMP * 0.999)
    per_step = rec.by_step("update_ratio", "ratio")
    at_first = [v for v in per_step[min(per_step)].values() if math.isfinite(v)] if per_step else []
    step = max(at_first, default=0.0)
    typical = median(at_first) if at_first else 0.0
    huge = jump >= LR_EARLY_JUMP or step >= LR_HUGE_STEP or typical >= LR_HUGE_STEP_MEDIAN
    # ... or the loss fell but the activations are still blown up (rules.scale.ACTIVATION_GROWTH_BLOWN)
    growth = activation_growth(rec) if huge else None
    blown = growth is not None and growth >= ACTIVATION_GROWTH_BLOWN
    if not huge or first <= 0 or (end < (1 - LR_SLOW_DROP) * first and not blown):
        return None
    return (jump_at if jump >= LR_EARLY_JUMP else min(per_step)), {
        "early_jump": jump, "early_step": step, "loss_init": first, "loss_end": end,
        "early_step_median": typical, "jump_threshold": LR_EARLY_JUMP, "step_threshold": LR_HUGE_STEP,
        **({"activation_growth": growth} if blown else {})}


def _relative_drop(points: list[tuple[int, float]]) -> float:
    """How much of its first value the curve lost by its last (the smaller of the last two); inf without points."""
    values = [v for _, v in points if math.isfinite(v)]
    if len(values) < LR_MIN_EVALS or values[0] <= 0:
        return math.inf
    return (values[0] - min(values[-2:])) / values[0]


def _nothing_learned(valid: list[tuple[int, float]], errors: list[tuple[int, float]],
                     chance_error: float | None) -> bool:
    """The validation loss fell less than LR_SLOW_DROP over the evaluations and the last validation error is within
    LR_CHANCE_MARGIN of the chance error, or above it (False when these were not recorded)."""
    finite = [v for _, v in errors if math.isfinite(v)]
    if chance_error is None or not math.isfinite(chance_error) or not finite:
        return False
    return _relative_drop(valid) < LR_SLOW_DROP and finite[-1] >= (1 - LR_CHANCE_MARGIN) * chance_error


def _median_fastest_update_ratio(rec: Records) -> float | None:
    """Median over records of the largest update/weight ratio among the layers (None without ratios)."""
    per_step = rec.by_step("update_ratio", "ratio")
    fastest = [max(v for v in values.values() if math.isfinite(v)) for values in per_step.values()
               if any(math.isfinite(v) for v in values.values())]
    return median(fastest) if fastest else None
