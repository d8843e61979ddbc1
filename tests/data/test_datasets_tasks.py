"""The generated regression and binary datasets: their formulas, seeds, options, and the task they make."""

import math

import numpy as np
import pytest
import torch

from deepscope.data import DATASETS, get_dataset
from deepscope.data.generated import FRIEDMAN_MEAN, FRIEDMAN_STD
from deepscope.metrics import baseline, task_of


def test_both_are_registered_with_get_dataset():
    assert {"friedman", "spirals"} <= set(DATASETS)
    with pytest.raises(ValueError, match=r"option 'size' is not known for dataset 'friedman'"):
        get_dataset("friedman", size=3)


def test_friedman_targets_follow_friedmans_formula():
    ds = get_dataset("friedman", n_train=200, n_valid=50, n_test=50, noise=0.0, standardize=False)
    x, y = ds.train
    assert x.shape == (200, 1, 1, 10) and y.shape == (200,) and y.dtype == torch.float32
    a = x.reshape(200, 10).double().numpy()
    by_hand = 10 * np.sin(np.pi * a[:, 0] * a[:, 1]) + 20 * (a[:, 2] - 0.5) ** 2 + 10 * a[:, 3] + 5 * a[:, 4]
    np.testing.assert_allclose(y.numpy(), by_hand, rtol=1e-5)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    standard = get_dataset("friedman", n_train=200, n_valid=50, n_test=50, noise=0.0)
    np.testing.assert_allclose(standard.train[1].numpy(), (by_hand - FRIEDMAN_MEAN) / FRIEDMAN_STD, rtol=1e-4,
                               atol=1e-5)


def test_friedman_standardized_targets_have_mean_0_and_std_1_without_noise():
    y = get_dataset("friedman", n_valid=20000, n_test=0, noise=0.0).valid[1].double()
    assert abs(float(y.mean())) < 0.03 and abs(float(y.std()) - 1) < 0.03


def test_spiral_points_lie_on_their_class_spiral():
    ds = get_dataset("spirals", n_train=500, n_valid=10, n_test=10, noise=0.0, turns=1.5)
    x, y = ds.train
    assert x.shape == (500, 1, 1, 2) and set(y.tolist()) == {0.0, 1.0}
    p = x.reshape(500, 2).double()
    r = p.norm(dim=1)
    # radius t in [0.1, 1] and angle 2 pi turns t + c pi, both modulo 2 pi
    expected = (2 * math.pi * 1.5 * r + math.pi * y.double()) % (2 * math.pi)
    angle = torch.atan2(p[:, 1], p[:, 0]) % (2 * math.pi)
    gap = torch.remainder(angle - expected + math.pi, 2 * math.pi) - math.pi
    assert float(gap.abs().max()) < 1e-5 and 0.1 - 1e-6 <= float(r.min()) and float(r.max()) <= 1 + 1e-6


@pytest.mark.parametrize("name", ["friedman", "spirals"])
def test_seeded_streams_and_fixed_sets(name):
    a, b = get_dataset(name, n_valid=30, n_test=30), get_dataset(name, n_valid=30, n_test=30)
    assert torch.equal(a.valid[0], b.valid[0]) and torch.equal(a.stream.batch(5, 8)[1], b.stream.batch(5, 8)[1])
    assert not torch.equal(a.valid[0], a.test[0]) and a.train is None
    other = get_dataset(name, n_valid=30, n_test=30, seed=1)
    assert not torch.equal(a.valid[0], other.valid[0])


@pytest.mark.parametrize("name, option, value, message", [
    ("friedman", "features", 3, r"features=3 is not allowed; give an integer >= 5"),
    ("friedman", "noise", -1.0, r"noise=-1.0 is not allowed; give a number >= 0"),
    ("spirals", "turns", "x", r"turns='x' is not allowed"),
    ("spirals", "n_valid", -2, r"n_valid=-2 is not allowed"),
])
def test_bad_options_are_named(name, option, value, message):
    with pytest.raises(ValueError, match=message):
        get_dataset(name, **{option: value})


def test_the_tasks_they_make_and_their_baselines():
    friedman = get_dataset("friedman", n_valid=4000, n_test=0)
    task = task_of("mse", friedman.valid[1])
    assert task.kind == "regression"
    base = baseline(task, friedman.valid[1], "mse")
    assert base["r2"] == pytest.approx(0.0, abs=1e-9)
    assert base["loss"] == pytest.approx(float(friedman.valid[1].double().var(unbiased=False)), rel=1e-4)
    spirals = get_dataset("spirals", n_valid=4000, n_test=0)
    assert task_of("bce_with_logits", spirals.valid[1]).kind == "binary"
    assert baseline(task_of("bce_with_logits", spirals.valid[1]), spirals.valid[1])["error"] == pytest.approx(
        0.5, abs=0.03)  # balanced classes
    with pytest.raises(ValueError, match=r"train.loss='cross_entropy' does not fit the targets"):
        task_of("cross_entropy", spirals.valid[1])
