import math

import pytest
import torch
from torch import nn

from deepscope import init
from deepscope.models import convnet, mlp
from deepscope.nn.activations import Maxout, PReLU

# Weights large enough that a 5% tolerance on the empirical variance is many standard errors wide
# (the sample variance of N draws has a relative standard error of about sqrt(2 / N) < 0.7% here).
LINEAR = (400, 300)  # (out, in): fan_in 300, fan_out 400
CONV = (64, 32, 5, 5)  # (out, in, kh, kw): fan_in 32 * 25, fan_out 64 * 25
FANS = {LINEAR: (300, 400), CONV: (800, 1600)}


def _expected(name, kw, fan_in, fan_out):
    """(variance, uniform bound or None) written from the texts' formulas."""
    n_avg = fan_in + fan_out
    gain = kw.get("gain")
    if name == "normal":
        return kw["std"] ** 2, None
    if name == "uniform":
        return kw["bound"] ** 2 / 3, kw["bound"]
    if name == "standard":  # U[-1/sqrt(n), 1/sqrt(n)]: n Var(W) = 1/3
        return 1 / (3 * fan_in), 1 / math.sqrt(fan_in)
    if name == "glorot_normal":
        return (gain or 1) ** 2 * 2 / n_avg, None
    if name == "glorot_uniform":  # U[-sqrt(6)/sqrt(n_in + n_out), ...]
        r = (gain or 1) * math.sqrt(6 / n_avg)
        return r * r / 3, r
    if name in ("he_normal", "he_uniform"):
        mode = kw.get("mode", "fan_in")
        if mode == "fan_avg":  # Varma & Das, ch. 7: std sqrt(4 / (n_in + n_out)), bound sqrt(12 / (n_in + n_out))
            var, r = 4 / n_avg, math.sqrt(12 / n_avg)
        else:
            fan = fan_in if mode == "fan_in" else fan_out
            var, r = 2 / fan, math.sqrt(6 / fan)
        return var, (r if name == "he_uniform" else None)
    if name == "lecun_normal":
        return 1 / fan_in, None
    if name == "lecun_uniform":
        return 1 / fan_in, math.sqrt(3 / fan_in)
    raise AssertionError(name)


CASES = [
    ("normal", {"std": 0.05}),
    ("uniform", {"bound": 0.3}),
    ("standard", {}),
    ("glorot_normal", {}),
    ("glorot_normal", {"gain": 2.0}),
    ("glorot_uniform", {}),
    ("glorot_uniform", {"gain": 5 / 3}),
    ("he_normal", {}),
    ("he_normal", {"mode": "fan_out"}),
    ("he_normal", {"mode": "fan_avg"}),
    ("he_uniform", {}),
    ("he_uniform", {"mode": "fan_out"}),
    ("he_uniform", {"mode": "fan_avg"}),
    ("lecun_normal", {}),
    ("lecun_uniform", {}),
]


@pytest.mark.parametrize("shape", [LINEAR, CONV], ids=["linear", "conv2d"])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=[f"{n}-{kw}" for n, kw in CASES])
def test_variance_and_bounds_match_formula(name, kw, shape):
    w = torch.empty(shape)
    out = init.get_scheme(name)(w, **kw, generator=torch.Generator().manual_seed(0))
    assert out is w  # filled in place and returned
    var, bound = _expected(name, kw, *FANS[shape])
    assert abs(w.var().item() / var - 1) < 0.05, (w.var().item(), var)
    assert abs(w.mean().item()) < 0.05 * math.sqrt(var)
    if bound is not None:
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() > 0.99 * bound  # fills the whole interval


def test_fans_of_linear_conv_and_maxout():
    assert init.fans(nn.Linear(3, 7).weight) == (3, 7)
    assert init.fans(nn.Conv2d(4, 6, (3, 5)).weight) == (4 * 15, 6 * 15)
    assert init.fans(nn.Conv1d(2, 5, 7).weight) == (14, 35)
    assert init.layer_fans(Maxout(10, 4, k=3)) == (10, 4)  # not (10, 12): units out, not pieces
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fans(torch.empty(5))


def test_conv_layer_through_apply_uses_receptive_field():
    conv = nn.Conv2d(32, 64, 5)
    init.apply(conv, "he_normal", generator=torch.Generator().manual_seed(1))
    assert abs(conv.weight.var().item() / (2 / (32 * 25)) - 1) < 0.05


def test_maxout_fans_through_apply():
    layer = Maxout(300, 200, k=3)  # weight (600, 300)
    init.apply(layer, "glorot_uniform", generator=torch.Generator().manual_seed(2))
    bound = math.sqrt(6 / (300 + 200))  # fan_out = 200 units, not 600 pieces
    w = layer.weight
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.99 * bound
    assert abs(w.var().item() / (bound**2 / 3) - 1) < 0.05


@pytest.mark.parametrize("shape", [(50, 200), (200, 50), (16, 8, 3, 3)])
def test_orthogonal_gives_gain_squared_identity(shape):
    gain = 1.5
    w = init.orthogonal(torch.empty(shape), gain=gain)
    m = w.reshape(shape[0], -1)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-4, rtol=0)


