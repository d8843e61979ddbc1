"""The probe on set-ups beyond a one-input classifier: models of several inputs or a dict input (the monitor set
given as a tuple or dict), bad monitor sets and losses (one error at ``with``; a later failure never reaches the
training step), per-example gradients under ``torch.func.vmap``, sparse embedding gradients, a model without
activation modules, and a compiled (inductor) model of two inputs: bit-identical to the unprobed compiled run,
its graph compiled once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from deepscope import Probe


class TwoInputs(nn.Module):
    """``forward(x1, x2)``: two branches into one GELU module, dropout, a head."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.a, self.b, self.act = nn.Linear(6, 8), nn.Linear(6, 8), nn.GELU()
        self.drop, self.head = nn.Dropout(dropout), nn.Linear(8, 3)

    def forward(self, x1, x2):
        return self.head(self.drop(self.act(self.a(x1) + self.b(x2))))


class DictBatch(nn.Module):
    """``forward(batch)`` with one dict argument, a dict output."""

    def __init__(self):
        super().__init__()
        self.lin, self.act, self.head = nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)

    def forward(self, batch):
        return {"logits": self.head(self.act(self.lin(batch["x"]))), "size": batch["x"].shape[0]}


def _pop_std(t: torch.Tensor) -> float:
    return t.double().std(unbiased=False).item()


def _reference(model: nn.Module, act: nn.Module, call, y: torch.Tensor, loss=F.cross_entropy) -> tuple[float, float]:
    """std of ``act``'s output and of dLoss/d(its input) (``loss``), eval mode: taken by a hook of the test's."""
    seen = {}

    def hook(m, args, out):
        seen["s"], seen["z"] = args[0], out
        args[0].retain_grad()

    model.eval()
    handle = act.register_forward_hook(hook)
    try:
        out = call(model)
        loss(out["logits"] if isinstance(out, dict) else out, y).backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train()
    return _pop_std(seen["z"]), _pop_std(seen["s"].grad)


def _monitor_row(probe: Probe, quantity: str) -> float:
    (row,) = probe.to_rows(source="monitor", quantity=quantity, stat="std", step=0)
    return row["value"]


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_a_model_of_two_inputs_takes_a_monitor_tuple_or_dict_of_keyword_arguments(form):
    torch.manual_seed(0)
    model = TwoInputs()
    x1, x2, y = torch.randn(12, 6), torch.randn(12, 6), torch.randint(0, 3, (12,))
    monitor = ((x1, x2), y) if form == "tuple" else ({"x2": x2, "x1": x1}, y)
    act_std, grad_std = _reference(model, model.act, lambda m: m(x1, x2), y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, every=2, monitor=monitor, jacobian_examples=0) as probe:
        for _ in range(3):
            F.cross_entropy(model(x1[:8], x2[:8]), y[:8]).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
    assert _monitor_row(probe, "activation") == pytest.approx(act_std, rel=1e-5)
    assert _monitor_row(probe, "preact_grad") == pytest.approx(grad_std, rel=1e-5)
    assert {r["step"] for r in probe.to_rows(source="train", quantity="preact_grad")} == {0, 2}
    assert probe.unavailable == {}


def test_a_dict_batch_model_takes_its_monitor_dict_as_one_argument():
    torch.manual_seed(0)
    model = DictBatch()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    act_std, grad_std = _reference(model, model.act, lambda m: m({"x": x}), y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, every=2, monitor=({"x": x}, y), jacobian_examples=0) as probe:
        for _ in range(2):
            F.cross_entropy(model({"x": x})["logits"], y).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
    assert _monitor_row(probe, "activation") == pytest.approx(act_std, rel=1e-5)
    assert _monitor_row(probe, "preact_grad") == pytest.approx(grad_std, rel=1e-5)
    assert probe.to_rows(source="train", quantity="activation", stat="std", step=0)


class Tokens(nn.Module):
    """Token embeddings, a GELU module, per-token logits ``(batch, tokens, vocab)``."""

    def __init__(self):
        super().__init__()
        self.emb, self.lin, self.act, self.out = nn.Embedding(11, 8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 11)

    def forward(self, t):
        return self.out(self.act(self.lin(self.emb(t))))


def _padded_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.randint(0, 11, (6, 5))
    y = torch.randint(0, 11, (6, 5))
    y[:, -2:] = -100  # padding
    return t, y


@pytest.mark.parametrize(
    ("task", "make", "data", "loss"),
    [
        ("regression", lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)),
         lambda: (torch.randn(10, 6), torch.randn(10, 2)), F.mse_loss),
        ("binary", lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)),
         lambda: (torch.randn(10, 6), torch.randint(0, 2, (10, 1)).float()), F.binary_cross_entropy_with_logits),
        ("multi-label", lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)),
         lambda: (torch.randn(10, 6), torch.randint(0, 2, (10, 3)).float()), F.binary_cross_entropy_with_logits),
        ("tokens with -100 padding", Tokens, _padded_tokens,
         lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten(), ignore_index=-100)),
    ],
)
def test_the_default_monitor_loss_follows_the_targets(task, make, data, loss):
    """Without ``loss_fn=`` the monitor pass's dLoss/ds is that of the loss the targets call for."""
    torch.manual_seed(0)
    model = make()
    x, y = data()
    act = next(m for m in model.modules() if isinstance(m, nn.Tanh | nn.GELU))
    act_std, grad_std = _reference(model, act, lambda m: m(x), y, loss)
    with Probe(model, every=1, monitor=(x, y), jacobian_examples=0) as probe:
        pass
    assert _monitor_row(probe, "activation") == pytest.approx(act_std, rel=1e-5)
    assert _monitor_row(probe, "preact_grad") == pytest.approx(grad_std, rel=1e-5)


