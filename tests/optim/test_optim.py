"""Optimizers, schedules, clipping and losses against hand-written references from Varma & Das, ch. 7, section 7.3."""

import math

import pytest
import torch

from deepscope.optim import (
    OPTIMIZERS,
    SCHEDULE_STEPS_ON,
    SCHEDULES,
    clip_gradients,
    make_optimizer,
    make_schedule,
    schedule_steps_on,
    step_schedule,
)

W0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
# three given gradients; the middle feature changes sign, the others do not
GRADS = torch.tensor([[0.5, -1.0, 2.0], [0.3, 0.4, 1.5], [-0.4, -0.1, 0.8]], dtype=torch.float64)
LR = 0.1


def torch_steps(name, grads=GRADS, lr=LR, **kw):
    """The parameter after each of len(grads) steps of optimizer ``name`` fed the given gradients."""
    w = torch.nn.Parameter(W0.clone())
    opt = make_optimizer(name, [w], lr, **kw)
    out = []
    for g in grads:
        w.grad = g.clone()
        opt.step()
        out.append(w.detach().clone())
    return out


# --- hand-written references, in the text's notation ------------------------------------------------


def ref_sgd(grads, lr):
    w, out = W0.clone(), []
    for g in grads:
        w = w - lr * g
        out.append(w)
    return out


def ref_momentum(grads, lr, rho=0.9):
    """Eq. 7.1: v(n) = rho v(n-1) - eta g(n), v(0) = -eta g(0); w(n+1) = w(n) + v(n)."""
    w, v, out = W0.clone(), torch.zeros_like(W0), []
    for g in grads:
        v = rho * v - lr * g
        w = w + v
        out.append(w)
    return out


def _root(x, eps, eps_inside):
    """The text's sqrt(x + eps) (eps_inside) or torch's sqrt(x) + eps."""
    return torch.sqrt(x + eps) if eps_inside else torch.sqrt(x) + eps


def ref_adagrad(grads, lr, eps, eps_inside=True):
    """Eq. 7.4: w(n+1) = w(n) - eta g(n) / sqrt(sum_i g(i)^2 + eps)."""
    w, acc, out = W0.clone(), torch.zeros_like(W0), []
    for g in grads:
        acc = acc + g**2
        w = w - lr * g / _root(acc, eps, eps_inside)
        out.append(w)
    return out


def ref_rmsprop(grads, lr, eps, rho=0.9, eps_inside=True):
    """Eq. 7.5: E(n) = rho E(n-1) + (1 - rho) g(n)^2; w(n+1) = w(n) - eta g(n) / sqrt(E(n) + eps)."""
    w, e, out = W0.clone(), torch.zeros_like(W0), []
    for g in grads:
        e = rho * e + (1 - rho) * g**2
        w = w - lr * g / _root(e, eps, eps_inside)
        out.append(w)
    return out


def ref_adam(grads, lr, eps, b1=0.9, b2=0.999, weight_decay=0.0, eps_inside=True):
    """Section 7.3.5 with bias correction: Lambda_hat = Lambda / (1 - b1^n), Delta_hat = Delta / (1 - b2^n).

    ``eps_inside``: the text's sqrt(Delta_hat + eps); otherwise Kingma & Ba's sqrt(Delta_hat) + eps.
    ``weight_decay``: AdamW's decoupled decay w <- w - eta lambda w before the Adam step.
    """
    w, m, s, out = W0.clone(), torch.zeros_like(W0), torch.zeros_like(W0), []
    for n, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g**2
        m_hat, s_hat = m / (1 - b1**n), s / (1 - b2**n)
        w = w * (1 - lr * weight_decay) - lr * m_hat / _root(s_hat, eps, eps_inside)
        out.append(w)
    return out


def assert_steps(got, want):
    assert len(got) == len(want) == 3
    for n, (a, b) in enumerate(zip(got, want, strict=True), start=1):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, n=n: f"step {n}: {m}")


def test_sgd_first_steps():
    assert_steps(torch_steps("sgd"), ref_sgd(GRADS, LR))


def test_momentum_first_steps_follow_eq_7_1_with_default_rho():
    assert_steps(torch_steps("momentum"), ref_momentum(GRADS, LR, rho=0.9))
    # the reference is not trivially equal to plain SGD from step 2 on
    assert not torch.allclose(ref_momentum(GRADS, LR)[1], ref_sgd(GRADS, LR)[1])


