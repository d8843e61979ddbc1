"""Edges of the training loop found in review: each test fails on the code before its fix."""

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import _global_optimizer_pre_hooks

from deepscope.data import Dataset
from deepscope.store import Store
from deepscope.training.loop import train
from deepscope.training.probe import TrainerProbe


def blobs(valid=True) -> Dataset:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 1, 4, 4, generator=g)

    def split(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return means[y] + torch.randn(n, 1, 4, 4, generator=g), y

    return Dataset("blobs", (1, 4, 4), 3, ["a", "b", "c"], split(120), split(40) if valid else None, split(40))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))


SPEC = {"name": "edge", "train": {"updates": 40, "eval_every": 10, "batch_size": 10, "device": "cpu"}}


def test_a_dataset_without_a_validation_split_trains_to_the_end():
    result = train(SPEC, model=net(), dataset=blobs(valid=False), quiet=True)
    assert result.status == "finished" and result.step == 40
    assert "valid/error" not in result.metrics and "test/error" in result.metrics and result.best == {}
    # restore_best has no best evaluation to go back to: the run says so and keeps its last weights
    spec = {**SPEC, "train": {**SPEC["train"], "restore_best": True, "monitor": "loss"}}
    model = net()
    kept = train(spec, model=model, dataset=blobs(valid=False), quiet=True)
    plain = train(SPEC, model=net(), dataset=blobs(valid=False), quiet=True)
    assert "no validation split, so the run ends with its last weights" in kept.message
    assert all(torch.equal(a, b) for a, b in zip(kept.model.state_dict().values(), plain.model.state_dict().values(),
                                                 strict=True))


def test_a_failing_callback_leaves_no_probe_hook_behind():
    model = net()

    def boom(ctx):
        if ctx.event == "step" and ctx.step == 10:
            raise RuntimeError("callback failed")

    before = len(_global_optimizer_pre_hooks)
    with pytest.raises(RuntimeError, match="callback failed"):
        train(SPEC, model=model, dataset=blobs(), callbacks=[TrainerProbe(5, 20), boom], quiet=True)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert len(_global_optimizer_pre_hooks) == before


def test_finished_runs_leave_no_heartbeat_thread(tmp_path):
    def beating():
        return {t for t in threading.enumerate() if t.name == "deepscope-heartbeat" and t.is_alive()}

    before = beating()  # other tests' stores may still hold runs
    results = [train(SPEC, model=net(), dataset=blobs(), store=tmp_path, quiet=True) for _ in range(3)]
    assert beating() <= before and all(r.store._heartbeat is None for r in results)


def test_a_resumed_probe_records_each_step_once(tmp_path):
    spec = {**SPEC, "train": {**SPEC["train"], "updates": 20}}
    train(spec, model=net(), dataset=blobs(), store=tmp_path, callbacks=[TrainerProbe(10, 20)], quiet=True)
    longer = {**SPEC, "train": {**SPEC["train"], "updates": 40}}
    train(longer, model=net(), dataset=blobs(), store=tmp_path, resume="edge", callbacks=[TrainerProbe(10, 20)],
          quiet=True)
    rows = Store(tmp_path, read_only=True).stats("edge-1", quantity="activation", stat="mean")
    counts = {}
    for r in rows:
        counts[(r["step"], r["source"], r["layer"])] = counts.get((r["step"], r["source"], r["layer"]), 0) + 1
    assert {s for s, _, _ in counts} == {0, 10, 20, 30, 40} and set(counts.values()) == {1}


def test_loading_a_model_never_creates_a_store(tmp_path):
    from deepscope.training.checkpoint import load_model

    with pytest.raises(ValueError):
        load_model("nothing", tmp_path / "nostore")
    assert not (tmp_path / "nostore").exists()


def test_the_output_check_leaves_the_rng_alone():
    from deepscope.diagnosis.checks import check_training

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x):
            return F.dropout(self.linear(x), 0.5, training=True)

    torch.manual_seed(1)
    model, x = Noisy(), torch.randn(8, 4)
    state = torch.get_rng_state()
    check_training(model, torch.optim.SGD(model.parameters(), lr=0.1), x)
    assert torch.equal(state, torch.get_rng_state())


def test_findings_with_brackets_print_as_text(capsys):
    from deepscope.diagnosis import Finding
    from deepscope.diagnosis.findings import print_findings

    print_findings([Finding("dead_units", "warning", "layer blocks[b] is [/] dead", layers=["blocks[b]"],
                            advice="set [model] norm")], "run [x]")
    out = capsys.readouterr().out
    assert "blocks[b]" in out and "[/]" in out and "[model]" in out


def test_evaluation_builds_no_graph_and_matches_a_hand_computation():
    from deepscope.training.evaluation import evaluate

    model, (x, y) = net(), blobs().valid
    loss, error = evaluate(model, x, y, F.cross_entropy, batch_size=7)  # batches of 7 over 40 examples
    assert not loss.requires_grad and not error.requires_grad  # no autograd graph kept for evaluations
    with torch.no_grad():
        logits = model.eval()(x)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert float(error) == pytest.approx(float((logits.argmax(1) != y).float().mean()))
