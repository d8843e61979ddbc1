"""Jacobian singular values by stochastic Lanczos quadrature, against torch.linalg.svdvals of explicit Jacobians."""

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from deepscope.probe import Probe
from deepscope.probe.jacobian import JacobianMap, lanczos_singular_values


def matrix_products(mats):
    """``J v`` and ``J^T u`` for a batch of explicit matrices, one vector per matrix."""
    return (lambda v: torch.einsum("boi,bi->bo", mats, v)), (lambda u: torch.einsum("boi,bo->bi", mats, u))


def test_lanczos_is_exact_once_the_krylov_space_is_the_whole_space():
    g = torch.Generator().manual_seed(0)
    mats = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)  # n = 5 <= steps: Gauss quadrature is exact
    jv, jtv = matrix_products(mats)
    start = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mean, top = lanczos_singular_values(jv, jtv, start, steps=12)
    sv = torch.linalg.svdvals(mats)
    # the quadrature integrates sqrt against the start vector's spectral measure: sum_i (u_i . v)^2 sigma_i
    _, _, vh = torch.linalg.svd(mats, full_matrices=False)
    weights = torch.einsum("bkn,bn->bk", vh, start / start.norm(dim=1, keepdim=True)).square()
    torch.testing.assert_close(mean, (weights * sv).sum(1))
    torch.testing.assert_close(top, sv[:, 0])


@pytest.mark.parametrize("shape", [(400, 400), (300, 450), (450, 300)])
def test_lanczos_estimates_mean_and_max_of_random_matrices(shape):
    g = torch.Generator().manual_seed(1)
    d_out, d_in = shape
    mats = torch.randn(8, d_out, d_in, generator=g) / d_in**0.5 * torch.rand(8, d_out, 1, generator=g)
    sv = torch.linalg.svdvals(mats)
    mats = mats.repeat_interleave(4, 0)  # four start vectors a matrix: one vector's spread is about 6 % here
    jv, jtv = matrix_products(mats)
    start = torch.randn(32, min(shape), generator=g)
    mean, top = lanczos_singular_values(jv, jtv, start, output_side=d_out < d_in)
    top = top.view(8, 4).amax(1)
    assert mean.mean().item() == pytest.approx(sv.mean().item(), rel=0.04)
    assert (top <= sv[:, 0] * (1 + 1e-5)).all()  # a Ritz value: a lower bound on the largest singular value
    assert top.max().item() == pytest.approx(sv.max().item(), rel=0.03)
    torch.testing.assert_close(top, sv[:, 0], rtol=0.06, atol=0)


def explicit(fn, z):
    """svdvals of the explicit Jacobian of ``fn`` at every example of ``z``."""
    out = []
    for e in range(len(z)):
        j = jacobian(lambda v: fn(v[None])[0].flatten(), z[e])
        out.append(torch.linalg.svdvals(j.reshape(j.shape[0], -1)))
    return torch.stack(out)


