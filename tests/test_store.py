import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from deepscope.store import Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "runs") as s:
        yield s


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_runs_round_trip(store):
    spec = {"model": {"activation": "tanh", "width": 10}, "train": {"updates": 5}}
    run = store.create_run("Glorot Tanh N", spec, seed=3)
    assert run == "glorot-tanh-n-1"
    assert store.create_run("Glorot Tanh N", spec, seed=4) == "glorot-tanh-n-2"
    got = store.get_run(run)
    assert (got["spec"], got["seed"], got["status"], got["pid"]) == (spec, 3, "running", os.getpid())
    assert set(got["versions"]) == {"python", "torch", "deepscope"}
    store.set_status(run, "finished")
    assert store.get_run(run)["status"] == "finished" and store.get_run(run)["finished"] is not None
    assert [r["id"] for r in store.runs()] == ["glorot-tanh-n-1", "glorot-tanh-n-2"]
    assert store.path == store.root / "deepscope.db"


def test_prefix_resolution(store):
    for _ in range(11):
        store.create_run("a", {}, 0)
    assert store.resolve("a-1") == "a-1"  # exact match wins over a-10, a-11
    assert store.resolve("a-5") == "a-5"
    assert store.resolve("a-11") == "a-11"
    with pytest.raises(ValueError, match="ambiguous; it matches: a-1, a-2, .*a-11"):
        store.resolve("a-")
    with pytest.raises(ValueError, match="not found"):
        store.resolve("b")


def test_scalars_are_buffered_until_flush_and_read_in_order(store, tmp_path):
    run = store.create_run("r", {}, 0)
    store.log_scalars(run, 10, {"train/loss": 2.5, "valid/error": 0.5})
    store.log_scalars(run, 20, {"train/loss": math.nan, "valid/error": 0.25})
    other = Store(store.root)  # another connection sees only what was flushed
    assert other.scalars(run) == []
    store.flush()
    rows = other.scalars(run, "valid/error")
    assert rows == [{"step": 10, "name": "valid/error", "value": 0.5},
                    {"step": 20, "name": "valid/error", "value": 0.25}]
    assert math.isnan(other.scalars(run, "train/loss")[1]["value"])
    assert other.get_run(run)["last"]["valid/error"] == {"step": 20, "value": 0.25}
    store.delete_after(run, 10)
    assert [r["step"] for r in other.scalars(run)] == [10, 10]


def test_stats_and_histograms_with_filters(store):
    run = store.create_run("p", {}, 0)
    rows = [dict(step=s, source="monitor", layer=f"hidden{i}", quantity="activation", stat=stat, value=s * i + k)
            for s in (0, 100) for i in (1, 2) for k, stat in enumerate(("mean", "std"))]
    store.log_stats(run, rows)
    store.log_histograms(run, [dict(step=0, source="monitor", layer="hidden1", quantity="activation", lo=-1.0, hi=1.0,
                                    counts=[1, 2, 3])])
    got = store.stats(run, layer="hidden2", stat="std")
    assert [(r["step"], r["value"]) for r in got] == [(0, 1.0), (100, 201.0)]
    assert len(store.stats(run, layer=["hidden1", "hidden2"], step=100)) == 4
    assert store.histograms(run)[0]["counts"] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="filter colour='red' is not known; choose one of: step, source, layer"):
        store.stats(run, colour="red")


def test_bad_status_is_refused(store):
    run = store.create_run("r", {}, 0)
    with pytest.raises(ValueError, match="status='done' is not known; choose one of: running, finished"):
        store.set_status(run, "done")


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSCOPE_STORE", str(tmp_path / "elsewhere"))
    assert Store().path == tmp_path / "elsewhere" / "deepscope.db"


def test_sigkill_keeps_flushed_records_and_reads_as_interrupted(tmp_path):
    code = """
        import os, signal, sys
        from deepscope.store import Store
        store = Store(sys.argv[1])
        run = store.create_run("killed", {"x": 1}, 0)
        for step in range(1, 6):
            store.log_scalars(run, step, {"train/loss": float(step)})
            store.flush()
        store.log_scalars(run, 6, {"train/loss": 6.0})  # never flushed
        print(run, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = _python(code, str(tmp_path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    store = Store(tmp_path)
    run = store.get_run(out.strip())
    assert run["status"] == "interrupted"
    assert [r["value"] for r in store.scalars(run["id"])] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert Store(tmp_path).runs()[0]["status"] == "interrupted"  # recorded, not only reported


def test_two_processes_write_at_once(tmp_path):
    code = """
        import sys
        from deepscope.store import Store
        store = Store(sys.argv[1])
        tag = sys.argv[2]
        runs = [store.create_run("sweep", {"tag": tag}, i) for i in range(3)]
        for step in range(200):
            for run in runs:
                store.log_scalars(run, step, {"loss": step + 0.5, "tag": float(tag)})
            store.log_stats(runs[0], [dict(step=step, source="train", layer="l", quantity="activation",
                                           stat="mean", value=float(tag))])
            store.flush()
        for run in runs:
            store.set_status(run, "finished")
    """
    procs = [_python(code, str(tmp_path), tag) for tag in ("1", "2")]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = Store(tmp_path)
    runs = store.runs()
    assert sorted(r["id"] for r in runs) == sorted(f"sweep-{i}" for i in range(1, 7))
    for run in runs:
        rows = store.scalars(run["id"])
        tag = float(run["spec"]["tag"])
        assert len(rows) == 400 and {r["value"] for r in rows if r["name"] == "tag"} == {tag}
        assert run["status"] == "finished"
    assert sum(len(store.stats(run["id"])) for run in runs) == 400


def test_histograms_of_a_diverged_network_do_not_break_the_store(store):
    run = store.create_run("nan", {}, seed=0)
    rows = [dict(step=5, source="monitor", layer="hidden1", quantity="activation", lo=lo, hi=1.0, counts=[1.0, 2.0])
            for lo in (0.0, math.nan, -math.inf)]
    store.log_histograms(run, rows)
    store.flush()
    assert [(r["lo"], r["hi"]) for r in store.histograms(run)] == [(0.0, 1.0)]  # the finite one; no NOT NULL error


def test_a_probed_run_that_diverges_is_stored_as_diverged(tmp_path):
    """A ReLU net at N(0, 1) blows up: the probe's histograms get NaN ranges; the run still ends as diverged."""
    from deepscope.workflows.run import diagnosis_run

    spec = {"name": "blowup", "data": {"name": "shapeset", "preprocess": "standardize",
                                       "options": {"n_valid": 60, "n_test": 60, "size": 16}},
            "model": {"depth": 3, "width": 64, "activation": "relu"}, "init": {"scheme": "normal", "std": 1.0},
            "optim": {"name": "sgd", "lr": 0.05}, "train": {"updates": 200, "batch_size": 10, "device": "cpu"}}
    result = diagnosis_run(spec, store=Store(tmp_path), updates=200, report=False, quiet=True)
    assert result.status == "diverged"
    assert any(not math.isfinite(h["lo"]) for h in result.histograms)  # what used to break the store
    stored = Store(tmp_path).histograms(result.run_id)
    assert stored and all(math.isfinite(h["lo"]) and math.isfinite(h["hi"]) for h in stored)
    assert Store(tmp_path).get_run(result.run_id)["status"] == "diverged"
