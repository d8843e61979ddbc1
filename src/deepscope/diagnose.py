"""Diagnosis: rules that read probe records and name what is wrong, where, since when, and the fix.

Every rule reads plain rows -- the probe's stats rows ``dict(step, source, layer, quantity, stat,
value)``, the trainer's scalar rows ``dict(step, name, value)`` -- so it works on records held in
memory, read back from a :class:`~deepscope.store.Store`, or written by anyone's loop. Layers are
put in depth order by :func:`layer_order` (the order the forward pass reaches them).

Each rule has its thresholds as module-level constants below, with the reasoning next to them.
Advice names the technique the texts recommend (Glorot & Bengio 2010; He et al. 2015; Ioffe &
Szegedy 2015; seed 004 sections 7.2-7.7).

Two checks need more than the records:

- :func:`check_model` looks at the model itself for *symmetry* (units of a layer with identical
  incoming weights and biases, as zero or constant initialization leaves them). The probe stores
  per-layer aggregates only, so from records alone symmetry shows only as a layer whose output is the
  same for every unit and every monitor example (activation std of 0) -- :func:`diagnose` reports that
  too, but the weight check also sees symmetry that training has not broken but has made input-dependent.
- :func:`diagnose_input` looks at a batch of inputs for centering and scaling (seed 004 section 7.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

__all__ = [
    "CODES",
    "SEVERITIES",
    "DoctorResult",
    "Finding",
    "check_model",
    "diagnose",
    "diagnose_input",
    "doctor",
    "has_problem",
    "layer_order",
    "load_checks",
    "merge_checks",
    "model_from_factory",
    "save_checks",
    "sort_findings",
]

SEVERITIES = ("error", "warning", "info")

# --- thresholds -----------------------------------------------------------------------------------
# Vanishing / exploding gradients (Glorot & Bengio 2010, fig. 7): the std of the back-propagated
# gradient dCost/ds is compared between the lowest and the top layer at the same update. Two orders of
# magnitude (100x) is where the lower layers effectively stop learning; normalized init keeps the ratio
# near 1 and standard init in a 5-layer tanh net stays within ~4x.
# Gradients that grow over training end in Inf/NaN, which is reported from the first non-finite record
# (a norm that merely grows from a tiny start is a net recovering from vanishing gradients, not exploding).
VANISHING_RATIO = 1e-2  # std(lowest layer) / std(top layer) below this -> vanishing
EXPLODING_RATIO = 1e2  # std(lowest layer) / std(top layer) above this -> exploding toward the input

# Saturation (Glorot & Bengio 2010, figs. 2-3): fraction of a layer's activations in the saturated
# regime of its non-linearity (the activation registry defines the regime, e.g. sigmoid outside
# [0.01, 0.99], tanh |y| > 0.99). A healthy tanh layer with normalized init has ~1% saturated;
# a quarter of the units pinned to an asymptote already stalls the layer's learning.
SATURATION_FRACTION = 0.25

# Dead units (seed 004 section 7.4.2, fig. 7.13): fraction of a ReLU layer's units that output 0 on
# every monitor example. He-initialized ReLU layers have a few percent at most.
DEAD_FRACTION = 0.25
DEAD_ERROR_FRACTION = 0.9  # at or above this the layer is (nearly) all dead: an error, not a warning

# Symmetry (seed 002; seed 004 section 7.5 "break symmetry"): a layer whose output std over units and
# monitor examples is at most SYMMETRY_TOL x |mean| (so exactly 0 when the mean is 0) gives one constant
# output -> its units are clones. Relative, because tiny-but-varying outputs (N(0, 0.01) init in a deep
# net) are vanishing activations, not clones. In check_model: the incoming weight rows (and biases) of
# all units equal within SYMMETRY_TOL x max|W|.
SYMMETRY_TOL = 1e-6

# Activation variance with depth at initialization (Glorot & Bengio 2010 fig. 6; He et al. 2015):
# the activation std of the last recorded layer over that of the first, at the first recorded update.
# Outside [1/10, 10] (two orders of magnitude in variance) the init scale does not fit the activation.
VARIANCE_DEPTH_RATIO = 10.0

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

# Inputs (seed 004 section 7.6, "Centering" and "Scaling"):
INPUT_MEAN_FRACTION = 0.3  # sqrt(mean_i mu_i^2 / mean x^2): the share of the input's RMS that is the mean
INPUT_SCALE_LOW = 0.05  # RMS of the centered input below this ...
INPUT_SCALE_HIGH = 20.0  # ... or above this -> not scaled
INPUT_SPREAD_RATIO = 1e3  # largest / smallest per-component std (non-constant components) above this

CODES: dict[str, str] = {
    "symmetry": "units of a layer are identical (zero or constant initialization)",
    "exploding_gradients": "back-propagated gradients grow toward the input, or statistics become Inf/NaN",
    "vanishing_gradients": "back-propagated gradients shrink by orders of magnitude toward the input",
    "saturation": "a large fraction of a layer's units sit at an asymptote of the non-linearity",
    "dead_units": "ReLU units output 0 on every monitor example",
    "variance_shrinks": "activation variance shrinks with depth at initialization (init scale too small)",
    "variance_grows": "activation variance grows with depth at initialization (init scale too large)",
    "lr_too_high": "the loss rises, oscillates or becomes NaN: learning rate too high",
    "lr_too_low": "the loss decreases slowly, in tiny steps: learning rate too low",
    "input_not_centered": "the inputs are not centered (per-component mean far from 0)",
    "input_not_scaled": "the inputs are not scaled (per-component std far from 1 or very unequal)",
}

# Codes that explain a flat loss curve by themselves; lr_too_low is not reported alongside them.
_STALLING = {"symmetry", "vanishing_gradients", "saturation", "dead_units", "variance_shrinks"}

# initialization that fits an activation (Glorot & Bengio 2010; He et al. 2015; Klambauer et al. 2017)
_FITTING_INIT = {
    "sigmoid": "normalized (Glorot) initialization",
    "tanh": "normalized (Glorot) initialization",
    "softsign": "normalized (Glorot) initialization",
    "relu": "He initialization (std = sqrt(2 / fan_in))",
    "leaky_relu": "He initialization (std = sqrt(2 / fan_in))",
    "prelu": "He initialization (std = sqrt(2 / fan_in))",
    "elu": "He initialization (std = sqrt(2 / fan_in))",
    "gelu": "He initialization (std = sqrt(2 / fan_in))",
    "silu": "He initialization (std = sqrt(2 / fan_in))",
    "selu": "LeCun normal initialization (std = sqrt(1 / fan_in))",
}


@dataclass
class Finding:
    """One diagnosed problem: what, where, since when, the numbers, and the fix."""

    code: str
    severity: str  # "error" | "warning" | "info"
    message: str
    layers: list[str] = field(default_factory=list)
    first_step: int | None = None  # first update at which the condition was seen
    recovers: bool | None = None  # True: gone by the last record; False: still there; None: not known
    evidence: dict[str, float] = field(default_factory=dict)
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; within a severity, earliest update first."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (rank.get(f.severity, 9), f.first_step if f.first_step is not None else 0))


def has_problem(findings: Iterable[Finding]) -> bool:
    """True when any finding is an error or a warning (what ``deepscope doctor`` exits 1 on)."""
    return any(f.severity in ("error", "warning") for f in findings)


# --- reading rows ---------------------------------------------------------------------------------


# quantities whose rows come in forward (input to output) order: activations are recorded as the forward
# pass reaches each layer, update ratios in parameter order; gradients arrive in backward order.
_FORWARD_RANK = {"activation": 0, "update_ratio": 1}


def layer_order(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Depth index of every layer named in ``rows``, input first.

    Layers are numbered in the order they first appear among the activation rows, then the update-ratio
    rows, then the others -- the probe writes gradient rows in backward order, output layer first.
    """
    order: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: _FORWARD_RANK.get(r["quantity"], 2)):  # stable: keeps appearance order
        order.setdefault(row["layer"], len(order))
    return order


