"""The guard's gradient norm: exact with grad_fraction=1, a fixed contiguous block of each large gradient by default
(checked against a hand-written sum over the same block), the exact norm in a flagged update's event."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope import Guard
from deepscope.training.guard_norm import SAMPLE_MIN


def _net():
    torch.manual_seed(0)  # 300 x 256 = 76,800 weights: over SAMPLE_MIN, so sampled by default
    return nn.Sequential(nn.Linear(300, 256), nn.Tanh(), nn.Linear(256, 10))


def _backward(model, scale=1.0, seed=0, nan=False):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 300, generator=g) * scale, torch.randint(0, 10, (16,), generator=g)
    loss = F.cross_entropy(model(x), y)
    if nan:  # a finite loss whose gradient is NaN in one weight: d/dw of 0 x sqrt(w - w) is 0 x inf
        w = model[0].weight[128, 7]
        loss = loss + 0 * (w - w).sqrt()
    loss.backward()
    return loss


def _exact(model):
    return math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters()))


def test_the_exact_norm_with_grad_fraction_1():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Guard(model, opt, grad_fraction=1) as guard:
        loss = _backward(model)
        expected = _exact(model)
        _, norm = guard._read(loss, None)
    assert norm == pytest.approx(expected, rel=1e-5)


def test_a_large_gradient_is_read_as_a_block_of_whole_rows_and_scaled():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    big = model[0].weight
    assert big.numel() >= SAMPLE_MIN > model[2].weight.numel()
    with Guard(model, opt) as guard:
        loss = _backward(model)
        rows = math.ceil(256 / 64)  # 1/64 of the 256 rows of 300, from the middle
        block = big.grad.double()[(256 - rows) // 2:(256 - rows) // 2 + rows]
        rest = sum(float(p.grad.double().square().sum()) for p in model.parameters() if p is not big)
        _, norm = guard._read(loss, None)
    assert norm == pytest.approx(math.sqrt(float(block.square().sum()) * 256 / rows + rest), rel=1e-5)
    assert norm == pytest.approx(_exact(model), rel=0.25)  # an estimate of the true norm


def test_the_sample_moves_with_the_true_norm_on_a_spike():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 300, generator=g), torch.randint(0, 10, (16,), generator=g)
    poisoned = x.clone()
    poisoned[3] *= 1e3  # one example x1000: its gradient is a dense outer product in every layer
    ratios = []
    for fraction in (1, 1 / 64):
        with Guard(model, opt, grad_fraction=fraction) as guard:
            values = []
            for inputs in (x, poisoned):
                loss = F.cross_entropy(model(inputs), y)
                loss.backward()
                values.append(guard._read(loss, None)[1])
                opt.zero_grad()
        ratios.append(values[1] / values[0])
    assert ratios[0] > 100 and 0.5 < ratios[1] / ratios[0] < 2


def test_a_flagged_update_reports_the_exact_norm_and_a_nan_in_a_large_gradient_is_caught():
    # the NaN is put in the middle row of the first layer's gradient, which its block reads
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Guard(model, opt) as guard:
        for t in range(3):
            loss = _backward(model, seed=t, nan=t == 2)
            expected = _exact(model)
            guard.step(loss)
            opt.zero_grad()
    assert [e.kind for e in guard.events] == ["nonfinite"] and math.isfinite(guard.events[0].loss)
    assert math.isnan(guard.events[0].grad_norm) and math.isnan(expected)


def test_a_sparse_gradient_counts_its_values():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 4, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    with Guard(emb, opt) as guard:
        loss = emb(torch.tensor([1, 2, 2, 7])).square().sum()
        loss.backward()
        expected = float(emb.weight.grad.to_dense().norm())
        _, norm = guard._read(loss, None)
    assert norm == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("value", [0, 1.5, True, "half"])
def test_a_bad_grad_fraction_names_the_key(value):
    model = _net()
    with pytest.raises(ValueError, match=f"guard grad_fraction={value!r} is not allowed"):
        Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), grad_fraction=value)


def test_the_device_total_under_distributed_equals_the_host_total():
    from deepscope.training.guard_norm import GradNorm

    model = _net()
    _backward(model)
    norm = GradNorm(list(model.parameters()))
    values = torch.stack(norm.compute())
    assert float(norm.device_total(values)) == pytest.approx(norm.total(values.tolist()), rel=1e-6)
    assert norm.total(values.tolist()) == pytest.approx(_exact(model), rel=0.25)
    model[0].weight.grad = None  # fewer norms next time: the cached device weights must follow
    values = torch.stack(norm.compute())
    assert float(norm.device_total(values)) == pytest.approx(norm.total(values.tolist()), rel=1e-6)


def test_a_flagged_finite_update_reports_the_exact_norm_not_the_estimate(monkeypatch):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Guard(model, opt) as guard:
        loss = _backward(model)
        sampled = guard._read(loss, None)[1]
        monkeypatch.setattr(guard.window, "check", lambda loss, norm: "grad_spike")
        guard.step(loss)
        expected = _exact(model)
    assert sampled != pytest.approx(expected, rel=1e-4)  # the estimate differs from the exact norm ...
    assert guard.events[0].grad_norm == pytest.approx(expected, rel=1e-5)  # ... and the event has the exact one


def test_the_distributed_read_averages_the_weighted_total(monkeypatch):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Guard(model, opt) as guard:
        loss = _backward(model)
        local = guard._read(loss, None)
        seen = []
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "all_reduce", lambda v, op=None: seen.append(v.clone()))
        shared = guard._read(loss, None)
    assert len(seen) == 1 and seen[0].shape == (2,)  # one collective: the loss and the weighted total
    assert shared == pytest.approx(local, rel=1e-5)


def test_a_flagged_update_with_a_sparse_gradient_and_a_sampled_one_is_an_event(monkeypatch):
    torch.manual_seed(0)
    emb, lin = nn.Embedding(50, 300, sparse=True), nn.Linear(300, 256)
    model = nn.ModuleList([emb, lin])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Guard(model, opt) as guard:
        loss = lin(emb(torch.tensor([1, 2, 7]))).square().mean()
        loss.backward()
        expected = math.sqrt(float(emb.weight.grad.coalesce().values().square().sum())
                             + sum(float(p.grad.square().sum()) for p in lin.parameters()))
        monkeypatch.setattr(guard.window, "check", lambda loss, norm: "grad_spike")
        assert not guard.step(loss)
    assert guard._norm.sampled and guard.events[0].grad_norm == pytest.approx(expected, rel=1e-5)


def test_embeddings_are_read_whole_and_lazy_modules_are_planned_at_their_first_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(1000, 128), nn.Flatten(), nn.LazyLinear(10))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.randint(0, 1000, (8, 4))
    model(x)  # the lazy layer takes its shape: 512 inputs
    with Guard(model, opt) as guard:
        loss = model(x).logsumexp(1).mean()
        loss.backward()
        _, norm = guard._read(loss, None)
        expected = math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters()))
    assert model[0].weight.numel() >= SAMPLE_MIN and not guard._norm.sampled  # 128,000 weights, read whole
    assert norm == pytest.approx(expected, rel=1e-5)


def _spy_foreach(monkeypatch):
    """The tensors the guard hands to ``torch._foreach_norm``, call by call."""
    calls, foreach = [], torch._foreach_norm

    def spy(ts, *a, **k):
        calls.append(list(ts))
        return foreach(ts, *a, **k)

    monkeypatch.setattr(torch, "_foreach_norm", spy)
    return calls


def test_a_channels_last_gradient_is_sampled_in_place(monkeypatch):
    from deepscope.training.guard_norm import GradNorm

    p = nn.Parameter(torch.zeros(64, 32, 6, 6))  # 73,728 elements: sampled, 1 row of 64 (1/64) from the middle
    p.grad = torch.randn(64, 32, 6, 6).to(memory_format=torch.channels_last)
    calls = _spy_foreach(monkeypatch)
    norm = GradNorm([p])
    (value,) = norm.compute()
    (view,) = calls[0]
    assert view.data_ptr() == p.grad[31].data_ptr()  # a view of the gradient's memory, not a copy
    torch.testing.assert_close(value, p.grad[31].norm())  # row 31 = (64 - 1) // 2, hand-indexed
    assert norm.weights == [64.0] and norm.total([float(value)]) == pytest.approx(8 * float(value), rel=1e-6)


def test_every_gradient_is_read_in_place_in_one_call_with_grad_fraction_1(monkeypatch):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Guard(model, opt, grad_fraction=1) as guard:
        loss = _backward(model)
        calls = _spy_foreach(monkeypatch)
        _, norm = guard._read(loss, None)
    assert norm == pytest.approx(_exact(model), rel=1e-5)
    assert len(calls) == 1  # one call for every gradient, none copied (no cat of the small ones)
    assert [t.data_ptr() for t in calls[0]] == [p.grad.data_ptr() for p in model.parameters()]
