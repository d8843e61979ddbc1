"""The probe on each model family: MLP blocks, maxout, convnet, residual net, Transformer layer, LSTM."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from deepscope.nn.activations import Maxout
from deepscope.probe import Probe


def run(model, x, y, steps=2, **kw):
    """Train ``steps`` SGD steps with a probe recording every step; return the probe."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = Probe(model, every=1, monitor=(x, y), **kw)
    with probe:
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
    return probe


def quantities(probe, source):
    found = {}
    for r in probe.records:
        if r["source"] == source:
            found.setdefault(r["quantity"], set()).add(r["layer"])
    return found


def explicit_singular_values(fn, z, k):
    """svdvals of the explicit per-example Jacobians of ``fn`` (one example in, one out)."""
    out = []
    for e in range(k):
        j = jacobian(lambda v: fn(v[None])[0], z[e])
        out.append(torch.linalg.svdvals(j.reshape(j.shape[0] if j.dim() == 2 else -1, z[e].numel())))
    return torch.cat([s.flatten() for s in out])


def sv_rows(probe, layer):
    rows = {r["stat"]: r["value"] for r in probe.to_rows(quantity="jacobian", layer=layer)}
    return rows["sv_mean"], rows["sv_min"], rows["sv_max"]


def block_mlp():
    torch.manual_seed(0)

    def block(n_in, n_out):
        parts = OrderedDict(linear=nn.Linear(n_in, n_out), norm=nn.BatchNorm1d(n_out), act=nn.Tanh())
        return nn.Sequential(OrderedDict(**parts, dropout=nn.Dropout(0.5)))

    return nn.Sequential(
        OrderedDict(flatten=nn.Flatten(), hidden1=block(6, 9), hidden2=block(9, 7), output=nn.Linear(7, 3))
    )


def test_mlp_blocks_names_and_analytic_jacobian_with_batchnorm():
    model = block_mlp()
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.randn(30, 6) * 2 + 1)
    probe = run(model, x, y, jacobian_examples=4)
    assert [layer.name for layer in probe.layers] == ["hidden1", "hidden2"]
    assert [w.name for w in probe.weights] == ["hidden1", "hidden2", "output"]
    assert probe.unobservable == []
    train = quantities(probe, "train")
    assert train["activation"] == train["preact_grad"] == {"hidden1", "hidden2"}
    assert train["weight_grad"] == train["update_ratio"] == {"hidden1", "hidden2", "output"}
    assert quantities(probe, "monitor")["jacobian"] == {"hidden2"}
    assert model.training  # restored after the monitor passes

    # reference on the weights after the last update, in eval mode: hidden1's output -> hidden2's output
    model.eval()
    with torch.no_grad():
        z1 = model.hidden1(x[:4])
    ref = explicit_singular_values(lambda v: model.hidden2(v), z1, 4)
    last = max(r["step"] for r in probe.to_rows(quantity="jacobian"))
    assert last == 0  # Jacobians by default only at the first record
    probe2 = Probe(model, monitor=(x, y), jacobian_examples=4)
    with probe2:
        pass
    mean, lo, hi = sv_rows(probe2, "hidden2")
    assert mean == pytest.approx(ref.mean().item(), rel=1e-5)
    assert lo == pytest.approx(ref.min().item(), rel=1e-4, abs=1e-6)
    assert hi == pytest.approx(ref.max().item(), rel=1e-5)


def test_jacobian_every():
    model = block_mlp()
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    probe = run(model, x, y, steps=4, jacobian_examples=2, jacobian_every=2)
    assert sorted({r["step"] for r in probe.to_rows(quantity="jacobian")}) == [0, 2, 4]


