import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from deepscope.cli import app
from deepscope.config import validate_spec
from deepscope.data import Dataset, get_dataset, loader
from deepscope.data.preprocess import Preprocessor
from deepscope.models import mlp
from deepscope.store import Store
from deepscope.training import loop as train_module
from deepscope.training import setup as run_setup
from deepscope.training.callbacks import TrainContext
from deepscope.training.checkpoint import load_checkpoint, load_model
from deepscope.training.loop import train

SHAPESET = {"n_valid": 60, "n_test": 60, "size": 16}


@pytest.fixture(autouse=True)
def small(monkeypatch):
    """Small stream chunks (so that a resume also lands inside a chunk) and a small preprocessing sample
    keep data generation short."""
    monkeypatch.setattr(loader, "STREAM_CHUNK", 100)
    monkeypatch.setattr(run_setup, "FIT_SAMPLE", 500)


def blobs(n_train=120, seed=0) -> Dataset:
    """Three Gaussian classes in a 1x4x4 image, in memory."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, 1, 4, 4, generator=g)

    def split(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return means[y] + torch.randn(n, 1, 4, 4, generator=g), y

    return Dataset("blobs", (1, 4, 4), 3, ["a", "b", "c"], split(n_train), split(60), split(60))


def make_spec(**sections):
    base = {
        "name": "tiny",
        "data": {"name": "shapeset", "options": dict(SHAPESET)},
        "model": {"depth": 2, "width": 16, "activation": "tanh"},
        "init": {"scheme": "glorot_uniform"},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"updates": 60, "batch_size": 10, "eval_every": 20, "device": "cpu"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_spec(base)


class Recorder:
    """A callback that copies the per-update losses (a test may read them every step; the trainer does not)."""

    def __init__(self, stop_at=None, action=None):
        self.losses, self.events, self.stop_at, self.action = {}, [], stop_at, action

    def __call__(self, ctx: TrainContext):
        self.events.append((ctx.event, ctx.step))
        if ctx.event == "step":
            self.losses[ctx.step] = ctx.loss.item()
            if ctx.step == self.stop_at:
                self.action(ctx)


def interrupt(ctx):
    raise KeyboardInterrupt


def run_python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


# --- resume ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stream", "epochs"])
def test_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path, kind):
    """Momentum, dropout, a per-update schedule, preprocessing and augmentation all carry over a resume."""
    if kind == "stream":
        spec = make_spec(model={"dropout": 0.2}, optim={"name": "momentum"},
                         schedule={"name": "step", "step_size": 7, "gamma": 0.9},
                         data={"preprocess": ["standardize"], "augment": ["hflip"]},
                         train={"checkpoint_every": 10})
        dataset, stop = None, 35
    else:
        spec = make_spec(model={"dropout": 0.2}, optim={"name": "adam", "lr": 0.01},
                         schedule={"name": "cosine"}, data={"preprocess": ["center"], "augment": ["vflip"]},
                         train={"updates": None, "epochs": 5, "batch_size": 16, "checkpoint_every": 10})
        dataset, stop = blobs(), 29  # 8 batches an epoch: stop mid-epoch
    whole = Recorder()
    full = train(spec, store=Store(tmp_path / "a"), callbacks=[whole], quiet=True, dataset=dataset)
    first = Recorder(stop_at=stop, action=interrupt)
    store = Store(tmp_path / "b")
    cut = train(spec, store=store, callbacks=[first], quiet=True, dataset=dataset)
    assert (cut.status, cut.step) == ("interrupted", stop)
    assert store.get_run(cut.run_id)["status"] == "interrupted"
    second = Recorder()
    resumed = train(store=store, resume=cut.run_id, callbacks=[second], quiet=True, dataset=dataset)
    assert resumed.status == "finished" and resumed.run_id == cut.run_id
    assert min(second.losses) == stop + 1
    assert {**first.losses, **second.losses} == whole.losses  # bit for bit
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert Store(tmp_path / "a").scalars(full.run_id) == store.scalars(cut.run_id)  # no duplicates after resume
    assert store.get_run(cut.run_id)["status"] == "finished"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_after_the_current_update(tmp_path, sig):
    store, before = Store(tmp_path), signal.getsignal(sig)
    rec = Recorder(stop_at=13, action=lambda ctx: os.kill(os.getpid(), sig))
    result = train(make_spec(), store=store, callbacks=[rec], quiet=True)
    assert (result.status, result.step) == ("interrupted", 13)
    assert "Resume with: deepscope train --resume tiny-1" in result.message
    assert load_checkpoint(result.checkpoint)["step"] == 13
    assert store.get_run("tiny-1")["status"] == "interrupted"
    assert signal.getsignal(sig) is before and max(rec.losses) == 13  # handler restored, no update after


def test_sigkill_keeps_what_was_flushed_and_the_run_resumes(tmp_path):
    code = """
        import os, signal, sys
        import torch
        from deepscope.config import validate_spec
        from deepscope.data import loader
        from deepscope.training.loop import train
        loader.STREAM_CHUNK = 100
        spec = validate_spec({"name": "killed", "data": {"options": {"n_valid": 60, "n_test": 60, "size": 16}},
                              "model": {"depth": 2, "width": 16}, "optim": {"lr": 0.05},
                              "train": {"updates": 60, "eval_every": 10, "device": "cpu"}})
        def kill(ctx):
            if ctx.event == "step" and ctx.step == 35:
                os.kill(os.getpid(), signal.SIGKILL)
        train(spec, store=sys.argv[1], callbacks=[kill], quiet=True)
    """
    proc = run_python(code, str(tmp_path))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    store = Store(tmp_path)
    assert store.get_run("killed-1")["status"] == "interrupted"
    assert sorted({r["step"] for r in store.scalars("killed-1")}) == [10, 20, 30]
    assert load_checkpoint(tmp_path / "killed-1" / "checkpoint.pt")["step"] == 30
    result = train(store=store, resume="killed", quiet=True)
    assert (result.status, result.step) == ("finished", 60)
    assert [r["step"] for r in store.scalars("killed-1", "valid/error")] == [10, 20, 30, 40, 50, 60]


def test_two_runs_write_one_store_at_once(tmp_path):
    code = """
        import sys
        from deepscope.config import validate_spec
        from deepscope.data import loader
        from deepscope.training.loop import train
        loader.STREAM_CHUNK = 100
        spec = validate_spec({"name": "sweep", "data": {"options": {"n_valid": 60, "n_test": 60, "size": 16}},
                              "model": {"depth": 2, "width": 8}, "train": {"updates": 40, "eval_every": 5,
                              "seed": int(sys.argv[2]), "device": "cpu"}})
        print(train(spec, store=sys.argv[1], quiet=True).run_id)
    """
    procs = [run_python(code, str(tmp_path), seed) for seed in ("1", "2")]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        ids.append(out.strip())
    assert sorted(ids) == ["sweep-1", "sweep-2"]
    store = Store(tmp_path)
    for run in store.runs():
        assert run["status"] == "finished"
        assert [r["step"] for r in store.scalars(run["id"], "test/error")] == list(range(5, 41, 5))
    assert {r["seed"] for r in store.runs()} == {1, 2}


# --- divergence --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quiet", [True, False])
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, quiet):
    monkeypatch.setattr(train_module, "REFRESH_SECONDS", 0.0)  # non-quiet: check at every progress refresh

    def explode(ctx):
        for group in ctx.optimizer.param_groups:
            group["lr"] = 1e30

    rec = Recorder(stop_at=20, action=explode)
    store = Store(tmp_path)
    spec = make_spec(model={"activation": "relu"}, train={"eval_every": 10, "updates": 200})
    result = train(spec, store=store, callbacks=[rec], quiet=quiet)
    first_bad = min(step for step, loss in rec.losses.items() if not math.isfinite(loss))
    assert result.status == "diverged" and first_bad > 20
    assert f"at update {first_bad}: the run diverged" in result.message
    assert "lower learning rate" in result.message and "clip_norm" in result.message
    assert "update 20" in result.message and result.diverged_at == first_bad and result.eval_step == 20
    assert "initialization" not in result.message  # the spec already uses glorot_uniform
    ckpt = load_checkpoint(tmp_path / "tiny-1" / "checkpoint.pt")
    assert ckpt["step"] == 20 and all(t.isfinite().all() for t in ckpt["model"].values())
    assert store.get_run("tiny-1")["status"] == "diverged"
    assert math.isnan(store.scalars("tiny-1", "train/loss")[-1]["value"])


def test_divergence_advice_leaves_out_what_the_spec_already_does():
    from deepscope.training.divergence import divergence_message as _divergence_message

    plain = make_spec(init={"scheme": "standard"})
    text = _divergence_message(plain, 7, math.nan, None, -1)
    assert text == ("The loss is nan at update 7: the run diverged. Try a lower learning rate (optim.lr=0.05 now, "
                    "e.g. --set optim.lr=0.005), gradient clipping (--set train.clip_norm=1.0) or a normalized "
                    "initialization (--set init.scheme=glorot_uniform).")
    clipped = make_spec(train={"clip_norm": 1.0})
    assert _divergence_message(clipped, 7, math.inf, None, -1) == (
        "The loss is inf at update 7: the run diverged. Try a lower learning rate (optim.lr=0.05 now, "
        "e.g. --set optim.lr=0.005).")


# --- the numbers ---------------------------------------------------------------------------------------------


def test_stored_numbers_equal_an_independent_recomputation(tmp_path):
    rec = Recorder()
    spec = make_spec(data={"preprocess": ["standardize"]}, train={"eval_every": 30})
    store = Store(tmp_path)
    result = train(spec, store=store, callbacks=[rec], quiet=True)
    ckpt = torch.load(tmp_path / result.run_id / "checkpoint.pt", weights_only=True)
    model = mlp((1, 16, 16), 9, depth=2, width=16, activation="tanh", init=None)
    model.load_state_dict(ckpt["model"])
    model.eval()
    pre = Preprocessor(["standardize"]).load_state_dict(ckpt["preprocessor"])
    data = get_dataset("shapeset", **SHAPESET)
    with torch.no_grad():
        logits = model(pre(data.test[0]))
    error = (logits.argmax(1) != data.test[1]).float().mean().item()
    loss = F.cross_entropy(logits, data.test[1]).item()
    last = store.get_run(result.run_id)["last"]
    assert last["test/error"]["value"] == pytest.approx(error, abs=1e-7) == result.test_error
    assert last["test/loss"]["value"] == pytest.approx(loss, rel=1e-5)
    # train/loss is the mean of the per-update losses since the previous evaluation
    assert last["train/loss"]["value"] == pytest.approx(sum(rec.losses[s] for s in range(31, 61)) / 30, rel=1e-5)
    loaded, loaded_pre, loaded_spec = load_model(result.run_id, store)
    assert loaded_spec == spec and torch.equal(loaded(loaded_pre(data.test[0])), logits)


def test_events_and_schedules(tmp_path):
    rec = Recorder()
    spec = make_spec(schedule={"name": "step", "step_size": 10, "gamma": 0.5})
    train(spec, store=Store(tmp_path), callbacks=[rec], quiet=True)
    assert rec.events[0] == ("start", 0) and rec.events[-1] == ("end", 60)
    assert [s for e, s in rec.events if e == "eval"] == [20, 40, 60]
    assert [s for e, s in rec.events if e == "step"] == list(range(1, 61))
    # a per-update schedule: lr after t updates = lr0 * gamma^floor(t / step_size)
    lrs = [r["value"] for r in Store(tmp_path).scalars("tiny-1", "lr")]
    assert lrs == pytest.approx([0.05 * 0.5**2, 0.05 * 0.5**4, 0.05 * 0.5**6])


def test_reduce_on_plateau_and_early_stopping_read_the_validation_error(tmp_path):
    plateau = {"name": "reduce_on_plateau", "patience": 0, "factor": 0.5, "eps": 1e-15}
    spec = make_spec(optim={"lr": 1e-9}, schedule=plateau,
                     train={"patience": 2, "eval_every": 10, "updates": 200})
    store = Store(tmp_path)
    result = train(spec, store=store, quiet=True)
    errors = [r["value"] for r in store.scalars("tiny-1", "valid/error")]
    assert len(set(errors)) == 1  # lr 1e-9: nothing moves, so nothing improves
    assert result.status == "finished" and result.step == 30 and "Stopped early at update 30" in result.message
    assert [r["value"] for r in store.scalars("tiny-1", "lr")] == pytest.approx([1e-9, 1e-9, 0.5e-9], rel=1e-9)


def test_epochs_visit_every_example_once(tmp_path):
    data = blobs(n_train=50)
    seen = []
    spec = make_spec(train={"updates": None, "epochs": 2, "batch_size": 16, "eval_every": 100})
    original = loader.TrainBatches.__call__

    def spy(self, t):
        x, y = original(self, t)
        seen.append(x.clone())
        return x, y

    loader.TrainBatches.__call__ = spy
    try:
        result = train(spec, quiet=True, dataset=data)
    finally:
        loader.TrainBatches.__call__ = original
    assert result.step == 2 * 4 and result.metrics["test/error"] == result.test_error
    for epoch in (seen[:4], seen[4:]):
        rows = torch.cat(epoch).flatten(1)
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, data.train[0].flatten(1).tolist()))
    assert not torch.equal(torch.cat(seen[:4]), torch.cat(seen[4:]))  # reshuffled


def test_training_leaves_the_callers_rng_alone_and_is_reproducible():
    state = torch.get_rng_state()
    a = train(make_spec(), quiet=True)
    assert torch.equal(torch.get_rng_state(), state)
    b = train(make_spec(), quiet=True)
    assert a.metrics == b.metrics and a.run_id is None and a.checkpoint is None


# --- command line ---------------------------------------------------------------------------------------------


SPEC_TOML = """\
name = "cli-run"
[data]
options = { n_valid = 60, n_test = 60, size = 16 }
[model]
depth = 2
width = 8
[train]
updates = 20
eval_every = 10
device = "cpu"
"""


def test_cli_train_and_runs(tmp_path):
    runner = CliRunner()
    spec = tmp_path / "run.toml"
    spec.write_text(SPEC_TOML)
    store = str(tmp_path / "store")
    out = runner.invoke(app, ["train", str(spec), "--store", store, "--quiet", "--set", "model.activation=softsign"])
    assert out.exit_code == 0, out.output
    assert "test error" in out.output and "run cli-run-1 stored in" in out.output
    runner.invoke(app, ["train", str(spec), "--store", store, "-q", "--updates", "10"])
    ls = runner.invoke(app, ["runs", "ls", "--store", store])
    assert ls.exit_code == 0 and "cli-run-1" in ls.output and "cli-run-2" in ls.output and "finished" in ls.output
    only = runner.invoke(app, ["runs", "ls", "*-2", "--store", store])
    assert only.exit_code == 0 and "cli-run-2" in only.output and "cli-run-1" not in only.output
    show = runner.invoke(app, ["runs", "show", "cli-run-1", "--store", store])
    assert show.exit_code == 0 and "softsign" in show.output
    compare = runner.invoke(app, ["runs", "compare", "cli-run-1", "cli-run-2", "--store", store])
    assert compare.exit_code == 0 and "model.activation" in compare.output and "train.updates" in compare.output
    resumed = runner.invoke(app, ["train", "--resume", "cli-run-2", "--updates", "20", "--store", store, "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert Store(store).get_run("cli-run-2")["spec"]["train"]["updates"] == 20


@pytest.mark.parametrize("args, message", [
    (["--set", "model.activation=tanhh"], "model.activation='tanhh' is not known; choose one of: sigmoid, tanh"),
    (["--set", "model.width"], "--set 'model.width': expected key=value"),
    (["--set", "train.batch_size=-1"], "train.batch_size=-1: Input should be greater than or equal to 1"),
    (["--resume", "nope"], "no run store at"),  # an empty directory: nothing to resume
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, message):
    spec = tmp_path / "run.toml"
    spec.write_text(SPEC_TOML)
    result = CliRunner().invoke(app, ["train", str(spec), "--store", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_bad_toml(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text("[model]\ndepth = \n")
    result = CliRunner().invoke(app, ["train", str(spec), "--store", str(tmp_path)])
    assert result.exit_code == 2 and "bad.toml: invalid TOML" in result.output and "line 2" in result.output
