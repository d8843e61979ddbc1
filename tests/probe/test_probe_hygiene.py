"""The probe's hygiene: training is bit-identical with and without it, its hooks exist only while a record is
taken, and the model is left exactly as it was found, even when the block raises."""

import copy

import pytest
import torch
import torch.nn.functional as F
from probe_nets import small_mlp
from torch import nn

from deepscope.probe import Probe


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 8, generator=g), torch.randint(0, 4, (40,), generator=g)


def test_training_step_bit_identical_with_and_without_monitor(data):
    x, y = data
    torch.manual_seed(3)
    base = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 16), nn.ReLU(),
        nn.Dropout(0.2), nn.Linear(16, 4),
    )
    runs = []
    for with_probe in (False, True):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        torch.manual_seed(7)
        losses, grads = [], []
        probe = Probe(model, every=1, monitor=(x[:25], y[:25]), jacobian_examples=3) if with_probe else None
        if probe:
            probe.__enter__()
        for i in range(3):
            loss = F.cross_entropy(model(x[i * 10 : i * 10 + 10]), y[i * 10 : i * 10 + 10])
            loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
            if probe:
                probe.step()
        if probe:
            probe.__exit__(None, None, None)
            assert {r["source"] for r in probe.records} == {"train", "monitor"}
        runs.append((losses, grads, model.state_dict(), opt.state_dict(), torch.get_rng_state()))
    (l0, g0, s0, o0, r0), (l1, g1, s1, o1, r1) = runs
    assert all(torch.equal(a, b) for a, b in zip(l0, l1, strict=True))
    assert all(torch.equal(a, b) for ga, gb in zip(g0, g1, strict=True) for a, b in zip(ga, gb, strict=True))
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert all(torch.equal(o0["state"][k]["momentum_buffer"], o1["state"][k]["momentum_buffer"]) for k in o0["state"])
    assert torch.equal(r0, r1)


def hook_state(model):
    return [
        (
            name,
            dict(m._forward_hooks),
            dict(m._forward_pre_hooks),
            dict(m._backward_hooks),
            dict(m._backward_pre_hooks),
            m.training,
        )
        for name, m in model.named_modules()
    ]


def test_hooks_removed_and_model_unchanged_even_on_exception(data):
    x, y = data
    model = small_mlp()
    model[1].eval()  # a mixed mode must survive the monitor pass
    user_hook = model[3].register_forward_hook(lambda m, a, o: None)
    model(x).sum().backward()  # .grad set before the probe
    before_hooks = hook_state(model)
    before_params = {k: v.clone() for k, v in model.state_dict().items()}
    before_grads = [p.grad.clone() for p in model.parameters()]
    before_out = model(x)

    for fail in (False, True):
        try:
            with Probe(model, every=1, monitor=(x, y), jacobian_examples=2) as probe:
                assert probe._hooks.handles  # armed for the first training step
                if fail:
                    raise KeyError("boom")
        except KeyError:
            assert fail
        assert hook_state(model) == before_hooks
        assert all(not p._post_accumulate_grad_hooks for p in model.parameters())
        assert all(torch.equal(v, before_params[k]) for k, v in model.state_dict().items())
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before_grads, strict=True))
        assert torch.equal(model(x), before_out)
    user_hook.remove()


def test_no_hooks_between_recorded_steps(data):
    x, y = data
    model = small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    empty = hook_state(model)
    with Probe(model, every=5) as probe:
        assert hook_state(model) != empty
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        probe.step()
        assert hook_state(model) == empty and not probe._hooks.handles
