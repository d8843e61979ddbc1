"""deepscope.Guard: a skip is a true skip, a rollback restores exactly, per-example gradient norms equal a loop
over single examples, the poisoned example is named, the run stops after max_rollbacks, events reach sinks."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope import Guard
from deepscope.training.guard import GuardStop
from deepscope.training.guard_examples import per_example, rank_examples


def _data(n=512, d=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, k, generator=g)).argmax(1)
    return x, y


def _net(d=12, k=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, k))


def _train(guard, model, opt, x, y, steps, start=0, batch=16):
    applied = []
    for t in range(start, start + steps):
        xb, yb = x[(t * batch) % len(x):][:batch], y[(t * batch) % len(x):][:batch]
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        applied.append(guard.step(loss, batch=(xb, yb)))
        opt.zero_grad()
    return applied


def _state(model, opt, sched):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict()),
            torch.get_rng_state().clone())


def _assert_same(a, b):
    for sa, sb in zip(a[0].values(), b[0].values(), strict=True):
        assert torch.equal(sa, sb)
    for pa, pb in zip(a[1]["state"].values(), b[1]["state"].values(), strict=True):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key
    assert a[1]["param_groups"] == b[1]["param_groups"]
    assert a[2] == b[2]
    assert torch.equal(a[3], b[3])


@pytest.mark.parametrize("fault", ["nan", "spike"])
def test_a_skip_leaves_optimizer_schedule_and_rng_as_not_stepping(fault):
    x, y = _data()
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    with Guard(model, opt, sched, warmup=16, refresh=4) as guard:
        assert all(_train(guard, model, opt, x, y, 40))
        xb, yb = x[:16].clone(), y[:16].clone()
        if fault == "nan":
            xb[2] = math.nan
        else:
            xb[2] *= 1e4
            with torch.no_grad():
                yb[2] = model.eval()(xb[2:3]).argmin()  # the least likely label: a huge loss and gradient
            model.train()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        before = _state(model, opt, sched)
        assert guard.step(loss, batch=(xb, yb)) is False
        _assert_same(_state(model, opt, sched), before)
        assert guard.skipped == 1 and guard.updates == 40 and sched.last_epoch == 40
        event = guard.events[-1]
        assert event.action == "skip" and event.kind == ("nonfinite" if fault == "nan" else event.kind)
        assert event.examples[0] == 2  # the poisoned example is named first
        # the reference a skip must differ from: Adam on zeroed gradients still moves its moments and step count
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        assert not torch.equal(opt.state_dict()["state"][0]["step"], before[1]["state"][0]["step"])


def test_a_healthy_run_is_never_acted_on():
    x, y = _data(2048)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with Guard(model, opt) as guard:
        assert all(_train(guard, model, opt, x, y, 600))
    assert guard.events == [] and guard.updates == 600 and "no action" in guard.summary()


def test_a_rollback_restores_the_last_good_state_exactly_and_lowers_the_rate():
    x, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    with Guard(model, opt, sched, snapshot_every=5, rollback_after=1, lr_factor=0.5, warmup=4, refresh=1) as guard:
        _train(guard, model, opt, x, y, 5)
        at_five = _state(model, opt, sched)  # taken as pending at update 5, trusted at update 10
        _train(guard, model, opt, x, y, 7, start=5)
        bad = x[:16].clone()
        bad[0] = math.nan
        loss = F.cross_entropy(model(bad), y[:16])
        loss.backward()
        torch.manual_seed(123)  # the RNG moved on since update 5: a rollback brings it back
        assert guard.step(loss, batch=(bad, y[:16])) is False
        _assert_same(_state(model, opt, sched), at_five)
        event = guard.events[-1]
        assert (event.action, event.restored, event.lr_scale, guard.lr_scale) == ("rollback", 5, 0.5, 0.5)
        assert all(p.grad is None for p in model.parameters())
        # the next update uses the scheduled rate x 0.5: an SGD step with momentum buffers restored from update 5
        xb, yb = x[:16], y[:16]
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        expected = []
        for p in model.parameters():
            buf = opt.state[p]["momentum_buffer"] * 0.9 + p.grad
            expected.append(p.detach() - 0.5 * lr * buf)
        assert guard.step(loss) is True
        for p, e in zip(model.parameters(), expected, strict=True):
            torch.testing.assert_close(p.detach(), e)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 7)  # the schedule goes on from update 5


def test_the_run_stops_after_max_rollbacks():
    x, y = _data()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Guard(model, opt, rollback_after=1, max_rollbacks=2) as guard:
        _train(guard, model, opt, x, y, 3)
        for _ in range(2):
            assert guard.step(torch.tensor(math.nan)) is False
        with pytest.raises(GuardStop, match="after 2 rollbacks .*max_rollbacks=2"):
            guard.step(torch.tensor(math.inf))
    assert [e.action for e in guard.events] == ["rollback", "rollback", "stop"]


def test_divergence_rolls_back():
    """A loss that climbs slowly (no single spike) past 10 x its level at the end of the warm-up."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Guard(model, opt, warmup=8, refresh=1, window=8, z=1e6) as guard:
        for t in range(60):
            (model[0].weight.sum() * 0).backward()
            guard.step(torch.tensor(1.0 * 1.2 ** t))
            opt.zero_grad()
            if guard.events:
                break
    assert guard.events[0].kind == "divergence" and guard.events[0].action == "rollback"
    # the window's median (its 4th-5th of 8 latest losses) passed 10 x the warm-up median 1.2**3.5
    assert 1.2 ** (guard.events[0].step - 4.5) > 10 * 1.2 ** 3.5 * 0.8


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_per_example_gradient_norms_equal_a_loop_over_single_examples(net):
    torch.manual_seed(0)
    if net == "mlp":
        model, x = _net(), torch.randn(9, 12)
    else:
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
        x = torch.randn(9, 1, 8, 8)
    y = torch.randint(0, 4, (9,))
    model.train()
    rng = torch.get_rng_state()
    losses, norms = per_example(model, F.cross_entropy, x, y, chunk_size=4)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    model.eval()  # the reference: one example at a time, in eval mode as the guard's pass
    for i in range(9):
        model.zero_grad()
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        loss.backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        torch.testing.assert_close(losses[i], loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norms[i], norm, rtol=1e-4, atol=1e-6)


