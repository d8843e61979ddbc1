"""Probe statistics against tensors captured by a hand-written forward pass, and the probe's hygiene."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from probe_nets import small_mlp
from torch import nn

from deepscope.nn.activations import ACTIVATIONS
from deepscope.probe import Probe
from deepscope.probe.stats import activation_stat_names, activation_stats, percentiles, topk_percentiles
from deepscope.training.probe import TrainerProbe


def rows_of(probe, **filters):
    return {(r["layer"], r["stat"]): r["value"] for r in probe.to_rows(**filters)}


def hist_of(probe, **filters):
    return {
        h["layer"]: h
        for h in probe.histograms
        if all(h[k] == v for k, v in filters.items())
    }


def hand_forward(model, x):
    """The same network written out: pre-activations s and activations z of both hidden layers."""
    w1, b1, w2, b2, w3, b3 = (p.detach().clone() for p in model.parameters())
    s1 = (x @ w1.T + b1).requires_grad_(True)
    z1 = torch.tanh(s1)
    s2 = z1 @ w2.T + b2
    z2 = torch.relu(s2)
    out = z2 @ w3.T + b3
    return s1, z1, s2, z2, out


def np_hist(values, lo, hi, bins):
    return np.histogram(values, bins=bins, range=(lo, hi))[0]


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 8, generator=g), torch.randint(0, 4, (40,), generator=g)


def test_percentiles_match_numpy():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 10, 51, 1000):
        x = torch.randn(n, generator=g)
        got = percentiles(x, (0.0, 0.02, 0.5, 0.98, 1.0)).numpy()
        want = np.percentile(x.numpy(), [0, 2, 50, 98, 100])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        # the torch.topk selection used off the CPU
        ranks = [(math.floor((n - 1) * q), min(math.floor((n - 1) * q) + 1, n - 1),
                  (n - 1) * q - math.floor((n - 1) * q)) for q in (0.0, 0.02, 0.5, 0.98, 1.0)]
        np.testing.assert_allclose(topk_percentiles(x, ranks).numpy(), want, rtol=1e-6, atol=1e-6)
    # above MAX_PERCENTILE_VALUES: a strided subsample that still visits every unit
    scale = torch.where(torch.arange(1000) % 5 == 0, 2.0, 0.1)  # every 5th unit is 20 times wider
    z = torch.randn(300, 1000, generator=g) * scale
    want = np.percentile(z.numpy(), [2, 98])
    np.testing.assert_allclose(percentiles(z, (0.02, 0.98), row=1000).numpy(), want, atol=0.05)
    naive = np.percentile(z.flatten()[::5].numpy(), 98)  # a stride of 5 would see only the wide units
    assert abs(naive - want[1]) > 0.5


def test_monitor_activation_statistics_match_hand_forward(data):
    x, y = data
    model = small_mlp()
    probe = Probe(model, monitor=(x, y), bins=10, jacobian_examples=0)
    with probe:
        pass
    _, z1, _, z2, _ = hand_forward(model, x)
    probe_rows = rows_of(probe, source="monitor", quantity="activation")
    hists = hist_of(probe, source="monitor", quantity="activation")
    for name, z in (("1", z1.detach().numpy()), ("3", z2.detach().numpy())):
        assert probe_rows[(name, "mean")] == pytest.approx(z.mean(), abs=1e-6)
        assert probe_rows[(name, "std")] == pytest.approx(z.std(), abs=1e-6)
        assert probe_rows[(name, "p2")] == pytest.approx(np.percentile(z, 2), abs=1e-6)
        assert probe_rows[(name, "p98")] == pytest.approx(np.percentile(z, 98), abs=1e-6)
    t = z1.detach().numpy()
    assert probe_rows[("1", "saturated")] == pytest.approx((np.abs(t) > 0.99).mean())
    assert 0 < probe_rows[("1", "saturated")] < 1
    assert ("1", "dead") not in probe_rows  # tanh has no dead notion
    r = z2.detach().numpy()
    dead = (r == 0).all(axis=0).mean()
    assert dead >= 4 / 12
    assert probe_rows[("3", "dead")] == pytest.approx(dead)
    # histograms: tanh over its range [-1, 1]; relu over [-0.5, 3] widened to the data
    assert (hists["1"]["lo"], hists["1"]["hi"]) == (-1.0, 1.0)
    np.testing.assert_allclose(hists["1"]["counts"], np_hist(t, -1, 1, 10), atol=1)
    lo, hi = hists["3"]["lo"], hists["3"]["hi"]
    assert lo == -0.5 and hi == pytest.approx(max(3.0, r.max()))
    np.testing.assert_allclose(hists["3"]["counts"], np_hist(r, lo, hi, 10), atol=1)
    assert sum(hists["3"]["counts"]) == r.size


def test_monitor_preactivation_gradients_match_autograd(data):
    x, y = data
    model = small_mlp()
    probe = Probe(model, monitor=(x, y), bins=8, jacobian_examples=0)
    with probe:
        pass
    s1, _, s2, _, out = hand_forward(model, x)
    g1, g2 = torch.autograd.grad(F.cross_entropy(out, y), [s1, s2])
    got = rows_of(probe, source="monitor", quantity="preact_grad")
    hists = hist_of(probe, source="monitor", quantity="preact_grad")
    for name, g in (("1", g1.numpy()), ("3", g2.numpy())):
        assert got[(name, "mean")] == pytest.approx(g.mean(), abs=1e-9)
        assert got[(name, "std")] == pytest.approx(g.std(), rel=1e-5)
        m = np.abs(g).max()
        assert hists[name]["lo"] == pytest.approx(-m) and hists[name]["hi"] == pytest.approx(m)
        np.testing.assert_allclose(hists[name]["counts"], np_hist(g, -m, m, 8), atol=1)
    assert got[("1", "std")] != got[("3", "std")]


def test_training_step_instruments(data):
    """Train source: activations and dLoss/ds of the batch, weight gradients, update/weight ratio."""
    x, y = data
    model = small_mlp()
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, every=1, bins=6)
    with probe:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()  # the probe must have captured the gradients before this
        probe.step()
    s1, z1, s2, _, out = hand_forward(reference, x)
    g1, g2 = torch.autograd.grad(F.cross_entropy(out, y), [s1, s2])
    ref_loss = F.cross_entropy(reference(x), y)
    ref_loss.backward()
    act = rows_of(probe, source="train", quantity="activation")
    assert act[("1", "std")] == pytest.approx(z1.detach().numpy().std(), abs=1e-6)
    pg = rows_of(probe, source="train", quantity="preact_grad")
    assert pg[("1", "std")] == pytest.approx(g1.numpy().std(), rel=1e-5)
    assert pg[("3", "mean")] == pytest.approx(g2.numpy().mean(), abs=1e-9)
    wg = rows_of(probe, source="train", quantity="weight_grad")
    ratio = rows_of(probe, source="train", quantity="update_ratio")
    for name, lin in (("0", reference[0]), ("2", reference[2]), ("4", reference[4])):
        g = lin.weight.grad
        assert wg[(name, "mean")] == pytest.approx(g.mean().item(), abs=1e-9)
        assert wg[(name, "std")] == pytest.approx(g.std(correction=0).item(), rel=1e-5)
        assert wg[(name, "norm")] == pytest.approx(g.norm().item(), rel=1e-5)
        assert ratio[(name, "ratio")] == pytest.approx((0.1 * g).norm().item() / lin.weight.norm().item(), rel=1e-4)
    whist = hist_of(probe, source="train", quantity="weight_grad")
    g = reference[2].weight.grad.numpy()
    m = np.abs(g).max()
    np.testing.assert_allclose(whist["2"]["counts"], np_hist(g, -m, m, 6), atol=1)
    assert {r["step"] for r in probe.records} == {0}


def test_update_ratio_of_a_large_weight_from_its_strided_sample():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(700, 600), nn.ReLU(), nn.Linear(600, 3))  # 420k weights > MAX_UPDATE_VALUES
    with torch.no_grad():
        model[0].bias[:200] = -50.0  # a third of the rows get no update at all
    before = model[0].weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 700), torch.randint(0, 3, (64,))
    with Probe(model, every=1) as probe:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        probe.step()
    exact = ((model[0].weight.detach() - before).norm() / before.norm()).item()
    got = rows_of(probe, source="train", quantity="update_ratio")[("0", "ratio")]
    assert got == pytest.approx(exact, rel=0.01)


def test_records_every_nth_step_and_labels(data):
    x, y = data
    model = small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Probe(model, every=3, monitor=(x[:10], y[:10]), jacobian_examples=0) as probe:
        for _ in range(8):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
    steps = {src: sorted({r["step"] for r in probe.records if r["source"] == src}) for src in ("train", "monitor")}
    assert steps == {"train": [0, 3, 6], "monitor": [0, 3, 6]}


def test_monitor_x_only_records_activations_not_gradients(data):
    x, _ = data
    probe = Probe(small_mlp(), monitor=x, jacobian_examples=2)
    with probe:
        pass
    quantities = {r["quantity"] for r in probe.records}
    assert quantities == {"activation", "jacobian"}


def test_in_place_activations_and_reuse():
    torch.manual_seed(0)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu = nn.Linear(6, 6), nn.Linear(6, 3), nn.ReLU(inplace=True)

        def forward(self, x):
            return self.b(self.relu(self.a(self.relu(x))))

    model = Twice()
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    probe = Probe(model, monitor=(x, y))
    with probe:
        pass
    got = rows_of(probe, source="monitor", quantity="preact_grad")
    assert {k[0] for k in got} == {"relu@2"}  # the first call acts on the input, which needs no gradient
    s = (torch.relu(x) @ model.a.weight.T.detach() + model.a.bias.detach()).requires_grad_(True)
    out = torch.relu(s) @ model.b.weight.T.detach() + model.b.bias.detach()
    (g,) = torch.autograd.grad(F.cross_entropy(out, y), s)
    assert got[("relu@2", "std")] == pytest.approx(g.std(correction=0).item(), rel=1e-5)
    act = rows_of(probe, source="monitor", quantity="activation")
    assert act[("relu", "mean")] == pytest.approx(torch.relu(x).mean().item(), rel=1e-6)
    assert "relu" in probe.jacobian_unavailable


def test_paper_gradients_at_initialization():
    """Glorot & Bengio fig. 7 and sec. 4.2.2 on a 5-layer tanh net at initialization."""
    torch.manual_seed(0)
    width, n_in = 256, 256
    x, y = torch.rand(300, n_in), torch.randint(0, 9, (300,))

    def net(init):
        layers, n = [], n_in
        for _ in range(5):
            lin = nn.Linear(n, width)
            bound = 1 / n**0.5 if init == "standard" else (6 / (n + width)) ** 0.5
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.Tanh()]
            n = width
        return nn.Sequential(*layers, nn.Linear(width, 9))

    result = {}
    for init in ("standard", "normalized"):
        probe = Probe(net(init), monitor=(x, y), jacobian_examples=1)
        with probe:
            pass
        rows = probe.to_rows(source="monitor", quantity="preact_grad", stat="std")
        stds = [r["value"] for r in sorted(rows, key=lambda r: int(r["layer"]))]
        sv = [r["value"] for r in probe.to_rows(quantity="jacobian", stat="sv_mean")]
        result[init] = stds, float(np.mean(sv))
    std_standard, sv_standard = result["standard"]
    std_normalized, sv_normalized = result["normalized"]
    # standard init: back-propagated gradients shrink toward the input layer
    assert all(a < b for a, b in zip(std_standard, std_standard[1:], strict=False))
    assert std_standard[-1] / std_standard[0] > 4
    # normalized init: within a factor of 2 across layers
    assert max(std_normalized) / min(std_normalized) < 2
    # average Jacobian singular value: about 0.5 (standard) and 0.8 (normalized)
    assert 0.4 < sv_standard < 0.6 and 0.65 < sv_normalized < 0.9


def test_bad_arguments_name_key_and_value(data):
    x, y = data
    model = small_mlp()
    with pytest.raises(ValueError, match="every=0"):
        Probe(model, every=0)
    with pytest.raises(ValueError, match="'hidden9.act'.*choose from: 0, 1"):
        Probe(model, layers=["hidden9.act"])
    with pytest.raises(ValueError, match="monitor=a dict of list is not allowed; give a tensor x, a pair"):
        Probe(model, monitor={"x": x.tolist()})  # a dict of tensors is inputs by name (test_probe_setups.py)
    with pytest.raises(ValueError, match="monitor: x has 40 examples but y has 3"):
        Probe(model, monitor=(x, y[:3]))
    with pytest.raises(ValueError, match="jacobian_every=150.*every=100"):
        Probe(model, jacobian_every=150)
    with pytest.raises(ValueError, match="filter colour='red'"):
        Probe(model).to_rows(colour="red")
    with pytest.raises(RuntimeError, match="context manager"):
        Probe(model).step()


def test_named_layers_and_callback(data):
    x, y = data
    model = small_mlp()
    probe = Probe(model, every=2, monitor=(x, y), layers=["2"], jacobian_examples=0)
    assert [(layer.name, layer.kind) for layer in probe.layers] == [("2", "output")]
    callback = TrainerProbe(probe=probe)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    class Ctx:
        def __init__(self, event, step):
            self.event, self.step = event, step

    callback(Ctx("start", 0))

    with probe:
        for step in range(1, 5):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            callback(Ctx("step", step))
        callback(Ctx("end", 4))
    acts = {(r["source"], r["step"]) for r in probe.to_rows(quantity="activation", layer="2", stat="mean")}
    assert acts == {("monitor", 0), ("train", 0), ("monitor", 2), ("train", 2), ("monitor", 4)}
    cols = probe.to_columns(layer="2", stat="mean", quantity="activation")
    assert list(cols) == ["step", "source", "layer", "quantity", "stat", "value"] and len(cols["step"]) == 5


def test_memory_per_record_independent_of_width():
    counts = []
    for width in (8, 64):
        model = nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3))
        x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
        probe = Probe(model, every=1, monitor=(x, y), bins=7)
        with probe:
            F.cross_entropy(model(x), y).backward()
            probe.step()
        assert all(len(h["counts"]) == 7 for h in probe.histograms)
        counts.append((len(probe.records), len(probe.histograms)))
    assert counts[0] == counts[1]


def test_dead_fraction_counts_channels_of_a_convolution():
    relu = ACTIVATIONS["relu"]
    z = torch.zeros(4, 3, 5, 5)  # ReLU outputs of 3 channels on 4 examples
    z[2, 1, 4, 0] = 0.7  # channel 1 fires once: at one position of one example
    z[:, 2] = torch.rand(4, 5, 5) + 0.1  # channel 2 fires everywhere
    stats = dict(zip(activation_stat_names(relu), activation_stats(z, relu, 10).tolist(), strict=False))
    assert stats["dead"] == pytest.approx(1 / 3)  # only channel 0 never fires
    # an MLP unit is each feature: dead when 0 on every example
    h = torch.zeros(6, 4)
    h[0, 1] = 1.0
    stats = dict(zip(activation_stat_names(relu), activation_stats(h, relu, 10).tolist(), strict=False))
    assert stats["dead"] == pytest.approx(3 / 4)
