"""The training experiments (dead-relu, he-vs-glorot-depth, batchnorm, learning-rate, centering, dropout,
augmentation) on their tiny profile: the machinery, plus the helpers they measure with."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from deepscope.experiments import (
    EXPERIMENTS,
    Context,
    Verdict,
    centering,
    dead_relu,
    he_vs_glorot_depth,
    run_experiment,
)
from deepscope.experiments.training import TrainedRun, by_setting, chance_error, chance_loss, generalization
from deepscope.models import mlp
from deepscope.optim import make_optimizer
from deepscope.store import Store


def _keys(prefixes, suffixes):
    return {f"{p}/{s}" for p, s in itertools.product(prefixes, suffixes)}


EXPECTED_NUMBERS = {
    "learning-rate": _keys(["too_low", "good", "high", "too_high", "high+step", "high+cosine"], ["final_loss"])
    | _keys(["too_low", "good", "high", "too_high"], ["lr"]) | {"too_high/diverged_fraction", "chance_loss"},
    "centering": _keys(["raw", "centered", "standardized"], ["best_lr", "final_loss", "updates_to_raw_loss"]),
    "he-vs-glorot-depth": _keys(["he_normal/d4", "he_normal/d6", "glorot_normal/d4", "glorot_normal/d6"],
                                ["final_loss", "escape_update"])
    | _keys(["he_normal", "glorot_normal"], ["init_std_last_layer"]) | {"chance_loss"},
    "batchnorm": _keys(["sigmoid", "sigmoid+bn", "relu@base", "relu+bn@base", "relu@high", "relu+bn@high"],
                       ["final_loss", "test_error", "diverged_fraction"]) | {"chance_loss", "chance_error"},
    "dead-relu": _keys([f"{a}/{c}" for a, c in dead_relu.SETTINGS], ["inactive", "revived", "final_loss"]),
    "dropout": _keys(["plain", "dropout"], ["train_error", "test_error", "gap"]),
    "augmentation": _keys(["plain", "augmented"], ["train_error", "test_error", "gap"]),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Every experiment of this file once on the tiny profile, in this process: name -> (verdict, out_dir)."""
    out = tmp_path_factory.mktemp("tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets gain nothing from intra-op threads on a shared machine
    try:
        return {name: (run_experiment(name, "tiny", out_dir=out, jobs=1), out) for name in EXPECTED_NUMBERS}
    finally:
        torch.set_num_threads(threads)


def test_the_experiments_are_registered_with_three_profiles():
    for name in EXPECTED_NUMBERS:
        exp = EXPERIMENTS[name]
        assert set(exp.profiles) == {"tiny", "quick", "paper"} and exp.claim and exp.source


@pytest.mark.parametrize("name", list(EXPECTED_NUMBERS))
def test_tiny_profile_gives_a_verdict_a_figure_and_stored_runs(tiny, name):
    verdict, out = tiny[name]
    assert isinstance(verdict, Verdict) and verdict.name == name and verdict.profile == "tiny"
    assert set(verdict.numbers) == EXPECTED_NUMBERS[name]
    assert verdict.checks and verdict.passed == all(verdict.checks.values())
    assert verdict.figures and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in verdict.figures)
    saved = json.loads((out / f"{name}.json").read_text())
    assert saved["passed"] == verdict.passed and saved["numbers"].keys() == verdict.numbers.keys()
    if EXPERIMENTS[name].grid is not None:  # trainer-based: one stored run per grid spec, curves readable
        exp = EXPERIMENTS[name]
        n_specs = len(exp.grid(Context(name, "tiny", exp.settings("tiny"), [0], out_dir=out)))
        assert len(verdict.run_ids) == n_specs > 0
        with Store(out / "runs") as store:
            assert all(store.scalars(run_id, "train/loss") for run_id in verdict.run_ids)


# --- helpers, against independent computations ---------------------------------------------------------


def test_chance_loss_is_the_entropy_of_the_authors_class_frequencies():
    # 3 single shapes at 1/6, 3 mixed pairs at 1/9, 3 same-shape pairs at 1/18
    by_hand = -sum(3 * p * math.log(p) for p in (1 / 6, 1 / 9, 1 / 18))
    assert chance_loss() == pytest.approx(by_hand) == pytest.approx(2.1100, abs=1e-4)
    assert chance_loss(balanced=True) == pytest.approx(math.log(9))
    assert chance_error() == pytest.approx(5 / 6)


