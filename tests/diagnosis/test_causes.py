"""Causes behind the symptoms (deepscope.diagnosis.causes) and the fixes that reach them, on hand-built models."""

import math

import pytest
import torch
from torch import nn

from deepscope.diagnosis import Finding
from deepscope.diagnosis.causes import DATA_CAUSES, explain, model_facts
from deepscope.diagnosis.checks.setup import check_training
from deepscope.diagnosis.fixes import apply_fix
from deepscope.diagnosis.fixes.causes import lower_dropout_module, remove_output_activation, swap_any_activation
from deepscope.diagnosis.fixes.module import NotApplicable


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def exp_stack(depth=6, width=32):
    torch.manual_seed(0)
    layers = [nn.Flatten()]
    fan_in = 16
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), Exp()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(width, 3))


def codes(findings):
    return [f.code for f in findings]


X = torch.randn(64, 16)
SYMPTOM = Finding("vanishing_gradients", "error", "")


def test_forward_overflow_names_the_first_module_whose_output_is_not_finite():
    model = exp_stack()
    # an independent forward: the first module whose output has an Inf
    h, first = X, None
    for name, m in model.named_children():
        h = m(h)
        if first is None and not torch.isfinite(h).all():
            first = name
    assert first is not None and isinstance(model[int(first)], Exp)
    facts = model_facts(model, X)
    assert facts["overflow"] == (first, "Exp", True)
    lr = Finding("lr_too_high", "error", "the loss became NaN")
    found = explain([lr], facts, {"optim": {"lr": 0.1}})
    assert codes(found)[0] == "forward_overflow" and found[0].layers == [first]
    assert found[1].cause == "forward_overflow"  # the learning-rate symptom is explained by the activation


def test_no_overflow_and_no_output_activation_on_a_healthy_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    facts = model_facts(model, X)
    assert "overflow" not in facts and "output_activation" not in facts
    assert explain([], facts, {}) == []


@pytest.mark.parametrize("tail, kind", [(nn.ReLU(), "ReLU"), (nn.Softmax(dim=1), "Softmax"),
                                        (nn.Sigmoid(), "Sigmoid")])
def test_output_activation_module_after_the_last_layer(tail, kind):
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3), tail)
    facts = model_facts(model, X)
    assert facts["output_activation"] == ("3", kind, True)
    found = explain([Finding("dead_units", "warning", "")], facts, {"train": {"loss": "cross_entropy"}})
    assert codes(found) == ["output_activation", "dead_units"] and found[1].cause == "output_activation"
    # another loss (regression) may want a bounded output: no cause
    assert codes(explain([], facts, {"train": {"loss": "mse"}})) == []


def test_output_activation_applied_as_a_function_is_read_from_the_graph():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 8), nn.Linear(8, 3)

        def forward(self, x):
            return torch.softmax(self.b(torch.tanh(self.a(x))), dim=1)

    assert model_facts(Net(), X)["output_activation"] == ("output", "softmax", False)


