"""Rules: pure functions over probe records that name what is wrong, where, since when, and the fix.

Every rule reads a :class:`~deepscope.records.Records` index of the probe's stats rows and, for the loss
curve, the trainer's scalar rows ``dict(step, name, value)`` -- so it works on records held in memory,
read back from a :class:`~deepscope.store.Store`, or written by anyone's loop, and needs no model.
Each rule has its thresholds as module-level constants below, with the reasoning next to them.
Advice names the technique the literature recommends (Glorot & Bengio 2010; He et al. 2015; Ioffe &
Szegedy 2015; LeCun et al. 1998, "Efficient BackProp"; Varma & Das, *Deep Learning*, ch. 7).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from deepscope.diagnosis.advice import activation_name, fitting_init, spec_value
from deepscope.diagnosis.findings import Finding, sort_findings
from deepscope.diagnosis.ranking import rank
from deepscope.diagnosis.rules.histograms import saturation_from_histograms
from deepscope.diagnosis.rules.scale import rule_activation_scale
from deepscope.diagnosis.rules.training import (  # noqa: F401 - the thresholds are read as rules.X
    LR_MIN_POINTS,
    LR_RISE,
    LR_SLOW_DROP,
    LR_UPDATE_RATIO_LOW,
    LR_WINDOWS,
    training_rules,
)
from deepscope.records import Records

__all__ = ["diagnose"]

# --- thresholds -----------------------------------------------------------------------------------
# Vanishing / exploding gradients (Glorot & Bengio 2010, fig. 7): the std of the back-propagated
# gradient dCost/ds is compared between the lowest and the top layer at the same update. Two orders of
# magnitude (100x) is where the lower layers effectively stop learning; normalized init keeps the ratio
# near 1 and standard init in a 5-layer tanh net stays within ~4x.
# Gradients that grow over training end in Inf/NaN, which is reported from the first non-finite record
# (a norm that merely grows from a tiny start is a net recovering from vanishing gradients, not exploding).
VANISHING_RATIO = 1e-2  # std(lowest layer) / std(top layer) below this -> vanishing
EXPLODING_RATIO = 1e2  # std(lowest layer) / std(top layer) above this -> exploding toward the input
# ... unless the lowest layer's weights still move: its update/weight ratio at least this fraction of the fastest
# layer's (with SGD a 100x smaller gradient means a 100x slower layer; Adam and normalized nets keep it moving)
LOWEST_UPDATE_RATIO = 0.1

# Saturation (Glorot & Bengio 2010, figs. 2-3): fraction of a layer's activations in the saturated
# regime of its non-linearity (the activation registry defines the regime, e.g. sigmoid outside
# [0.01, 0.99], tanh |y| > 0.99). A healthy tanh layer with normalized init has ~1% saturated;
# a quarter of the units pinned to an asymptote already stalls the layer's learning.
SATURATION_FRACTION = 0.25

# Dead units (Varma & Das, ch. 7, section 7.4.2, fig. 7.13): fraction of a ReLU layer's units that output 0 on
# every monitor example. He-initialized ReLU layers have a few percent at most.
DEAD_FRACTION = 0.25
DEAD_ERROR_FRACTION = 0.9  # at or above this the layer is (nearly) all dead: an error, not a warning

# Symmetry (Jen (2020); Varma & Das, ch. 7, section 7.5 "break symmetry"): a layer whose output std over units and
# monitor examples is at most SYMMETRY_TOL x |mean| (so exactly 0 when the mean is 0) gives one constant
# output -> its units are clones. Relative, because tiny-but-varying outputs (N(0, 0.01) init in a deep
# net) are vanishing activations, not clones. In check_model: the incoming weight rows (and biases) of
# all units equal within SYMMETRY_TOL x max|W|.
SYMMETRY_TOL = 1e-6

# Activation variance with depth at initialization (Glorot & Bengio 2010 fig. 6; He et al. 2015):
# the std of the last recorded layer over the first's, among layers of one kind (hidden#, h.#.attn), at the first record
# Outside [1/10, 10] (two orders of magnitude in variance) the init scale does not fit the activation.
VARIANCE_DEPTH_RATIO = 10.0

# Codes that explain a flat loss curve by themselves; lr_too_low is not reported alongside them.
_STALLING = {"symmetry", "vanishing_gradients", "saturation", "dead_units", "variance_shrinks"}

# --- rules on stats rows --------------------------------------------------------------------------



def _rule_non_finite(rec: Records) -> list[Finding]:
    first: dict[str, int] = {}  # layer -> first step with an Inf/NaN statistic
    quantities: set[str] = set()
    for _source, quantity, _stat, layer, step, value in rec.items():
        # an update ratio |dW| / |W| of a zero weight is 0/0: a symptom of zero init, not of divergence
        if quantity != "update_ratio" and not math.isfinite(value):
            first[layer] = min(step, first.get(layer, step))
            quantities.add(quantity)
    if not first:
        return []
    step = min(first.values())
    return [
        Finding(
            "exploding_gradients", "error",
            f"Inf/NaN in {', '.join(sorted(quantities))} from update {step}",
            layers=sorted(first, key=rec.order.__getitem__), first_step=step, recovers=False,
            evidence={"first_non_finite_step": float(step), "layers_non_finite": float(len(first))},
            advice="Lower the learning rate and clip the gradient norm (gradient clipping); check the "
            "initialization scale; batch normalization keeps pre-activations bounded.",
        )
    ]


def _rule_gradient_depth(rec: Records, activation: str | None, scheme: str | None = None) -> list[Finding]:
    """Vanishing or exploding back-propagated gradients: std at the lowest vs the top layer (fig. 7)."""
    steps = rec.by_step("preact_grad", "std")
    vanish: dict[int, tuple[list[str], float]] = {}
    explode: dict[int, tuple[list[str], float]] = {}
    for step, per_layer in steps.items():
        values = [(layer, v) for layer, v in per_layer.items() if math.isfinite(v)]
        if len(values) < 2:
            continue
        top = values[-1][1]
        bottom = values[0][1]
        if top <= 0.0:
            continue  # nothing flows back at all: the symmetry / dead rules explain that
        ratio = bottom / top
        if ratio < VANISHING_RATIO:
            vanish[step] = ([layer for layer, v in values[:-1] if v < VANISHING_RATIO * top], ratio)
        elif ratio > EXPLODING_RATIO:
            explode[step] = ([layer for layer, v in values[:-1] if v > EXPLODING_RATIO * top], ratio)
    if not steps:
        return []
    last = max(steps)
    out = []
    if vanish and _lowest_weights_move(rec):
        vanish = {}  # small gradients, but the lowest layer's weights move at the top's rate (Adam, normalized nets)
    if vanish:
        first = min(vanish)
        layers, ratio = vanish[first]
        worst = min(r for _, r in vanish.values())
        out.append(
            Finding(
                "vanishing_gradients", "error" if last in vanish else "warning",
                f"back-propagated gradient std at the lowest layer is {ratio:.1e} x the top layer's",
                layers=layers, first_step=first, recovers=last not in vanish,
                evidence={"ratio_bottom_to_top": ratio, "worst_ratio": worst, "threshold": VANISHING_RATIO},
                advice=f"Use {fitting_init(activation, scheme)} (Glorot & Bengio 2010; He et al. 2015), or add "
                "batch normalization; in deep nets prefer tanh/softsign or ReLU over sigmoid.",
            )
        )
    if explode:
        first = min(explode)
        layers, ratio = explode[first]
        out.append(
            Finding(
                "exploding_gradients", "error" if last in explode else "warning",
                f"back-propagated gradient std at the lowest layer is {ratio:.1e} x the top layer's",
                layers=layers, first_step=first, recovers=last not in explode,
                evidence={"ratio_bottom_to_top": ratio, "threshold": EXPLODING_RATIO},
                advice=f"Use {fitting_init(activation, scheme)}; clip the gradient norm (gradient clipping) and "
                "lower the learning rate; batch normalization.",
            )
        )
    return out


def _lowest_weights_move(rec: Records) -> bool:
    """True when the lowest weight's update/weight ratio is, at the median record, at least LOWEST_UPDATE_RATIO
    times the largest layer's: its layer learns, whatever the size of the back-propagated gradient (an adaptive
    optimizer rescales it; a normalized residual stream carries it). Glorot & Bengio (2010) name vanishing
    gradients a problem because the lower layers then stop learning; that is what is checked here."""
    ratios = []
    for per_layer in rec.by_step("update_ratio", "ratio").values():
        values = [v for _, v in sorted(per_layer.items(), key=lambda kv: rec.order.get(kv[0], 0)) if math.isfinite(v)]
        if len(values) >= 2 and max(values) > 0:
            ratios.append(values[0] / max(values))
    return bool(ratios) and sorted(ratios)[len(ratios) // 2] >= LOWEST_UPDATE_RATIO


def _first_and_recovery(
    series: Mapping[str, list[tuple[int, float]]], above: float
) -> dict[str, tuple[int, float, bool, float]]:
    """Per layer whose value exceeds ``above`` at some record: (first step, value then, recovers, peak)."""
    out = {}
    for layer, points in series.items():
        hits = [(s, v) for s, v in points if math.isfinite(v) and v > above]
        if hits:
            recovers = not (math.isfinite(points[-1][1]) and points[-1][1] > above)
            out[layer] = (hits[0][0], hits[0][1], recovers, max(v for _, v in hits))
    return out


def _rule_saturation(rec: Records, activation: str | None, scheme: str | None = None) -> list[Finding]:
    hits = _first_and_recovery(rec.get("activation", "saturated"), SATURATION_FRACTION)
    if not hits:
        return []
    means = rec.get("activation", "mean")
    p2 = rec.get("activation", "p2")
    order = list(hits)
    first_layer = min(order, key=lambda layer: (hits[layer][0], order.index(layer)))
    step, value, _, _ = hits[first_layer]
    recovers = all(h[2] for h in hits.values())
    evidence = {"saturated_fraction": value, "peak_fraction": max(h[3] for h in hits.values()),
                "threshold": SATURATION_FRACTION, "in_first_layer": _in_first_layer(rec, hits, step)}
    at_step = dict(means.get(first_layer, []))
    if step in at_step:
        evidence["mean_at_first_step"] = at_step[step]
    # a non-negative saturating layer (low percentile >= 0) is sigmoid-like: driven to 0 as in fig. 2
    sigmoid_like = activation == "sigmoid" or (
        activation is None and all(v >= 0.0 for _, v in p2.get(first_layer, [(0, -1.0)]))
    )
    if sigmoid_like:
        advice = ("Replace sigmoid by tanh or softsign (zero-centred; Glorot & Bengio 2010) with normalized "
                  "(Glorot) initialization; batch normalization keeps pre-activations out of the flat regions.")
    else:
        advice = (f"Use {fitting_init(activation, scheme)} so pre-activations stay in the linear regime; softsign "
                  "saturates less than tanh; batch normalization before the non-linearity also helps.")
    driven = ""
    if sigmoid_like and "mean_at_first_step" in evidence and evidence["mean_at_first_step"] < 0.1:
        driven = " (driven to 0, as the sigmoid top layer in Glorot & Bengio fig. 2)"
    return [
        Finding(
            "saturation", "warning" if recovers else "error",
            f"{value:.0%} of the units of {first_layer} saturated from update {step}{driven}; "
            + ("it recovers" if recovers else "it does not recover"),
            layers=sorted(hits, key=lambda layer: (hits[layer][0], order.index(layer))),
            first_step=step, recovers=recovers, evidence=evidence, advice=advice,
        )
    ]


def _rule_dead(rec: Records, spec: Any = None) -> list[Finding]:
    hits = _first_and_recovery(rec.get("activation", "dead"), DEAD_FRACTION)
    if not hits:
        return []
    step = min(h[0] for h in hits.values())
    peak = max(h[3] for h in hits.values())
    recovers = all(h[2] for h in hits.values())
    return [
        Finding(
            "dead_units", "error" if peak >= DEAD_ERROR_FRACTION else "warning",
            f"up to {peak:.0%} of the units output 0 on every monitor example, from update {step}",
            layers=list(hits), first_step=step, recovers=recovers,
            evidence={"dead_fraction": peak, "threshold": DEAD_FRACTION,
                      "in_first_layer": _in_first_layer(rec, hits, step)},
            advice=_dead_advice(spec),
        )
    ]


def _in_first_layer(rec: Records, hits: Mapping[str, tuple], step: int) -> float:
    """1.0 when the first recorded layer is among ``hits`` from ``step`` on (deepscope.diagnosis.ranking reads it)."""
    first = min(rec.order, key=rec.order.__getitem__, default=None)
    return float(first in hits and hits[first][0] == step)


def _dead_advice(spec: Any) -> str:
    """The fixes for dead ReLUs, leaving out batch normalization before the ReLU when the spec has it."""
    has_bn = spec_value(spec, "norm") == "batch" and spec_value(spec, "norm_position") in (None, "before")
    fixes = ["He initialization with zero biases", "a lower learning rate"]
    fixes += [] if has_bn else ["batch normalization before the ReLU"]
    return (f"Use Leaky ReLU or PReLU (a non-zero slope for x < 0 keeps gradients flowing), "
            f"{', '.join(fixes[:-1])}, or {fixes[-1]}.")


def _rule_constant_layer(rec: Records) -> list[Finding]:
    """A layer whose every unit gives the same output on every monitor example: clones (symmetry)."""
    stds = rec.get("activation", "std")
    means = rec.get("activation", "mean")
    saturated = {layer: dict(p) for layer, p in rec.get("activation", "saturated").items()}
    dead = {layer: dict(p) for layer, p in rec.get("activation", "dead").items()}
    hits: dict[str, int] = {}  # layer -> first step with a constant output
    for layer, points in stds.items():
        mean = dict(means.get(layer, []))
        for step, value in points:
            if not (math.isfinite(value) and abs(value) <= SYMMETRY_TOL * abs(mean.get(step, 0.0))):
                continue
            # all units pinned at an asymptote or all dead is saturation / dead units, not symmetry
            if saturated.get(layer, {}).get(step, 0.0) >= 0.5 or dead.get(layer, {}).get(step, 0.0) >= 0.5:
                continue
            hits[layer] = step
            break
    if not hits:
        return []
    step = min(hits.values())
    return [
        Finding(
            "symmetry", "error",
            f"every unit of {len(hits)} layer(s) gives the same output on every monitor example (update {step}): "
            "the units are clones and will change in lock step",
            layers=list(hits), first_step=step, recovers=None,
            evidence={"activation_std": 0.0, "layers": float(len(hits))},
            advice="Break the symmetry: initialize weights randomly (normalized/Glorot or He initialization), "
            "never with zeros or a constant (Varma & Das, ch. 7, section 7.5).",
        )
    ]


def _rule_variance_depth(rec: Records, activation: str | None, scheme: str | None = None) -> list[Finding]:
    steps = rec.by_step("activation", "std")
    if not steps:
        return []
    step = min(steps)
    kinds: dict[str, list[tuple[str, float]]] = {}  # like with like: an attention output is smaller than a feed-
    for layer, v in steps[step].items():  # forward one at any depth (GPT-2, torch.nn Transformer blocks); act@2 = act
        if math.isfinite(v):
            kinds.setdefault(re.sub(r"\d+", "#", re.sub(r"@\d+$", "", layer)), []).append((layer, v))
    # a layer of std 0 is dead or constant: the dead-unit and symmetry rules name it
    groups = [g for g in kinds.values() if len(g) >= 2 and g[0][1] > 0.0 and g[-1][1] > 0.0]
    if not groups:
        return []
    values = max(groups, key=lambda g: abs(math.log(g[-1][1]) - math.log(g[0][1])))
    ratio = values[-1][1] / values[0][1]
    evidence = {"std_first_layer": values[0][1], "std_last_layer": values[-1][1], "ratio": ratio,
                "threshold": VARIANCE_DEPTH_RATIO}
    if ratio < 1.0 / VARIANCE_DEPTH_RATIO:
        code, what = "variance_shrinks", "shrinks"
        layers = [layer for layer, v in values if v < values[0][1] / VARIANCE_DEPTH_RATIO]
    elif ratio > VARIANCE_DEPTH_RATIO:
        code, what = "variance_grows", "grows"
        layers = [layer for layer, v in values if v > values[0][1] * VARIANCE_DEPTH_RATIO]
    else:
        return []
    return [
        Finding(
            code, "warning",
            f"activation std {what} {values[0][1] / values[-1][1] if ratio < 1 else ratio:.3g}x from {values[0][0]} to "
            f"{values[-1][0]} at initialization",
            layers=layers, first_step=step, recovers=None, evidence=evidence,
            advice=f"The initialization scale does not fit the activation: use {fitting_init(activation, scheme)}, "
            "or LSUV; batch normalization removes the dependence on the scale.",
        )
    ]


def diagnose(
    records: Iterable[Mapping[str, Any]],
    *,
    scalars: Iterable[Mapping[str, Any]] | None = None,
    histograms: Iterable[Mapping[str, Any]] | None = None,
    spec: Any = None,
) -> list[Finding]:
    """Run every rule on probe stats rows (and trainer scalar rows); findings sorted, errors first.

    ``records`` are stats rows ``dict(step, source, layer, quantity, stat, value)`` in probe order;
    ``scalars`` are rows ``dict(step, name, value)`` (``"train/loss"`` is read); ``histograms`` are
    histogram rows, used for the saturation fraction where the stats lack it; ``spec`` (a dict or a
    run specification) names the activation and learning rate so the advice can be specific.

    Any rows are accepted: malformed rows are skipped, non-finite values are read as what they are. A rule
    that fails all the same (a bug) gives a ``diagnosis_error`` info finding instead of an exception, so the
    other rules still answer.
    """
    rec = Records(records or ())
    if histograms is not None:
        have = {(layer, step) for _, q, stat, layer, step, _ in rec.items() if (q, stat) == ("activation", "saturated")}
        extra = saturation_from_histograms(histograms, have)
        if extra:
            rec = Records([*rec.rows, *extra])
    scalars = list(scalars or ())
    activation = _safe(lambda: activation_name(spec), None)
    scheme = _safe(lambda: spec_value(spec, "scheme"), None)
    findings: list[Finding] = []
    rules = [lambda: _rule_constant_layer(rec), lambda: _rule_non_finite(rec),
             lambda: _rule_gradient_depth(rec, activation, scheme), lambda: _rule_saturation(rec, activation, scheme),
             lambda: _rule_dead(rec, spec), lambda: _rule_variance_depth(rec, activation, scheme)]
    for rule in rules:
        findings += _run(rule)
    if not any(f.code == "variance_grows" for f in findings):  # no growth with depth: the scale itself
        findings += _run(lambda: rule_activation_scale(rec, activation, scheme))
    explained = any(f.code in _STALLING for f in findings)
    findings += _run(lambda: training_rules(scalars, rec, spec, explained))
    return rank(sort_findings(findings))  # a symptom after the one that explains it (deepscope.diagnosis.ranking)


def _safe(fn, default):
    try:
        return fn()
    except Exception:
        return default


def _run(rule) -> list[Finding]:
    """The findings of ``rule()``, or one ``diagnosis_error`` info finding naming the exception."""
    try:
        return list(rule())
    except Exception as e:  # never let one rule take the whole diagnosis down
        import traceback

        where = traceback.extract_tb(e.__traceback__)[-1]
        return [Finding("diagnosis_error", "info", f"a diagnosis rule failed: {type(e).__name__}: {e} "
                        f"({Path(where.filename).name}:{where.lineno}); the other findings stand",
                        advice="Please report this with the records (deepscope runs export).")]
