"""Rules on the training curves: learning rate (:mod:`.rate`), loss spikes, gradient-norm spikes, plateaus,
overfitting, and layers that do not learn (update/weight ratios).

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

from deepscope.diagnosis.findings import Finding
from deepscope.diagnosis.rules.rate import (  # noqa: F401 - the learning-rate thresholds are read as training.X
    LR_EARLY_JUMP,
    LR_EARLY_UPDATES,
    LR_FLAT_DROP,
    LR_FLAT_RATIO,
    LR_FLAT_UPDATES,
    LR_HUGE_STEP,
    LR_MIN_POINTS,
    LR_RISE,
    LR_RISE_MIN_JUMP,
    LR_RISE_WINDOWS,
    LR_SLOW_DROP,
    LR_UPDATE_RATIO_LOW,
    LR_WINDOWS,
    _lr_evidence,
    _median_fastest_update_ratio,
    curve,
    rule_learning_rate,
)
from deepscope.records import RESTORED_STEP, Records, restored_at

__all__ = ["curve", "training_rules"]

# --- thresholds (the learning rate's: deepscope.diagnosis.rules.rate) --------------------------------

# Spikes: a value above SPIKE factor x the median of the SPIKE_WINDOW updates before it *and* of those after it
# is a transient jump (a level shift or steady growth is not). On the benchmark's healthy runs (batch 20)
# the loss of one update stays within 2.5x of its neighbours and the gradient norm within 3x; a jump of the
# loss must also exceed LOSS_SPIKE_MIN_JUMP x its starting level, so that a well-trained net whose loss
# goes from 0.01 to 0.05 on one batch is not flagged. One jump can be chance: SPIKE_COUNT of them are needed.
SPIKE_WINDOW = 20
LOSS_SPIKE_FACTOR = 3.0
LOSS_SPIKE_MIN_JUMP = 0.5
GRAD_SPIKE_FACTOR = 10.0  # an order of magnitude: the step of that update is 10x the usual one
SPIKE_COUNT = 2
# ... and above SPIKE_ABOVE_HIGH x the 90th percentile of those 2 x SPIKE_WINDOW neighbours: a batch loss that is
# often high is no spike. With rare classes (a binary task with 5 % positives, batch 16) the batches that hold a
# positive have a loss many times the median batch's, every few updates (at 1.5 x, 2 to 8 of them still counted as
# spikes in 300 updates; at 2 x none); an isolated jump stands above them too. The diagnosis benchmarks (plain,
# held-out and every task) name the same set-ups with it; one unlabelled loss_spikes finding went away.
SPIKE_ABOVE_HIGH = 2.0
# ... and more than SPIKE_Z spreads above its neighbours' median on the log scale (the spread read from their bulk
# and their upper tail, see _outside_noise; the guard's z of 6, after OLMo-core). The factors above fit batches of
# 20; the loss of a batch of 4 varies by factors (MSE or BCE of 4 examples), and healthy MLPs at batch 4 (regression
# and binary, SGD with and without momentum, Adam) were called loss_spikes in 6 of 12 runs (0 of 36 small-batch runs
# with this rule); at batch 20 the logs of the losses spread by about 0.15, so 6 spreads is the 2.5-3x above.
SPIKE_Z = 6.0

# Overfitting, from the evaluations (at least OVERFIT_MIN_EVALS of them): the validation loss ends
# OVERFIT_RISE (20%) above its minimum -- and was already half that above at the evaluation before, so one
# noisy evaluation is not enough (healthy runs of the benchmark wander within +-7%) -- while the mean training
# loss since the previous evaluation fell below its value at that minimum: the gap between them grows.
OVERFIT_MIN_EVALS = 4
OVERFIT_RISE = 0.2

# Plateau: the validation loss stays, over the second half of the evaluations, within PLATEAU_MARGIN
# of the chance level (and falls by less than PLATEAU_MARGIN of it there) -- the chance level is the task's
# baseline, the loss of the best constant prediction ("valid/chance_loss", written by doctor from
# deepscope.metrics.baseline: the entropy of the class frequencies for cross-entropy, the targets' variance for
# mse, the majority label per output for binary and multi-label) -- while
# the weights move at a normal rate (fastest update/weight ratio at least LR_UPDATE_RATIO_LOW, so not the slow
# steps of a low learning rate) and no other finding explains it.
# The model has learned nothing beyond the class frequencies although gradients flow.
PLATEAU_MARGIN = 0.02
# A plateau needs time to show: in the first updates every net is near the chance level. The last evaluation
# must come at least PLATEAU_MIN_UPDATES updates after the first (doctor runs 500 by default).
PLATEAU_MIN_UPDATES = 200
# ... and the validation error stays within PLATEAU_ERROR_MARGIN (relative) of the chance error, 1 - the largest
# class frequency ("valid/chance_error"; for a regression the RMSE against "valid/chance_rmse", the targets'
# standard deviation, i.e. R^2 below about 0.1): a net whose error is already well below chance learns, however
# slowly its loss moves (a hard task such as Shapeset early in training), while shuffled labels keep both at chance.
PLATEAU_ERROR_MARGIN = 0.05

# Layers that do not learn: a layer whose median update/weight ratio is below NOT_LEARNING_RELATIVE times the
# fastest layer's. Healthy nets of the benchmark keep all layers within 30x of each other (Adam within 3x);
# frozen layers and layers left out of the optimizer have exactly 0. Lower layers slowed by vanishing
# gradients are reported as such (the rule is silent when another finding explains a stall).
NOT_LEARNING_RELATIVE = 1e-4

# --- spikes: the loss and the gradient norm of single updates ------------------------------------------


def _spikes(values: Sequence[float], factor: float, min_jump: float = 0.0) -> list[tuple[int, float]]:
    """``(index, ratio)`` of the transient jumps: values above ``factor`` x the median of the ``SPIKE_WINDOW``
    values before *and* after them (so steady growth or a level shift is not a spike), by more than ``min_jump``."""
    w, out = SPIKE_WINDOW, []
    for i in range(w, len(values) - w):
        v = values[i]
        before, after = median(values[i - w: i]), median(values[i + 1: i + 1 + w])
        level = max(before, after)
        if math.isfinite(v) and level > 0 and v > factor * level and v - level > min_jump:
            neighbours = sorted(values[i - w: i] + values[i + 1: i + 1 + w])
            if v > SPIKE_ABOVE_HIGH * neighbours[int(0.9 * len(neighbours))] and _outside_noise(v, neighbours):
                out.append((i, v / level))
    return out


def _outside_noise(v: float, neighbours: Sequence[float]) -> bool:
    """Whether ``v`` stands more than SPIKE_Z spreads above its (sorted) neighbours' median on the log scale. The
    spread is the smaller of two readings of a normal's standard deviation: 1.4826 x the median absolute deviation
    (the bulk: recurring outlier batches among the neighbours do not widen it) and (log p90 - log median) / 1.2816
    (the upper tail: a two-level loss, such as a rare class's, does not widen it). Always, when a neighbour is not
    positive (no logarithm)."""
    if neighbours[0] <= 0 or not all(math.isfinite(n) for n in neighbours):
        return True
    logs = [math.log(n) for n in neighbours]
    center = median(logs)
    spread = min(1.4826 * median([abs(x - center) for x in logs]),
                 (logs[int(0.9 * len(logs))] - center) / 1.2816)
    return math.log(v) - center > SPIKE_Z * spread


def _spike_finding(code: str, curve: list[tuple[int, float]], factor: float, min_jump: float, what: str,
                   extra: str, evidence_lr: dict, advice: str) -> list[Finding]:
    """A ``code`` finding when ``curve`` jumps ``factor`` x above its neighbours' level at SPIKE_COUNT updates."""
    values = [v for _, v in curve]
    if len(values) <= 2 * SPIKE_WINDOW or not all(math.isfinite(v) for v in values):
        return []
    hits = _spikes(values, factor, min_jump)
    if len(hits) < SPIKE_COUNT:
        return []
    worst, first = max(r for _, r in hits), curve[hits[0][0]][0]
    return [Finding(
        code, "warning",
        f"{what} jumped {worst:.0f}x above its neighbours' level at {len(hits)} updates (first at update {first})"
        f"{extra}", first_step=first, recovers=True,
        evidence={"spikes": float(len(hits)), "worst_ratio": worst, "threshold": factor, **evidence_lr},
        advice=advice)]


def _rule_spikes(loss: list[tuple[int, float]], norms: list[tuple[int, float]], spec: Any) -> list[Finding]:
    advice = ("Lower the learning rate (e.g. 3-10x), add a warm-up (schedule warmup_cosine), clip the gradient norm "
              "(train.clip_norm = 1; Pascanu et al. 2013); look for outliers or corrupted examples in the data.")
    evidence_lr = _lr_evidence(spec)
    start = median([v for _, v in loss[:SPIKE_WINDOW]]) if loss else 0.0
    return (_spike_finding("loss_spikes", loss, LOSS_SPIKE_FACTOR, LOSS_SPIKE_MIN_JUMP * start, "the training loss",
                           " without diverging", evidence_lr, advice)
            + _spike_finding("gradient_spikes", norms, GRAD_SPIKE_FACTOR, 0.0, "the gradient norm", "", evidence_lr,
                             advice))


# --- plateau and overfitting: the evaluations --------------------------------------------------------


def _train_loss_at(loss: list[tuple[int, float]], steps: list[int]) -> list[float]:
    """The mean training loss over the updates since the previous of ``steps`` (NaN where there is none)."""
    out, previous = [], -math.inf
    for step in steps:
        window = [v for s, v in loss if previous < s <= step and math.isfinite(v)]
        out.append(sum(window) / len(window) if window else math.nan)
        previous = step
    return out


def _rule_overfitting(loss: list[tuple[int, float]], valid: list[tuple[int, float]],
                      restored: list[tuple[int, float]] = ()) -> list[Finding]:
    """The validation loss rose from its minimum while the training loss fell. With ``restored`` (the run ended
    with the weights of an earlier evaluation, ``train.restore_best``) the network handed back is judged: its
    validation loss is that of the restored update, and a rise after it is reported as info."""
    valid = [(s, v) for s, v in valid if math.isfinite(v)]
    if len(valid) < OVERFIT_MIN_EVALS:
        return []
    steps, values = [s for s, _ in valid], [v for _, v in valid]
    best = min(range(len(values)), key=values.__getitem__)
    low = values[best]
    if best >= len(values) - 2 or low <= 0:
        return []
    if not (values[-1] >= (1 + OVERFIT_RISE) * low and values[-2] >= (1 + OVERFIT_RISE / 2) * low):
        return []
    train = _train_loss_at(loss, steps)
    if not (math.isfinite(train[best]) and math.isfinite(train[-1]) and train[-1] < train[best]):
        return []  # the training loss rises too: not overfitting (the lr rules look at that)
    gap_then, gap_now = values[best] - train[best], values[-1] - train[-1]
    evidence = {"valid_loss_min": low, "valid_loss_end": values[-1], "train_loss_at_min": train[best],
                "train_loss_end": train[-1], "gap_at_min": gap_then, "gap_end": gap_now, "threshold": OVERFIT_RISE}
    rose = (f"the validation loss rose from {low:.3g} (update {steps[best]}) to {values[-1]:.3g} while the training "
            f"loss fell from {train[best]:.3g} to {train[-1]:.3g}: the gap grew from {gap_then:.3g} to {gap_now:.3g}")
    step = restored_at({RESTORED_STEP: restored[-1], "valid/loss": valid[-1]}) if restored else None
    if step is not None and step in steps:
        kept = values[steps.index(step)]
        evidence |= {"restored_step": float(step), "valid_loss_restored": kept}
        if kept < (1 + OVERFIT_RISE / 2) * low:
            return [Finding("overfitting", "info", f"{rose}; the run ended with the weights of update {step} "
                            f"(validation loss {kept:.3g}), from before the rise (train.restore_best)",
                            first_step=steps[best], recovers=True, evidence=evidence)]
    return [Finding(
        "overfitting", "warning", rose, first_step=steps[best], recovers=False, evidence=evidence,
        advice="Stop early at the best validation loss and keep its weights (train.patience, train.monitor=\"loss\", "
        "train.restore_best=true), add data or augmentation (data.augment), regularize (weight decay, dropout), "
        "or use a smaller model.")]


def _rule_plateau(valid: list[tuple[int, float]], chance: float | None, rec: Records, spec: Any,
                  explained: bool, errors: list[tuple[int, float]] = (), chance_error: float | None = None
                  ) -> list[Finding]:
    if explained or chance is None or not math.isfinite(chance) or chance <= 0:
        return []
    values = [v for _, v in valid if math.isfinite(v)]
    if len(values) < OVERFIT_MIN_EVALS or valid[-1][0] - valid[0][0] < PLATEAU_MIN_UPDATES:
        return []
    late = values[len(values) // 2:]
    step_ratio = _median_fastest_update_ratio(rec)
    if step_ratio is None or step_ratio < LR_UPDATE_RATIO_LOW or min(late) < (1 - PLATEAU_MARGIN) * chance:
        return []
    if late[0] - min(late) > PLATEAU_MARGIN * chance:
        return []  # still falling toward the chance level and below: slow, but not stuck
    late_errors = [v for _, v in errors[len(errors) // 2:] if math.isfinite(v)]
    if chance_error is not None and late_errors and min(late_errors) < (1 - PLATEAU_ERROR_MARGIN) * chance_error:
        return []  # it already classifies better than chance: it learns, the loss lags behind
    return [Finding(
        "plateau", "warning",
        f"the validation loss stays at the chance level ({min(late):.3g} vs {chance:.3g}, the loss of the best "
        f"constant prediction: class frequencies, or the targets' mean) although the weights move by "
        f"{step_ratio:.1e} of their norm per update",
        first_step=valid[0][0], recovers=False,
        evidence={"valid_loss_best_late": min(late), "chance_loss": chance, "update_ratio": step_ratio,
                  "margin": PLATEAU_MARGIN},
        advice="The instruments are healthy, so look at the task: check that the labels match the inputs (no "
        "shuffled or misaligned targets, the right label column), that preprocessing or augmentation keeps the "
        "signal, then train longer, with a learning-rate schedule or a larger model.")]


# --- layers that do not learn: update/weight ratios ----------------------------------------------------


def _rule_not_learning(rec: Records, explained: bool) -> list[Finding]:
    if explained:
        return []
    medians = {}
    for layer, points in rec.get("update_ratio", "ratio").items():
        finite = [v for _, v in points if math.isfinite(v)]
        if finite:
            medians[layer] = median(finite)
    if not medians:
        return []
    fastest = max(medians.values())
    if fastest == 0:  # and no other rule explains it
        first = min(s for points in rec.get("update_ratio", "ratio").values() for s, _ in points)
        return [Finding(
            "not_learning", "error", f"no layer's weights change at all (update/weight ratio 0 in all "
            f"{len(medians)} layers): the optimizer takes no step", layers=list(medians), first_step=first,
            recovers=False, evidence={"layers_still": float(len(medians)), "update_ratio_fastest": 0.0},
            advice="Check the learning rate (0?), then whether any gradient reaches the weights: every unit may be "
            "dead (a ReLU net after too high a learning rate, or negative biases), or the loss may not depend on "
            "the parameters (a detached graph, .data or no_grad in forward()). Re-initialize or lower the rate.")]
    still = [layer for layer, v in medians.items() if v <= NOT_LEARNING_RELATIVE * fastest]
    if fastest < 0 or not still:
        return []  # everything moves
    return [Finding(
        "not_learning", "error" if all(medians[layer] == 0 for layer in still) else "warning",
        f"the weights of {len(still)} of {len(medians)} layers do not change ({', '.join(still[:4])}"
        f"{' ...' if len(still) > 4 else ''}: update/weight ratio {max(medians[layer] for layer in still):.1e} "
        f"vs {fastest:.1e} for the fastest layer)",
        layers=still, first_step=_still_since(rec, still, NOT_LEARNING_RELATIVE * fastest),
        recovers=False,
        evidence={"layers_still": float(len(still)), "update_ratio_still": max(medians[layer] for layer in still),
                  "update_ratio_fastest": fastest, "threshold_relative": NOT_LEARNING_RELATIVE},
        advice="Check that these layers' parameters have requires_grad=True, are registered (nn.ModuleList, not a "
        "Python list) and are in the optimizer (build it from model.parameters() after the model is complete); if "
        "they are, their gradient is ~0: units saturated or dead above them, or weights blown up by too high a rate "
        "(lower it, clip the gradient norm).")]


def _still_since(rec: Records, still: list[str], bound: float) -> int:
    """The first record at which one of the ``still`` layers moved by at most ``bound``: 0 for a layer frozen from the
    start, a later update for layers that moved at first and then stopped (too high a rate blew their weights up)."""
    ratios = rec.get("update_ratio", "ratio")
    return min(next((s for s, v in ratios[layer] if v <= bound), ratios[layer][0][0]) for layer in still)


def training_rules(scalars: Iterable[Any], rec: Records, spec: Any, explained: bool) -> list[Finding]:
    """Every rule on the training curves; ``explained``: another finding already explains a flat loss."""
    scalars = list(scalars or ())
    loss = curve(scalars, "train/loss")
    valid = curve(scalars, "valid/loss")
    chance = curve(scalars, "valid/chance_loss")
    measure = "error" if curve(scalars, "valid/chance_error") else "rmse"  # a regression's error is its RMSE
    chance_error = curve(scalars, f"valid/chance_{measure}")
    errors, at_chance = curve(scalars, f"valid/{measure}"), chance_error[-1][1] if chance_error else None
    rate = rule_learning_rate(loss, rec, spec, explained, curve(scalars, "train/diverged"), bool(chance),
                               valid, errors, at_chance)
    findings = rate + _rule_not_learning(rec, explained)
    if not rate:  # a loss thrown about by too high a rate says nothing of generalization
        findings += _rule_overfitting(loss, valid, curve(scalars, RESTORED_STEP))
    findings += _rule_spikes(loss, curve(scalars, "train/grad_norm"), spec)
    explained = explained or bool(findings)
    findings += _rule_plateau(valid, chance[-1][1] if chance else None, rec, spec, explained, errors, at_chance)
    return findings
