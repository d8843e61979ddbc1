"""The diagnosis on model families its rules were not written on (tiny configs, nothing downloaded): a healthy
short run that learns its synthetic task gets no warning or error, and its broken twin -- weights N(0, 10^2), or a
learning rate 100x -- is named. The diagnosis is used as the README shows it for a loop of one's own: the probe's
rows and the training loss as ``dict(step, name="train/loss", value)``."""

import math
import sys
from pathlib import Path

import pytest
import torch

from deepscope import diagnose
from deepscope.diagnosis.rules.scale import ACTIVATION_GROWTH_BLOWN, ACTIVATION_STD_HIGH, activation_growth
from deepscope.probe import Probe
from deepscope.records import Records

sys.path.insert(0, str(Path(__file__).parents[1] / "probe"))
from unseen_nets import CASES, VOCAB  # noqa: E402

pytest.importorskip("transformers")

CLASSES = {"llama": VOCAB, "t5": VOCAB, "vit": 3, "distilbert": 2, "roberta": 2, "mobilenet": 3, "norm_cnn": 3,
           "seq2seq": VOCAB}


def run(name, broken=None, steps=150, every=25):
    """``steps`` Adam updates of the case with the probe; ``broken``: "std10" (every weight matrix N(0, 10^2)) or
    "lr100", or "dead" (batch-norm shifts of -10). Returns (findings, the training losses)."""
    case = CASES[name]()
    if broken == "std10":
        with torch.no_grad():
            for p in case.model.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 10)
    if broken == "dead":  # batch-norm shifts of -10: the ReLU6 / hard-swish after them output 0 everywhere
        with torch.no_grad():
            for m in case.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.bias.fill_(-10.0)
    lr = case.lr * (100 if broken == "lr100" else 1)
    g = torch.Generator().manual_seed(1)
    monitor = case.batch(g, 32)
    opt = torch.optim.Adam(case.model.parameters(), lr=lr)
    losses = []
    with Probe(case.model, every=every, monitor=monitor, jacobian_examples=0) as probe:
        for _ in range(steps):
            inputs, y = case.batch(g, 32)
            loss = case.loss(case.call(case.model, inputs), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step()
            losses.append(loss.detach())
    scalars = [dict(step=t + 1, name="train/loss", value=float(v)) for t, v in enumerate(losses)]
    return diagnose(probe.records, scalars=scalars, histograms=probe.histograms), [float(v) for v in losses]


def loud(findings):
    return {f.code for f in findings if f.severity in ("warning", "error")}


@pytest.mark.parametrize("name", list(CASES))
def test_a_healthy_unseen_model_that_learns_gets_no_false_alarm(name):
    findings, losses = run(name)
    # it learns: the last 20 losses well below the chance level, ln K (a uniform guess over K classes)
    assert sum(losses[-20:]) / 20 < 0.8 * math.log(CLASSES[name])
    assert loud(findings) == set(), [(f.code, f.message) for f in findings]


@pytest.mark.parametrize(("name", "broken", "expected"), [
    ("llama", "std10", {"variance_grows"}),
    ("t5", "std10", {"variance_grows"}),
    ("vit", "std10", {"variance_grows"}),
    ("distilbert", "std10", {"variance_grows"}),
    ("roberta", "std10", {"variance_grows"}),
    ("norm_cnn", "std10", {"variance_grows"}),
    ("mobilenet", "std10", {"variance_grows", "exploding_gradients"}),
    ("seq2seq", "std10", {"variance_grows"}),
    ("llama", "lr100", {"lr_too_high"}),
    ("t5", "lr100", {"lr_too_high"}),
    ("vit", "lr100", {"lr_too_high"}),
    ("distilbert", "lr100", {"lr_too_high"}),
    ("roberta", "lr100", {"lr_too_high"}),
    ("seq2seq", "lr100", {"lr_too_high"}),
    ("mobilenet", "lr100", {"lr_too_high", "loss_spikes"}),
    ("mobilenet", "dead", {"dead_units"}),
])
def test_the_broken_twin_of_an_unseen_model_is_named(name, broken, expected):
    findings, _ = run(name, broken)
    assert loud(findings) & expected, [(f.code, f.message) for f in findings]


def rows(stds_by_step, preact=True):
    out = []
    for step, per_layer in stds_by_step.items():
        for layer, v in per_layer.items():
            out.append(dict(step=step, source="monitor", layer=layer, quantity="activation", stat="std", value=v))
            if preact:
                out.append(dict(step=step, source="monitor", layer=layer, quantity="preact_grad", stat="std",
                                value=1e-3))
    return out


def test_the_scale_of_the_activations_at_initialization_is_judged_on_the_median_activation_layer():
    # the same std in every layer: nothing grows along the depth, only the scale tells
    big = {0: {"h.0.act": 23.0, "h.1.act": 22.0, "h.2.act": 0.5}}
    found = [f for f in diagnose(rows(big)) if f.code == "variance_grows"]
    assert len(found) == 1 and found[0].layers == ["h.0.act", "h.1.act"]
    assert found[0].evidence["activation_std_median"] == 22.0  # the median of 23, 22 and 0.5
    # the median just under the bound, one layer far above it: no finding
    assert not [f for f in diagnose(rows({0: {"a": 0.9 * ACTIVATION_STD_HIGH, "b": 50.0, "c": 1.0}}))
                if f.code == "variance_grows"]
    # outputs of blocks the probe could not look inside (no dLoss/ds at their input) have no scale to keep
    assert not [f for f in diagnose(rows(big, preact=False)) if f.code == "variance_grows"]


def test_activations_still_blown_up_after_a_huge_first_step_are_too_high_a_rate_even_when_the_loss_falls():
    first, later = {"a": 0.04, "b": 0.05}, {"a": 120.0, "b": 90.0}
    records = rows({0: first, 20: later, 40: later})
    records += [dict(step=0, source="train", layer=w, quantity="update_ratio", stat="ratio", value=50.0)
                for w in ("w1", "w2")]
    # independent: the median over the layers of last / first std
    assert activation_growth(Records(records)) == pytest.approx((120 / 0.04 + 90 / 0.05) / 2)
    loss = [2.8, 9.0, 11.0, 10.0] + [2.8 - 1.7 * t / 196 for t in range(196)]  # thrown up, then falls to 1.1
    scalars = [dict(step=t + 1, name="train/loss", value=v) for t, v in enumerate(loss)]
    found = {f.code: f for f in diagnose(records, scalars=scalars)}
    assert found["lr_too_high"].evidence["activation_growth"] >= ACTIVATION_GROWTH_BLOWN
    # the same huge step, activations back within 100x of their start: the falling loss spares it
    calm = rows({0: first, 20: later, 40: {"a": 3.0, "b": 4.0}})
    calm += records[-2:]
    assert "lr_too_high" not in {f.code for f in diagnose(calm, scalars=scalars)}