class _Records:
    """Stats rows indexed by (quantity, stat) -> layer -> [(step, value)], one source preferred."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]):
        rows = list(rows)
        self.order = layer_order(rows)
        by_source: dict[tuple[str, str, str], dict[str, list[tuple[int, float]]]] = {}
        for row in rows:
            key = (row["source"], row["quantity"], row["stat"])
            by_source.setdefault(key, {}).setdefault(row["layer"], []).append((int(row["step"]), float(row["value"])))
        self._data = by_source

    def get(self, quantity: str, stat: str) -> dict[str, list[tuple[int, float]]]:
        """Series per layer in depth order, from the monitor pass when there is one, else from training."""
        for source in ("monitor", "train"):
            series = self._data.get((source, quantity, stat))
            if series:
                return {layer: sorted(series[layer]) for layer in sorted(series, key=self.order.__getitem__)}
        return {}

    def all_values(self):
        for (source, quantity, stat), series in self._data.items():
            for layer, points in series.items():
                for step, value in points:
                    yield source, quantity, stat, layer, step, value


def _by_step(series: Mapping[str, list[tuple[int, float]]]) -> dict[int, dict[str, float]]:
    """Transpose layer -> [(step, value)] into step -> {layer: value} (layers keep depth order)."""
    out: dict[int, dict[str, float]] = {}
    for layer, points in series.items():
        for step, value in points:
            out.setdefault(step, {})[layer] = value
    return dict(sorted(out.items()))


def _spec_value(spec: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere in a (nested) spec dict or pydantic model."""
    if spec is None:
        return None
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    if isinstance(spec, Mapping):
        if key in spec and not isinstance(spec[key], Mapping):
            return spec[key]
        for value in spec.values():
            found = _spec_value(value, key)
            if found is not None:
                return found
    return None