def _run(name, seed, steps, values, **kw):
    spec = {"name": name, "train": {"seed": seed}}
    return TrainedRun(spec, "finished", int(steps[-1]), {}, {"train/loss": (np.array(steps), np.array(values))}, **kw)


def test_first_update_below_a_level_and_escape_from_the_plateau():
    a = _run("x:raw@0.1", 0, [10, 20, 30, 40], [2.2, 2.0, 1.8, 1.9])
    b = _run("x:raw@0.1", 1, [10, 20, 30, 40], [2.2, 2.1, 2.1, 1.95])
    assert centering.first_reaching([a], 1.95) == 30
    assert centering.first_reaching([a, b], 1.95) == (30 + 40) / 2
    assert centering.first_reaching([b], 1.5) == math.inf
    chance = chance_loss()  # escape = first loss <= chance - 0.05 = 2.06
    assert he_vs_glorot_depth.escape_update(a, chance) == 20
    assert he_vs_glorot_depth.escape_update(b, chance) == 40
    assert list(by_setting([a, b])) == ["raw@0.1"] and by_setting([a, b])["raw@0.1"] == [a, b]


def test_generalization_gap_is_test_minus_train_error_averaged_over_seeds():
    runs = [
        TrainedRun({"name": "x:a", "train": {"seed": s}}, "finished", 1, {"test/error": test},
                   extra={"train_set/error": train})
        for s, (train, test) in enumerate([(0.0, 0.7), (0.1, 0.6)])
    ]
    assert generalization(runs) == pytest.approx({"train_error": 0.05, "test_error": 0.65, "gap": 0.6})


def test_inactive_units_match_a_hand_computed_pre_activation():
    torch.manual_seed(0)
    model = mlp(5, 3, 2, 4, activation="relu", init="he_normal")
    with torch.no_grad():
        model.hidden1.linear.bias[1] = -100.0  # unit 1 of layer 1 is off for every input
    x = torch.randn(50, 5)
    masks = dead_relu.inactive_units(model, x)
    s1 = x @ model.hidden1.linear.weight.T + model.hidden1.linear.bias
    s2 = torch.relu(s1) @ model.hidden2.linear.weight.T + model.hidden2.linear.bias
    assert torch.equal(masks[0], (s1 <= 0).all(0)) and torch.equal(masks[1], (s2 <= 0).all(0))
    assert masks[0][1]


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_a_unit_inactive_on_all_data_gets_no_gradient_with_relu_but_does_with_leaky_relu(activation):
    """The mechanism the experiment measures (Varma & Das, ch. 7, fig 7.13): a dead ReLU never changes again."""
    torch.manual_seed(0)
    model = mlp(6, 3, 1, 8, activation=activation, init="he_normal")
    with torch.no_grad():
        model.hidden1.linear.bias[:4] = -100.0  # units 0-3 off for every input below
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    before = model.hidden1.linear.weight.detach().clone()
    optimizer = make_optimizer("adam", model, 1e-2)
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = (model.hidden1.linear.weight.detach() - before).abs().amax(dim=1)
    assert dead_relu.inactive_units(model, x)[0][:4].all()
    if activation == "relu":
        assert torch.equal(moved[:4], torch.zeros(4)) and (moved[4:] > 0).all()
    else:
        assert (moved > 0).all()


def test_glorot_init_halves_the_relu_signal_power_per_layer_and_he_keeps_it():
    # fan_in = fan_out = n: Glorot Var(W) = 1/n, so E[h^2] halves at each ReLU layer: std ratio 2^(-(L-1)/2)
    depth, width = 20, 256
    glorot = he_vs_glorot_depth.init_activation_std("glorot_normal", depth, width, width, seed=0)
    he = he_vs_glorot_depth.init_activation_std("he_normal", depth, width, width, seed=0)
    expected = 2.0 ** (-(depth - 1) / 2)
    assert expected / 3 < glorot[-1] / glorot[0] < expected * 3
    assert 1 / 3 < he[-1] / he[0] < 3
