"""deepscope.Guard in the training loops people write: optimizers (Adam, AdamW foreach or not, RMSprop with momentum,
Adagrad, SGD nesterov, parameter groups with a frozen parameter, a parameter outside the model), schedules
(OneCycleLR, CosineAnnealingWarmRestarts, LambdaLR, SequentialLR, ReduceLROnPlateau, one made after the guard), and
the parts it refuses (the loop styles: test_guard_loop_styles.py).

Each is checked against a twin run written by hand: a skip leaves parameters, every optimizer state tensor, the
schedule, the learning rate and the RNG bit-identical to a loop that never called the optimizer; a rollback puts
back the state captured by hand and the next updates equal a loop stepping at lr x lr_factor for ``cooldown``
updates, then at the scheduled rate; a clean run has no event; an injected fault is caught and the weights end
finite."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope import Guard

S = torch.optim.lr_scheduler
OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=True),
    "adamw-loop": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=False),
    "rmsprop-momentum": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
}
SCHEDULES = {
    "none": lambda o: None,
    "onecycle": lambda o: S.OneCycleLR(o, max_lr=0.02, total_steps=100, cycle_momentum=False),
    "warm-restarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2),
    "lambda": lambda o: S.LambdaLR(o, lambda t: 1 / (1 + 0.1 * t)),
    "sequential": lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, 1.0, total_iters=3), S.ExponentialLR(o, 0.95)],
                                           milestones=[3]),
    "plateau": lambda o: S.ReduceLROnPlateau(o, patience=0, factor=0.5),
}
CASES = [("adam", "onecycle", False), ("adamw-foreach", "warm-restarts", True), ("adamw-loop", "sequential", False),
         ("rmsprop-momentum", "lambda", True), ("adagrad", "plateau", False), ("sgd-nesterov", "onecycle", True),
         ("adam", "none", True)]

G = torch.Generator().manual_seed(1)
X = torch.randn(40 * 16, 8, generator=G)
Y = X[:, :3].argmax(1)


def _batch(t):
    return X[t * 16 % len(X):][:16], Y[t * 16 % len(X):][:16]


def _setup(optimizer, schedule, groups):
    """A small MLP with dropout; ``groups``: two parameter groups (own lr and weight decay) and a frozen bias."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
    params = model.parameters()
    if groups:
        model[0].bias.requires_grad_(False)
        params = [{"params": [model[0].weight, model[0].bias], "lr": 3e-3, "weight_decay": 0.1},
                  {"params": model[3].parameters()}]
    opt = OPTIMIZERS[optimizer](params)
    return model, opt, SCHEDULES[schedule](opt)


def _forward_backward(model, xb, yb, seed):
    torch.manual_seed(seed)  # the same dropout masks in both twins
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    return loss


def _plain_step(opt, sched, scale=1.0):
    """The reference: optimizer.step at lr x scale (each group), then the schedule (not a ReduceLROnPlateau)."""
    saved = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = g["lr"] * scale
    opt.step()
    for g, lr in zip(opt.param_groups, saved, strict=True):
        g["lr"] = lr
    if sched is not None and not isinstance(sched, S.ReduceLROnPlateau):
        sched.step()


def _state(model, opt, sched):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
            copy.deepcopy(sched.state_dict()) if sched is not None else None, [g["lr"] for g in opt.param_groups])


def _assert_same(a, b):
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    sa, sb = a[1]["state"], b[1]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:  # every state tensor, the step counts included
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert a[1]["param_groups"] == b[1]["param_groups"]
    assert a[2] == b[2] and a[3] == b[3]


def _fault(model, t, kind):
    xb, yb = _batch(t)
    xb = xb.clone()
    if kind == "nan":
        xb[3] = math.nan
        return xb, yb
    xb[3] *= 1e3  # one example scaled by 1e3, with the label the model finds least likely
    with torch.no_grad():
        yb = yb.clone()
        yb[3] = model.eval()(xb[3:4]).argmin()
    model.train()
    return xb, yb


@pytest.mark.parametrize("optimizer, schedule, groups", CASES)
def test_a_clean_run_equals_plain_stepping_and_a_skip_equals_not_stepping(optimizer, schedule, groups):
    guarded, reference = _setup(optimizer, schedule, groups), _setup(optimizer, schedule, groups)
    with Guard(*guarded, warmup=8, refresh=2) as guard:
        for t in range(24):
            for i, (model, opt, sched) in enumerate((guarded, reference)):
                xb, yb = _batch(t)
                loss = _forward_backward(model, xb, yb, seed=t)
                assert guard.step(loss, batch=(xb, yb)) if i == 0 else _plain_step(opt, sched) is None
                opt.zero_grad()
                if isinstance(sched, S.ReduceLROnPlateau) and t % 4 == 3:
                    sched.step(1.0)  # the user's metric: no improvement, the rate halves
        assert guard.events == []
        _assert_same(_state(*guarded), _state(*reference))
        for k, kind in enumerate(("spike", "nan")):
            xb, yb = _fault(guarded[0], 24 + k, kind)
            for i, (model, opt, _sched) in enumerate((guarded, reference)):
                loss = _forward_backward(model, xb, yb, seed=50 + k)
                if i == 0:
                    rng = torch.get_rng_state()
                    assert guard.step(loss, batch=(xb, yb)) is False  # ranked, skipped
                    assert torch.equal(torch.get_rng_state(), rng)
                opt.zero_grad()  # the reference never calls the optimizer
            _assert_same(_state(*guarded), _state(*reference))
    assert [(e.kind == "nonfinite", e.action, e.examples[0]) for e in guard.events] == [(False, "skip", 3),
                                                                                          (True, "skip", 3)]
    assert all(torch.isfinite(p).all() for p in guarded[0].parameters())


