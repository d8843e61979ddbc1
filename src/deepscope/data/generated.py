"""Generated tabular datasets with other targets than class labels: a regression set and a binary one.

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
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Generator, Tensor

from deepscope.data.datasets import Dataset, Stream
from deepscope.registry import integer

__all__ = ["FRIEDMAN_MEAN", "FRIEDMAN_STD", "friedman", "friedman_dataset", "spirals", "spirals_dataset"]

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
