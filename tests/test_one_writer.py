"""One writer per run: claims, heartbeats, dead owners on other hosts, two concurrent resumes; the explosion rule."""

import math
import os
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from deepscope.cli import app
from deepscope.store import RunBusyError, Store
from tiny_spec import tiny_spec

runner = CliRunner()

SPEC = tiny_spec(20)


def _pretend_owner(store: Store, run_id: str, *, host: str, pid: int, heartbeat_age: float) -> None:
    """Make a run read as trained by ``pid`` on ``host`` whose last heartbeat was ``heartbeat_age`` seconds ago."""
    beat = time.time() - heartbeat_age
    store._write("UPDATE runs SET status = 'running', host = ?, pid = ?, owner = 'elsewhere', heartbeat = ?,"
                 " updated = ? WHERE id = ?", (host, pid, beat, beat, run_id))


def test_a_second_claim_is_refused_while_the_owner_lives(tmp_path):
    first, second = Store(tmp_path), Store(tmp_path)
    run = first.create_run("r", {}, 0)
    with pytest.raises(RunBusyError, match=rf"run r-1 is being trained by pid {os.getpid()} on .*add --force"):
        second.claim(run)
    first.set_status(run, "interrupted")
    before = second.claim(run)
    assert before["status"] == "interrupted" and second.owns(run) and not first.owns(run)
    with pytest.raises(RunBusyError):
        first.claim(run)
    second.release(run, before)
    assert Store(tmp_path).get_run(run)["status"] == "interrupted"


@pytest.mark.parametrize("age, force, claimed", [(1.0, False, False), (1.0, True, True), (3600.0, False, True)])
def test_an_owner_on_another_host_is_replaced_after_the_heartbeat_timeout_or_with_force(tmp_path, age, force,
                                                                                        claimed):
    store = Store(tmp_path)
    run = store.create_run("r", {}, 0)
    store.set_status(run, "finished")
    _pretend_owner(store, run, host="other-host", pid=1, heartbeat_age=age)
    reader = Store(tmp_path, read_only=True)
    assert reader.get_run(run)["status"] == ("interrupted" if age > 60 else "running")
    if claimed:
        assert store.claim(run, force=force)["host"] == "other-host"
        assert store.owns(run)
    else:
        with pytest.raises(RunBusyError, match="pid 1 on other-host"):
            store.claim(run, force=force)


def test_the_heartbeat_keeps_a_live_run_running_and_a_silent_one_reads_as_interrupted(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSCOPE_HEARTBEAT_TIMEOUT", "0.8")  # beats every 0.2 s
    owner = Store(tmp_path)
    run = owner.create_run("r", {}, 0)
    first = owner.get_run(run)["heartbeat"]
    time.sleep(1.2)
    beat = Store(tmp_path, read_only=True).get_run(run)
    assert beat["status"] == "running" and beat["heartbeat"] > first  # refreshed by the owner's thread
    owner._heartbeat.stop()  # the owner hangs (or its host died): no more beats
    time.sleep(1.2)
    assert Store(tmp_path).get_run(run)["status"] == "interrupted"


def test_resume_of_a_run_whose_owner_died_on_another_host(tmp_path):
    (tmp_path / "tiny.toml").write_text(SPEC)
    store = str(tmp_path / "store")
    assert runner.invoke(app, ["train", str(tmp_path / "tiny.toml"), "--store", store, "-q"]).exit_code == 0
    _pretend_owner(Store(store), "tiny-1", host="other-host", pid=12345, heartbeat_age=5.0)
    refused = runner.invoke(app, ["train", "--resume", "tiny-1", "--updates", "40", "--store", store, "-q"])
    assert refused.exit_code == 2 and "being trained by pid 12345 on other-host" in refused.stderr
    assert "add --force" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    forced = runner.invoke(app, ["train", "--resume", "tiny-1", "--updates", "40", "--force", "--store", store, "-q"])
    assert forced.exit_code == 0, forced.output
    run = Store(store).get_run("tiny-1")
    assert run["status"] == "finished" and run["last"]["valid/error"]["step"] == 40


_RACER = """
import os, sys, time
from pathlib import Path
import deepscope.training.loop as t
from deepscope.cli import app

barrier, me = Path(sys.argv[1]), sys.argv[2]
(barrier / me).touch()
while len(list(barrier.iterdir())) < 2:  # both processes are ready: claim at the same moment
    time.sleep(0.01)
run = t._Run.loop
def slow_run(self):  # the winner holds the run while the other one tries
    time.sleep(2.0)
    return run(self)
t._Run.loop = slow_run
app(sys.argv[3:])
"""


@pytest.mark.slow
def test_two_concurrent_resumes_exactly_one_trains(tmp_path):
    (tmp_path / "tiny.toml").write_text(SPEC)
    store = str(tmp_path / "store")
    assert runner.invoke(app, ["train", str(tmp_path / "tiny.toml"), "--store", store, "-q"]).exit_code == 0
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    args = ["train", "--resume", "tiny-1", "--updates", "60", "--store", store, "-q"]
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_RACER), str(barrier), str(i), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert "run tiny-1 is being trained by pid" in loser and "Traceback" not in loser
    s = Store(store)
    rows = s.scalars("tiny-1")
    assert len(rows) == len({(r["step"], r["name"]) for r in rows})  # no duplicated records
    assert s.get_run("tiny-1")["status"] == "finished" and max(r["step"] for r in rows) == 60
    assert not list((tmp_path / "store" / "tiny-1").glob("*.tmp"))


