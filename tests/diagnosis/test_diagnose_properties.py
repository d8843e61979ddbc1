"""Diagnosis never crashes: property-based tests over degenerate and malformed record sets (hypothesis)."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepscope.diagnosis import CODES, SEVERITIES, Finding, diagnose
from deepscope.records import QUANTITIES

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LAYERS = ["hidden1", "hidden2", "hidden3", "output", "late"]
STATS = ["mean", "std", "p2", "p98", "saturated", "dead", "ratio", "norm", "sv_mean", "sv_max", "sv_min"]
# the values that break arithmetic: zeros, signed infinities, NaN, huge and tiny numbers, negatives
values = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, math.inf, -math.inf, math.nan, 1e308, -1e308, 1e-308, 0.5, 1.0 - 1e-12]),
    st.floats(allow_nan=True, allow_infinity=True),
)
steps = st.integers(min_value=0, max_value=50)

stat_rows = st.fixed_dictionaries({
    "step": steps,
    "source": st.sampled_from(["monitor", "train"]),
    "layer": st.sampled_from(LAYERS),
    "quantity": st.sampled_from(QUANTITIES),
    "stat": st.sampled_from(STATS),
    "value": values,
})
# rows a reader may hand over by mistake: missing fields, wrong types, strings, None
junk = st.one_of(
    st.none(), st.integers(), st.text(max_size=3),
    st.dictionaries(st.sampled_from(["step", "source", "layer", "quantity", "stat", "value", "name"]),
                    st.one_of(st.none(), st.text(max_size=3), values, st.integers()), max_size=6),
)
scalar_rows = st.fixed_dictionaries({
    "step": steps,
    "name": st.sampled_from(["train/loss", "valid/loss", "train/grad_norm", "valid/chance_loss", "valid/error"]),
    "value": values,
})
histogram_rows = st.fixed_dictionaries({
    "step": steps, "source": st.sampled_from(["monitor", "train"]), "layer": st.sampled_from(LAYERS),
    "quantity": st.just("activation"),
    "lo": st.sampled_from([-1.0, 0.0, math.nan]), "hi": st.sampled_from([1.0, 0.0, math.inf]),
    "counts": st.lists(st.one_of(st.integers(0, 5), values), max_size=8),
})
specs = st.one_of(
    st.none(),
    st.fixed_dictionaries({"model": st.fixed_dictionaries({"activation": st.sampled_from(
        ["relu", "tanh", "sigmoid", "gelu", "unknown", None])}),
        "optim": st.fixed_dictionaries({"lr": st.one_of(values, st.text(max_size=2), st.booleans(),
                                                       st.just(10 ** 400))}),
        "train": st.fixed_dictionaries({"loss": st.sampled_from(["cross_entropy", "quadratic", None])})}),
)


def check(findings):
    assert isinstance(findings, list)
    for f in findings:
        assert isinstance(f, Finding)
        assert f.code in CODES and f.severity in SEVERITIES
        assert f.code != "diagnosis_error", f.message  # a rule that raised is a bug, even though it is caught


@SETTINGS
@given(st.lists(stat_rows, max_size=60), st.lists(scalar_rows, max_size=80), st.lists(histogram_rows, max_size=5),
       specs)
def test_any_well_typed_rows_give_findings(rows, scalars, histograms, spec):
    check(diagnose(rows, scalars=scalars, histograms=histograms, spec=spec))


@SETTINGS
@given(st.lists(st.one_of(stat_rows, junk), max_size=30), st.lists(st.one_of(scalar_rows, junk), max_size=30),
       st.lists(st.one_of(histogram_rows, junk), max_size=5))
def test_malformed_rows_are_skipped(rows, scalars, histograms):
    check(diagnose(rows, scalars=scalars, histograms=histograms))


def grid(quantity, stat, value, layers, steps_):
    return [dict(step=s, source="monitor", layer=layer, quantity=quantity, stat=stat, value=value)
            for s in steps_ for layer in layers]


@SETTINGS
@given(st.sampled_from([0.0, math.nan, math.inf, -math.inf, 1e308]), st.integers(1, 4), st.integers(1, 4),
       st.integers(0, 120))
def test_constant_degenerate_networks(value, n_layers, n_steps, n_losses):
    """Every statistic of every layer the same degenerate value (all dead, all zero, all NaN/Inf), any depth,
    any number of records, with or without a loss curve."""
    layers, steps_ = LAYERS[:n_layers], list(range(0, 10 * n_steps, 10))
    rows = []
    for quantity, stat in [("activation", "mean"), ("activation", "std"), ("activation", "dead"),
                           ("activation", "saturated"), ("preact_grad", "std"), ("update_ratio", "ratio"),
                           ("weight_grad", "norm")]:
        rows += grid(quantity, stat, value, layers, steps_)
    scalars = [dict(step=i + 1, name="train/loss", value=value) for i in range(n_losses)]
    scalars += [dict(step=10 * i, name="valid/loss", value=value) for i in range(n_steps)]
    check(diagnose(rows, scalars=scalars, spec={"optim": {"lr": value}}))


@SETTINGS
@given(st.lists(st.tuples(steps, st.sampled_from(LAYERS)), min_size=1, max_size=30), values)
def test_layers_appearing_late_and_single_records(points, value):
    """Layers that appear only at some records, records of one layer, gradient rows without activations."""
    rows = [dict(step=s, source="train", layer=layer, quantity=q, stat="std", value=value)
            for s, layer in points for q in ("activation", "preact_grad")]
    rows += [dict(step=s, source="train", layer=layer, quantity="update_ratio", stat="ratio", value=value)
             for s, layer in points[::2]]
    check(diagnose(rows))
    check(diagnose(rows[:1]))
    check(diagnose([r for r in rows if r["quantity"] == "preact_grad"]))


def test_no_records_at_all():
    assert diagnose([]) == []
    assert diagnose([], scalars=[], histograms=[], spec=None) == []
    assert diagnose(iter(()), scalars=iter(())) == []


DEGENERATE = [0.0, 1.0, math.nan, math.inf, -math.inf, 1e-308, 1e308, 0.3]


@SETTINGS
@given(st.lists(st.sampled_from(DEGENERATE), min_size=1, max_size=5), st.integers(1, 3), st.booleans())
def test_each_layer_its_own_degenerate_value(per_layer, n_steps, dead_layers):
    """A mix across layers: live layers next to all-zero (dead or collapsed), NaN and Inf ones."""
    layers = LAYERS[: len(per_layer)]
    rows = []
    for s in range(0, 10 * n_steps, 10):
        for layer, v in zip(layers, per_layer, strict=True):
            for quantity, stat, value in [("activation", "std", v), ("activation", "mean", 0.0),
                                          ("activation", "dead", 1.0 if dead_layers and v == 0 else 0.0),
                                          ("preact_grad", "std", v), ("update_ratio", "ratio", v)]:
                rows.append(dict(step=s, source="monitor", layer=layer, quantity=quantity, stat=stat, value=value))
    check(diagnose(rows, scalars=[dict(step=1, name="train/loss", value=per_layer[0])]))
