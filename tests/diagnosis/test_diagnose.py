"""Diagnosis rules: thresholds on synthetic rows, then each rule on a real failing network and its healthy twin."""

import math
import sys

import pytest
import torch

from deepscope.diagnosis import Finding, check_model, checks, diagnose, diagnose_input, has_problem, sort_findings
from deepscope.diagnosis.rules import layers as dg

LAYERS = ["hidden1", "hidden2", "hidden3"]


def rows(quantity, stat, per_step, layers=LAYERS, source="monitor"):
    """Stats rows from {step: [value per layer]}."""
    return [
        dict(step=step, source=source, layer=layer, quantity=quantity, stat=stat, value=value)
        for step, values in per_step.items()
        for layer, value in zip(layers, values, strict=True)
    ]


def codes(findings):
    return {f.code for f in findings}


def only(findings, code):
    found = [f for f in findings if f.code == code]
    assert len(found) == 1, findings
    return found[0]


# --- synthetic rows: thresholds --------------------------------------------------------------------


def test_vanishing_fires_below_threshold_and_names_the_lower_layers():
    top = 0.1
    ratio = dg.VANISHING_RATIO / 10
    f = only(diagnose(rows("preact_grad", "std", {0: [ratio * top, 0.5 * top, top]})), "vanishing_gradients")
    assert f.layers == ["hidden1"]
    assert f.evidence["ratio_bottom_to_top"] == pytest.approx(ratio)
    assert f.first_step == 0 and f.recovers is False and f.severity == "error"


def test_vanishing_silent_just_above_threshold():
    top = 0.1
    assert not diagnose(rows("preact_grad", "std", {0: [2 * dg.VANISHING_RATIO * top, 0.5 * top, top]}))


def test_vanishing_that_recovers_is_a_warning_with_its_first_step():
    per_step = {0: [1e-6, 1e-3, 1.0], 100: [1e-6, 1e-3, 1.0], 200: [0.5, 0.7, 1.0]}
    f = only(diagnose(rows("preact_grad", "std", per_step)), "vanishing_gradients")
    assert (f.first_step, f.recovers, f.severity) == (0, True, "warning")
    assert f.layers == ["hidden1", "hidden2"]


def test_exploding_toward_the_input_and_non_finite():
    f = only(diagnose(rows("preact_grad", "std", {0: [10.0 * dg.EXPLODING_RATIO, 1.0, 1.0]})), "exploding_gradients")
    assert f.layers == ["hidden1"]
    bad = rows("weight_grad", "norm", {0: [1.0, 1.0, 1.0], 50: [1.0, math.inf, math.nan]})
    f = only(diagnose(bad), "exploding_gradients")
    assert f.layers == ["hidden2", "hidden3"] and f.first_step == 50 and f.severity == "error"


def test_saturation_first_layer_and_recovery():
    hi = dg.SATURATION_FRACTION + 0.2
    per_step = {0: [0.0, 0.0, 0.0], 100: [0.0, 0.0, hi], 200: [hi, 0.0, hi], 300: [0.0, 0.0, 0.0]}
    f = only(diagnose(rows("activation", "saturated", per_step)), "saturation")
    assert f.layers == ["hidden3", "hidden1"]  # in the order they saturated
    assert "hidden3" in f.message and f.first_step == 100
    assert f.recovers is True and f.severity == "warning"
    per_step[300] = [0.0, 0.0, hi]
    f = only(diagnose(rows("activation", "saturated", per_step)), "saturation")
    assert f.recovers is False and f.severity == "error"


def test_saturation_silent_below_threshold():
    assert not diagnose(rows("activation", "saturated", {0: [dg.SATURATION_FRACTION - 0.01] * 3}))


