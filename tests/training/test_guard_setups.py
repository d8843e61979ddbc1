"""deepscope.Guard on set-ups beyond the plain classifier: a loss that goes negative, token models, float targets,
models vmap cannot trace, tuple inputs, ReduceLROnPlateau, a GradScaler's overflow steps, BatchNorm and
channels_last under a rollback, and bad input (a clear error naming the argument)."""

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope import Guard
from deepscope.training.guard_examples import default_loss, per_example, rank_examples


def _constant_model():
    torch.manual_seed(0)
    return nn.Linear(2, 1)


def _feed(guard, model, losses):
    """Each loss in turn as the update's loss (the gradient is a fixed small one)."""
    for value in losses:
        model.weight.grad = torch.full_like(model.weight, 0.1)
        model.bias.grad = torch.full_like(model.bias, 0.1)
        guard.step(torch.tensor(value))


def test_a_loss_hovering_around_zero_is_not_flagged_and_a_spike_still_is():
    """A Gaussian NLL near its optimum crosses zero: on the log scale every negative loss was one clamped value
    and the guard flagged ~90 % of the updates; on the loss's own scale none, and a jump of 100 spreads is."""
    g = torch.Generator().manual_seed(0)
    noise = (0.05 * torch.randn(300, generator=g)).tolist()
    model = _constant_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Guard(model, opt) as guard:
        _feed(guard, model, [1.0 - t / 100 + n for t, n in zip(range(100), noise, strict=False)])  # falls to 0
        _feed(guard, model, noise[100:])  # then hovers around 0
        assert guard.events == [] and guard.updates == 300
        _feed(guard, model, [5.0])  # 100 x the noise's spread above the median
    assert [(e.kind, e.action) for e in guard.events] == [("loss_spike", "skip")]


def test_the_default_loss_is_token_level_for_token_outputs_and_refuses_float_targets():
    torch.manual_seed(0)
    out, y = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    y[0, 3:] = -100
    reference = F.cross_entropy(out.reshape(15, 7), y.reshape(15), ignore_index=-100)
    torch.testing.assert_close(default_loss(out, y), reference)
    seg_out, seg_y = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))  # classes on dimension 1
    torch.testing.assert_close(default_loss(seg_out, seg_y), F.cross_entropy(seg_out, seg_y))
    with pytest.raises(ValueError, match="floating-point targets.*loss_fn"):
        default_loss(torch.randn(4, 1), torch.randn(4, 1))


class _TokenModel(nn.Module):
    def __init__(self, vocab=11, width=8, rnn=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True) if rnn else None
        self.out = nn.Linear(width, vocab)
        self.out.weight = self.emb.weight  # tied

    def forward(self, x):
        h = self.emb(x)
        return self.out(self.rnn(h)[0] if self.rnn is not None else h)


@pytest.mark.parametrize("rnn", [False, True])
def test_token_models_are_ranked_per_example_as_a_loop_over_single_examples(rnn):
    """A tied-weight token model (and a GRU, which vmap cannot trace: a loop is used) under the default loss."""
    torch.manual_seed(0)
    model = _TokenModel(rnn=rnn).train()
    x, y = torch.randint(0, 11, (5, 6)), torch.randint(0, 11, (5, 6))
    y[1, 2:] = -100
    losses, norms = per_example(model, default_loss, x, y)
    model.eval()
    for i in range(5):
        model.zero_grad()
        out = model(x[i:i + 1])
        loss = F.cross_entropy(out.reshape(-1, 11), y[i], ignore_index=-100)
        loss.backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        torch.testing.assert_close(losses[i], loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norms[i], norm, rtol=1e-4, atol=1e-6)