def test_deepscope_mlp_and_convnet_builders():
    models = pytest.importorskip("deepscope.models")
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    mlp = models.mlp(64, 3, depth=3, width=10, activation="relu")
    probe = run(mlp, x, y, steps=1, jacobian_examples=2)
    assert [layer.name for layer in probe.layers] == ["hidden1", "hidden2", "hidden3"]
    assert quantities(probe, "monitor")["jacobian"] == {"hidden2", "hidden3"}
    assert {"dead", "p98"} <= {r["stat"] for r in probe.to_rows(layer="hidden1", quantity="activation")}
    net = models.convnet(1, 3, 8, channels=(2, 3))
    probe = run(net, x, y, steps=1, jacobian_examples=2)
    assert [layer.name for layer in probe.layers] == ["conv1", "conv2"]
    assert [w.name for w in probe.weights] == ["conv1", "conv2", "output"]
    assert quantities(probe, "monitor")["jacobian"] == {"conv2"}


def test_maxout_preactivations_and_generic_jacobian():
    torch.manual_seed(1)
    model = nn.Sequential(
        OrderedDict(
            hidden1=nn.Sequential(OrderedDict(linear=Maxout(5, 6, k=3))),
            hidden2=nn.Sequential(OrderedDict(linear=Maxout(6, 4, k=2))),
            output=nn.Linear(4, 3),
        )
    )
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    probe = Probe(model, monitor=(x, y), jacobian_examples=3)
    with probe:
        pass
    assert [layer.name for layer in probe.layers] == ["hidden1", "hidden2"]
    assert [w.name for w in probe.weights] == ["hidden1", "hidden2", "output"]
    # dLoss/ds for maxout is taken on the k affine pieces
    pieces = model.hidden1.linear.linear(x).detach().requires_grad_(True)
    h1 = pieces.unflatten(-1, (6, 3)).amax(-1)
    (g,) = torch.autograd.grad(F.cross_entropy(model.output(model.hidden2(h1)), y), pieces)
    got = {r["stat"]: r["value"] for r in probe.to_rows(quantity="preact_grad", layer="hidden1")}
    assert got["std"] == pytest.approx(g.std(correction=0).item(), rel=1e-5)
    ref = explicit_singular_values(lambda v: model.hidden2(v), h1.detach(), 3)
    mean, lo, hi = sv_rows(probe, "hidden2")
    assert (mean, lo, hi) == pytest.approx((ref.mean().item(), ref.min().item(), ref.max().item()), rel=1e-5)


def test_convnet_generic_jacobian_against_explicit():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    )  # fmt: skip
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,))
    probe = Probe(model, monitor=(x, y), jacobian_examples=2)
    with probe:
        pass
    assert [layer.name for layer in probe.layers] == ["1", "5"]
    model.eval()
    with torch.no_grad():
        z = model[1](model[0](x[:2]))
    ref = explicit_singular_values(lambda v: model[5](model[4](model[3](model[2](v)))), z, 2)
    mean, lo, hi = sv_rows(probe, "5")
    assert mean == pytest.approx(ref.mean().item(), rel=1e-5)
    assert hi == pytest.approx(ref.max().item(), rel=1e-5)
    dead = {r["layer"]: r["value"] for r in probe.to_rows(source="monitor", stat="dead")}
    with torch.no_grad():
        z5 = model[:6](x)
    # a conv unit is a channel: dead when it is 0 at every position of every example
    assert dead["5"] == pytest.approx((z5 == 0).transpose(0, 1).flatten(1).all(dim=1).float().mean().item())


class Block(nn.Module):
    """A residual block; ``functional`` applies the last ReLU with F.relu instead of the module."""

    def __init__(self, c, functional=False):
        super().__init__()
        self.functional = functional
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + x) if self.functional else self.relu(out + x)


