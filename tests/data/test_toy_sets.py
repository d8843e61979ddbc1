"""The ``circles`` and ``blobs`` datasets: scikit-learn's points for a random_state, and their geometry by hand."""

import numpy as np
import pytest
import torch

from deepscope.data import DATASETS, get_dataset
from deepscope.data.generated import make_blobs, make_circles
from deepscope.metrics import task_of


def test_registered_with_autotrainers_defaults():
    assert {"circles", "blobs"} <= set(DATASETS)
    circles, blobs = get_dataset("circles"), get_dataset("blobs")
    assert circles.train[0].shape == (700, 1, 1, 2) and circles.valid[0].shape == (300, 1, 1, 2)
    assert circles.train[1].dtype == torch.float32 and set(circles.train[1].tolist()) == {0.0, 1.0}
    assert blobs.train[1].dtype == torch.int64 and blobs.num_classes == 3 and blobs.valid[1].shape == (300,)
    assert task_of("bce_with_logits", circles.valid[1]).kind == "binary"
    assert task_of("cross_entropy", blobs.valid[1]).kind == "classification"


def test_circles_lie_on_their_two_circles_without_noise():
    x, y = make_circles(200, noise=None, factor=0.3, random_state=4)
    r = np.hypot(x[:, 0], x[:, 1])
    np.testing.assert_allclose(r[y == 0], 1.0, atol=1e-12)
    np.testing.assert_allclose(r[y == 1], 0.3, atol=1e-12)
    assert (y == 0).sum() == 100  # n // 2 outer points
    # the outer points are 100 angles evenly spaced from 0 (endpoint excluded), in a shuffled order
    angles = np.sort(np.mod(np.arctan2(x[y == 0, 1], x[y == 0, 0]), 2 * np.pi))
    np.testing.assert_allclose(angles, 2 * np.pi * np.arange(100) / 100, atol=1e-9)


def test_blobs_counts_and_centres():
    x, y = make_blobs(1000, 2, centers=3, cluster_std=0.01, random_state=7)
    assert np.bincount(y).tolist() == [334, 333, 333]  # the first n % centers centres get one more
    centres = np.stack([x[y == k].mean(0) for k in range(3)])
    assert np.all(np.abs(centres) < 10) and np.all(np.stack([x[y == k].std(0) for k in range(3)]) < 0.02)


def test_the_same_points_as_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    for mine, theirs in ((make_circles(1000, noise=0.1, random_state=1),
                          datasets.make_circles(n_samples=1000, noise=0.1, random_state=1)),
                         (make_blobs(1000, 2, centers=3, cluster_std=2.0, random_state=2),
                          datasets.make_blobs(n_samples=1000, centers=3, n_features=2, cluster_std=2, random_state=2)),
                         (make_circles(101, noise=0.05, factor=0.5, random_state=9),
                          datasets.make_circles(n_samples=101, noise=0.05, factor=0.5, random_state=9))):
        np.testing.assert_array_equal(mine[0], theirs[0])
        np.testing.assert_array_equal(mine[1], theirs[1])
    x = get_dataset("blobs").train[0].reshape(700, 2).double().numpy()
    reference = datasets.make_blobs(n_samples=1000, centers=3, n_features=2, cluster_std=2, random_state=2)[0][:700]
    np.testing.assert_allclose(x, reference, rtol=1e-6)  # float32 of scikit-learn's float64 points


@pytest.mark.parametrize("name, option, value, message", [
    ("circles", "n_train", 1000, r"n_train=1000 is not allowed; give an integer below n_samples=1000"),
    ("circles", "noise", -0.1, r"noise=-0.1 is not allowed; give a number >= 0"),
    ("blobs", "centers", 1, r"centers=1 is not allowed; give an integer >= 2"),
    ("blobs", "random_state", "a", r"random_state='a' is not allowed"),
])
def test_bad_options_are_named(name, option, value, message):
    with pytest.raises(ValueError, match=message):
        get_dataset(name, **{option: value})