def _activation_name(spec: Any) -> str | None:
    name = _spec_value(spec, "activation")
    return name if isinstance(name, str) else None


def _fitting_init(activation: str | None) -> str:
    if activation in _FITTING_INIT:
        from deepscope.nn.activations import ACTIVATIONS

        scheme = ACTIVATIONS[activation].init  # the registry's pairing: the spec switch to set
        return f"{_FITTING_INIT[activation]}, the initialization that fits {activation} (init.scheme={scheme!r})"
    return "the initialization that fits the activation (normalized/Glorot for tanh and softsign, He for ReLU)"


# --- rules on stats rows --------------------------------------------------------------------------


def _rule_non_finite(rec: _Records) -> list[Finding]:
    first: dict[str, int] = {}  # layer -> first step with an Inf/NaN statistic
    quantities: set[str] = set()
    for _source, quantity, _stat, layer, step, value in rec.all_values():
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


def _rule_gradient_depth(rec: _Records, activation: str | None) -> list[Finding]:
    """Vanishing or exploding back-propagated gradients: std at the lowest vs the top layer (fig. 7)."""
    steps = _by_step(rec.get("preact_grad", "std"))
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
                advice=f"Use {_fitting_init(activation)} (Glorot & Bengio 2010; He et al. 2015), or add "
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
                advice=f"Use {_fitting_init(activation)}; clip the gradient norm (gradient clipping) and "
                "lower the learning rate; batch normalization.",
            )
        )
    return out


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


def _rule_saturation(rec: _Records, activation: str | None) -> list[Finding]:
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
                "threshold": SATURATION_FRACTION}
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
        advice = (f"Use {_fitting_init(activation)} so pre-activations stay in the linear regime; softsign saturates "
                  "less than tanh; batch normalization before the non-linearity also helps.")
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


def _rule_dead(rec: _Records, spec: Any = None) -> list[Finding]:
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
            evidence={"dead_fraction": peak, "threshold": DEAD_FRACTION},
            advice=_dead_advice(spec),
        )
    ]


def _dead_advice(spec: Any) -> str:
    """The fixes for dead ReLUs, leaving out batch normalization before the ReLU when the spec has it."""
    has_bn = _spec_value(spec, "norm") == "batch" and _spec_value(spec, "norm_position") in (None, "before")
    fixes = ["He initialization with zero biases", "a lower learning rate"]
    fixes += [] if has_bn else ["batch normalization before the ReLU"]
    return (f"Use Leaky ReLU or PReLU (a non-zero slope for x < 0 keeps gradients flowing), "
            f"{', '.join(fixes[:-1])}, or {fixes[-1]}.")


def _rule_constant_layer(rec: _Records) -> list[Finding]:
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
            "never with zeros or a constant (seed 004 section 7.5).",
        )
    ]


