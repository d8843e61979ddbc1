import math

import pytest
import torch
from torch import nn

from deepscope.models import convnet, mlp
from deepscope.nn import Maxout, PReLU


def _names(module):
    return [name for name, _ in module.named_children()]


def test_mlp_child_names_and_shapes():
    model = mlp(10, 3, depth=3, width=16)
    assert _names(model) == ["flatten", "hidden1", "hidden2", "hidden3", "output"]
    assert _names(model.hidden1) == ["linear", "act"]
    assert isinstance(model.hidden1.act, nn.Tanh) and isinstance(model.output, nn.Linear)
    assert model(torch.randn(5, 10)).shape == (5, 3)
    image = mlp((1, 8, 8), 4, depth=1, width=12, activation="relu")
    assert image.hidden1.linear.in_features == 64
    assert image(torch.randn(5, 1, 8, 8)).shape == (5, 4)


@pytest.mark.parametrize(("position", "expected"), [("before", ["linear", "norm", "act", "dropout"]),
                                                    ("after", ["linear", "act", "norm", "dropout"])])
def test_mlp_norm_position_and_dropout_children(position, expected):
    model = mlp(6, 2, depth=2, width=8, norm="batch", norm_position=position, dropout=0.2)
    assert _names(model.hidden2) == expected
    assert isinstance(model.hidden2.norm, nn.BatchNorm1d) and isinstance(model.hidden2.dropout, nn.Dropout)


