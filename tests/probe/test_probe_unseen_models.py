"""The probe on model families it was not written on (tiny configs, nothing downloaded): a Llama-style decoder, T5,
ViT, DistilBERT, RoBERTa, a MobileNet-style CNN, a GroupNorm/LayerNorm CNN and ``nn.Transformer`` seq2seq. Each
activation module is recorded with dLoss/ds, and the recorded numbers equal what a forward hook of the test's own
captures."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from unseen_nets import CASES

from deepscope.probe import Probe
from deepscope.probe.layers import custom_activation, is_activation

pytest.importorskip("transformers")

# the activation modules each model must have recorded (type names), and a module each must list as unobservable
EXPECTED = {
    "llama": ({"SiLUActivation"}, "model.layers.0.self_attn"),
    "t5": ({"NewGELUActivation"}, "decoder.block.0.layer.1.EncDecAttention"),
    "vit": ({"GELUActivation"}, "vit.layers.0.attention"),
    "distilbert": ({"GELUActivation"}, "distilbert.transformer.layer.0.attention"),
    "roberta": ({"GELUActivation"}, "classifier"),  # its head applies tanh in forward
    "mobilenet": ({"Hardswish", "ReLU6", "SiLU"}, None),
    "norm_cnn": ({"Mish", "GELU"}, None),
    # torch's deepcopy of a TransformerDecoderLayer (nn.Transformer clones its layers) swaps a module activation for
    # F.relu (TransformerDecoderLayer.__setstate__): the decoder computes relu in forward, and the probe says so
    "seq2seq": ({"GELU"}, "transformer.decoder.layers.0"),
}


def capture(model, types):
    """Forward hooks on every module of ``types``: its last output and the gradient of the loss at its input."""
    got, handles = {}, []
    for path, m in model.named_modules():
        if type(m).__name__ in types:
            def hook(m, args, out, path=path):
                got[path] = {"out": out.detach().clone()}
                if args[0].requires_grad:
                    args[0].register_hook(lambda g: got[path].update(grad=g.detach().clone()))
            handles.append(m.register_forward_hook(hook))
    return got, handles


@pytest.mark.parametrize("name", list(CASES))
def test_activations_and_dloss_ds_of_an_unseen_model_equal_a_hooks_capture(name):
    case = CASES[name]()
    types, listed = EXPECTED[name]
    g = torch.Generator().manual_seed(3)
    monitor = case.batch(g, 12)
    got, handles = capture(case.model, types)
    with Probe(case.model, monitor=monitor, jacobian_examples=0) as probe:
        pass  # the first record: the monitor pass at the initialization
    for h in handles:
        h.remove()
    rows = {(r["layer"], r["quantity"], r["stat"]): r["value"] for r in probe.records if r["source"] == "monitor"}
    recorded = {layer.path: layer for layer in probe.layers if layer.kind == "activation"}
    assert {type(layer.module).__name__ for layer in recorded.values()} == types
    assert got and set(got) <= set(recorded)
    for path, seen in got.items():
        layer = recorded[path].name
        out, grad = seen["out"].double(), seen["grad"].double()
        assert rows[(layer, "activation", "mean")] == pytest.approx(out.mean().item(), rel=1e-4, abs=1e-7)
        assert rows[(layer, "activation", "std")] == pytest.approx(out.std(correction=0).item(), rel=1e-4)
        # dLoss/ds: the gradient of the monitor's cross-entropy at the activation's input (its pre-activation)
        assert rows[(layer, "preact_grad", "std")] == pytest.approx(grad.std(correction=0).item(), rel=1e-4)
    unobservable = dict(probe.unobservable)
    if listed is not None:
        assert listed in unobservable
    assert not any(path in unobservable for path in recorded)  # an activation module is never called unobservable
    assert probe.unavailable == {}


def train_steps(case, run, steps=4, every=2):
    g = torch.Generator().manual_seed(4)
    monitor = case.batch(g, 12)
    batches = [case.batch(g, 12) for _ in range(steps)]
    opt = torch.optim.Adam(case.model.parameters(), lr=case.lr)
    with Probe(run, every=every, monitor=monitor, jacobian_examples=0) as probe:
        for inputs, y in batches:
            loss = case.loss(case.call(run, inputs), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step()
    return probe


@pytest.mark.parametrize("name", ["llama", "norm_cnn"])
def test_a_compiled_unseen_model_records_as_eager(name):
    torch._dynamo.reset()
    eager, compiled = CASES[name](), CASES[name]()
    compiled.model.load_state_dict(copy.deepcopy(eager.model.state_dict()))
    want = train_steps(eager, eager.model)
    got = train_steps(compiled, torch.compile(compiled.model, backend="aot_eager"))
    torch._dynamo.reset()
    key = ("step", "source", "layer", "quantity", "stat")
    want_rows = {tuple(r[k] for k in key): r["value"] for r in want.records}
    got_rows = {tuple(r[k] for k in key): r["value"] for r in got.records}
    assert set(got_rows) == set(want_rows)
    assert {k[3] for k in want_rows} == {"activation", "preact_grad", "weight_grad", "update_ratio"}
    for k, v in want_rows.items():
        assert got_rows[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert got.unavailable == {}


class PartialGELU(nn.Module):
    """An activation held as ``functools.partial`` (transformers' ``GELUTanh``, the MLP of Gemma-style models)."""

    def __init__(self):
        super().__init__()
        self.act = functools.partial(F.gelu, approximate="tanh")

    def forward(self, x):
        return self.act(x)


def test_an_activation_held_as_a_functools_partial_is_recorded():
    transformers = pytest.importorskip("transformers")
    for act in (PartialGELU(), transformers.activations.GELUTanh()):
        assert custom_activation(act) and not is_activation(act)[0]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), PartialGELU(), nn.Linear(16, 3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    z = model[0](x).detach().requires_grad_(True)  # independent: dLoss/ds by hand
    out = F.gelu(z, approximate="tanh")
    F.cross_entropy(model[2](out), y).backward()
    with Probe(model, monitor=(x, y), jacobian_examples=0) as probe:
        pass
    rows = {(r["quantity"], r["stat"]): r["value"] for r in probe.records if r["layer"] == "1"}
    assert rows[("activation", "mean")] == pytest.approx(out.mean().item(), rel=1e-5)
    assert rows[("preact_grad", "std")] == pytest.approx(z.grad.std(correction=0).item(), rel=1e-4)
    assert probe.unobservable == []


def test_dead_relu6_and_hardswish_channels_and_saturated_hardtanh_are_counted():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1), nn.Hardswish(),
                          nn.Flatten(), nn.Linear(8 * 36, 8), nn.Hardtanh(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias[:3] = -50.0  # 3 of 8 channels below 0 everywhere: dead
        model[2].bias[:5] = -50.0  # 5 of 8 below -3 everywhere: hard-swish 0, dead
        model[5].weight.mul_(100.0)  # hardtanh pinned on its bounds
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    with Probe(model, monitor=(x, y), jacobian_examples=0) as probe:
        pass
    rows = {(r["layer"], r["stat"]): r["value"] for r in probe.records
            if r["source"] == "monitor" and r["quantity"] == "activation"}
    # independent: channels 0 at every position of every example, and the share of hardtanh outputs at +-1
    h1 = model[1](model[0](x))
    h2 = model[3](model[2](h1))
    h3 = model[6](model[5](model[4](h2)))
    assert rows[("1", "dead")] == (h1 == 0).all(dim=(0, 2, 3)).double().mean().item() == 3 / 8
    assert rows[("3", "dead")] == (h2 == 0).all(dim=(0, 2, 3)).double().mean().item() == 5 / 8
    assert rows[("6", "saturated")] == pytest.approx((h3.abs() >= 1).double().mean().item())
    assert rows[("6", "saturated")] > 0.5
    # Hardtanh with bounds of its own: no saturated fraction (its bounds are not the registry's +-1)
    with Probe(nn.Sequential(nn.Linear(4, 4), nn.Hardtanh(0.0, 20.0)), monitor=(torch.randn(8, 4), None)) as other:
        pass
    assert not [r for r in other.records if r["stat"] == "saturated"]


def test_every_activation_of_transformers_is_an_activation_layer():
    activations = pytest.importorskip("transformers.activations")
    for key in activations.ACT2CLS:
        module = activations.ACT2FN[key]
        recorded = is_activation(module)[0] or custom_activation(module)
        # "linear" is the identity: no non-linearity to record
        assert recorded == (key != "linear"), (key, type(module).__name__)