def test_residual_net():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), Block(3), Block(3, functional=True), nn.Flatten(), nn.Linear(48, 3)
    )
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    probe = run(model, x, y, jacobian_examples=2)
    assert probe.unobservable == [("3", "calls relu inside forward")]
    names = [layer.name for layer in probe.layers]
    assert names == ["1", "2.relu", "3", "3.conv1", "3.conv2", "3.relu"]
    kinds = {layer.name: layer.kind for layer in probe.layers}
    assert kinds["3"] == kinds["3.conv1"] == "output" and kinds["2.relu"] == "activation"
    monitor = quantities(probe, "monitor")
    # the block's ReLU module runs twice per forward: two layers, both with gradients
    assert {"2.relu", "2.relu@2", "3.relu"} <= monitor["preact_grad"]
    assert {"1", "2.relu", "2.relu@2", "3", "3.relu", "3.conv1"} <= monitor["activation"]
    assert "jacobian" not in monitor  # the skip connections leave no clean layer-to-layer map
    assert "layer output" in probe.jacobian_unavailable["3"]
    assert "nn.Sequential chain" in probe.jacobian_unavailable["2.relu"]
    assert {"2.conv1", "2.conv2", "3.conv1", "5"} <= quantities(probe, "train")["weight_grad"]


@pytest.mark.parametrize("activation", ["relu", "module"])
def test_transformer_encoder_layer(activation):
    torch.manual_seed(4)
    act = "relu" if activation == "relu" else nn.GELU()
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, activation=act, batch_first=True)
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(5 * 8, 3))
    x, y = torch.randn(6, 5, 8), torch.randint(0, 3, (6,))
    probe = run(model, x, y, jacobian_examples=2)
    unobservable = dict(probe.unobservable)
    assert "attention softmax" in unobservable["0.self_attn"]
    monitor = quantities(probe, "monitor")
    if activation == "relu":
        assert "relu is applied functionally" in unobservable["0"]
        assert {"0", "0.self_attn", "0.linear1", "0.linear2"} <= monitor["activation"]
        assert "preact_grad" not in monitor
    else:
        assert "0" not in unobservable
        assert {"0.activation", "0.self_attn"} <= monitor["activation"]
        assert monitor["preact_grad"] == {"0.activation"}
    assert "jacobian" not in monitor
    assert {"0.self_attn.in_proj_weight", "0.linear1", "0.linear2", "2"} <= quantities(probe, "train")["weight_grad"]


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def test_lstm():
    torch.manual_seed(5)
    model = Recurrent()
    x, y = torch.randn(7, 5, 4), torch.randint(0, 3, (7,))
    probe = run(model, x, y)
    assert dict(probe.unobservable) == {"lstm": "LSTM gate non-linearities run inside the fused recurrent kernel"}
    assert [(layer.name, layer.kind) for layer in probe.layers] == [("lstm", "output")]
    with torch.no_grad():
        h = model.lstm(x)[0]
    act = {r["stat"]: r["value"] for r in probe.to_rows(source="monitor", layer="lstm", step=2)}
    assert act["mean"] == pytest.approx(h.mean().item(), rel=1e-5)
    train = quantities(probe, "train")
    assert train["weight_grad"] == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "head"}
    assert "preact_grad" not in train and "jacobian" not in quantities(probe, "monitor")
    assert "layer output" in probe.jacobian_unavailable["lstm"]