def test_a_loss_vmap_cannot_trace_and_tuple_inputs_are_ranked_by_a_loop():
    """gaussian_nll_loss checks its variance with data-dependent control flow; the model takes two inputs."""
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, u, v):
            return self.a(u) + self.b(v)

    def nll(out, y):
        return F.gaussian_nll_loss(out[:, :1], y, F.softplus(out[:, 1:]) + 1e-3)

    torch.manual_seed(0)
    model = TwoInputs()
    u, v, y = torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 1)
    y[4] = 40.0  # the outlier
    ranking = rank_examples(model, nll, (u, v), y)
    assert ranking.index[0] == 4
    for i, loss in zip(ranking.index, ranking.loss, strict=True):
        assert loss == pytest.approx(nll(model(u[i:i + 1], v[i:i + 1]), y[i:i + 1]).item(), rel=1e-5)


def test_float_targets_without_loss_fn_skip_and_say_why_examples_are_not_ranked():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with Guard(model, opt) as guard:
        F.mse_loss(model(x), y).backward()
        before = [p.detach().clone() for p in model.parameters()]
        assert guard.step(torch.tensor(math.nan), batch=(x, y)) is False
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    event = guard.events[-1]
    assert event.examples == [] and "floating-point targets" in event.message and "loss_fn" in event.message


def test_reduce_lr_on_plateau_is_not_stepped_by_the_guard_and_is_rolled_back():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    start = copy.deepcopy(plateau.state_dict())
    with Guard(model, opt, plateau, rollback_after=1) as guard:
        for metric in (1.0, 2.0, 3.0):  # the user steps it with a metric: two reductions
            F.cross_entropy(model(x), y).backward()
            assert guard.step(F.cross_entropy(model(x), y).detach()) is True
            opt.zero_grad()
            plateau.step(metric)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.025) and plateau.num_bad_epochs == 0
        assert guard.step(torch.tensor(math.nan)) is False  # a rollback to the start
    assert guard.events[-1].action == "rollback"
    assert plateau.state_dict() == start


def test_a_grad_scaler_overflow_is_its_own_skip_not_an_event():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    for use_scaler in (True, False):
        with Guard(model, opt, scaler=scaler if use_scaler else None) as guard:
            model.weight.grad = torch.full_like(model.weight, math.inf)  # an overflowed scaled gradient
            model.bias.grad = torch.zeros_like(model.bias)
            assert guard.step(torch.tensor(0.7)) is False
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
        assert opt.state == {} or all(len(s) == 0 for s in opt.state.values())
        if use_scaler:
            assert guard.events == [] and guard.scaler_skips == 1
        else:
            assert [e.kind for e in guard.events] == ["nonfinite"]


