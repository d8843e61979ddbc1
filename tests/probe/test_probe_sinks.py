"""Probe sinks: the run store, TensorBoard, and the in-memory tidy export."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope.probe import Probe, StoreSink, TensorBoardSink


class FakeStore:
    def __init__(self):
        self.stats, self.histograms, self.flushes = [], [], 0

    def log_stats(self, run_id, rows):
        self.stats.append((run_id, list(rows)))

    def log_histograms(self, run_id, rows):
        self.histograms.append((run_id, list(rows)))

    def flush(self):
        self.flushes += 1


class FakeWriter:
    def __init__(self):
        self.scalars, self.histograms, self.flushed = [], [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_histogram_raw(self, tag, **kw):
        self.histograms.append((tag, kw))

    def flush(self):
        self.flushed = True


def train(probe, model, x, y, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with probe:
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            probe.step()


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    return model, torch.randn(10, 4), torch.randint(0, 3, (10,))


def test_store_sink_gets_every_record_once(setup):
    model, x, y = setup
    store = FakeStore()
    probe = Probe(model, every=2, monitor=(x, y), sinks=[StoreSink(store, "run-1")], keep=True)
    train(probe, model, x, y, steps=4)
    written = [r for run_id, rows in store.stats for r in rows]
    assert {run_id for run_id, _ in store.stats + store.histograms} == {"run-1"}
    assert written == probe.records
    assert [h for _, rows in store.histograms for h in rows] == probe.histograms
    assert len(store.stats) == 5  # monitor at 0, 2, 4 and train at 0, 2: one call per record
    assert store.flushes >= 1


def test_store_sink_with_the_real_store(setup, tmp_path):
    store_module = pytest.importorskip("deepscope.store")
    model, x, y = setup
    store = store_module.Store(tmp_path)
    run_id = store.create_run("probe", {}, seed=0)
    probe = Probe(model, every=1, monitor=(x, y), sinks=[StoreSink(store, run_id)])
    train(probe, model, x, y, steps=1)
    got = store.stats(run_id, quantity="activation", stat="std")
    want = probe.to_rows(quantity="activation", stat="std")
    assert sorted((r["step"], r["source"], r["layer"], r["value"]) for r in got) == sorted(
        (r["step"], r["source"], r["layer"], r["value"]) for r in want
    )
    assert len(store.histograms(run_id)) == len(probe.histograms)


def test_keep_false_streams_only(setup):
    model, x, y = setup
    store = FakeStore()
    probe = Probe(model, every=1, monitor=(x, y), sinks=[StoreSink(store, "r")], keep=False)
    train(probe, model, x, y, steps=2)
    assert probe.records == [] and probe.histograms == []
    assert sum(len(rows) for _, rows in store.stats) > 0


def test_tensorboard_sink_tags_and_histograms(setup):
    model, x, y = setup
    writer = FakeWriter()
    probe = Probe(model, every=1, monitor=(x, y), bins=5, sinks=[TensorBoardSink(writer=writer)])
    train(probe, model, x, y, steps=1)
    assert writer.flushed
    assert len(writer.scalars) == len(probe.records)
    tag, value, step = writer.scalars[0]
    first = probe.records[0]
    assert tag == f"deepscope/{first['source']}/{first['quantity']}/{first['stat']}/{first['layer']}"
    assert (value, step) == (first["value"], first["step"])
    tag, kw = writer.histograms[0]
    h = probe.histograms[0]
    assert tag == f"deepscope/{h['source']}/{h['quantity']}/{h['layer']}"
    assert kw["bucket_counts"] == h["counts"] and kw["num"] == sum(h["counts"])
    assert kw["bucket_limits"][-1] == pytest.approx(h["hi"])
    assert (kw["min"], kw["max"], kw["global_step"]) == (h["lo"], h["hi"], h["step"])


def test_tensorboard_sink_missing_package_message(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'deepscope\[tensorboard\]'"):
        TensorBoardSink("runs")


def test_tensorboard_sink_writes_event_files(setup, tmp_path):
    pytest.importorskip("tensorboard")
    model, x, y = setup
    sink = TensorBoardSink(tmp_path)
    train(Probe(model, every=1, monitor=(x, y), sinks=[sink]), model, x, y, steps=1)
    sink.close()
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_tensorboard_sink_log_dir_that_is_a_file_is_named(tmp_path):
    pytest.importorskip("tensorboard")
    (tmp_path / "events").write_text("")
    with pytest.raises(ValueError, match="log_dir=.*events' is a file; give a directory"):
        TensorBoardSink(tmp_path / "events")