def test_sigmoid_top_layer_driven_to_zero_gets_tanh_advice():
    records = rows("activation", "saturated", {0: [0.0, 0.0, 0.0], 100: [0.0, 0.0, 0.9]})
    records += rows("activation", "mean", {0: [0.5, 0.5, 0.5], 100: [0.5, 0.5, 0.02]})
    records += rows("activation", "p2", {0: [0.1, 0.1, 0.1], 100: [0.1, 0.1, 0.0]})
    f = only(diagnose(records), "saturation")
    assert "driven to 0" in f.message
    assert "tanh or softsign" in f.advice
    # with a spec naming tanh the advice is about the initialization instead
    f = only(diagnose(records, spec={"model": {"activation": "tanh"}}), "saturation")
    assert "Glorot" in f.advice and "driven to 0" not in f.message
    assert "already uses" not in f.advice
    # a run that already has that init is told so, and pointed at the other remedies
    used = {"model": {"activation": "tanh"}, "init": {"scheme": "glorot_uniform"}}
    f = only(diagnose(records, spec=used), "saturation")
    assert "init.scheme='glorot_uniform', which this run already uses" in f.advice and "batch normalization" in f.advice


def test_dead_units_warning_and_error():
    assert not diagnose(rows("activation", "dead", {0: [dg.DEAD_FRACTION - 0.05] * 3}))
    f = only(diagnose(rows("activation", "dead", {0: [0.0, dg.DEAD_FRACTION + 0.1, 0.0]})), "dead_units")
    assert f.layers == ["hidden2"] and f.severity == "warning"
    f = only(diagnose(rows("activation", "dead", {0: [1.0, 1.0, 0.0]})), "dead_units")
    assert f.layers == ["hidden1", "hidden2"] and f.severity == "error"
    assert "Leaky ReLU" in f.advice and "PReLU" in f.advice
    assert f.advice.endswith("a lower learning rate, or batch normalization before the ReLU.")
    with_bn = {"model": {"activation": "relu", "norm": "batch", "norm_position": "before"}}
    f = only(diagnose(rows("activation", "dead", {0: [1.0, 1.0, 0.0]}), spec=with_bn), "dead_units")
    assert f.advice.endswith("He initialization with zero biases, or a lower learning rate.")  # BN is there


def test_constant_layer_is_symmetry_unless_saturated_or_dead():
    records = rows("activation", "std", {0: [0.0, 0.0, 0.3]}) + rows("activation", "mean", {0: [0.5, 0.0, 0.1]})
    f = only(diagnose(records), "symmetry")
    assert f.layers == ["hidden1", "hidden2"] and f.severity == "error"
    records += rows("activation", "saturated", {0: [1.0, 0.0, 0.0]})
    assert only(diagnose(records), "symmetry").layers == ["hidden2"]


def test_tiny_but_varying_outputs_are_not_symmetry():
    records = rows("activation", "std", {0: [1e-8, 1e-9, 1e-10]}) + rows("activation", "mean", {0: [1e-9] * 3})
    assert "symmetry" not in codes(diagnose(records))


def test_variance_with_depth_at_initialization():
    shrink = rows("activation", "std", {0: [1.0, 0.3, 0.5 / dg.VARIANCE_DEPTH_RATIO], 100: [1.0, 1.0, 1.0]})
    f = only(diagnose(shrink, spec={"activation": "relu"}), "variance_shrinks")
    assert f.layers == ["hidden3"] and f.first_step == 0
    assert "He initialization" in f.advice
    grow = rows("activation", "std", {0: [0.01, 0.05, 2 * dg.VARIANCE_DEPTH_RATIO * 0.01]})
    assert only(diagnose(grow), "variance_grows").layers == ["hidden3"]
    assert not diagnose(rows("activation", "std", {0: [1.0, 0.5, 0.2]}))


def loss_rows(values, name="train/loss"):
    return [dict(step=10 * i, name=name, value=v) for i, v in enumerate(values)]


def noisy(values, amplitude=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(len(values), generator=g) - 0.5) * 2 * amplitude
    return [v * (1 + float(n)) for v, n in zip(values, noise, strict=True)]


