"""deepscope.Guard in the loop styles people write: gradient accumulation, clipping, bf16 autocast, a GradScaler,
torch.compile, (x, y, ids) batches, tuple and dict outputs, dict batches, a loss_fn returning its logs, and BatchNorm
(whose running statistics a skipped batch's forward pass moved). Each against a computation of its own: the weights
and AdamW's state untouched by a skip, the statistics of before the batch, a loop over single examples."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from test_guard_loops import X, _batch, _fault  # the same data and faults as the optimizer/schedule tests
from torch import nn

from deepscope import Guard


def _forward_backward(model, xb, yb, seed):
    torch.manual_seed(seed)
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    return loss


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("when", ["first", "later", "accumulated"])
def test_a_skipped_batch_leaves_the_batchnorm_running_statistics_as_they_were_before_it(when):
    """A NaN example's forward pass makes BatchNorm's running mean and variance NaN for good (the eval-mode output
    then NaN with every weight finite); the skip puts back the statistics of before its forward passes."""
    model = _bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with Guard(model, opt, warmup=4) as guard:
        for t in range(0 if when == "first" else 6):
            xb, yb = _batch(t)
            assert guard.step(_forward_backward(model, xb, yb, seed=t))
            opt.zero_grad()
        before = copy.deepcopy(model.state_dict())
        xb, yb = _fault(model, 7, "nan")
        if when == "accumulated":  # a healthy micro-batch, then the NaN one, then one guard.step
            _forward_backward(model, *_batch(8), seed=0)
        loss = _forward_backward(model, xb, yb, seed=1)
        assert not torch.isfinite(model[1].running_mean).all()  # what the forward pass did
        assert guard.step(loss, batch=(xb, yb)) is False
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key
        opt.zero_grad()
        assert guard.events[-1].examples[0] == 3  # ranked in eval mode on the restored statistics
        xb, yb = _batch(9)  # the next update applies and keeps its batch's statistics
        reference = copy.deepcopy(model[1])
        reference(model[0](xb))
        assert guard.step(_forward_backward(model, xb, yb, seed=2))
        assert torch.equal(model[1].running_var, reference.running_var)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(X[:64])).all()


def test_a_skip_a_rollback_and_a_skip_after_it_each_leave_the_running_statistics_right():
    """rollback_after=2: skip (the statistics of before the batch), rollback (the start's), skip (the start's again:
    what the rollback restored, not what the last applied update left)."""
    model = _bn_net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with Guard(model, opt, warmup=4, rollback_after=2) as guard:
        start = copy.deepcopy(model.state_dict())
        for t in range(3):
            assert guard.step(_forward_backward(model, *_batch(t), seed=t))
            opt.zero_grad()
        after_three = copy.deepcopy(model.state_dict())
        for expected in (after_three, start, start):
            xb, yb = _fault(model, 5, "nan")
            assert guard.step(_forward_backward(model, xb, yb, seed=0)) is False
            opt.zero_grad()
            for key, value in model.state_dict().items():
                assert torch.equal(value, expected[key]), key
    assert [e.action for e in guard.events] == ["skip", "rollback", "skip"]


class _Tuple(nn.Module):
    """A model returning (logits, an auxiliary output)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        out = self.body(x)
        return out, out.pow(2).mean()