def test_dict_batches_are_ranked_by_the_models_own_loss_as_a_loop_over_single_examples():
    """A model with keyword inputs that computes its own loss (a Hugging Face model's shape): the per-example
    losses and gradient norms equal the vmap computation on the same network and loss."""
    from deepscope.training.guard_examples import per_example_dict

    class Keyworded(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x, labels=None, scale=1.0):
            logits = self.net(x) * scale
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    x, y = _data(10)
    model = Keyworded().train()
    losses, norms = per_example_dict(model, {"x": x, "labels": y, "scale": 1.0})
    ref_losses, ref_norms = per_example(model.net, F.cross_entropy, x, y)
    torch.testing.assert_close(losses, ref_losses)
    torch.testing.assert_close(norms, ref_norms)
    assert model.training and all(p.grad is None for p in model.parameters())
    x[4] *= 1e3
    ranking = rank_examples(model, None, {"x": x, "labels": y})
    assert ranking.index[0] == 4


def test_the_ranking_puts_the_poisoned_example_first_with_its_dataset_id():
    x, y = _data(32)
    model = _net()
    x[11] *= 1e3
    y[11] = (y[11] + 1) % 4
    ranking = rank_examples(model, F.cross_entropy, x, y, ids=torch.arange(100, 132)).top(3)
    assert ranking.index[0] == 11 and ranking.ids[0] == 111
    assert ranking.grad_norm == sorted(ranking.grad_norm, reverse=True)


def test_events_reach_a_sink():
    class Sink:
        rows = []

        def write(self, stats, histograms):
            self.rows.extend(stats)

    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = Sink()
    with Guard(model, opt, sinks=[sink]) as guard:
        (model[0].weight.sum() * 0).backward()
        guard.step(torch.tensor(math.nan))
    assert {(r["source"], r["layer"], r["quantity"], r["stat"]) for r in sink.rows} == {
        ("guard", "nonfinite", "skip", s) for s in ("loss", "grad_norm", "lr_scale")}
    assert guard.scalars() == [{"step": 0, "name": "guard/skip", "value": guard.events[0].loss}]


def test_a_layer_going_dead_under_the_probe_is_an_event():
    from deepscope import Probe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _data()
    with Probe(model, every=5, monitor=(x[:64], y[:64])) as probe, Guard(model, opt, probe=probe) as guard:
        for t in range(30):
            if t == 12:
                with torch.no_grad():
                    model[0].bias.fill_(-100.0)  # every unit of the first layer dies
            loss = F.cross_entropy(model(x[:16]), y[:16])
            loss.backward()
            guard.step(loss)
            probe.step()
            opt.zero_grad()
    dead = [e for e in guard.events if e.kind == "dead"]
    assert dead and dead[0].action == "warn" and dead[0].step >= 12 and "100%" in dead[0].message


@pytest.mark.parametrize("options, match", [
    ({"z": 0}, "guard z=0"), ({"lr_factor": 2}, "lr_factor=2"), ({"window": 0}, "guard window=0"),
    ({"zz": 1}, "guard option='zz' is not known; choose one of: window"), ({"on_pathology": "x"}, "warn, rollback"),
])
def test_bad_options_name_the_key(options, match):
    model = _net()
    with pytest.raises(ValueError, match=match):
        Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), **options)


def test_the_spec_defaults_are_the_guards():
    from deepscope.config import GuardSpec
    from deepscope.training.guard import DEFAULTS

    assert GuardSpec().model_dump() == DEFAULTS


def _ddp_rank(rank, world, port, out):
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)
    with Guard(ddp, opt, warmup=4, refresh=1) as guard:
        for t in range(12):
            x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            if t == 8 and rank == 1:
                loss = loss.detach() * 1e4  # a spike in rank 1's loss alone
            guard.step(loss, grad_norm=torch.ones(()))  # the (shared) gradient norm is not what differs
            opt.zero_grad()
    dist.destroy_process_group()
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump({"events": [(e.step, e.action) for e in guard.events],
                   "weight": model.weight.detach().flatten().tolist()}, f)


def test_every_rank_takes_the_same_decision(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["events"] == ranks[1]["events"] == [[8, "skip"]]  # rank 0's own loss was healthy
    assert ranks[0]["weight"] == ranks[1]["weight"]