def test_learning_rate_rules_read_the_loss_curve():
    good = noisy([0.3 + 2.0 * math.exp(-i / 15) for i in range(100)])
    assert not diagnose([], scalars=loss_rows(good))
    nan = loss_rows([2.3, 2.5, math.nan, math.nan])
    f = only(diagnose([], scalars=nan, spec={"optim": {"lr": 10.0}}), "lr_too_high")
    assert f.first_step == 20 and f.evidence["lr"] == 10.0
    rising = noisy([2.3 * (1 + i / 50) for i in range(100)])
    assert only(diagnose([], scalars=loss_rows(rising)), "lr_too_high").severity == "error"



def test_slow_loss_with_small_steps_is_a_low_rate():
    slow = loss_rows(noisy([2.3 - 0.001 * i for i in range(100)], amplitude=0.01))
    tiny = rows("update_ratio", "ratio", {0: [1e-7, 3e-6, 1e-6], 50: [1e-7, 2e-6, 1e-6], 100: [1e-7, 1.0, 1e-6]})
    f = only(diagnose(tiny, scalars=slow), "lr_too_low")
    assert f.evidence["relative_drop"] < dg.LR_SLOW_DROP
    assert f.evidence["update_ratio"] == pytest.approx(3e-6)  # median over records of the fastest layer
    assert "lr_too_low" not in codes(diagnose(rows("update_ratio", "ratio", {0: [1e-3] * 3}), scalars=slow))
    assert "lr_too_low" not in codes(diagnose([], scalars=slow))  # the loss alone cannot tell
    fast = loss_rows(noisy([0.3 + 2.0 * math.exp(-i / 15) for i in range(100)]))
    assert "lr_too_low" not in codes(diagnose(tiny, scalars=fast))
    # no step at all (every ReLU dead after a too-high rate, say): not a low rate
    still = rows("update_ratio", "ratio", {0: [0.0] * 3, 50: [0.0] * 3, 100: [0.0] * 3})
    assert "lr_too_low" not in codes(diagnose(still, scalars=slow))
    f = only(diagnose(still, scalars=slow), "not_learning")  # nothing moves at all: said as such
    assert f.severity == "error" and "the optimizer takes no step" in f.message and len(f.layers) == 3


def test_flat_loss_explained_by_another_finding_is_not_blamed_on_the_rate():
    slow = loss_rows(noisy([2.3 - 0.001 * i for i in range(100)], amplitude=0.01))
    records = rows("activation", "std", {0: [0.0, 0.0, 0.0]}) + rows("update_ratio", "ratio", {0: [1e-7] * 3})
    assert codes(diagnose(records, scalars=slow)) == {"symmetry"}


def test_train_source_is_used_when_there_is_no_monitor():
    f = only(diagnose(rows("activation", "dead", {0: [1.0, 0.0, 0.0]}, source="train")), "dead_units")
    assert f.layers == ["hidden1"]


def test_histograms_give_saturation_when_stats_lack_it():
    counts = [50.0] + [0.0] * 48 + [50.0]  # all mass at the asymptotes of tanh
    hist = [dict(step=0, source="monitor", layer="hidden1", quantity="activation", lo=-1.0, hi=1.0, counts=counts)]
    assert only(diagnose([], histograms=hist), "saturation").layers == ["hidden1"]


def test_sorting_and_problem_flag():
    findings = [Finding("lr_too_low", "warning", "", first_step=5), Finding("x", "info", ""),
                Finding("symmetry", "error", "", first_step=9)]
    assert [f.severity for f in sort_findings(findings)] == ["error", "warning", "info"]
    assert has_problem(findings) and not has_problem([Finding("x", "info", "")])


# --- input checks -----------------------------------------------------------------------------------