def test_weight_decay_strong_from_the_spec_and_from_the_measured_shrink():
    facts = {"weight_norm": 10.0, "weight_norm_end": 9.0}
    strong = {"optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 50.0}}
    assert codes(explain([SYMPTOM], facts, strong, updates=300))[0] == "weight_decay_strong"  # 1e-3*50*300 = 15
    usual = {"optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}}
    assert "weight_decay_strong" not in codes(explain([SYMPTOM], facts, usual, updates=300))
    shrunk = {"weight_norm": 10.0, "weight_norm_end": 1.0}  # the weights did shrink to a tenth
    assert "weight_decay_strong" in codes(explain([SYMPTOM], shrunk, usual, updates=300))
    assert codes(explain([], facts, strong, updates=300)) == []  # no symptom: nothing to explain


def test_constant_inputs_are_a_cause_in_the_data_that_silences_the_symptoms():
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    facts = model_facts(model, torch.zeros(64, 16))
    sym = Finding("symmetry", "error", "units are clones")
    found = explain([sym], facts, {})
    assert codes(found) == ["input_constant", "symmetry"] and found[0].code in DATA_CAUSES
    assert found[1].severity == "info" and found[1].cause == "input_constant"


def test_constant_labels_and_unexplained_labels():
    found = explain([], {}, {}, labels=torch.full((50,), 3))
    assert codes(found) == ["labels_constant"]
    plateau = Finding("plateau", "warning", "loss at chance", evidence={"chance_loss": 1.38})
    found = explain([plateau], {}, {}, labels=torch.arange(50) % 4)
    # suspected, not certain: the plateau's own fixes are still tried (repair names the data once none trains)
    assert codes(found) == ["labels_unexplained", "plateau"] and found[1].cause == "labels_unexplained"
    assert "labels_unexplained" not in DATA_CAUSES and found[1].severity == "warning"
    # in huge steps (Adam at lr 0.2) the plateau is the rate's, not the labels'
    big = Finding("plateau", "warning", "", evidence={"update_ratio": 0.3})
    assert "labels_unexplained" not in codes(explain([big], {}, {}, labels=torch.arange(50) % 4))
    # a plateau with another cause in the model is not put on the labels
    other = explain([Finding("plateau", "warning", "")], {"weight_norm": 1.0, "dropout": 0.9}, {})
    assert "labels_unexplained" not in codes(other) and "dropout_strong" in codes(other)


def test_depth_without_normalization_needs_depth_a_symptom_and_no_norm_layer():
    deep = nn.Sequential(*[m for _ in range(14) for m in (nn.Linear(16, 16), nn.ReLU())], nn.Linear(16, 3))
    facts = model_facts(deep, X)
    assert facts["depth"] == 15 and not facts["norm_layers"] and "output_activation" not in facts
    assert codes(explain([SYMPTOM], facts, {}))[0] == "depth_unnormalized"
    normed = nn.Sequential(*[m for _ in range(14) for m in (nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU())],
                           nn.Linear(16, 3))
    assert "depth_unnormalized" not in codes(explain([SYMPTOM], model_facts(normed, X), {}))
    shallow = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    assert "depth_unnormalized" not in codes(explain([SYMPTOM], model_facts(shallow, X), {}))


def test_activation_swap_reaches_a_custom_leaf_module_and_gives_he_init():
    model = exp_stack(depth=3, width=256)
    fixed = swap_any_activation("relu")
    fixed(model, 0)
    assert not any(isinstance(m, Exp) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3
    hidden = [m for m in model.modules() if isinstance(m, nn.Linear)][1]  # a 256 -> 256 layer before a ReLU
    assert hidden.weight.std().item() == pytest.approx(math.sqrt(2.0 / 256), rel=0.05)  # He et al. (2015)
    assert torch.isfinite(model(torch.randn(8, 16))).all()
    # through the fix registry, on a copy; a net whose activations already are ReLU has nothing to swap
    spec = {"model": {"activation": "tanh"}, "init": {"scheme": "auto"}}
    _, copy = apply_fix("swap_activation", spec, exp_stack(depth=2), 0)
    assert any(isinstance(m, nn.ReLU) for m in copy.modules())
    with pytest.raises(NotApplicable):
        swap_any_activation("relu")(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 0)


def test_remove_output_activation_and_lower_dropout():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.9), nn.Linear(8, 3), nn.ReLU())
    x = torch.randn(5, 16)
    model.eval()
    logits = model[3](model[1](model[0](x)))  # the same layers without the last ReLU
    remove_output_activation(model, 0)
    assert isinstance(model[4], nn.Identity) and isinstance(model[1], nn.ReLU)  # the hidden ReLU stays
    assert torch.allclose(model(x), logits)
    lower_dropout_module(model, 0)
    assert model[2].p == pytest.approx(0.1)
    with pytest.raises(NotApplicable):
        remove_output_activation(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 0)


def test_zero_initialized_output_layer_is_no_output_loss_mismatch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    nn.init.zeros_(model[2].weight)
    nn.init.constant_(model[2].bias, 0.25)  # constant rows that happen to sum to 1 (uniform prior)
    assert "output_loss_mismatch" not in codes(check_training(model, None, X))
    squashed = nn.Sequential(model, nn.Softmax(dim=1))  # the structure says softmax: still named
    assert "output_loss_mismatch" in codes(check_training(squashed, None, X))


# --- rules calibrated beyond MLPs: vanishing gradients that do not stop a layer, a loss that does not move ----------

def _rows(quantity, stat, per_step, layers, source="monitor"):
    return [dict(step=step, source=source, layer=layer, quantity=quantity, stat=stat, value=value)
            for step, values in per_step.items() for layer, value in zip(layers, values, strict=True)]


ACTS, WEIGHTS = ["h1", "h2", "h3"], ["h1.weight", "h2.weight", "out.weight"]


def _gradients(ratio_lowest):
    grads = _rows("preact_grad", "std", {0: [1e-4, 1e-2, 1.0], 50: [1e-4, 1e-2, 1.0]}, ACTS)  # 1e-4 x the top's
    moves = _rows("update_ratio", "ratio", {0: [ratio_lowest, 1e-3, 1e-3], 50: [ratio_lowest, 1e-3, 1e-3]}, WEIGHTS,
                  source="train")
    return grads + moves


def test_vanishing_gradients_only_when_the_lowest_layer_also_stops_moving():
    from deepscope.diagnosis import diagnose

    stalled = [f.code for f in diagnose(_gradients(1e-6))]  # SGD: a 1e-4 gradient, a 1e-3 x slower layer
    assert "vanishing_gradients" in stalled
    moving = [f.code for f in diagnose(_gradients(1e-3))]  # Adam / a normalized residual stream: it still learns
    assert "vanishing_gradients" not in moving


def test_a_loss_that_does_not_move_in_small_steps_is_a_low_rate_without_a_chance_level():
    from deepscope.diagnosis import diagnose

    flat = [dict(step=s, name="train/loss", value=0.693 - 0.00005 * s) for s in range(0, 200, 2)]  # 1.4 % in 200
    moves = _rows("update_ratio", "ratio", {0: [7e-4, 7e-4, 7e-4], 100: [7e-4, 7e-4, 7e-4]}, WEIGHTS, "train")
    found = {f.code: f for f in diagnose(moves, scalars=flat)}
    assert "lr_too_low" in found and found["lr_too_low"].evidence["relative_drop"] < 0.03
    # doctor records the chance level: the plateau rule decides there, not this one
    chance = [dict(step=0, name="valid/chance_loss", value=0.693)]
    assert "lr_too_low" not in {f.code for f in diagnose(moves, scalars=flat + chance)}
    learning = [dict(step=s, name="train/loss", value=0.693 * math.exp(-s / 50)) for s in range(0, 200, 2)]
    assert "lr_too_low" not in {f.code for f in diagnose(moves, scalars=learning)}


def test_the_activation_after_the_last_layer_is_not_a_hidden_layer_for_symmetry_and_depth():
    from deepscope.diagnosis import diagnose
    from deepscope.diagnosis.causes import hidden_records
    from deepscope.probe import Probe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3), nn.LogSigmoid())
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)  # the output starts at zero: a common choice, gradients still reach it
    with Probe(model, every=1, monitor=(X, torch.randint(0, 3, (len(X),)))) as probe:
        pass
    symmetric = [f for f in diagnose(probe.records) if f.code == "symmetry"]
    assert symmetric and symmetric[0].layers == ["3"]  # the probe sees a constant output after the last layer ...
    kept = hidden_records(probe.records, model_facts(model, X))
    assert "symmetry" not in [f.code for f in diagnose(kept)]  # ... which is not a layer of clones
    def activation_moments(rows):
        return {r["layer"] for r in rows if r["quantity"] == "activation" and r["stat"] in ("mean", "std")}

    assert activation_moments(probe.records) - activation_moments(kept) == {"3"}
    others = [r for r in probe.records if r["layer"] == "3" and not (r["quantity"] == "activation"
                                                                     and r["stat"] in ("mean", "std"))]
    assert others and others == [r for r in kept if r["layer"] == "3"]  # its other rows stay (gradients, ...)