def test_zeros_and_constant():
    assert init.zeros(torch.ones(3, 4)).abs().sum() == 0
    assert torch.equal(init.constant(torch.empty(2, 3), 0.7), torch.full((2, 3), 0.7))


def _layer_output_vars(model, x):
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o.var().item()))
             for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_lsuv_makes_every_layer_output_unit_variance(activation):
    torch.manual_seed(0)
    x = torch.randn(256, 64) * 3 + 1
    model = mlp(64, 10, depth=8, width=64, activation=activation, init="standard")
    before = _layer_output_vars(model, x)
    assert max(abs(v - 1) for v in before) > 0.1  # the test can fail: standard init is far from unit variance
    model.train()
    init.lsuv(model, x, tol=0.1)
    assert model.training and model.hidden3.act.training  # training flags restored
    after = _layer_output_vars(model, x)
    assert len(after) == 9
    assert all(abs(v - 1) < 0.1 for v in after), after


def test_lsuv_on_a_convnet_with_batchnorm_leaves_running_stats_alone():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 16, 16)
    model = init.apply(convnet(1, 10, 16, norm="batch", init=None), "lsuv", x=x, tol=0.05)
    assert torch.equal(model.conv1.norm.running_mean, torch.zeros(16))
    assert torch.equal(model.conv1.norm.running_var, torch.ones(16))
    assert all(abs(v - 1) < 0.05 for v in _layer_output_vars(model, x))


def test_lsuv_without_data_says_it_needs_a_batch():
    model = mlp(4, 2, depth=2, width=8, init=None)
    for call in (lambda: init.apply(model, "lsuv"), lambda: init.lsuv(model),
                 lambda: mlp(4, 2, depth=2, width=8, init="lsuv")):
        with pytest.raises(ValueError, match="needs a batch `x`"):
            call()
    with pytest.raises(TypeError, match="lsuv"):
        init.get_scheme("lsuv")(torch.empty(3, 3))


def test_unknown_scheme_lists_valid_names():
    for call in (lambda: init.get_scheme("xavier"), lambda: init.apply(nn.Linear(2, 2), "xavier")):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert "'xavier'" in msg and "glorot_uniform" in msg and "lsuv" in msg and "he_normal" in msg


def test_bad_kwargs_name_the_scheme_and_its_parameters():
    with pytest.raises(ValueError) as err:
        init.apply(nn.Linear(2, 2), "glorot_uniform", std=0.1)
    assert "'glorot_uniform'" in str(err.value) and "'std'" in str(err.value) and "gain" in str(err.value)
    with pytest.raises(ValueError, match="'normal' needs std"):
        init.apply(nn.Linear(2, 2), "normal")
    with pytest.raises(ValueError, match="mode='fan_mid' is not known; choose one of: fan_in, fan_out, fan_avg"):
        init.he_normal(torch.empty(3, 3), mode="fan_mid")


def test_apply_initializes_weights_zeroes_biases_and_leaves_norms_and_prelu():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), PReLU((4, 1, 1)), nn.Flatten(),
                          Maxout(4 * 6 * 6, 5, k=2), nn.Linear(5, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    init.apply(model, "glorot_normal")
    for layer in (model[0], model[4], model[5]):
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.std() > 0  # random, not the 3.0 fill
    assert torch.all(model[1].weight == 3.0) and torch.all(model[1].bias == 3.0)  # BatchNorm untouched
    assert torch.all(model[2].weight == 3.0)  # PReLU slopes untouched


def test_fresh_batchnorm_keeps_its_defaults():
    model = mlp(8, 2, depth=2, width=16, norm="batch", init="he_uniform")
    assert torch.equal(model.hidden1.norm.weight, torch.ones(16))
    assert torch.equal(model.hidden1.norm.bias, torch.zeros(16))
    assert torch.count_nonzero(model.hidden1.linear.bias) == 0


def test_generator_makes_apply_reproducible():
    a, b = nn.Linear(20, 30), nn.Linear(20, 30)
    init.apply(a, "he_uniform", generator=torch.Generator().manual_seed(7))
    init.apply(b, "he_uniform", generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.weight, b.weight)


def test_auto_picks_each_activations_recommended_init():
    torch.manual_seed(0)
    model = mlp(256, 256, depth=2, width=512, activation="relu", init="auto")
    # relu recommends he_normal: Var = 2 / fan_in; the output layer (no activation) glorot_uniform
    assert abs(model.hidden2.linear.weight.var().item() / (2 / 512) - 1) < 0.05
    out = model.output.weight
    assert out.abs().max().item() <= math.sqrt(6 / (512 + 256))
    assert abs(out.var().item() / (2 / (512 + 256)) - 1) < 0.05
    selu = mlp(256, 2, depth=1, width=512, activation="selu", init="auto")
    assert abs(selu.hidden1.linear.weight.var().item() / (1 / 256) - 1) < 0.05  # lecun_normal
    with pytest.raises(ValueError, match="'auto' does not take 'gain'"):
        init.apply(model, "auto", gain=2.0)