def test_diagnose_input_centering_and_scaling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 8, 8, generator=g)
    assert diagnose_input(x) == []
    assert codes(diagnose_input(x + 5.0)) == {"input_not_centered"}
    assert codes(diagnose_input(255 * torch.rand(300, 64, generator=g))) == {"input_not_centered", "input_not_scaled"}
    unequal = x.reshape(300, -1).clone()
    unequal[:, 0] *= 10 * checks.INPUT_SPREAD_RATIO
    f = only(diagnose_input(unequal), "input_not_scaled")
    assert f.evidence["std_spread"] > checks.INPUT_SPREAD_RATIO
    # the reported mean fraction matches a direct computation
    assert "input_not_centered" not in codes(diagnose_input(x + 1.0))  # an offset the size of the signal: 0.71
    shifted = x.reshape(300, -1) + 2.0
    f = only(diagnose_input(shifted), "input_not_centered")
    mu = shifted.double().mean(0)
    assert f.evidence["mean_fraction"] == pytest.approx(float(mu.pow(2).mean().sqrt() / shifted.double().pow(2)
                                                              .mean().sqrt()))
    with pytest.raises(ValueError, match="at least 2"):
        diagnose_input(x[:1])


# --- the model check --------------------------------------------------------------------------------


@pytest.mark.parametrize("init, kwargs", [("zeros", {}), ("constant", {"value": 0.05})])
def test_check_model_finds_clones_of_zero_and_constant_init(init, kwargs):
    from deepscope.models import mlp

    model = mlp(16, 3, depth=3, width=8, activation="tanh", init=init, init_kwargs=kwargs)
    x = torch.randn(20, 16)
    f = only(check_model(model, x), "symmetry")
    assert f.layers == ["hidden1.linear", "hidden2.linear", "hidden3.linear"]  # not the output layer
    # independent check: the units of hidden2 really give the same output on every example
    h = model.hidden2(model.hidden1(x))
    assert torch.equal(h, h[:, :1].expand_as(h))
    assert f.evidence["hidden2.linear.output_spread"] == 0.0


def test_check_model_silent_on_random_init_and_convnets():
    from deepscope.models import convnet, mlp

    assert check_model(mlp(16, 3, depth=3, width=8, activation="tanh"), torch.randn(20, 16)) == []
    assert check_model(mlp(16, 3, depth=2, width=8, activation="maxout")) == []
    net = convnet(1, 3, 8, channels=(4, 4), init="zeros")
    assert only(check_model(net, torch.randn(5, 1, 8, 8)), "symmetry").layers == ["conv1.conv", "conv2.conv"]


# --- real networks, real probe: each rule on its failing case and the healthy twin ---------------------

D_IN, CLASSES = 16, 4


def teacher_data(n, seed):
    """Inputs N(0, 1), labels from a fixed random linear teacher: learnable, centred, scaled."""
    x = torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))
    w = torch.randn(D_IN, CLASSES, generator=torch.Generator().manual_seed(1234))
    return x, (x @ w).argmax(1)


MONITOR = teacher_data(100, seed=1)


