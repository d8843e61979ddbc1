"""The probe on a ``torch.compile``d model: the training run is bit-identical to the unprobed compiled run,
the graph never breaks or recompiles, and the records equal eager mode's."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope.probe import Probe

STEPS, EVERY = 6, 2


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test counts its own graphs, and leaves no compiled code or counts to the next file's tests."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


class Net(nn.Module):
    """A model class of the user's (``module.compile()`` of a bare ``nn.Sequential`` compiles nothing in torch
    2.13: its call is in a file dynamo skips)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(10, 24), nn.BatchNorm1d(24), nn.Tanh(), nn.Dropout(0.2), nn.Linear(24, 24), nn.Tanh(),
            nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3),
        )

    def forward(self, x):
        return self.body(x)


def make_model():
    torch.manual_seed(6)
    return Net()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(60, 10, generator=g), torch.randint(0, 3, (60,), generator=g)
    return x, y, (x[:25] + 0.5, y[:25])


def train(model, run, data, probe_kwargs=None):
    """STEPS updates of Adam on ``run`` (``model`` compiled, or ``model`` itself), the probe optional."""
    x, y, monitor = data
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    torch.manual_seed(1)
    probe = Probe(run, every=EVERY, monitor=monitor, **probe_kwargs) if probe_kwargs is not None else None
    if probe is not None:
        probe.__enter__()
    grads = []
    for i in range(STEPS):
        F.cross_entropy(run(x[i * 8 : i * 8 + 12]), y[i * 8 : i * 8 + 12]).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
        if probe is not None:
            probe.step()
    if probe is not None:
        probe.__exit__(None, None, None)
    state = [opt.state[p][k] for p in model.parameters() for k in ("exp_avg", "exp_avg_sq")]
    return probe, grads, model.state_dict(), state, torch.get_rng_state()


def compile_(model, how):
    if how == "wrapper":
        return torch.compile(model, backend="aot_eager")
    model.compile(backend="aot_eager")  # in place: the module's own call is compiled
    return model


def assert_identical(a, b):
    _, g0, s0, o0, r0 = a
    _, g1, s1, o1, r1 = b
    assert all(torch.equal(u, v) for gu, gv in zip(g0, g1, strict=True) for u, v in zip(gu, gv, strict=True))
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)  # parameters and BN buffers
    assert all(torch.equal(u, v) for u, v in zip(o0, o1, strict=True))
    assert torch.equal(r0, r1)


@pytest.mark.parametrize("how", ["wrapper", "in_place"])
def test_compiled_training_is_bit_identical_with_the_probe(data, how):
    base = make_model()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    plain = train(m := copy.deepcopy(base), compile_(m, how), data)
    probed = train(m := copy.deepcopy(base), compile_(m, how), data, dict(jacobian_examples=4, jacobian_every=EVERY))
    counters = torch._dynamo.utils.counters
    assert dict(counters["graph_break"]) == {}
    probe = probed[0]
    # the probed run reused the unprobed run's graph; the probe's own graphs: its statistics of the monitor
    # pass and of the training step, each record's layers in one compiled function
    assert len(probe._cap.compiled.signatures) == 2
    assert counters["stats"]["unique_graphs"] == 1 + 2
    assert_identical(plain, probed)
    assert probe.unavailable == {}
    assert {r["step"] for r in probe.records if r["source"] == "train"} == {0, 2, 4}


@pytest.mark.parametrize("how", ["wrapper", "in_place"])
def test_compiled_records_equal_eager_records(data, how):
    base = make_model()
    torch._dynamo.reset()
    model = copy.deepcopy(base)
    eager = train(model, model, data, dict(jacobian_examples=4))[0]
    compiled = train(m := copy.deepcopy(base), compile_(m, how), data, dict(jacobian_examples=4))[0]
    key = ("step", "source", "layer", "quantity", "stat")
    assert [tuple(r[k] for k in key) for r in compiled.records] == [tuple(r[k] for k in key) for r in eager.records]
    quantities = {(r["source"], r["quantity"]) for r in compiled.records}
    assert {("train", "activation"), ("train", "preact_grad"), ("train", "weight_grad"), ("monitor", "jacobian"),
            ("monitor", "preact_grad")} <= quantities
    assert [r["value"] for r in compiled.records] == pytest.approx([r["value"] for r in eager.records], rel=1e-5,
                                                                   abs=1e-7)
    assert [h["counts"] for h in compiled.histograms] == [h["counts"] for h in eager.histograms]
    assert compiled.jacobian_unavailable == eager.jacobian_unavailable


