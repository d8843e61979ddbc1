"""Generated tabular datasets: a regression set, binary ones and Gaussian blobs.

Like Shapeset they are drawn on the fly from a seeded generator (no download, no file), as an online stream with
fixed validation and test sets, or a fixed training set with ``n_train``. Inputs are rows of features, shaped
``(1, 1, D)`` (one "image" row, which an MLP flattens); targets are float32 ``(N,)``.

- ``friedman``: Friedman's first regression problem (Friedman 1991, "Multivariate Adaptive Regression Splines",
  Annals of Statistics 19(1), section 4.3): x uniform on [0, 1]^D (D >= 5, only the first five matter),
  y = 10 sin(pi x1 x2) + 20 (x3 - 1/2)^2 + 10 x4 + 5 x5 + N(0, noise^2). With ``standardize`` (the default) y is
  shifted and scaled by the noise-free target's mean 14.414 and standard deviation 4.882 (numerical integration),
  so that a network's output starts at the right scale; predicting the mean then scores R^2 = 0.
- ``spirals``: two interleaved spirals (Lang & Witbrock 1988, "Learning to tell two spirals apart", Proceedings of
  the Connectionist Models Summer School): class c in {0, 1} at radius r = t and angle 2 pi turns t + c pi for
  t uniform on [0.1, 1], plus N(0, noise^2) on both coordinates; target c as a float, for ``bce_with_logits``
  with one output. More ``turns`` make it harder.
- ``circles`` and ``blobs``: scikit-learn's ``make_circles`` (binary, one 0/1 target) and ``make_blobs`` (class
  labels), reproduced call for call on numpy's ``RandomState`` (the same points as scikit-learn for a
  ``random_state``, without depending on it); fixed sets with AUTOTRAINER's defaults (Zhang et al. 2021).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch import Generator, Tensor

from deepscope.data.datasets import Dataset, Stream
from deepscope.registry import integer

__all__ = ["FRIEDMAN_MEAN", "FRIEDMAN_STD", "blobs_dataset", "circles_dataset", "friedman", "friedman_dataset",
           "make_blobs", "make_circles", "spirals", "spirals_dataset"]

FRIEDMAN_MEAN, FRIEDMAN_STD = 14.4137, 4.8817  # of the noise-free target, x uniform on [0, 1]^5


def friedman(n: int, generator: Generator, *, features: int = 10, noise: float = 1.0,
             standardize: bool = True) -> tuple[Tensor, Tensor]:
    """``n`` examples of Friedman's first problem: inputs ``(n, 1, 1, features)``, targets ``(n,)`` float32."""
    x = torch.rand(n, features, generator=generator, device=generator.device)
    y = 10 * torch.sin(math.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    y = y + noise * torch.randn(n, generator=generator, device=generator.device)
    if standardize:
        y = (y - FRIEDMAN_MEAN) / FRIEDMAN_STD
    return x.reshape(n, 1, 1, features), y


def spirals(n: int, generator: Generator, *, turns: float = 1.0, noise: float = 0.05) -> tuple[Tensor, Tensor]:
    """``n`` points of two interleaved spirals: inputs ``(n, 1, 1, 2)``, targets ``(n,)`` float32 in {0, 1}."""
    c = torch.randint(0, 2, (n,), generator=generator, device=generator.device)
    t = 0.1 + 0.9 * torch.rand(n, generator=generator, device=generator.device)
    angle = 2 * math.pi * turns * t + math.pi * c
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], 1)
    x = x + noise * torch.randn(n, 2, generator=generator, device=generator.device)
    return x.reshape(n, 1, 1, 2), c.float()


