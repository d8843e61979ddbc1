"""The external AUTOTRAINER benchmark's models: they build, give ten logits, and start as Keras would start them."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "external"))

from autotrainer_models import ARCHS, DEFAULT, keras_init_  # noqa: E402


def _layers(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_model_builds_and_gives_ten_logits(name):
    torch.manual_seed(0)
    model = ARCHS[name].build()
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert not isinstance(list(model.children())[-1], nn.Softmax | nn.Sigmoid)  # logits into cross-entropy
    assert set(DEFAULT) <= set(ARCHS)


def test_layer_counts_follow_the_keras_file():
    # counted by hand from Models_MNIST.py: Dense layers (hidden + output), Conv2D layers, MaxPooling2D layers
    expected = {"model_2af630c4": (10, 2, 2), "model_44ae76ae": (9, 2, 2), "model_ac055404": (11, 2, 2),
                "tmp_lenet5": (18, 2, 1), "model_al_22": (15, 2, 2), "lenet_seed": (3, 2, 2)}
    for name, (dense, conv, pool) in expected.items():
        model = ARCHS[name].build()
        got = (len(_layers(model, nn.Linear)), len(_layers(model, nn.Conv2d)), len(_layers(model, nn.MaxPool2d)))
        assert got == (dense, conv, pool), name
    sig = ARCHS["model_2af630c4"].build()
    assert len(_layers(sig, nn.Sigmoid)) == 9 + 2  # an activation after every layer but the output


def test_random_uniform_is_kerass_default_range():
    torch.manual_seed(1)
    model = ARCHS["tmp_lenet5"].build()
    w = torch.cat([m.weight.reshape(-1) for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)])
    assert w.abs().max() <= 0.05
    assert w.var().item() == pytest.approx(0.1**2 / 12, rel=0.02)  # U(-a, a): a^2 / 3 with a = 0.05
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in layers)


def _truncated_normal_variance(sigma: float) -> float:
    """Var of N(0, sigma^2) cut at +-2 sigma, by integrating the density on a fine grid (not the closed form)."""
    x = torch.linspace(-2 * sigma, 2 * sigma, 200_001, dtype=torch.float64)
    p = torch.exp(-0.5 * (x / sigma) ** 2)
    return float(torch.trapezoid(x**2 * p, x) / torch.trapezoid(p, x))


def test_variance_scaling_normal_is_truncated_he_without_rescaling():
    torch.manual_seed(2)
    model = ARCHS["model_al_22"].build()
    dense = _layers(model, nn.Linear)
    w = torch.cat([d.weight.reshape(-1) for d in dense[1:-1]])  # the 84 -> 84 layers: fan_in 84
    sigma = math.sqrt(2.0 / 84)
    assert w.abs().max() <= 2 * sigma + 1e-6
    assert w.var().item() == pytest.approx(_truncated_normal_variance(sigma), rel=0.03)
    conv = _layers(model, nn.Conv2d)[1].weight  # fan_in = 5 * 5 * 6 = 150
    assert conv.abs().max() <= 2 * math.sqrt(2.0 / 150) + 1e-6


def test_bias_initializers_of_the_mutants():
    torch.manual_seed(3)
    assert torch.equal(_layers(ARCHS["model_mi_al_13"].build(), nn.Linear)[-1].bias, torch.ones(10))
    # VarianceScaling on a 1-d bias: Keras takes fan_in = fan_out = sqrt(10)
    b = torch.empty(100_000)
    keras_init_(b, ("vs", 1.0, "fan_in", "uniform"), (math.sqrt(10), math.sqrt(10)))
    assert b.abs().max() <= math.sqrt(3.0 / math.sqrt(10))
    assert b.var().item() == pytest.approx(1.0 / math.sqrt(10), rel=0.02)