class FunctionalNet(nn.Module):
    """The classic way to write an MLP: activations applied with F.relu inside forward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 7), nn.Linear(7, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(torch.tanh(self.fc1(x)))))


def test_functional_activations_reported_and_linear_outputs_recorded():
    torch.manual_seed(6)
    model = FunctionalNet()
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    probe = run(model, x, y, steps=1)
    assert probe.unobservable == [("(model)", "calls relu, tanh inside forward")]
    assert [(layer.name, layer.kind) for layer in probe.layers] == [(n, "output") for n in ("fc1", "fc2", "fc3")]
    got = {r["stat"]: r["value"] for r in probe.to_rows(source="monitor", layer="fc2", quantity="activation", step=1)}
    with torch.no_grad():
        s2 = model.fc2(torch.tanh(model.fc1(x)))
    assert got["std"] == pytest.approx(s2.std(correction=0).item(), rel=1e-5)


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


def test_gru():
    torch.manual_seed(7)
    model = GRUNet()
    x, y = torch.randn(7, 5, 4), torch.randint(0, 3, (7,))
    probe = run(model, x, y, steps=1)
    assert dict(probe.unobservable) == {"gru": "GRU gate non-linearities run inside the fused recurrent kernel"}
    with torch.no_grad():
        h = model.gru(x)[0]
    act = {r["stat"]: r["value"] for r in probe.to_rows(source="monitor", layer="gru", step=1)}
    assert act["std"] == pytest.approx(h.std(correction=0).item(), rel=1e-5)
    assert quantities(probe, "train")["weight_grad"] == {"gru.weight_ih_l0", "gru.weight_hh_l0", "head"}


def tanh_mlp(dtype=torch.float32):
    torch.manual_seed(8)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 3)).to(dtype)


def test_float64_statistics_in_double_precision():
    model = tanh_mlp(torch.float64)
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 3, (20,))
    with Probe(model, monitor=(x, y), jacobian_examples=2) as probe:
        pass
    s = model[:3](x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model[4](torch.tanh(s)), y), s)
    got = {r["stat"]: r["value"] for r in probe.to_rows(layer="3", quantity="preact_grad")}
    assert got["std"] == pytest.approx(g.std(correction=0).item(), rel=1e-12)
    with torch.no_grad():
        z1 = model[:2](x[:2])
    ref = explicit_singular_values(lambda v: model[3](model[2](v)), z1, 2)
    assert sv_rows(probe, "3")[0] == pytest.approx(ref.mean().item(), rel=1e-10)


def test_autocast_bfloat16_training_step():
    model = tanh_mlp()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, every=1) as probe:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = model[:2](x)  # the bf16 activations the probe sees (computed once more by hand)
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        grad = model[0].weight.grad.clone()
        opt.step()
        opt.zero_grad()
        probe.step()
    assert z.dtype == torch.bfloat16
    got = {(r["layer"], r["quantity"], r["stat"]): r["value"] for r in probe.records}
    assert got[("1", "activation", "mean")] == pytest.approx(z.float().mean().item(), rel=1e-4)
    assert got[("0", "weight_grad", "norm")] == pytest.approx(grad.norm().item(), rel=1e-5)
    assert ("3", "preact_grad", "std") in got


class Checkpointed(nn.Module):
    def __init__(self, checkpoint):
        super().__init__()
        self.checkpoint = checkpoint
        self.body = tanh_mlp()[:4]
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        if self.checkpoint:
            return self.head(torch.utils.checkpoint.checkpoint(self.body, x, use_reentrant=False))
        return self.head(self.body(x))


def test_gradient_checkpointing_records_as_without():
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    records = []
    for checkpoint in (False, True):
        model = Checkpointed(checkpoint)
        probe = run(model, x, y, steps=2, jacobian_examples=0)
        records.append(probe.records)
    plain, checkpointed = records
    assert not any("@" in r["layer"] for r in checkpointed)  # the re-computation in backward is not a 2nd call
    assert [(r["step"], r["source"], r["layer"], r["quantity"], r["stat"]) for r in plain] == [
        (r["step"], r["source"], r["layer"], r["quantity"], r["stat"]) for r in checkpointed
    ]
    assert [r["value"] for r in checkpointed] == pytest.approx([r["value"] for r in plain], rel=1e-5, abs=1e-8)


def test_evaluation_between_steps_is_not_recorded():
    model = tanh_mlp()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with torch.no_grad():
        z = model[1](model[0](x))  # the training batch's activations, before the update
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, every=1) as probe:
        model.eval()
        with torch.no_grad():
            model(x * 5)  # an evaluation pass between arming and the training step
        model.train()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        probe.step()
    assert {r["layer"] for r in probe.records} == {"0", "1", "2", "3", "4"}  # no "1@2"
    got = probe.to_rows(layer="1", quantity="activation", stat="mean")
    assert [r["value"] for r in got] == [pytest.approx(z.mean().item(), rel=1e-6)]