def test_a_bad_monitor_set_or_loss_fails_at_with_naming_monitor_and_its_shapes():
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    y = torch.randint(0, 3, (4,))
    with pytest.raises(ValueError, match=r"monitor: .*x: a float32 tensor of shape \(4, 5\).*mat1 and mat2"):
        with Probe(model, monitor=(torch.randn(4, 5), y)):
            pass
    with pytest.raises(ValueError, match=r"monitor: .*only for scalar outputs.*returns a scalar tensor"):
        with Probe(model, monitor=(torch.randn(4, 6), y), loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none")):
            pass
    with pytest.raises(ValueError, match=r"monitor=a dict of str is not allowed; give a tensor x"):
        Probe(model, monitor={"x": "text"})
    with pytest.raises(TypeError, match=r"loss_fn='mse' is not allowed; give a callable"):
        Probe(model, loss_fn="mse")
    with pytest.raises(TypeError, match=r"sinks: .* is not allowed; a sink needs a write"):
        Probe(model, sinks=[object()])
    assert not model._forward_hooks and not model[1]._forward_pre_hooks  # nothing left attached


def test_a_monitor_pass_that_fails_later_is_listed_and_training_goes_on():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    calls = []

    def loss_fn(out, t):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("labels went away")
        return F.cross_entropy(out, t)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, every=2, monitor=(x, y), loss_fn=loss_fn, jacobian_examples=0) as probe:
        for _ in range(5):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
    assert "labels went away" in probe.unavailable["monitor"]
    assert {r["step"] for r in probe.to_rows(source="train", quantity="preact_grad")} == {0, 2, 4}
    assert {r["step"] for r in probe.to_rows(source="monitor", quantity="preact_grad")} == {0}


def test_per_example_gradients_under_vmap_record_the_monitor_and_list_the_training_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model, ps, (xi[None],)), yi[None])

    with Probe(model, every=2, monitor=(x, y), jacobian_examples=0) as probe:
        for _ in range(3):
            g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
            params = {k: params[k] - 0.1 * g[k].mean(0) for k in params}
            probe.step()
    assert "torch.func.vmap" in probe.unavailable["train activations and dLoss/ds"]
    assert not probe.to_rows(source="train", quantity="activation")
    assert {r["step"] for r in probe.to_rows(source="monitor", quantity="activation", stat="std")} == {0, 2}


def test_a_sparse_embedding_gradient_is_recorded_as_its_dense_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8, sparse=True), nn.GELU(), nn.Flatten(), nn.Linear(40, 3))
    tokens, y = torch.randint(0, 20, (6, 5)), torch.randint(0, 3, (6,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    with Probe(model, every=2, jacobian_examples=0) as probe:
        for _ in range(3):
            F.cross_entropy(model(tokens), y).backward()
            norms.append(model[0].weight.grad.to_dense().norm().item())
            opt.step()
            opt.zero_grad()
            probe.step()
    rows = probe.to_rows(quantity="weight_grad", layer="0", stat="norm")
    assert [(r["step"], r["value"]) for r in rows] == [(0, pytest.approx(norms[0])), (2, pytest.approx(norms[2]))]


def test_a_model_without_activation_modules_says_so():
    model = nn.Linear(6, 3)
    with Probe(model, every=1, monitor=(torch.randn(4, 6), torch.randint(0, 3, (4,)))) as probe:
        model(torch.randn(4, 6)).sum().backward()
        probe.step()
    assert probe.layers == [] and "layers=[module names]" in probe.unavailable["activations"]
    assert probe.to_rows(quantity="weight_grad", stat="norm")


def test_a_compiled_model_of_two_inputs_trains_bit_identically_compiled_once():
    """``torch.compile`` (inductor, the default) on a model of two inputs with dropout, called with keyword
    arguments, the monitor set a dict: the same parameters and RNG state as the unprobed compiled run, the model's
    graph compiled once in each run (counted by a backend that hands it to inductor), no graph break."""
    pytest.importorskip("torch._inductor")
    from torch._dynamo.utils import counters
    from torch._inductor.compile_fx import compile_fx

    def run(probed: bool):
        torch._dynamo.reset()
        counters.clear()
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return compile_fx(gm, example_inputs)

        torch.manual_seed(0)
        net = TwoInputs(dropout=0.2)
        model = torch.compile(net, backend=backend)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        data = torch.Generator().manual_seed(1)
        monitor = ({"x1": torch.randn(6, 6, generator=data), "x2": torch.randn(6, 6, generator=data)},
                   torch.randint(0, 3, (6,), generator=data))
        probe = Probe(model, every=2, monitor=monitor, jacobian_examples=0) if probed else None
        if probe is not None:
            probe.__enter__()
        for _ in range(5):
            x1, x2 = torch.randn(8, 6, generator=data), torch.randn(8, 6, generator=data)
            y = torch.randint(0, 3, (8,), generator=data)
            F.cross_entropy(model(x1=x1, x2=x2), y).backward()
            opt.step()
            opt.zero_grad()
            if probe is not None:
                probe.step()
        if probe is not None:
            probe.__exit__(None, None, None)
        return [t.clone() for t in net.state_dict().values()], torch.get_rng_state(), len(graphs), counters, probe

    plain, rng_plain, graphs_plain, _, _ = run(False)
    probed, rng_probed, graphs_probed, counts, probe = run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, probed, strict=True))
    assert torch.equal(rng_plain, rng_probed)
    assert graphs_plain == graphs_probed == 1 and sum(counts["graph_break"].values()) == 0
    for source in ("train", "monitor"):
        assert {r["step"] for r in probe.to_rows(source=source, quantity="preact_grad", stat="std")} == {0, 2, 4}
    assert probe.unavailable == {}