def test_nesterov_is_the_texts_look_ahead_momentum_in_the_look_ahead_variables():
    """Text (7.3.2): v(n) = rho v(n-1) - eta g(w(n) + rho v(n-1)); w(n+1) = w(n) + v(n).

    torch keeps u(n) = w(n) + rho v(n-1) as its parameter and takes the gradient there, so after n steps
    torch's parameter equals the text's look-ahead point u(n) = w(n) + rho v(n-1). The gradient depends on
    where it is taken, so use a loss: L(w) = sum(a w^2 / 2 - b w), g(w) = a w - b.
    """
    a = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    b = torch.tensor([0.2, -1.0, 0.4], dtype=torch.float64)
    rho = 0.9

    w, v, want = W0.clone(), torch.zeros_like(W0), []
    for _ in range(3):
        v_new = rho * v - LR * (a * (w + rho * v) - b)
        w = w + v_new
        v = v_new
        want.append(w + rho * v)  # the look-ahead point at which the next gradient is taken

    p = torch.nn.Parameter(W0.clone())
    opt = make_optimizer("nesterov", [p], LR)
    got = []
    for _ in range(3):
        opt.zero_grad()
        (a * p**2 / 2 - b * p).sum().backward()
        opt.step()
        got.append(p.detach().clone())
    assert_steps(got, want)
    # and it differs from plain momentum on the same loss
    q = torch.nn.Parameter(W0.clone())
    opt = make_optimizer("momentum", [q], LR)
    for _ in range(3):
        opt.zero_grad()
        (a * q**2 / 2 - b * q).sum().backward()
        opt.step()
    assert not torch.allclose(q.detach(), got[-1])


def test_adagrad_first_steps_follow_eq_7_4():
    # eps = 0 makes the text's sqrt(sum + eps) and torch's sqrt(sum) + eps the same equation
    assert_steps(torch_steps("adagrad", eps=0.0), ref_adagrad(GRADS, LR, eps=0.0))


def test_rmsprop_first_steps_follow_eq_7_5_with_default_rho_0_9():
    assert_steps(torch_steps("rmsprop", eps=0.0), ref_rmsprop(GRADS, LR, eps=0.0, rho=0.9))


def test_adam_first_steps_with_bias_correction():
    assert_steps(torch_steps("adam", eps=0.0), ref_adam(GRADS, LR, eps=0.0))


def test_adamw_first_steps_decay_decoupled_with_default_weight_decay():
    assert_steps(torch_steps("adamw", eps=0.0), ref_adam(GRADS, LR, eps=0.0, weight_decay=0.01))


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("adagrad", lambda inside: ref_adagrad(GRADS, LR, 0.5, eps_inside=inside)),
        ("rmsprop", lambda inside: ref_rmsprop(GRADS, LR, 0.5, eps_inside=inside)),
        ("adam", lambda inside: ref_adam(GRADS, LR, 0.5, eps_inside=inside)),
    ],
)
def test_eps_is_added_outside_the_root_as_torch_documents(name, ref):
    """The text writes sqrt(. + eps), torch sqrt(.) + eps; a large eps tells the two apart."""
    got = torch_steps(name, eps=0.5)
    assert_steps(got, ref(False))
    assert not torch.allclose(got[0], ref(True)[0])


def test_texts_defaults_are_used():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert make_optimizer("momentum", p, 0.1).defaults["momentum"] == 0.9
    nesterov = make_optimizer("nesterov", p, 0.1).defaults
    assert nesterov["momentum"] == 0.9 and nesterov["nesterov"] is True
    assert make_optimizer("adagrad", p, 0.1).defaults["eps"] == 1e-7
    assert make_optimizer("rmsprop", p, 0.1).defaults["alpha"] == 0.9
    adam = make_optimizer("adam", p, 0.1).defaults
    assert adam["betas"] == (0.9, 0.999) and adam["eps"] == 1e-8
    # kwargs override the texts' defaults
    assert make_optimizer("rmsprop", p, 0.1, alpha=0.99).defaults["alpha"] == 0.99


def test_make_optimizer_accepts_a_module():
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer("sgd", model, 0.1)
    assert opt.param_groups[0]["params"] == list(model.parameters())


def test_unknown_optimizer_kwarg_names_the_optimizer_and_allowed_parameters():
    with pytest.raises(ValueError) as err:
        make_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], 0.1, momentum=0.9)
    msg = str(err.value)
    assert "'adam'" in msg and "'momentum'" in msg and "betas" in msg and "eps" in msg


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan")])
def test_lr_must_be_positive(lr):
    with pytest.raises(ValueError, match="lr="):
        make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr)


@pytest.mark.parametrize(
    ("call", "kind", "names"),
    [
        (lambda: make_optimizer("adamm", [], 0.1), "optimizer", OPTIMIZERS),
        (lambda: make_schedule("cosin", None), "schedule", SCHEDULES),
    ],
)
def test_unknown_names_list_valid_names(call, kind, names):
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert msg.startswith(f"{kind}=") and all(n in msg for n in names)


# --- schedules ---------------------------------------------------------------------------------------