@pytest.mark.parametrize("optimizer, schedule, groups", CASES)
def test_a_rollback_restores_the_snapshot_and_trains_at_the_lowered_rate_for_the_cooldown(optimizer, schedule, groups):
    model, opt, sched = _setup(optimizer, schedule, groups)
    cooldown = 4
    with Guard(model, opt, sched, snapshot_every=5, rollback_after=1, lr_factor=0.5, cooldown=cooldown, warmup=8,
               refresh=2) as guard:
        for t in range(12):
            xb, yb = _batch(t)
            assert guard.step(_forward_backward(model, xb, yb, seed=t))
            opt.zero_grad()
            if t == 4:  # the snapshot the guard takes at update 5 (trusted at update 10), captured by hand
                at_five, rng_at_five = _state(model, opt, sched), torch.get_rng_state()
        xb, yb = _fault(model, 12, "nan")
        torch.manual_seed(123)  # the RNG moves on: the rollback brings it back
        assert guard.step(_forward_backward(model, xb, yb, seed=99)) is False
        event = guard.events[-1]
        assert (event.action, event.restored, event.lr_scale) == ("rollback", 5, 0.5)
        _assert_same(_state(model, opt, sched), at_five)
        assert torch.equal(torch.get_rng_state(), rng_at_five)
        twin = _setup(optimizer, schedule, groups)
        twin[0].load_state_dict(at_five[0])
        twin[1].load_state_dict(copy.deepcopy(at_five[1]))
        if twin[2] is not None:
            twin[2].load_state_dict(copy.deepcopy(at_five[2]))
        for t in range(cooldown + 2):  # lr x 0.5 for `cooldown` updates, then the scheduled rate again
            xb, yb = _batch(20 + t)
            assert guard.step(_forward_backward(model, xb, yb, seed=t))
            opt.zero_grad()
            _forward_backward(twin[0], xb, yb, seed=t)
            _plain_step(twin[1], twin[2], scale=0.5 if t < cooldown else 1.0)
            twin[1].zero_grad()
            assert guard.lr_scale == (0.5 if t < cooldown - 1 else 1.0)
    _assert_same(_state(model, opt, sched), _state(*twin))


def test_bad_parts_and_step_inputs_name_the_value_and_what_is_allowed():
    model = nn.Linear(2, 2)
    opt, other = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"scheduler=StepLR drives another optimizer .*the guard's optimizer"):
        Guard(model, opt, S.StepLR(other, 3))
    class Wrapped(torch.optim.SGD):  # an optimizer wrapper (accelerate's AcceleratedOptimizer holds .optimizer)
        def __init__(self, inner):
            super().__init__(inner.param_groups[0]["params"], lr=0.1)
            self.optimizer = inner

    Guard(model, Wrapped(opt), S.StepLR(opt, 3))  # the schedule on the optimizer inside the wrapper: accepted
    with pytest.raises(TypeError, match=r"scheduler=the class StepLR is not allowed; give .* StepLR\(optimizer"):
        Guard(model, opt, S.StepLR)
    lazy = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"uninitialized parameters \(a lazy module.*run the model on one batch"):
        Guard(lazy, torch.optim.Adam(lazy.parameters()))
    lazy(torch.ones(3, 5))
    with Guard(lazy, torch.optim.Adam(lazy.parameters())) as guard:  # once run, accepted
        lazy(torch.ones(3, 5)).sum().backward()
        assert guard.step(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"LBFGS is not supported.*no closure \(SGD, Adam"):
        Guard(model, torch.optim.LBFGS(model.parameters()))
    with Guard(model, opt) as guard:
        out = model(torch.ones(4, 2)).pow(2).mean()
        with pytest.raises(TypeError, match=r"loss=tuple is not allowed; .*output\[0\] or output\['loss'\]"):
            guard.step((out, out.detach() * 2, torch.zeros(100)))
        with pytest.raises(TypeError, match=r"loss=\{'logits': 1\} is not allowed"):
            guard.step({"logits": 1})


def test_a_schedule_made_after_the_guard_and_stepped_by_the_loop_sees_the_optimizer_stepped():
    """torch wraps optimizer.step when a schedule is made, to warn when the schedule is stepped first; the guard's
    step must count (else a false warning that the schedule skipped its first value), and the schedule stays
    the loop's: the lr follows StepLR exactly."""
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Guard(model, opt) as guard, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched = S.StepLR(opt, step_size=2, gamma=0.5)
        for t in range(5):
            assert guard.step(_forward_backward(model, *_batch(t), seed=t))
            opt.zero_grad()
            sched.step()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)], [str(w.message) for w in caught]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)


def test_a_rollback_restores_a_parameter_the_optimizer_trains_outside_the_model():
    """A learnable temperature in the optimizer but not in the model: the rollback puts back its value with its Adam
    moments (captured by hand at the snapshot), so the two stay consistent."""
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    temperature = nn.Parameter(torch.tensor(1.0))
    opt = torch.optim.Adam([*model.parameters(), temperature], lr=0.05)
    with Guard(model, opt, snapshot_every=5, rollback_after=1, warmup=4) as guard:
        for t in range(12):
            xb, yb = _batch(t)
            loss = F.cross_entropy(model(xb) * temperature, yb)
            loss.backward()
            assert guard.step(loss)
            opt.zero_grad()
            if t == 4:
                at_five = temperature.detach().clone(), copy.deepcopy(opt.state_dict()["state"][2])
        assert not torch.equal(temperature.detach(), at_five[0])
        assert guard.step(torch.tensor(math.nan)) is False
    assert guard.events[-1].restored == 5
    assert torch.equal(temperature.detach(), at_five[0])
    for key, value in at_five[1].items():
        assert torch.equal(opt.state_dict()["state"][2][key], value), key