def _rule_variance_depth(rec: _Records, activation: str | None) -> list[Finding]:
    steps = _by_step(rec.get("activation", "std"))
    if not steps:
        return []
    step = min(steps)
    values = [(layer, v) for layer, v in steps[step].items() if math.isfinite(v)]
    if len(values) < 2 or values[0][1] <= 0.0:
        return []
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
            f"activation std {what} {1 / ratio if ratio < 1 else ratio:.1f}x from {values[0][0]} to "
            f"{values[-1][0]} at initialization",
            layers=layers, first_step=step, recovers=None, evidence=evidence,
            advice=f"The initialization scale does not fit the activation: use {_fitting_init(activation)}, "
            "or LSUV; batch normalization removes the dependence on the scale.",
        )
    ]


# --- learning-rate rules on the loss curve --------------------------------------------------------


def _windows(values: Sequence[float], n: int) -> list[float]:
    """Medians of ``n`` (or fewer) consecutive equal windows."""
    n = max(1, min(n, len(values)))
    size = len(values) / n
    return [median(values[round(i * size): max(round((i + 1) * size), round(i * size) + 1)]) for i in range(n)]


def _rule_learning_rate(
    scalars: Sequence[Mapping[str, Any]], rec: _Records, spec: Any, explained: bool
) -> list[Finding]:
    loss = sorted((int(r["step"]), float(r["value"])) for r in scalars if r["name"] == "train/loss")
    if not loss:
        return []
    lr = _spec_value(spec, "lr")
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


