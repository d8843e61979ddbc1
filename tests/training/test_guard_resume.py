"""The guard's state goes into the trainer's checkpoint: a run interrupted and resumed ends with the same window,
counters and events as the run that was never interrupted (no second warm-up, no event lost or logged twice)."""

import json
import math

import torch

from deepscope import train
from deepscope.data import Dataset
from deepscope.store import Store
from deepscope.training.checkpoint import load_checkpoint


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    x[37] = math.nan  # one example with a NaN: met once per epoch, skipped each time
    valid = (torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g))
    return Dataset(name="nan-once", input_shape=(8,), num_classes=2, class_names=["a", "b"], train=(x, y),
                   valid=valid, test=None)


SPEC = {"name": "guard-resume", "data": {"name": "spirals"}, "model": {"depth": 1, "width": 16},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"updates": 80, "batch_size": 16, "device": "cpu", "eval_every": 20, "checkpoint_every": 10,
                  "guard": {"warmup": 8, "refresh": 2, "rollback_after": 10}}}


def test_a_resumed_run_keeps_the_guards_window_and_events(tmp_path):
    data = _data()
    whole = train(SPEC, store=Store(tmp_path / "a"), quiet=True, dataset=data)

    def interrupt(ctx):
        if ctx.event == "step" and ctx.step == 43:
            raise KeyboardInterrupt

    store = Store(tmp_path / "b")
    cut = train(SPEC, store=store, quiet=True, dataset=data, callbacks=[interrupt])
    assert cut.status == "interrupted"
    saved = load_checkpoint(store.run_dir(cut.run_id) / "checkpoint.pt")["guard"]  # weights_only: plain data
    assert saved["window"]["count"] == saved["updates"] > 8 and len(saved["events"]) >= 2  # past the warm-up
    resumed = train(store=store, resume=cut.run_id, quiet=True, dataset=data)
    assert resumed.status == "finished"
    kinds = [(e.step, e.kind, e.action) for e in whole.guard.events]
    assert {k[1:] for k in kinds} == {("nonfinite", "skip")} and sum(k[0] > 43 for k in kinds) >= 2
    # the window (floats bit for bit), the counters and the events (as text: their losses are NaN)
    text = [json.dumps(r.guard.state_dict(), sort_keys=True) for r in (resumed, whole)]
    assert text[0] == text[1]
    scalars = [(r["step"], r["name"]) for r in store.scalars(resumed.run_id) if r["name"].startswith("guard/")]
    assert scalars == [(e[0], "guard/skip") for e in kinds]  # each event in the store once
