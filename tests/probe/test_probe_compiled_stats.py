"""The compiled reduction behind a compiled model's records against the eager statistics and numpy."""

import numpy as np
import pytest
import torch

from deepscope.nn.activations import get_activation
from deepscope.probe.compiled import PART, CompiledStats
from deepscope.probe.stats import (
    MAX_HISTOGRAM_VALUES,
    MAX_PERCENTILE_VALUES,
    activation_stat_names,
    activation_stats,
    gradient_stats,
    subsample,
)

BINS = 20


def tensors():
    g = torch.Generator().manual_seed(3)
    tanh = torch.tanh(2 * torch.randn(80, 300, generator=g))  # 24,000 values: both subsamples are taken
    relu = torch.relu(torch.randn(8, 4, 6, 6, generator=g) - 0.5)  # a convolution's output: units are channels
    relu[:, 1] = 0  # a dead filter
    grad = 1e-3 * torch.randn(80, 300, generator=g)
    return [("activation", tanh, get_activation("tanh")), ("activation", relu, get_activation("relu")),
            ("preact_grad", grad, None)]


def test_compiled_statistics_equal_the_eager_ones_and_numpy():
    unavailable = {}
    batch = CompiledStats(BINS, unavailable).batch()
    items = tensors()
    finishes = [batch.add(kind, t, spec) for kind, t, spec in items]
    for (kind, t, spec), finish in zip(items, finishes, strict=True):
        got = finish()
        want = activation_stats(t, spec, BINS) if kind == "activation" else gradient_stats(t, BINS)
        n = len(activation_stat_names(spec)) + 2 if kind == "activation" else 4
        np.testing.assert_allclose(got[:n].numpy(), want[:n].numpy(), rtol=1e-5, atol=1e-7)
        assert torch.equal(got[n:], want[n:])  # the same counts in the same bins
        lo, hi = got[n - 2].item(), got[n - 1].item()
        sample = subsample(t.reshape(-1), MAX_HISTOGRAM_VALUES, t[0].numel()).double().numpy()
        counts = np.histogram(sample, bins=BINS, range=(lo, hi))[0]
        assert np.abs(got[n:].numpy() - counts).sum() <= 2  # numpy's edges may move a value on a boundary
        if kind == "activation":
            sample = subsample(t.reshape(-1), MAX_PERCENTILE_VALUES, t[0].numel())
            q = torch.quantile(sample.double(), torch.tensor([0.02, 0.98], dtype=torch.float64))
            np.testing.assert_allclose(got[2:4].numpy(), q.numpy(), rtol=1e-5, atol=1e-6)
    names = activation_stat_names(get_activation("relu"))
    assert finishes[1]()[names.index("dead")].item() == pytest.approx(1 / 4)  # one channel of four
    assert unavailable == {}
    assert len(batch.owner.signatures) == 1  # the three layers in one graph


def test_a_failing_compiled_reduction_falls_back_to_eager_and_says_why():
    unavailable = {}
    owner = CompiledStats(BINS, unavailable)

    def broken(*args):
        raise RuntimeError("no compiler")

    owner.fn = broken
    batch = owner.batch()
    kind, t, spec = tensors()[0]
    got = batch.add(kind, t, spec)()
    assert torch.equal(got, activation_stats(t, spec, BINS))
    assert "no compiler" in unavailable[PART]