def wide_mlp(activation, width=300, dead=False, gain=1.0):
    torch.manual_seed(5)
    model = nn.Sequential(OrderedDict(
        hidden1=nn.Sequential(OrderedDict(linear=nn.Linear(20, width), act=activation())),
        hidden2=nn.Sequential(OrderedDict(linear=nn.Linear(width, width), act=activation())),
        output=nn.Linear(width, 3),
    ))  # fmt: skip
    with torch.no_grad():
        model.hidden2.linear.weight *= gain  # gain 6: most tanh units saturate, many singular values near 0
    if dead:  # a third of the units of hidden2 never fire
        with torch.no_grad():
            model.hidden2.linear.bias[: width // 3] = -100.0
    return model


@pytest.mark.parametrize(
    ("activation", "dead", "gain"), [(nn.Tanh, False, 1.0), (nn.Tanh, False, 6.0), (nn.ReLU, True, 1.0)]
)
def test_probe_auto_takes_lanczos_on_wide_layers(activation, dead, gain):
    model = wide_mlp(activation, dead=dead, gain=gain)
    x, y = torch.randn(40, 20), torch.randint(0, 3, (40,))
    with Probe(model, monitor=(x, y), jacobian_examples=24) as probe:
        pass
    assert probe.jacobian_methods == {"hidden2": "lanczos"}
    got = {r["stat"]: r["value"] for r in probe.to_rows(quantity="jacobian", layer="hidden2")}
    assert set(got) == {"sv_mean", "sv_max"}  # a Ritz value bounds the minimum only from above: not reported
    with torch.no_grad():
        z = model.hidden1(x[:24])
    ref = explicit(model.hidden2, z)
    assert got["sv_mean"] == pytest.approx(ref.mean().item(), rel=0.04)
    assert ref.max().item() * 0.97 < got["sv_max"] <= ref.max().item() * (1 + 1e-5)

    with Probe(model, monitor=(x, y), jacobian_examples=24, jacobian_method="exact") as exact:
        pass
    rows = {r["stat"]: r["value"] for r in exact.to_rows(quantity="jacobian", layer="hidden2")}
    assert rows["sv_mean"] == pytest.approx(ref.mean().item(), rel=1e-4)
    assert rows["sv_min"] == pytest.approx(ref.min().item(), rel=1e-3, abs=1e-6)


def test_lanczos_through_jacobian_vector_products_on_a_convolution():
    torch.manual_seed(6)
    block = [nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Tanh()]
    for m in block:
        m.eval()
    with torch.no_grad():
        block[1].running_var.uniform_(0.5, 2.0)
    jmap = JacobianMap("b", "a", block, elementwise_last=True)
    z = torch.randn(16, 4, 9, 9)
    assert jmap.method(z) == "lanczos"  # 324 inputs, 486 outputs: above EXACT_MAX_DIM
    names, values = jmap.spectrum(z, "lanczos")
    ref = explicit(lambda v: block[2](block[1](block[0](v))), z)
    assert names == ("sv_mean", "sv_max")
    assert values[0].item() == pytest.approx(ref.mean().item(), rel=0.04)
    assert ref.max().item() * 0.97 < values[1].item() <= ref.max().item() * (1 + 1e-5)


def test_same_start_vectors_at_every_record_and_global_rng_untouched():
    model = wide_mlp(nn.Tanh)
    jmap = Probe(model)._maps["hidden2"]
    with torch.no_grad():
        z = model.hidden1(torch.randn(4, 20))
    state = torch.get_rng_state()
    first = jmap.spectrum(z, "lanczos")[1]
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: the user's RNG does not move
    torch.rand(5)
    assert torch.equal(jmap.spectrum(z, "lanczos")[1], first)  # the same start vectors whatever the RNG state
    assert not first.requires_grad


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match=r"jacobian_method='svd' is not known; choose one of: auto, exact, lanczos"):
        Probe(nn.Linear(2, 2), jacobian_method="svd")


def test_auto_takes_lanczos_when_the_explicit_jacobian_would_be_too_large():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 9, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(9 * 64 * 64, 128),
                          nn.Tanh(), nn.Linear(128, 3))
    x = torch.randn(4, 1, 64, 64)
    with Probe(model, monitor=x, jacobian_examples=2) as probe:  # 128 x 36864 > MAX_JACOBIAN_ENTRIES
        pass
    assert probe.jacobian_methods == {"4": "lanczos"} and "4" not in probe.jacobian_unavailable
    got = {r["stat"]: r["value"] for r in probe.to_rows(quantity="jacobian", layer="4")}
    with torch.no_grad():
        z = model[1](model[0](x[:2]))
    top = explicit(lambda v: model[4](model[3](model[2](v))), z).max().item()
    assert 0 < got["sv_mean"] < got["sv_max"] <= top * (1 + 1e-5)


def test_jacobians_of_a_later_record_are_those_of_its_weights_though_computed_after_updates():
    """Records armed by ``step()`` compute their Jacobians over the next steps, on a copy of the map's weights
    taken at the record: they equal the explicit Jacobians of the model as it was at that record."""
    import copy

    import torch.nn.functional as F
    from probe_nets import small_mlp

    from deepscope.probe import Probe

    model = small_mlp()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 8, generator=g), torch.randint(0, 4, (20,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    kept = {}
    with Probe(model, every=2, monitor=(x, y), jacobian_every=2, jacobian_examples=5) as probe:
        for step in range(1, 6):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
            if step == 2:  # the record of step 2 was just taken; its Jacobians are not computed yet
                kept[2] = copy.deepcopy(model)
                assert not [r for r in probe.records if r["quantity"] == "jacobian" and r["step"] == 2]
    rows = {(r["step"], r["stat"]): r["value"] for r in probe.to_rows(quantity="jacobian", layer="3")}

    def explicit(net):
        net = net.eval()
        with torch.no_grad():
            z = net[1](net[0](x[:5]))
        out = []
        for e in range(5):
            j = torch.autograd.functional.jacobian(lambda v, net=net: net[3](net[2](v[None]))[0], z[e])
            out.append(torch.linalg.svdvals(j))
        return torch.cat(out)

    sv = explicit(kept[2])
    assert rows[2, "sv_mean"] == pytest.approx(sv.mean().item(), rel=1e-5)
    assert rows[2, "sv_max"] == pytest.approx(sv.max().item(), rel=1e-5)
    later = explicit(model)  # the weights three updates later give other values: the copy mattered
    assert abs(later.mean().item() - rows[2, "sv_mean"]) > 1e-3
    assert sorted({s for s, _ in rows}) == [0, 2, 4]  # the last record's Jacobians were computed at exit