def _median_fastest_update_ratio(rec: _Records) -> float | None:
    """Median over records of the largest update/weight ratio among the layers (None without ratios)."""
    per_step = _by_step(rec.get("update_ratio", "ratio"))
    fastest = [max(v for v in values.values() if math.isfinite(v)) for values in per_step.values()
               if any(math.isfinite(v) for v in values.values())]
    return median(fastest) if fastest else None


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
    """
    rows = list(records)
    if histograms is not None:
        rows += _saturation_from_histograms(histograms, {(r["layer"], r["step"]) for r in rows
                                                         if r["quantity"] == "activation" and r["stat"] == "saturated"})
    rec = _Records(rows)
    activation = _activation_name(spec)
    findings: list[Finding] = []
    findings += _rule_constant_layer(rec)
    findings += _rule_non_finite(rec)
    findings += _rule_gradient_depth(rec, activation)
    findings += _rule_saturation(rec, activation)
    findings += _rule_dead(rec, spec)
    findings += _rule_variance_depth(rec, activation)
    explained = any(f.code in _STALLING for f in findings)
    findings += _rule_learning_rate(list(scalars or ()), rec, spec, explained)
    return sort_findings(findings)


def _saturation_from_histograms(histograms: Iterable[Mapping[str, Any]], have: set) -> list[dict]:
    """Saturated fraction of bounded activations from their histograms: the mass in the outer 1% of [lo, hi].

    Used only where the stats rows lack a "saturated" value and the histogram range is that of a bounded
    activation ([-1, 1] for tanh/softsign, [0, 1] for sigmoid).
    """
    out = []
    for h in histograms:
        if h["quantity"] != "activation" or (h["layer"], h["step"]) in have:
            continue
        lo, hi, counts = float(h["lo"]), float(h["hi"]), list(h["counts"])
        if (lo, hi) not in ((-1.0, 1.0), (0.0, 1.0)) or not counts or sum(counts) <= 0:
            continue
        edge = max(1, round(0.01 * len(counts)))
        fraction = (sum(counts[:edge]) + sum(counts[-edge:])) / sum(counts)
        out.append(dict(step=h["step"], source=h["source"], layer=h["layer"], quantity="activation",
                        stat="saturated", value=fraction))
    return out


# --- checks that need the model or the data --------------------------------------------------------


def check_model(model, x=None) -> list[Finding]:
    """Symmetry: hidden layers whose units all have the same incoming weights and bias.

    Looks at every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` / ``Maxout`` except the last one (the output layer, whose
    units differ through their targets). Rows of the weight (one per output unit or channel) that are
    equal within ``SYMMETRY_TOL * max|W|`` -- all zero included -- make clones that SGD updates in lock step
    (seed 002; seed 004 section 7.5). With ``x`` the layers' outputs are also measured: the largest spread
    across units of one example's output is added to the evidence.
    """
    from deepscope.init import LAYER_TYPES

    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, LAYER_TYPES) and not _inside_maxout(name, model)]
    spreads = layer_outputs(model, x, layers, _unit_spread) if x is not None else {}
    clones, evidence = [], {}
    for name, m in layers[:-1]:
        w = m.weight.detach()
        if w.shape[0] < 2:
            continue
        rows = w.reshape(w.shape[0], -1)
        scale = float(rows.abs().max())
        spread = float((rows - rows[0]).abs().max())
        bias = m.bias.detach() if getattr(m, "bias", None) is not None else None
        bias_spread = float((bias - bias[0]).abs().max()) if bias is not None else 0.0
        if spread <= SYMMETRY_TOL * scale and bias_spread <= SYMMETRY_TOL * max(scale, 1.0):
            clones.append(name)
            evidence[f"{name}.weight_max_abs"] = scale
            if name in spreads:
                evidence[f"{name}.output_spread"] = spreads[name]
    if not clones:
        return []
    return [
        Finding(
            "symmetry", "error",
            f"every unit of {', '.join(clones)} has the same incoming weights and bias: the units are clones",
            layers=clones, first_step=None, recovers=False, evidence=evidence,
            advice="Break the symmetry: initialize weights randomly (normalized/Glorot or He initialization), "
            "never with zeros or a constant (seed 004 section 7.5).",
        )
    ]


def _inside_maxout(name: str, model) -> bool:
    from deepscope.nn.activations import Maxout

    parent = name.rpartition(".")[0]
    return bool(name) and "." in name and isinstance(model.get_submodule(parent), Maxout)


def _unit_spread(output) -> float:
    """The largest difference between a unit's output and the first unit's, over examples and positions."""
    units = output.detach().transpose(0, 1).reshape(output.shape[1], -1)  # (units, examples * positions)
    return float((units - units[0]).abs().max())


def layer_outputs(model, x, layers: Iterable[tuple[str, Any]], measure: Callable[[Any], Any]) -> dict[str, Any]:
    """``{name: measure(output)}`` of each ``(name, module)`` of ``layers`` in one forward pass of ``x`` without
    autograd, in the order the modules ran (forward hooks, removed afterwards; a module run twice keeps its last)."""
    import torch

    out: dict[str, Any] = {}
    handles = [m.register_forward_hook(lambda module, inputs, output, name=name: out.__setitem__(name, measure(output)))
               for name, m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def diagnose_input(x) -> list[Finding]:
    """Centering and scaling of a batch of inputs, per component (seed 004 section 7.6).

    ``x`` is a batch (first dimension = examples). Centered: the per-component means carry less than
    ``INPUT_MEAN_FRACTION`` of the input's RMS. Scaled: the RMS of the centered input lies in
    [INPUT_SCALE_LOW, INPUT_SCALE_HIGH] and the per-component stds (of non-constant components) differ by
    less than ``INPUT_SPREAD_RATIO``.
    """
    import torch

    x = torch.as_tensor(x).detach().reshape(len(x), -1).double()
    if x.shape[0] < 2:
        raise ValueError(f"diagnose_input needs a batch of at least 2 examples, got x.shape={tuple(x.shape)}")
    mu = x.mean(0)
    std = x.std(0)
    rms = float(x.pow(2).mean().sqrt())
    mean_fraction = float(mu.pow(2).mean().sqrt()) / rms if rms > 0 else 0.0
    scale = float(std.pow(2).mean().sqrt())
    varying = std[std > 1e-12 * max(scale, 1e-30)]
    spread = float(varying.max() / varying.min()) if varying.numel() else 1.0
    findings = []
    if mean_fraction > INPUT_MEAN_FRACTION:
        findings.append(Finding(
            "input_not_centered", "warning",
            f"the per-component means make up {mean_fraction:.0%} of the input RMS (mean {float(mu.mean()):.3g})",
            layers=["input"], evidence={"mean_fraction": mean_fraction, "mean": float(mu.mean()),
                                        "threshold": INPUT_MEAN_FRACTION},
            advice="Center the inputs: subtract the per-component mean of the training set (seed 004 section "
            "7.6; deepscope preprocessing 'center' or 'standardize', fitted on training data only).",
        ))
    if not INPUT_SCALE_LOW <= scale <= INPUT_SCALE_HIGH or spread > INPUT_SPREAD_RATIO:
        findings.append(Finding(
            "input_not_scaled", "warning",
            f"the per-component std is {scale:.3g} on average (largest/smallest {spread:.3g})",
            layers=["input"], evidence={"std": scale, "std_spread": spread, "low": INPUT_SCALE_LOW,
                                        "high": INPUT_SCALE_HIGH, "spread_threshold": INPUT_SPREAD_RATIO},
            advice="Scale the inputs after centering: divide each component by its training-set std, or map "
            "to [-1, 1] (seed 004 section 7.6; preprocessing 'standardize').",
        ))
    return findings


# --- doctor: a short probed training run, diagnosed and reported -----------------------------------

DOCTOR_UPDATES = 500  # long enough for the loss curve and saturation to show, short enough to wait for
DOCTOR_MONITOR = 300  # Glorot & Bengio monitored a fixed set of 300 examples
DOCTOR_RECORDS = 10  # probe records over the run (plus the one at initialization)
DOCTOR_EVALS = 5  # evaluations over the run (the error curves of the report)


@dataclass
class DoctorResult:
    """What :func:`doctor` found: the run, its findings (errors first) and the report written."""

    run_id: str | None
    status: str
    findings: list[Finding]
    report: Any = None  # pathlib.Path of the HTML report
    store: Any = None  # the Store the run was recorded in, if any

    @property
    def healthy(self) -> bool:
        return not has_problem(self.findings)


def _preprocessor(spec, data):
    """The trainer's preprocessing, fitted the same way (on the training set, or the stream's first batch)."""
    from deepscope.data.preprocess import Preprocessor
    from deepscope.train import FIT_SAMPLE

    pre = Preprocessor(spec.data.preprocess or "none")
    fitted = [m for m in pre.methods if m != "none"]
    x_fit = data.train[0] if data.train is not None else data.stream.batch(0, FIT_SAMPLE if fitted else 2)[0]
    return pre.fit(x_fit)


CHECKS_FILE = "checks.json"  # doctor's model and input findings, in the run's folder of the store


def merge_checks(findings: list[Finding], checks: list[Finding]) -> list[Finding]:
    """The records' findings with the model/input ``checks``; a check replaces a finding of the same code."""
    codes = {c.code for c in checks}
    return sort_findings([f for f in findings if f.code not in codes] + list(checks))


def save_checks(path, checks: list[Finding]) -> None:
    """Write ``checks`` as JSON (``deepscope report`` reads them back with :func:`load_checks`)."""
    import json
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps([c.to_dict() for c in checks], indent=1))


def load_checks(path) -> list[Finding]:
    """The findings :func:`save_checks` wrote; none when the file does not exist.

    A file that is not such a list raises ``ValueError`` naming it.
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
        return [Finding(**{k: v for k, v in row.items() if k in Finding.__dataclass_fields__}) for row in rows]
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a list of findings written by deepscope doctor ({e})") from None


def _merge_symmetry(findings: list[Finding], at_init: list[Finding], at_end: list[Finding]) -> list[Finding]:
    """One symmetry finding: the model check (weights) when it saw clones, else the records' constant layers."""
    if not at_init and not at_end:
        return findings
    model_finding = (at_init or at_end)[0]
    model_finding.first_step = 0 if at_init else None
    model_finding.recovers = not at_end
    if not at_end:
        model_finding.severity = "warning"
        model_finding.message += "; training has broken the symmetry since"
    return [f for f in findings if f.code != "symmetry"] + [model_finding]


def doctor(
    spec: Any = None,
    *,
    model: Any = None,
    dataset: Any = None,
    store: Any = None,
    updates: int = DOCTOR_UPDATES,
    monitor: int = DOCTOR_MONITOR,
    report_path: Any = None,
    quiet: bool = True,
) -> DoctorResult:
    """Train ``spec`` (a RunSpec or its dict) for ``updates`` updates with the probe, diagnose, write the report.

    The probe records ``DOCTOR_RECORDS`` times on a fixed monitor set of ``monitor`` validation examples
    (preprocessed as the trainer does). ``model`` replaces the spec's network by your own ``nn.Module``
    (the spec's data, optimizer and training sections still apply; ``[model]`` is ignored). Findings come
    from :func:`diagnose` on the records and the per-update training loss, :func:`check_model` at
    initialization and at the end, and :func:`diagnose_input` on the monitor inputs. The report goes to
    ``report_path`` (default: ``<store>/<run>/report.html``, or ``doctor-report.html`` without a store).
    """
    from pathlib import Path

    import torch

    from deepscope.config import RunSpec, validate_spec
    from deepscope.data import get_dataset
    from deepscope.optim import make_loss
    from deepscope.plots.report import RunData, report
    from deepscope.probe import Probe, StoreSink
    from deepscope.store import Store

    if not isinstance(updates, int) or isinstance(updates, bool) or updates < 1:
        raise ValueError(f"updates={updates!r} is not allowed; give an integer >= 1")
    if not isinstance(monitor, int) or isinstance(monitor, bool) or monitor < 1:
        raise ValueError(f"monitor={monitor!r} is not allowed; give an integer >= 1")
    data_spec = spec.to_dict() if isinstance(spec, RunSpec) else dict(spec or {})
    data_spec["train"] = {**data_spec.get("train", {}), "updates": updates, "epochs": None,
                          "eval_every": max(1, updates // DOCTOR_EVALS)}
    spec = validate_spec(data_spec, source="doctor spec")
    if store is not None and not isinstance(store, Store):
        store = Store(store)
    data = dataset if dataset is not None else get_dataset(spec.data.name, **spec.data.options)
    x_mon, y_mon = (t[:monitor] for t in data.valid)
    x_mon = _preprocessor(spec, data)(x_mon)
    every = max(1, updates // DOCTOR_RECORDS)
    recorded = spec.to_dict()  # what the store, the report and the advice see
    if model is not None:
        recorded["model"] = _describe_model(model)

    state: dict[str, Any] = {"losses": [], "evals": [], "active": False}

    def callback(ctx) -> None:
        if ctx.event == "start":
            x = x_mon.to(next(ctx.model.parameters()).device)
            state["init"] = check_model(ctx.model, x)
            sinks = [StoreSink(ctx.store, ctx.run_id)] if ctx.store is not None else []
            state["probe"] = Probe(ctx.model, every=every, monitor=(x, y_mon), loss_fn=make_loss(spec.train.loss),
                                   sinks=sinks, start_step=ctx.step).__enter__()
            state["active"] = True
        elif ctx.event == "step":
            state["probe"].step(ctx.step)
            state["losses"].append(ctx.loss)  # stays on the device; read once at the end
        elif ctx.event == "eval":
            state["evals"] += [dict(step=ctx.step, name=k, value=v) for k, v in ctx.metrics.items()]
        elif ctx.event == "end":
            state["active"] = False
            state["probe"].__exit__(None, None, None)
            state["end"] = check_model(ctx.model, x_mon.to(next(ctx.model.parameters()).device))

    try:
        if model is None:
            from deepscope.train import train

            result = train(spec, store=store, callbacks=[callback], quiet=quiet, dataset=data)
            run_id, status = result.run_id, result.status
        else:
            run_id, status = _train_model(model, spec, recorded, data, store, callback, quiet)
    finally:
        if state["active"]:  # training raised: the probe's hooks go all the same
            state["probe"].__exit__(None, None, None)
    probe = state["probe"]
    losses = torch.stack(state["losses"]).float().tolist() if state["losses"] else []
    loss_rows = [dict(step=i + 1, name="train/loss", value=v) for i, v in enumerate(losses)]
    # what the records cannot tell later: the model's weights at init and at the end, and the inputs
    checks = _merge_symmetry([], state["init"], state.get("end", [])) + diagnose_input(x_mon)
    findings = merge_checks(diagnose(probe.records, scalars=loss_rows, histograms=probe.histograms, spec=recorded),
                            checks)
    if store is not None:
        save_checks(store.run_dir(run_id) / CHECKS_FILE, checks)

    run = RunData(spec.name, run_id=run_id, spec=recorded, status=status, stats=probe.records,
                  histograms=probe.histograms, findings=findings, checks=checks,
                  scalars=store.scalars(run_id) if store is not None else state["evals"])
    if report_path is None:
        report_path = store.run_dir(run_id) / "report.html" if store is not None else Path("doctor-report.html")
    path = report([run], out_path=report_path, title=f"deepscope doctor: {spec.name}")
    return DoctorResult(run_id, status, findings, path, store)


def _describe_model(model) -> dict[str, str]:
    """A user model as a spec section: its class, and its activation when it uses exactly one."""
    from deepscope.nn.activations import spec_for_module

    names = {s.name for m in model.modules() if (s := spec_for_module(m)) is not None}
    return {"class": type(model).__name__, **({"activation": names.pop()} if len(names) == 1 else {})}


def _train_model(model, spec, recorded: dict, data, store, callback, quiet: bool):
    """A plain loop for a user's own model (the trainer builds its models from the spec).

    The spec's optimizer, loss, batch size, clipping and preprocessing; the trainer's callback events
    ("start", "step", "eval" with the metrics, "end"). Every ``eval_every`` updates the mean training loss
    is logged, and at the end the validation/test loss and error; to ``store`` when given.
    Returns ``(run_id, status)``.
    """
    from types import SimpleNamespace

    import torch

    from deepscope.data import batches
    from deepscope.optim import clip_gradients, make_loss, make_optimizer
    from deepscope.train import evaluate, resolve_device

    t = spec.train
    device = resolve_device(t.device)
    model = model.to(device)
    pre = _preprocessor(spec, data).to(device)
    optimizer = make_optimizer(spec.optim.name, model.parameters(), spec.optim.lr, **spec.optim.params)
    loss_fn = make_loss(t.loss)
    run_id = store.create_run(spec.name, recorded, t.seed) if store is not None else None
    ctx = SimpleNamespace(event="start", step=0, model=model, optimizer=optimizer, loss=None, metrics={},
                          run_id=run_id, store=store, spec=spec)

    def emit(event: str, step: int, loss=None, metrics=None) -> None:
        ctx.event, ctx.step, ctx.loss, ctx.metrics = event, step, loss, metrics or {}
        if metrics and store is not None:
            store.log_scalars(run_id, step, metrics)
        callback(ctx)

    def train_batches():
        g = torch.Generator().manual_seed(t.seed)
        index = 0
        while True:
            if data.stream is not None:
                yield data.stream.batch(index, t.batch_size)
                index += 1
            else:
                yield from batches(*data.train, t.batch_size, generator=g)

    emit("start", 0)
    model.train()
    window, status, step = [], "finished", 0
    for step, (x, y) in zip(range(1, t.updates + 1), train_batches(), strict=False):
        x, y = pre(x.to(device)), y.to(device)
        loss = loss_fn(model(x), y)
        loss.backward()
        if t.clip_norm is not None or t.clip_value is not None:
            clip_gradients(model.parameters(), t.clip_norm, t.clip_value)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.detach())
        emit("step", step, loss.detach())
        if step % t.eval_every == 0 or step == t.updates:
            mean = float(torch.stack(window).mean())
            window = []
            emit("eval", step, metrics={"train/loss": mean})
            if not math.isfinite(mean):
                status = "diverged"
                break
    metrics = {}
    for split in ("valid", "test"):
        x, y = getattr(data, split)
        loss, error = evaluate(model, pre(x.to(device)), y.to(device), loss_fn, t.eval_batch_size)
        metrics |= {f"{split}/loss": float(loss), f"{split}/error": float(error)}
    emit("eval", step, metrics=metrics)
    if store is not None:
        store.set_status(run_id, status)
    emit("end", step)
    if not quiet:
        from rich.console import Console

        Console(stderr=True).print(f"{spec.name}: {status} after {step} updates")
    return run_id, status


def model_from_factory(path: str):
    """Import ``package.module:factory`` and call it with no arguments; it must return an ``nn.Module``."""
    import importlib
    import inspect

    from torch import nn

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model {path!r}: expected package.module:factory, e.g. mypkg.nets:build")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model {path!r}: cannot import {module_name!r} ({e})") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--model {path!r}: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if callable(factory) and not isinstance(factory, nn.Module):
        try:
            inspect.signature(factory).bind()
        except TypeError as e:
            raise ValueError(f"--model {path!r}: {attr} cannot be called without arguments ({e}); give a factory "
                             "that takes none") from None
        except ValueError:
            pass  # no signature to check (a builtin): call it and see
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 - the user's factory failed: say so in one line
            raise ValueError(f"--model {path!r}: calling {attr}() failed ({type(e).__name__}: {e})") from None
    else:
        model = factory
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {path!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