def test_a_loss_that_explodes_but_stays_finite_stops_the_run(tmp_path):
    """tanh hidden units are bounded, so a huge learning rate makes the logits (and the loss) huge but finite."""
    from deepscope.training.divergence import EXPLOSION
    from deepscope.training.loop import train

    spec = {"name": "boom", "data": {"name": "shapeset", "options": {"n_valid": 40, "n_test": 40, "size": 16}},
            "model": {"depth": 2, "width": 16, "activation": "tanh"}, "optim": {"lr": 1000.0},
            "train": {"updates": 200, "eval_every": 20, "batch_size": 10, "device": "cpu"}}
    losses = []
    result = train(spec, store=tmp_path, quiet=True,
                   callbacks=[lambda ctx: losses.append(float(ctx.loss)) if ctx.event == "step" else None])
    assert result.status == "diverged" and "exploded" in result.message
    assert all(math.isfinite(v) for v in losses)
    # independently: the mean loss of the window that stopped the run, against the rule
    stop = result.diverged_at
    window = losses[stop - 20 : stop]
    assert sum(window) / len(window) > EXPLOSION * max(losses[0], math.log(9))
    earlier = [losses[i : i + 20] for i in range(0, stop - 20, 20)]
    assert all(sum(w) / 20 <= EXPLOSION * max(losses[0], math.log(9)) for w in earlier)
    assert Store(tmp_path).get_run(result.run_id)["status"] == "diverged"


def test_a_run_taken_over_with_force_stops_its_old_writer_without_writing(tmp_path):
    from deepscope.config import load_spec
    from deepscope.training.checkpoint import load_checkpoint
    from deepscope.training.loop import train

    (tmp_path / "tiny.toml").write_text(SPEC)
    spec = load_spec(tmp_path / "tiny.toml", ["train.checkpoint_every=5", "train.updates=40"])
    usurper = Store(tmp_path / "store")

    def take_over(ctx):
        if ctx.event == "step" and ctx.step == 7:  # another process resumes the run with --force
            usurper.claim(ctx.run_id, force=True)

    result = train(spec, store=tmp_path / "store", quiet=True, callbacks=[take_over])
    assert result.status == "interrupted" and "taken over by another process" in result.message
    assert load_checkpoint(tmp_path / "store" / "tiny-1" / "checkpoint.pt")["step"] == 5  # not 10: not written
    run = Store(tmp_path / "store").get_run("tiny-1")
    assert run["status"] == "running" and usurper.owns("tiny-1")  # left to the new owner