def lr_sequence(name, n, lr=0.1, total_updates=None, **kw):
    """The lr used by updates 0..n-1 when the schedule is stepped after every update."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_schedule(name, opt, total_updates, **kw)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        step_schedule(sched)
    return out


def test_constant_schedule():
    assert lr_sequence("constant", 5) == [0.1] * 5


def test_step_schedule_closed_form():
    got = lr_sequence("step", 10, step_size=3, gamma=0.5)
    assert got == pytest.approx([0.1 * 0.5 ** (t // 3) for t in range(10)], rel=1e-12)


def test_exponential_schedule_closed_form():
    got = lr_sequence("exponential", 10, gamma=0.9)
    assert got == pytest.approx([0.1 * 0.9**t for t in range(10)], rel=1e-12)


def test_cosine_schedule_closed_form():
    T, lo = 10, 0.01
    got = lr_sequence("cosine", T + 1, total_updates=T, eta_min=lo)
    want = [lo + (0.1 - lo) * (1 + math.cos(math.pi * t / T)) / 2 for t in range(T + 1)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_warmup_cosine_schedule_closed_form():
    T, W, lo, lr = 20, 5, 0.001, 0.1

    def closed(t):
        if t < W:
            return lr * (t + 1) / (W + 1)
        r = min(1.0, (t - W) / (T - W))
        return lo + (lr - lo) * (1 + math.cos(math.pi * r)) / 2

    got = lr_sequence("warmup_cosine", T + 3, lr=lr, total_updates=T, warmup_updates=W, eta_min=lo)
    assert got == pytest.approx([closed(t) for t in range(T + 3)], rel=1e-12)
    assert got[W - 1] < lr and got[W] == pytest.approx(lr) and got[-1] == pytest.approx(lo)


def test_warmup_cosine_eta_min_is_absolute_per_param_group():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.1, 0.01)])
    sched = make_schedule("warmup_cosine", opt, total_updates=4, warmup_updates=1, eta_min=0.001)
    for _ in range(4):
        opt.step()
        step_schedule(sched)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001])


def test_schedule_argument_errors():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="total_updates"):
        make_schedule("cosine", opt)
    with pytest.raises(ValueError, match="step_size"):
        make_schedule("step", opt)
    with pytest.raises(ValueError) as err:
        make_schedule("step", opt, step_size=2, gama=0.5)
    assert "'gama'" in str(err.value) and "gamma" in str(err.value)
    with pytest.raises(ValueError, match="warmup_updates"):
        make_schedule("warmup_cosine", opt, total_updates=5, warmup_updates=5)


def test_reduce_on_plateau_on_validation_accuracy_after_patience():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_schedule("reduce_on_plateau", opt, patience=2, factor=0.5)
    assert SCHEDULE_STEPS_ON["reduce_on_plateau"] == "eval" and schedule_steps_on(sched) == "eval"
    lrs = []
    # best 0.6 at eval 2; evals 3, 4, 5 do not improve: the (patience + 1)-th of them reduces the lr
    for acc in [0.5, 0.6, 0.6, 0.55, 0.6, 0.7, 0.7, 0.7, 0.7]:
        step_schedule(sched, metric=acc)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025])


def test_reduce_on_plateau_never_reduces_while_accuracy_rises():
    """Accuracy is maximised: a rising metric is improvement (it would be a plateau for a loss)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_schedule("reduce_on_plateau", opt, patience=1)
    for acc in torch.linspace(0.1, 0.9, 9):
        step_schedule(sched, metric=acc)
    assert opt.param_groups[0]["lr"] == 0.1


def test_reduce_on_plateau_without_metric_says_so():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_schedule("reduce_on_plateau", opt)
    with pytest.raises(ValueError, match="validation accuracy"):
        step_schedule(sched)


def test_every_other_schedule_steps_per_update():
    assert {n for n, on in SCHEDULE_STEPS_ON.items() if on == "update"} == set(SCHEDULES) - {"reduce_on_plateau"}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert schedule_steps_on(make_schedule("cosine", opt, 10)) == "update"


# --- clipping ------------------------------------------------------------------------------------------


def params_with_grads():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    p.grad, q.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])  # total 2-norm sqrt(9 + 16 + 144) = 13
    return p, q


def test_clip_by_norm():
    p, q = params_with_grads()
    total = clip_gradients([p, q], max_norm=6.5)
    assert isinstance(total, torch.Tensor) and total.item() == pytest.approx(13.0)
    coef = 6.5 / (13.0 + 1e-6)
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 4.0]) * coef)
    torch.testing.assert_close(q.grad, torch.tensor([12.0]) * coef)


def test_clip_by_value_and_both():
    p, q = params_with_grads()
    assert clip_gradients(iter([p, q]), max_value=3.5).item() == pytest.approx(13.0)
    assert p.grad.tolist() == [3.0, 3.5] and q.grad.tolist() == [3.5]
    p, q = params_with_grads()
    total = clip_gradients([p, q], max_norm=6.5, max_value=3.5)  # norm first: (1.5, 2, 6), then clamp
    assert total.item() == pytest.approx(13.0)
    torch.testing.assert_close(p.grad, torch.tensor([1.5, 2.0]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q.grad, torch.tensor([3.5]))


def test_no_clipping_reports_norm_and_leaves_grads():
    p, q = params_with_grads()
    assert clip_gradients([p, q]).item() == pytest.approx(13.0)
    assert p.grad.tolist() == [3.0, 4.0] and q.grad.tolist() == [12.0]
    with pytest.raises(ValueError, match="max_norm=0"):
        clip_gradients([p, q], max_norm=0)


