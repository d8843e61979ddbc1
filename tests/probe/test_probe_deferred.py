"""Records after the first: the monitor pass at the next step on a copy of the weights, statistics deferred."""

import copy

import pytest
import torch
import torch.nn.functional as F
from probe_nets import small_mlp

from deepscope.probe import Probe


def _setup():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 8, generator=g), torch.randint(0, 4, (40,), generator=g)
    model = small_mlp()
    return x, y, model, torch.optim.SGD(model.parameters(), lr=0.5)


def _update(model, opt, x, y):
    F.cross_entropy(model(x[:10]), y[:10]).backward()
    opt.step()
    opt.zero_grad()


def test_a_later_records_monitor_pass_runs_at_the_next_step_on_the_weights_of_the_record(monkeypatch):
    monkeypatch.setattr("deepscope.probe.pacing.MOVE_RATIO", float("inf"))  # moved whatever the timings
    x, y, model, opt = _setup()
    at_record = None
    with Probe(model, every=4, monitor=(x, y), jacobian_examples=0) as probe:
        for step in range(1, 8):
            _update(model, opt, x, y)
            probe.step()
            if step == 4:  # the record of step 4 is armed: its monitor pass waits for the next step
                at_record = copy.deepcopy(model)
                assert not [r for r in probe.records if r["step"] == 4 and r["source"] == "monitor"]
        before_exit = {r["step"] for r in probe.records if r["source"] == "monitor"}
    assert before_exit == {0, 4}  # the pass at step 6, its percentiles and histograms at 7: before the exit
    # the monitor statistics of step 4 are those of the model as it was at step 4 (three updates ago)
    with torch.no_grad():
        at_record.eval()
        h = at_record[1](at_record[0](x))
        now = model[1](model[0](x))
    rows = {r["stat"]: r["value"] for r in probe.to_rows(step=4, source="monitor", layer="1", quantity="activation")}
    assert rows["mean"] == pytest.approx(h.mean().item(), rel=1e-5, abs=1e-7)
    assert rows["std"] == pytest.approx(h.std(unbiased=False).item(), rel=1e-5)
    assert abs(rows["std"] - now.std(unbiased=False).item()) > 1e-4  # the weights moved since
    # the model, its gradients and the optimizer are left as they were
    assert all(p.grad is None for p in model.parameters())


def test_a_monitor_pass_longer_than_a_step_stays_on_the_recorded_step(monkeypatch):
    from deepscope.probe.pacing import Pacing

    pacing = Pacing()
    assert pacing.move_monitor()  # nothing timed yet
    pacing.step_seconds, pacing.monitor_seconds = 0.010, 0.030
    assert not pacing.move_monitor()
    pacing.monitor_seconds = 0.008
    assert pacing.move_monitor()

    monkeypatch.setattr("deepscope.probe.pacing.MOVE_RATIO", 0.0)  # never moved once timed
    x, y, model, opt = _setup()
    with Probe(model, every=4, monitor=(x, y), jacobian_examples=0) as probe:
        for step in range(1, 6):
            _update(model, opt, x, y)
            probe.step()
            if step == 4:  # the pass ran at once, on the weights of now (no copy)
                assert probe._pacing.monitor_seconds > 0 and probe._pacing.step_seconds > 0
                from deepscope.probe.probe import record_monitor

                assert not any(getattr(work, "func", None) is record_monitor for _, _, work in probe._deferred)
                with torch.no_grad():
                    model.eval()
                    h = model[1](model[0](x))
                    model.train()
    rows = {r["stat"]: r["value"] for r in probe.to_rows(step=4, source="monitor", layer="1", quantity="activation")}
    assert rows["mean"] == pytest.approx(h.mean().item(), rel=1e-5, abs=1e-7)