class _Dict(nn.Module):
    """A model taking keyword inputs with the labels and returning {"loss", "logits"} (a Hugging Face habit)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, features, labels):
        logits = self.body(features)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def _loop_step(style, model, opt, guard, xb, yb, t, scaler):
    """One update of the loop ``style``; returns guard.step's answer."""
    if style == "accumulate":  # 4 micro-batches, one guard.step
        for k in range(4):
            F.cross_entropy(model(xb[4 * k:4 * k + 4]), yb[4 * k:4 * k + 4]).div(4).backward()
        return guard.step(F.cross_entropy(model(xb), yb).detach(), batch=(xb, yb))
    if style == "clip":
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        return guard.step(loss, batch=(xb, yb), grad_norm=norm)
    if style in ("bf16", "scaler"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xb), yb)
        if scaler is None:
            loss.backward()
            return guard.step(loss, batch=(xb, yb))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        applied = guard.step(loss, batch=(xb, yb))
        scaler.update()
        return applied
    if style == "tuple-output":
        loss = F.cross_entropy(model(xb)[0], yb) + 0.0 * model(xb)[1]
        loss.backward()
        return guard.step(loss, batch=(xb, yb))
    if style == "dict-batch":
        batch = {"features": xb, "labels": yb}
        output = model(**batch)
        output["loss"].backward()
        return guard.step(output, batch=batch)  # the output itself: its "loss" is read
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    return guard.step(loss, batch=(xb, yb, torch.arange(16 * t, 16 * t + 16)) if style == "ids" else (xb, yb))


@pytest.mark.parametrize("style", ["accumulate", "clip", "bf16", "scaler", "compile", "ids", "tuple-output",
                                   "dict-batch"])
def test_each_loop_style_runs_clean_without_events_and_skips_an_injected_fault(style):
    torch.manual_seed(0)
    model = _Tuple() if style == "tuple-output" else _Dict() if style == "dict-batch" else \
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    run = torch.compile(model, backend="aot_eager") if style == "compile" else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu") if style == "scaler" else None
    with Guard(run, opt, warmup=8, refresh=2, scaler=scaler) as guard:
        for t in range(20):
            assert _loop_step(style, run, opt, guard, *_batch(t), t, scaler)
            opt.zero_grad()
        assert guard.events == []
        plain = model.body if style in ("tuple-output", "dict-batch") else model
        for k, kind in enumerate(("spike", "nan")):
            xb, yb = _fault(plain, 20 + k, kind)
            before = [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())
            assert _loop_step(style, run, opt, guard, xb, yb, 20 + k, scaler) is False
            opt.zero_grad()
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before[0], strict=True))
            for i, state in before[1]["state"].items():  # AdamW's moments and step counts untouched
                assert all(torch.equal(opt.state_dict()["state"][i][key], v) for key, v in state.items())
    assert [e.action for e in guard.events] == ["skip", "skip"] and guard.events[1].kind == "nonfinite"
    assert all(e.examples[0] == 3 for e in guard.events), [e.message for e in guard.events]
    if style == "ids":
        assert [e.ids[0] for e in guard.events] == [16 * 20 + 3, 16 * 21 + 3]
    if style == "clip":  # the norm given is the one reported: clip_grad_norm_'s (of the unclipped gradients)
        assert guard.events[0].grad_norm > 10
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("shape", ["tuple", "dict"])
def test_a_loss_fn_returning_its_loss_with_logs_ranks_examples_as_a_loop_over_single_examples(shape):
    """``loss_fn`` returning ``(loss, logs)`` or ``{"loss": ..., "logs": ...}``: the guard ranks by its loss; each
    example's loss and gradient norm equal a loop computing them one example at a time."""
    def loss_fn(output, y):
        loss = F.cross_entropy(output, y)
        return (loss, {"ce": loss.detach()}) if shape == "tuple" else {"loss": loss, "ce": loss.detach()}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xb, yb = _fault(model, 0, "spike")
    with Guard(model, opt, loss_fn=loss_fn, examples=16) as guard:
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        assert guard.step(torch.tensor(math.inf), batch=(xb, yb)) is False
    event = guard.events[-1]
    assert event.examples[0] == 3 and len(event.examples) == 16, event.message
    params = list(model.parameters())
    for i, loss_i, norm_i in zip(event.examples, event.example_loss, event.example_grad_norm, strict=True):
        one = F.cross_entropy(model(xb[i:i + 1]), yb[i:i + 1])
        grads = torch.autograd.grad(one, params)
        assert loss_i == pytest.approx(one.item(), rel=1e-5)
        assert norm_i == pytest.approx(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)), rel=1e-4)