def test_a_rollback_restores_batchnorm_channels_last_and_leaves_other_parameters_alone():
    """A CNN with BatchNorm in channels_last, a frozen layer and a layer outside the optimizer: the rollback puts
    back the parameters, the running statistics and the step count captured by hand at the start."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).to(memory_format=torch.channels_last)
    model[3].requires_grad_(False)  # frozen
    opt = torch.optim.SGD([*model[0].parameters(), *model[1].parameters()], lr=0.1, momentum=0.9)  # not model[6]
    x, y = torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last), torch.randint(0, 3, (8,))
    start = copy.deepcopy(model.state_dict())
    with Guard(model, opt, rollback_after=1, warmup=2) as guard:
        for _ in range(4):
            F.cross_entropy(model(x), y).backward()
            assert guard.step(F.cross_entropy(model(x), y).detach(), batch=(x, y)) is True
            opt.zero_grad()
        assert not torch.equal(model[1].running_mean, start["1.running_mean"])
        F.cross_entropy(model(x), y).backward()
        assert guard.step(torch.tensor(math.nan), batch=(x, y)) is False
    for key, value in model.state_dict().items():
        assert torch.equal(value, start[key]), key
    assert opt.state_dict()["state"] == {} and guard.events[-1].restored == 0
    assert guard.events[-1].examples  # ranked (eval mode: the running statistics)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(scheduler=lambda t: 1.0), TypeError, "scheduler=function is not allowed"),
    (dict(loss_fn="mse"), TypeError, "loss_fn='mse' is not allowed"),
    (dict(sinks=[1]), TypeError, "sinks item 1 is not allowed"),
    (dict(probe=5), TypeError, "probe=int is not allowed"),
    (dict(snapshot_device="gpu9"), ValueError, "snapshot_device='gpu9' is not allowed"),
    (dict(step_scheduler="no"), ValueError, "step_scheduler='no' is not allowed"),
    (dict(scaler=3), TypeError, "scaler=int is not allowed"),
])
def test_bad_parts_are_refused_at_construction(kwargs, error, match):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = kwargs.pop("scheduler", None)
    with pytest.raises(error, match=match):
        Guard(model, opt, scheduler, **kwargs)


def test_lbfgs_and_a_scheduler_given_an_optimizer_are_refused():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="LBFGS is not supported"):
        Guard(model, torch.optim.LBFGS(model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="scheduler=SGD is not allowed"):
        Guard(model, opt, opt)


def test_step_inputs_get_a_clear_error_and_a_float_norm_is_accepted():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with Guard(model, opt) as guard:
        loss = model(torch.ones(4, 2)).pow(2).mean(1)  # not reduced: one loss per example
        loss.mean().backward()
        with pytest.raises(ValueError, match=r"loss has shape \(4,\)"):
            guard.step(loss)
        with pytest.raises(TypeError, match="loss='1.0' is not allowed"):
            guard.step("1.0")
        with pytest.raises(ValueError, match=r"grad_norm has shape \(2,\)"):
            guard.step(loss.mean(), grad_norm=torch.ones(2))
        expected = [p.detach() - 0.5 * p.grad for p in model.parameters()]
        assert guard.step(loss.mean(), grad_norm=1.5) is True
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e)


@pytest.mark.parametrize("batch, ids, note", [
    ("short-y", None, r"its tensors hold \[8, 7\] examples"),
    ("x-only", None, "batch=tuple cannot be ranked"),
    ("pair", [1, 2, 3], "ids has 3 entries for a batch of 8"),
])
def test_an_unrankable_batch_still_skips_and_the_event_says_why(batch, ids, note):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    given = {"short-y": (x, y[:7]), "x-only": (x,), "pair": (x, y)}[batch]
    with Guard(model, opt) as guard:
        F.cross_entropy(model(x), y).backward()
        before = [p.detach().clone() for p in model.parameters()]
        assert guard.step(torch.tensor(math.inf), batch=given, ids=ids) is False
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert guard.events[-1].examples == [] and guard.events[-1].action == "skip"
    assert re.search(note, guard.events[-1].message)


def test_string_ids_are_kept_as_given():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    ranking = rank_examples(model, F.cross_entropy, x, y, [f"doc{i}" for i in range(4)])
    assert ranking.ids == [f"doc{i}" for i in ranking.index]


def test_keyword_inputs_with_targets_apart_are_ranked_by_the_loss_fn_and_a_model_outputs_logits():
    """A batch ``({name: tensor}, y)``: the model is called with keyword inputs, the loss on its output (the
    ``logits`` of a dict output for the default loss); each example's loss and gradient norm as a loop computes
    them one example at a time."""
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

        def forward(self, features, extra):
            return {"logits": self.a(features) + self.b(extra)}

    torch.manual_seed(0)
    model = Keywords()
    inputs = {"features": torch.randn(6, 3), "extra": torch.randn(6, 2)}
    y = torch.randint(0, 4, (6,))
    inputs["features"][2] *= 1e3  # the poisoned example
    params = list(model.parameters())
    for loss_fn in (None, lambda o, t: F.cross_entropy(o["logits"], t)):
        ranking = rank_examples(model, loss_fn, inputs, y)
        assert ranking.index[0] == 2
        for i, loss, norm in zip(ranking.index, ranking.loss, ranking.grad_norm, strict=True):
            one = F.cross_entropy(model(**{k: v[i:i + 1] for k, v in inputs.items()})["logits"], y[i:i + 1])
            grads = torch.autograd.grad(one, params)
            assert loss == pytest.approx(one.item(), rel=1e-5)
            assert norm == pytest.approx(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)), rel=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Guard(model, opt, loss_fn=lambda o, t: F.cross_entropy(o["logits"], t)) as guard:
        guard.step(torch.tensor(math.nan), batch=(inputs, y))
    assert guard.events[-1].examples[0] == 2