def probe_run(model, lr=0.1, updates=40, every=10, activation=None):
    """Train with SGD and the real Probe; diagnose its records (loss logged every update)."""
    from deepscope.probe import Probe

    x, y = teacher_data(updates * 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    with Probe(model, every=every, monitor=MONITOR, jacobian_examples=0) as probe:
        for t in range(updates):
            loss = torch.nn.functional.cross_entropy(model(x[10 * t: 10 * t + 10]), y[10 * t: 10 * t + 10])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(dict(step=t + 1, name="train/loss", value=loss.item()))
            probe.step()
    spec = {"model": {"activation": activation}, "optim": {"lr": lr}}
    return diagnose(probe.records, scalars=losses, histograms=probe.histograms, spec=spec)


def net(activation="tanh", depth=3, width=32, init="glorot_uniform", **init_kwargs):
    from deepscope.models import mlp

    torch.manual_seed(0)
    return mlp(D_IN, CLASSES, depth, width, activation, init=init, init_kwargs=init_kwargs)


HIDDEN = ["hidden1", "hidden2", "hidden3"]


def test_zero_init_is_symmetry_and_nothing_else():
    model = net(init="zeros")
    findings = probe_run(model, activation="tanh")
    assert codes(findings) == {"symmetry"}  # 0/0 update ratios of zero weights are not an explosion
    assert only(findings, "symmetry").layers == HIDDEN
    assert only(check_model(model, MONITOR[0]), "symmetry").layers == [f"{h}.linear" for h in HIDDEN]


def test_random_init_is_healthy():
    model = net()
    assert probe_run(model, activation="tanh") == []
    assert check_model(model, MONITOR[0]) == []


def test_sigmoid_with_unit_normal_init_saturates():
    model = net("sigmoid", depth=4, width=64, init="normal", std=1.0)
    with torch.no_grad():  # independent: the saturated fraction of hidden1 on the monitor set at init
        h1 = model.hidden1(MONITOR[0])
        expected = float(((h1 < 0.01) | (h1 > 0.99)).float().mean())
    f = only(probe_run(model, activation="sigmoid"), "saturation")
    assert f.layers[0] == "hidden1" and f.first_step == 0
    assert f.evidence["saturated_fraction"] == pytest.approx(expected, abs=1e-6)
    assert "tanh or softsign" in f.advice
    assert "saturation" not in codes(probe_run(net("sigmoid", depth=4, width=64), activation="sigmoid"))


def test_relu_with_large_negative_bias_is_dead():
    model = net("relu", init="he_normal")
    for name, module in model.named_modules():
        if name.endswith(".linear"):
            torch.nn.init.constant_(module.bias, -10.0)
    assert bool((model.hidden1(MONITOR[0]) == 0).all())  # independent: no monitor example activates a unit
    f = only(probe_run(model, activation="relu"), "dead_units")
    assert f.layers == HIDDEN and f.evidence["dead_fraction"] == 1.0 and f.severity == "error"
    assert probe_run(net("relu", init="he_normal"), activation="relu") == []


def test_small_normal_init_in_a_deep_net_vanishes():
    model = net(depth=10, width=24, init="normal", std=0.01)
    # independent: dCost/ds at the first and the last hidden layer, by autograd on the monitor set
    pre = {}
    hooks = [getattr(model, f"hidden{i}").act.register_forward_pre_hook(
        lambda m, a, i=i: pre.__setitem__(i, a[0].retain_grad() or a[0])) for i in (1, 10)]
    torch.nn.functional.cross_entropy(model(MONITOR[0]), MONITOR[1]).backward()
    for h in hooks:
        h.remove()
    model.zero_grad()
    ratio = float(pre[1].grad.std(correction=0) / pre[10].grad.std(correction=0))
    findings = probe_run(model, updates=20, activation="tanh")
    f = only(findings, "vanishing_gradients")
    assert f.layers[0] == "hidden1" and f.first_step == 0
    assert f.evidence["ratio_bottom_to_top"] == pytest.approx(ratio, rel=1e-3, abs=1e-30)
    v = only(findings, "variance_shrinks")
    assert "hidden10" in v.layers and "Glorot" in v.advice
    assert probe_run(net(depth=10, width=24), updates=20, activation="tanh") == []


def test_learning_rate_of_ten_is_too_high():
    f = only(probe_run(net(), lr=10.0, activation="tanh"), "lr_too_high")
    assert f.evidence["lr"] == 10.0 and "Lower the learning rate" in f.advice
    relu = probe_run(net("relu", init="he_normal"), lr=10.0, activation="relu")
    assert "lr_too_high" in codes(relu)
    assert "lr_too_high" not in codes(probe_run(net(), lr=0.1, activation="tanh"))


def test_tiny_learning_rate_is_too_low():
    f = only(probe_run(net(), lr=1e-4, activation="tanh"), "lr_too_low")
    assert f.evidence["update_ratio"] < dg.LR_UPDATE_RATIO_LOW and "Raise the learning rate" in f.advice
    assert "lr_too_low" not in codes(probe_run(net(), lr=0.1, activation="tanh"))


# --- doctor: the Python API and the command -----------------------------------------------------------

SPEC = """
name = "{name}"
[data]
name = "shapeset"
options = {{ n_valid = 200, n_test = 200, size = 16 }}
preprocess = "standardize"
[model]
depth = 2
width = 24
activation = "{activation}"
[init]
scheme = "{init}"
{init_extra}
[optim]
lr = 0.05
[train]
updates = 60
"""


def spec_file(tmp_path, name="tiny", activation="tanh", init="glorot_uniform", init_extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(SPEC.format(name=name, activation=activation, init=init, init_extra=init_extra))
    return path


def test_doctor_api_on_zero_init_reports_symmetry_once(tmp_path):
    from deepscope.config import load_spec
    from deepscope.workflows.doctor import doctor

    result = doctor(load_spec(spec_file(tmp_path, init="zeros")), updates=40, monitor=100,
                    report_path=tmp_path / "r.html")
    f = only(result.findings, "symmetry")  # the records' constant layers and the weight check, merged
    assert f.layers == ["hidden1.linear", "hidden2.linear"] and f.first_step == 0 and f.recovers is False
    assert not result.healthy and result.store is None
    html = result.report.read_text()
    assert "symmetry" in html and "deepscope doctor: tiny" in html
    assert "no error curves recorded" not in html  # without a store the evaluations come from the callback


def run_cli(args):
    from typer.testing import CliRunner

    from deepscope.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_doctor_command_exit_codes_and_report(tmp_path):
    store = tmp_path / "runs"
    healthy = run_cli(["doctor", spec_file(tmp_path), "--updates", 60, "--monitor", 100, "--store", store, "-q"])
    assert healthy.exit_code == 0, healthy.output
    assert "healthy" in healthy.output and (store / "tiny-1" / "report.html").exists()

    from deepscope.store import Store

    with Store(store) as st:  # the probe streamed its records into the run store
        assert {r["quantity"] for r in st.stats("tiny-1")} >= {"activation", "preact_grad", "weight_grad"}
    out = tmp_path / "both.html"
    sick = run_cli(["doctor", spec_file(tmp_path, "sick", "sigmoid", "normal", "std = 1.0"), "--updates", 60,
                    "--monitor", 100, "--store", store, "-q", "-o", out])
    assert sick.exit_code == 1, sick.output
    assert "saturation" in sick.output and out.exists()

    report = run_cli(["report", "tiny-1", "sick-1", "--store", store, "-o", out])
    assert report.exit_code == 0, report.output
    assert "saturation" in report.output and "tiny-1" in out.read_text() and "sick-1" in out.read_text()
    assert run_cli(["report", "nope", "--store", store, "-o", out]).exit_code == 2


def test_report_says_when_a_run_has_no_probe_records(tmp_path):
    store = tmp_path / "runs"
    trained = run_cli(["train", spec_file(tmp_path), "--store", store, "-q", "--updates", 5])
    assert trained.exit_code == 0, trained.output
    out = run_cli(["report", "tiny-1", "--store", store, "-o", tmp_path / "r.html"])
    assert out.exit_code == 0
    assert "no probe records to diagnose; train it with --probe-every N" in out.output
    assert "healthy" not in out.output
    html = (tmp_path / "r.html").read_text()
    assert "not probed" in html and "badge ok" not in html


def test_report_of_a_stored_doctor_run_keeps_the_model_and_input_checks(tmp_path):
    from deepscope.config import load_spec
    from deepscope.store import Store
    from deepscope.workflows.doctor import doctor
    from deepscope.workflows.report import diagnosed, run_data

    store = Store(tmp_path / "runs")
    result = doctor(load_spec(spec_file(tmp_path, init="zeros")), updates=40, monitor=100, store=store)
    # the symmetry finding comes from the weights, which the store does not keep: the report reads it back
    again = diagnosed(run_data(store, result.run_id))
    assert [f.to_dict() for f in again] == [f.to_dict() for f in result.findings]
    assert only(again, "symmetry").layers == ["hidden1.linear", "hidden2.linear"]
    out = run_cli(["report", result.run_id, "--store", store.root, "-o", tmp_path / "again.html"])
    assert out.exit_code == 0 and "symmetry" in out.output

    (store.run_dir(result.run_id) / "checks.json").write_text('{"not": "a list"}')
    bad = run_cli(["report", result.run_id, "--store", store.root, "-o", tmp_path / "bad.html"])
    assert bad.exit_code == 2 and "checks.json" in bad.output and "not a list of findings" in bad.output


@pytest.mark.parametrize("args, message", [
    (["--set", "model.activation=nope"], "model.activation"),
    (["--updates", 0], "updates=0"),
])
def test_doctor_command_bad_input_exits_2(tmp_path, args, message):
    result = run_cli(["doctor", spec_file(tmp_path), *args, "--store", tmp_path / "runs"])
    assert result.exit_code == 2 and message in result.output


def test_doctor_command_needs_a_spec_or_a_model(tmp_path):
    assert run_cli(["doctor", tmp_path / "missing.toml"]).exit_code == 2
    result = run_cli(["doctor", "--store", tmp_path])
    assert result.exit_code == 2 and "--model" in result.output
    result = run_cli(["doctor", "--model", "no_such_module_xyz:build", "--data", "shapeset"])
    assert result.exit_code == 2 and "cannot import" in result.output


def test_doctor_command_on_a_user_model(tmp_path, monkeypatch):
    (tmp_path / "my_nets_for_doctor.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def dead_relu():\n"
        "    torch.manual_seed(0)\n"
        "    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 24), nn.ReLU(), nn.Linear(24, 9))\n"
        "    nn.init.constant_(net[1].bias, -10.0)\n"
        "    return net\n"
    )
    # run from the folder that holds the module, as a user would: the CLI makes it importable
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = run_cli(["doctor", "--model", "my_nets_for_doctor:dead_relu", "--data", "shapeset",
                      "--set", "data.options={size = 16, n_valid = 200, n_test = 200}",
                      "--set", "data.preprocess=standardize", "--updates", 40, "--monitor", 100,
                      "--store", tmp_path / "runs", "-q"])
    assert result.exit_code == 1, result.output
    assert "dead_units" in result.output and "dead-relu-1" in result.output
    html = (tmp_path / "runs" / "dead-relu-1" / "report.html").read_text()
    assert "Sequential" in html and "Leaky ReLU" in html  # the model's class and the advice for its ReLU

    from deepscope.store import Store

    with Store(tmp_path / "runs") as st:
        assert st.get_run("dead-relu-1")["spec"]["model"] == {"class": "Sequential", "activation": "relu"}
        assert {r["name"] for r in st.scalars("dead-relu-1")} >= {"train/loss", "valid/error", "test/error"}


def test_a_stored_diverged_run_is_diagnosed_as_doctor_diagnoses_it():
    """The store keeps the status, not doctor's train/diverged row: the report puts it back."""
    from deepscope.plots.html import RunData
    from deepscope.workflows.report import diagnosed

    losses = loss_rows([2.2, 2.1, 40.0])  # per-evaluation means; the last one exploded while finite
    diverged = RunData("div", status="diverged", scalars=losses, spec={"optim": {"lr": 50.0}})
    assert "lr_too_high" in codes(diagnosed(diverged))
    finished = RunData("ok", status="finished", scalars=losses, spec={"optim": {"lr": 50.0}})
    assert "lr_too_high" not in codes(diagnosed(finished))
