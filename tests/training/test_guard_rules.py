"""The guard's detection rules on sequences whose statistics are known by hand: the CUSUM of a sustained rise, the
warm-up's spike rule, and the gradient norm the hooks take (equal to torch's own total norm, taken after)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope import Guard
from deepscope.training.guard_window import CUSUM_H, CUSUM_K, WARMUP_LOSS


def _guard(**options):
    model = nn.Linear(3, 2)
    return Guard(model, torch.optim.SGD(model.parameters(), lr=0.0), **options)


def _feed(guard, log_losses):
    for v in log_losses:
        guard.step(torch.tensor(math.exp(v)), grad_norm=torch.ones(()))


def test_a_sustained_rise_under_the_spike_limit_rolls_back_when_the_cusum_crosses_h():
    base = [0.1 if i % 2 else -0.1 for i in range(64)]  # median 0, MAD 0.1, std 0.1 x sqrt(64/63)
    spread = max(1.4826 * 0.1, 0.1 * math.sqrt(64 / 63)) + 1e-3
    shift = 0.5  # z = 3.35: under z=6, over the allowance K
    increment = shift / spread - CUSUM_K
    expected = 64 + math.floor(CUSUM_H / increment)  # the first update with S > H
    with _guard(window=64, warmup=64, refresh=64) as guard:
        _feed(guard, base)
        _feed(guard, [shift] * 20)
    assert [(e.step, e.kind, e.action) for e in guard.events][:1] == [(expected, "rise", "rollback")]
    assert guard.events[0].z_loss == pytest.approx(shift / spread, rel=1e-5)


def test_a_rise_within_the_allowance_never_acts():
    base = [0.1 if i % 2 else -0.1 for i in range(64)]
    spread = max(1.4826 * 0.1, 0.1 * math.sqrt(64 / 63)) + 1e-3
    with _guard(window=64, warmup=64, refresh=64) as guard:
        _feed(guard, base)
        _feed(guard, [0.9 * CUSUM_K * spread] * 60)  # z just under K: the CUSUM stays at 0
    assert guard.events == []


def test_during_the_warm_up_a_loss_far_above_the_largest_so_far_is_skipped():
    with _guard(warmup=64) as guard:
        _feed(guard, [0.0, -0.5, -1.0])
        _feed(guard, [math.log(0.9 * WARMUP_LOSS)])  # 9 x the largest (1.0): applied
        assert guard.events == []
        _feed(guard, [math.log(1.1 * WARMUP_LOSS * 0.9 * WARMUP_LOSS)])  # 11 x the new largest: a spike
    assert [(e.step, e.kind, e.action) for e in guard.events] == [(4, "loss_spike", "skip")]
    assert math.isnan(guard.events[0].z_loss)  # no spread yet: no z-score


def test_the_hooks_take_the_total_gradient_norm_and_are_removed_on_exit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    with Guard(model, opt) as guard:
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
            assert guard.step(loss)
            assert math.exp(guard.window.last[1]) == pytest.approx(float(expected), rel=1e-5)
            opt.zero_grad()
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())


def test_a_net_that_fits_its_batches_exactly_is_not_flagged_but_a_real_spike_still_is():
    # a healthy run whose losses reach exactly 0 (float32 softmax at 1.0), then a batch at 4e-9: on the log scale that
    # is 8 units above the clamped zeros, yet it is under 1 % (NEGLIGIBLE) of the largest healthy loss, 2.3
    from deepscope.training.guard_window import NEGLIGIBLE, Window

    w = Window(128, 64, 6.0, 8)
    losses = [2.3 * 0.9 ** t for t in range(100)] + [0.0] * 200
    for t, loss in enumerate(losses):
        assert w.check(loss, 1e-7 if loss == 0 else loss) is None, t
        w.add()
    assert 4e-9 < NEGLIGIBLE * 2.3
    assert w.check(4e-9, 7e-8) is None  # negligible against 2.3: no spike, whatever the window says
    assert w.check(NEGLIGIBLE * 2.3 * 2, 1e-7) == "loss_spike"  # above it: a spike as before
