"""Non-linearities applied inside a ``forward``: found by reading the source (and watching the first record),
listed in ``probe.unobservable``; custom activation modules recorded as activation layers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from deepscope.probe import Probe


def stats(probe, **filters):
    return {(r["layer"], r["stat"]): r["value"] for r in probe.to_rows(**filters)}


class ClampNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x).clamp(min=0)
        h = self.b(h)
        return self.c(torch.where(h > 0, h, 0.01 * h))


class LeakyAct(nn.Module):
    """A custom activation module; the assert on the shape would stop a symbolic trace."""

    def forward(self, x):
        assert x.dim() == 2, "expects (batch, units)"
        return torch.where(x > 0, x, 0.01 * x)


def test_functional_activations_listed_and_custom_activation_modules_recorded():
    torch.manual_seed(2)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    probe = Probe(ClampNet(), monitor=(x, y))
    assert probe.unobservable == [("(model)", "calls clamp, where inside forward")]
    assert [(layer.name, layer.kind) for layer in probe.layers] == [("a", "output"), ("b", "output"), ("c", "output")]

    model = nn.Sequential(nn.Linear(5, 6), LeakyAct(), nn.Linear(6, 6), LeakyAct(), nn.Linear(6, 3))
    with Probe(model, monitor=(x, y), jacobian_examples=3) as probe:
        pass
    assert probe.unobservable == []
    assert [(layer.name, layer.kind) for layer in probe.layers] == [("1", "activation"), ("3", "activation")]
    with torch.no_grad():
        z1 = model[:2](x[:3])
    sv = torch.cat([torch.linalg.svdvals(jacobian(lambda v: model[3](model[2](v[None]))[0], e)) for e in z1])
    assert stats(probe, quantity="jacobian")[("3", "sv_mean")] == pytest.approx(sv.mean().item(), rel=1e-5)
    s = model[0](x).detach().requires_grad_(True)
    z = torch.where(s > 0, s, 0.01 * s)
    (g,) = torch.autograd.grad(F.cross_entropy(model[2:](z), y), s)
    act, grad = stats(probe, quantity="activation"), stats(probe, quantity="preact_grad")
    assert act[("1", "std")] == pytest.approx(z.std(correction=0).item(), rel=1e-5)
    assert grad[("1", "std")] == pytest.approx(g.std(correction=0).item(), rel=1e-5)


ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class LookupNet(nn.Module):
    """The activation comes from a table at run time: the source does not name it."""

    def __init__(self, act):
        super().__init__()
        self.act, self.a, self.b = act, nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(ACTIVATIONS[self.act](self.a(x)))


@pytest.mark.parametrize("monitor", [True, False])
def test_functional_activations_the_source_does_not_show_are_listed_after_the_first_record(monitor):
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    model = LookupNet("tanh")
    probe = Probe(model, every=1, monitor=(x, y) if monitor else None)
    assert probe.unobservable == []
    with probe:
        F.cross_entropy(model(x), y).backward()
        probe.step()
    assert probe.unobservable == [("(model)", "calls tanh inside forward (seen at the first record; not recorded)")]


def _softsign(x):
    return F.softsign(x)


class Indirect(nn.Module):
    """Non-linearities reached through an attribute, a method, a helper function and a flag."""

    def __init__(self, gated):
        super().__init__()
        self.gated, self.fn, self.a, self.b = gated, torch.tanh, nn.Linear(4, 4), nn.Linear(4, 2)

    def _mix(self, h):
        return h.sigmoid() * h if self.gated else h

    def forward(self, x):
        return self.b(_softsign(self._mix(self.fn(self.a(x)))))


@pytest.mark.parametrize("gated", [True, False])
def test_source_reader_follows_attributes_methods_helpers_and_flags(gated):
    probe = Probe(Indirect(gated))
    want = "sigmoid, softsign, tanh" if gated else "softsign, tanh"
    assert probe.unobservable == [("(model)", f"calls {want} inside forward")]


class Exp(nn.Module):
    """Keras's 'exponential' activation as a user writes it: nothing else in the module."""

    def forward(self, x):
        return torch.exp(x)


class ExpMethod(nn.Module):
    def forward(self, x):
        return x.exp()


def test_exponential_activation_modules_are_recorded_as_activations():
    torch.manual_seed(4)
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    model = nn.Sequential(nn.Linear(2, 5), Exp(), nn.Linear(5, 5), ExpMethod(), nn.Linear(5, 3))
    with Probe(model, monitor=(x, y)) as probe:
        pass
    assert probe.unobservable == []
    assert [(layer.name, layer.kind) for layer in probe.layers] == [("1", "activation"), ("3", "activation")]
    with torch.no_grad():
        h1 = torch.exp(model[0](x))
        h3 = torch.exp(model[2](h1))
    act = stats(probe, quantity="activation")
    assert act[("1", "std")] == pytest.approx(h1.std(correction=0).item(), rel=1e-5)
    assert act[("3", "mean")] == pytest.approx(h3.mean().item(), rel=1e-5)