def _check(key: str, value, low: float, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value >= low or not math.isfinite(value):
        raise ValueError(f"{key}={value!r} is not allowed; give {'an integer' if integer else 'a number'} >= {low:g}")


def _generated(name: str, sample, shape: tuple[int, int, int], class_names: list[str], n_train, n_valid: int,
               n_test: int, seed: int, device: str):
    for key, value in (("n_valid", n_valid), ("n_test", n_test), ("n_train", n_train)):
        if value is not None:
            _check(key, value, 0, integer=True)
    stream = partial(Stream, sample, integer("seed", seed, 0), device=str(device))
    return Dataset(
        name=name, input_shape=shape, num_classes=1, class_names=class_names,
        train=None if n_train is None else stream(split=3).take(n_train),
        valid=stream(split=1).take(n_valid) if n_valid else None,
        test=stream(split=2).take(n_test) if n_test else None,
        stream=stream(split=0) if n_train is None else None,
    )


def friedman_dataset(n_train: int | None = None, n_valid: int = 2000, n_test: int = 2000, features: int = 10,
                     noise: float = 1.0, standardize: bool = True, seed: int = 0, device: str = "cpu"):
    """Friedman's first regression problem (Friedman 1991), generated; an online stream unless ``n_train`` is set.
    One output; train it with ``mse``, ``huber`` or ``l1``."""
    _check("features", features, 5, integer=True)
    _check("noise", noise, 0)
    if not isinstance(standardize, bool):
        raise ValueError(f"standardize={standardize!r} is not allowed; choose True or False")
    sample = partial(friedman, features=features, noise=float(noise), standardize=standardize)
    return _generated("friedman", sample, (1, 1, features), ["y"], n_train, n_valid, n_test, seed, device)


def spirals_dataset(n_train: int | None = None, n_valid: int = 2000, n_test: int = 2000, turns: float = 1.0,
                    noise: float = 0.05, seed: int = 0, device: str = "cpu"):
    """Two interleaved spirals (Lang & Witbrock 1988), generated; an online stream unless ``n_train`` is set.
    One output (a logit); train it with ``bce_with_logits``."""
    _check("turns", turns, 0)
    _check("noise", noise, 0)
    sample = partial(spirals, turns=float(turns), noise=float(noise))
    return _generated("spirals", sample, (1, 1, 2), ["spiral 0", "spiral 1"], n_train, n_valid, n_test, seed, device)


# ----------------------------------------------------------------------------------------------------------------
# scikit-learn's two toy problems, drawn as scikit-learn draws them (numpy's legacy RandomState, the same calls in
# the same order), so that a ``random_state`` gives scikit-learn's points to the last bit without depending on it.


def make_circles(n_samples: int = 100, *, noise: float | None = None, factor: float = 0.8,
                 random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``make_circles`` (``sklearn.datasets``; Pedregosa et al. 2011, "Scikit-learn: Machine
    Learning in Python", JMLR 12): ``n // 2`` points evenly spaced on the unit circle (class 0) and the rest on a
    circle of radius ``factor`` (class 1), shuffled by ``RandomState(random_state).shuffle``, then
    N(0, noise^2) added to both coordinates. Returns float64 ``(n, 2)`` and int64 ``(n,)``."""
    n_out = n_samples // 2
    n_in = n_samples - n_out
    generator = np.random.RandomState(random_state)
    out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    inner = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    x = np.vstack([np.append(np.cos(out), np.cos(inner) * factor), np.append(np.sin(out), np.sin(inner) * factor)]).T
    y = np.hstack([np.zeros(n_out, dtype=np.int64), np.ones(n_in, dtype=np.int64)])
    order = np.arange(n_samples)
    generator.shuffle(order)
    x, y = x[order], y[order]
    if noise is not None:
        x = x + generator.normal(scale=noise, size=x.shape)
    return x, y


def make_blobs(n_samples: int = 100, n_features: int = 2, *, centers: int = 3, cluster_std: float = 1.0,
               center_box: tuple[float, float] = (-10.0, 10.0), random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``make_blobs`` (Pedregosa et al. 2011) with an integer ``centers``: the centres uniform in
    ``center_box`` per coordinate, ``n // centers`` points per centre (the first ``n % centers`` centres one
    more) drawn from N(centre, cluster_std^2 I), then shuffled. Returns float64 ``(n, n_features)``, int64 ``(n,)``."""
    generator = np.random.RandomState(random_state)
    means = generator.uniform(center_box[0], center_box[1], size=(centers, n_features))
    counts = [n_samples // centers + (i < n_samples % centers) for i in range(centers)]
    x = np.concatenate([generator.normal(loc=means[i], scale=cluster_std, size=(n, n_features))
                        for i, n in enumerate(counts)])
    y = np.concatenate([np.full(n, i, dtype=np.int64) for i, n in enumerate(counts)])
    order = np.arange(n_samples)
    generator.shuffle(order)
    return x[order], y[order]


def _fixed(name: str, x: np.ndarray, y: Tensor, n_train: int, classes: int, class_names: list[str], device: str):
    _check("n_train", n_train, 1, integer=True)
    if n_train >= len(y):
        raise ValueError(f"n_train={n_train!r} is not allowed; give an integer below n_samples={len(y)} "
                         "(the rest is the validation set)")
    x = torch.from_numpy(x.astype(np.float32)).reshape(len(y), 1, 1, -1).to(device)
    y = y.to(device)
    return Dataset(name=name, input_shape=(1, 1, x.shape[-1]), num_classes=classes, class_names=class_names,
                   train=(x[:n_train], y[:n_train]), valid=(x[n_train:], y[n_train:]), test=None)


def circles_dataset(n_samples: int = 1000, noise: float = 0.1, factor: float = 0.8, n_train: int = 700,
                    random_state: int = 1, device: str = "cpu"):
    """Two concentric circles (scikit-learn's ``make_circles``), a fixed set: the first ``n_train`` points train,
    the rest validate. The defaults are AUTOTRAINER's Circle task (Zhang et al. 2021, "AUTOTRAINER: An Automatic DNN
    Training Problem Detection and Repair System", ICSE; ``AutoTrainer/data/simplednn.py``): 1,000 points, noise
    0.1, ``random_state=1``, 700 / 300. One 0/1 target: train one logit with ``bce_with_logits``."""
    _check("n_samples", n_samples, 2, integer=True)
    _check("noise", noise, 0)
    _check("factor", factor, 0)
    _check("random_state", random_state, 0, integer=True)
    x, y = make_circles(n_samples, noise=float(noise), factor=float(factor), random_state=random_state)
    return _fixed("circles", x, torch.from_numpy(y).float(), n_train, 1, ["outer", "inner"], device)


def blobs_dataset(n_samples: int = 1000, centers: int = 3, features: int = 2, cluster_std: float = 2.0,
                  n_train: int = 700, random_state: int = 2, device: str = "cpu"):
    """Gaussian blobs (scikit-learn's ``make_blobs``), a fixed set: the first ``n_train`` points train, the rest
    validate; the class is the blob. The defaults are AUTOTRAINER's Blob task (Zhang et al. 2021,
    ``AutoTrainer/data/simplednn.py``): 1,000 points, 3 centres in 2-D, standard deviation 2, ``random_state=2``,
    700 / 300, inputs not rescaled. Class labels: train ``centers`` logits with ``cross_entropy``."""
    _check("n_samples", n_samples, 2, integer=True)
    _check("centers", centers, 2, integer=True)
    _check("features", features, 1, integer=True)
    _check("cluster_std", cluster_std, 0)
    _check("random_state", random_state, 0, integer=True)
    x, y = make_blobs(n_samples, features, centers=centers, cluster_std=float(cluster_std),
                      random_state=random_state)
    return _fixed("blobs", x, torch.from_numpy(y), n_train, centers, [f"blob {i}" for i in range(centers)], device)