def test_batchnorm_uses_running_statistics_in_eval_mode():
    torch.manual_seed(0)
    model = mlp(5, 2, depth=1, width=7, norm="batch", norm_position="before")
    model.train()
    for _ in range(4):
        model(torch.randn(32, 5) * 2 + 3)
    bn = model.hidden1.norm
    assert bn.running_mean.abs().max() > 0.1  # the running statistics have moved from (0, 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(16, 5) * 2 + 3
    model.eval()
    with torch.no_grad():
        z = model.hidden1.linear(x)
        ref = torch.tanh((z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
        batch_stats = torch.tanh((z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias)
        got = model.hidden1(x)
    torch.testing.assert_close(got, ref)
    assert (got - batch_stats).abs().max() > 1e-3  # and not the batch's own statistics


def test_dropout_active_in_train_and_off_in_eval():
    torch.manual_seed(0)
    model = mlp(20, 2, depth=1, width=2000, activation="tanh", dropout=0.5)
    x = torch.randn(8, 20)
    block = model.hidden1
    with torch.no_grad():
        clean = torch.tanh(block.linear(x))
        model.train()
        noisy = block(x)
        kept = noisy != 0
        assert 0.45 < kept.float().mean().item() < 0.55
        torch.testing.assert_close(noisy[kept], 2 * clean[kept])  # inverted dropout scales by 1 / (1 - p)
        model.eval()
        torch.testing.assert_close(block(x), clean)


def test_maxout_mlp_runs_and_trains():
    torch.manual_seed(0)
    model = mlp(20, 4, depth=2, width=8, activation="maxout", maxout_k=3, norm="batch")
    assert _names(model.hidden1) == ["linear", "norm"]
    assert isinstance(model.hidden1.linear, Maxout) and model.hidden1.linear.k == 3
    assert model.hidden1.linear.weight.shape == (24, 20)
    y = model(torch.randn(6, 20))
    assert y.shape == (6, 4)
    y.sum().backward()
    assert model.hidden1.linear.weight.grad.abs().sum() > 0


def test_prelu_slopes_per_neuron_by_default_in_mlp_and_per_channel_in_convnet():
    assert isinstance(mlp(4, 2, 1, 9, activation="prelu").hidden1.act, PReLU)
    assert mlp(4, 2, 1, 9, activation="prelu").hidden1.act.weight.shape == (9,)
    shared = mlp(4, 2, 1, 9, activation="prelu", activation_kwargs={"per": "shared", "init": 0.1})
    assert shared.hidden1.act.weight.shape == () and shared.hidden1.act.weight.item() == pytest.approx(0.1)
    assert convnet(1, 3, 16, activation="prelu").conv2.act.weight.shape == (32, 1, 1)
    per_neuron = convnet(1, 3, 16, activation="prelu", activation_kwargs={"per": "neuron"})
    assert per_neuron.conv1.act.weight.shape == (16, 16, 16) and per_neuron.conv2.act.weight.shape == (32, 8, 8)
    assert per_neuron(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    leaky = mlp(4, 2, 1, 9, activation="leaky_relu", activation_kwargs={"slope": 0.2})
    assert leaky.hidden1.act.negative_slope == 0.2


@pytest.mark.parametrize("in_channels", [1, 3])
def test_convnet_shapes_and_child_names(in_channels):
    model = convnet(in_channels, 10, 32, norm="batch", dropout=0.1)
    assert _names(model) == ["conv1", "conv2", "flatten", "output"]
    assert _names(model.conv1) == ["conv", "norm", "act", "pool", "dropout"]
    assert model.conv1.conv.in_channels == in_channels
    assert model.output.in_features == 32 * 8 * 8  # two 2x2 poolings of a 32x32 image
    assert model(torch.randn(2, in_channels, 32, 32)).shape == (2, 10)
    after = convnet(in_channels, 10, (32, 24), channels=(4, 8, 8), norm="batch", norm_position="after")
    assert _names(after.conv3) == ["conv", "act", "norm", "pool"]
    assert after(torch.randn(2, in_channels, 32, 24)).shape == (2, 10)


def test_init_and_init_kwargs_reach_the_weights():
    torch.manual_seed(0)
    model = mlp(400, 2, depth=1, width=600, activation="relu", init="he_normal", init_kwargs={"mode": "fan_out"})
    assert abs(model.hidden1.linear.weight.var().item() / (2 / 600) - 1) < 0.05
    assert torch.count_nonzero(model.hidden1.linear.bias) == 0
    default = mlp(400, 2, depth=1, width=600, init=None)  # PyTorch's own init: U[-1/sqrt(in), 1/sqrt(in)] biases
    assert torch.count_nonzero(default.hidden1.linear.bias) > 0
    x = torch.randn(128, 400)
    lsuv = mlp(400, 2, depth=3, width=64, activation="tanh", init="lsuv", init_kwargs={"x": x})
    with torch.no_grad():
        z = lsuv.hidden1.linear(x)
    assert abs(z.var().item() - 1) < 0.1
    assert math.isfinite(lsuv(x).sum().item())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "depth=0"),
        ({"width": 0}, "width=0"),
        ({"depth": 2.5}, "depth=2.5"),
        ({"norm": "layer"}, "norm='layer' is not known"),
        ({"norm_position": "middle"}, "norm_position='middle' is not known"),
        ({"dropout": 1.0}, r"dropout=1.0: must be a probability in \[0, 1\)"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"activation": "swishy"}, "activation='swishy' is not known"),
        ({"activation": "relu", "activation_kwargs": {"slope": 0.1}}, "'relu' does not take 'slope'"),
        ({"activation": "prelu", "activation_kwargs": {"per": "layer"}}, "per='layer' is not known"),
        ({"activation": "maxout", "maxout_k": 0}, "maxout_k=0"),
        ({"init": "xavier"}, "init='xavier' is not known"),
    ],
)
def test_mlp_validation_errors(kwargs, match):
    args = {"in_features": 4, "out_features": 2, "depth": 2, "width": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        mlp(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "maxout"}, "mlp only"),
        ({"image_size": 2, "channels": (4, 4)}, "too small"),
        ({"channels": ()}, "at least one conv block"),
        ({"channels": (4, 0)}, "channels=0"),
        ({"norm": "group"}, "norm='group' is not known"),
        ({"dropout": 1.5}, "dropout=1.5"),
    ],
)
def test_convnet_validation_errors(kwargs, match):
    args = {"in_channels": 1, "num_classes": 2, "image_size": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        convnet(**args)