def test_compiled_training_step_statistics_against_a_hand_captured_forward(data):
    """The replayed activations of the first recorded step are those of the compiled step's batch."""
    x, y, monitor = data
    model = make_model()
    run = torch.compile(model, backend="aot_eager")
    torch.manual_seed(1)
    rng = torch.get_rng_state()
    captured = {}
    with torch.random.fork_rng():  # the same batch in eager mode, the same dropout mask
        torch.set_rng_state(rng)
        h = model.body[5].register_forward_hook(lambda m, a, out: captured.update(s=a[0].detach(), z=out.detach()))
        model(x[:12])
        h.remove()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Probe(run, every=10, monitor=None) as probe:
        torch.manual_seed(1)
        F.cross_entropy(run(x[:12]), y[:12]).backward()
        opt.step()
        probe.step()
    rows = {(r["layer"], r["quantity"], r["stat"]): r["value"] for r in probe.records}
    z = captured["z"]
    assert rows[("body.5", "activation", "mean")] == pytest.approx(z.mean().item(), rel=1e-5)
    assert rows[("body.5", "activation", "std")] == pytest.approx(z.std(unbiased=False).item(), rel=1e-5)
    # the replay put the batch-norm statistics back: one training step moved them once, as without the probe
    moved = model.state_dict()["body.1.num_batches_tracked"] - buffers["body.1.num_batches_tracked"]
    assert moved.item() == 1


class EagerFails(nn.Module):
    """Runs compiled, fails eagerly: the replay of its recorded step cannot be made."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        if not torch.compiler.is_compiling():
            raise RuntimeError("this model only runs compiled")
        return self.body(x)


def test_a_replay_that_fails_is_listed_and_training_goes_on(data):
    x, y, _ = data
    torch.manual_seed(0)
    model = EagerFails()
    run = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(run, every=1) as probe:
        for i in range(2):
            F.cross_entropy(run(x[i * 10 : i * 10 + 10]), y[i * 10 : i * 10 + 10]).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
    assert "only runs compiled" in probe.unavailable["train activations and dLoss/ds"]
    quantities = {r["quantity"] for r in probe.records}
    assert quantities == {"weight_grad", "update_ratio"}  # what is read from the parameters is still recorded


def test_compiled_model_records_as_eager():
    torch.manual_seed(6)
    base = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(12, 10), torch.randint(0, 3, (12,))
    records = {}
    torch._dynamo.reset()
    for kind in ("eager", "compiled"):
        model = copy.deepcopy(base)
        try:
            run = torch.compile(model, backend="eager") if kind == "compiled" else model
        except Exception as e:  # pragma: no cover - depends on the platform
            pytest.skip(f"torch.compile is not available: {e}")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with Probe(run, every=2, monitor=(x, y)) as probe:
            for _ in range(4):
                F.cross_entropy(run(x), y).backward()
                opt.step()
                opt.zero_grad()
                probe.step()
        records[kind] = probe.records
    # the model compiled once, not per record; the statistics of every record by one graph (the monitor set
    # and the training batch have the same layers and shapes)
    assert len(probe._cap.compiled.signatures) == 1
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1 + 1
    eager, compiled = records["eager"], records["compiled"]
    assert [(r["step"], r["layer"], r["quantity"], r["stat"]) for r in eager] == [
        (r["step"], r["layer"], r["quantity"], r["stat"]) for r in compiled
    ]
    assert [r["value"] for r in compiled] == pytest.approx([r["value"] for r in eager], rel=1e-5, abs=1e-7)
