import math

import pytest
import torch

from deepscope.nn.activations import ACTIVATIONS, Maxout, PReLU, get_activation, make_activation


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_activation("swishy")
    assert "swishy" in str(err.value) and "tanh" in str(err.value) and "softsign" in str(err.value)


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if n != "maxout"])
def test_every_activation_builds_and_runs(name):
    act = make_activation(name)
    y = act(torch.linspace(-3, 3, 11))
    assert y.shape == (11,) and torch.isfinite(y).all()


def test_softsign_formula():
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(make_activation("softsign")(x), x / (1 + x.abs()))


def test_selu_constants():
    x = torch.tensor([-1.0, 2.0])
    expected = 1.0507009873554805 * torch.tensor([1.6732632423543772 * (math.exp(-1) - 1), 2.0])
    torch.testing.assert_close(make_activation("selu")(x), expected)


def test_saturation_and_dead_definitions():
    tanh = get_activation("tanh")
    assert tanh.saturated(torch.tensor([0.995, -0.999, 0.5])).tolist() == [True, True, False]
    sig = get_activation("sigmoid")
    assert sig.saturated(torch.tensor([0.005, 0.5, 0.995])).tolist() == [True, False, True]
    relu = get_activation("relu")
    assert relu.dead(torch.tensor([0.0, 1e-9, 2.0])).tolist() == [True, False, False]
    assert get_activation("leaky_relu").dead is None


def test_prelu_per_neuron_matches_reference_forward_and_backward():
    torch.manual_seed(0)
    act = PReLU(shape=(4,), init=0.1)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    x = torch.randn(8, 4, requires_grad=True)
    y = act(x)
    a = act.weight.detach()
    ref = torch.where(x.detach() >= 0, x.detach(), a * x.detach())
    torch.testing.assert_close(y, ref)
    g = torch.randn(8, 4)
    y.backward(g)
    # dy/dx = 1 where x >= 0 else a ; dy/da_j = sum over batch of x where x < 0
    xd = x.detach()
    torch.testing.assert_close(x.grad, torch.where(xd >= 0, g, a * g))
    torch.testing.assert_close(act.weight.grad, (g * torch.where(xd < 0, xd, torch.zeros_like(xd))).sum(0))


def test_prelu_per_channel_conv_shape():
    act = PReLU(shape=(3, 1, 1))
    x = -torch.ones(2, 3, 5, 5)
    y = act(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, -0.25 * torch.ones_like(x))


def test_maxout_matches_reference():
    torch.manual_seed(0)
    layer = Maxout(6, 4, k=3)
    x = torch.randn(5, 6, requires_grad=True)
    y = layer(x)
    w, b = layer.weight.detach(), layer.bias.detach()
    ref = torch.stack(
        [torch.stack([x.detach() @ w[j * 3 + i] + b[j * 3 + i] for i in range(3)], -1).amax(-1) for j in range(4)],
        -1,
    )
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    # the gradient flows only through the winning piece of each unit
    z = x.detach() @ w.T + b
    win = z.view(5, 4, 3).argmax(-1)
    mask = torch.zeros(5, 4, 3).scatter_(-1, win.unsqueeze(-1), 1.0).view(5, 12)
    torch.testing.assert_close(x.grad, mask @ w)


def test_maxout_rejects_bad_k():
    with pytest.raises(ValueError, match="k=0"):
        Maxout(3, 3, k=0)
