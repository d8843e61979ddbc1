"""W&B (offline) and MLflow (file store) sinks receive the probe's rows under deepscope/... names; a missing
extra is one clear line (CLI: exit 2, no traceback)."""

import importlib
import sys

import pytest
import torch
from torch import nn

from deepscope.probe import Probe, TensorBoardSink


def probed_rows(sinks, steps=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, every=1, monitor=(x, y), bins=4, sinks=sinks) as probe:
        for _ in range(steps):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
    return probe


def test_wandb_sink_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from deepscope.integrations import WandbSink

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(project="deepscope-test", dir=str(tmp_path))
    probe = probed_rows([sink])
    summary = {k: sink.run.summary[k] for k in sink.run.summary.keys()}  # W&B's own last logged values
    assert sink.run.dir.startswith(str(tmp_path)) and wandb.run is sink.run
    sink.close()
    assert wandb.run is None and list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # the offline run file
    last = max(r["step"] for r in probe.records)
    expected = {f"deepscope/{r['source']}/{r['quantity']}/{r['stat']}/{r['layer']}": r["value"]
                for r in probe.records if r["step"] == last}
    assert summary["deepscope/step"] == last
    assert {k: summary[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    h = next(h for h in reversed(probe.histograms) if h["source"] == "monitor")
    logged = summary[f"deepscope/monitor/{h['quantity']}/{h['layer']}"]
    assert logged["_type"] == "histogram" and list(logged["values"]) == [int(c) for c in h["counts"]]
    assert logged["bins"][0] == pytest.approx(h["lo"]) and logged["bins"][-1] == pytest.approx(h["hi"])


def test_mlflow_sink_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database unless told
    from deepscope.integrations import MLflowSink

    uri = (tmp_path / "mlruns").as_uri()
    sink = MLflowSink(tracking_uri=uri, experiment="deepscope-test")
    probe = probed_rows([sink])
    sink.close()
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_run(sink.run_id).info.status == "FINISHED"
    row = next(r for r in probe.records if r["quantity"] == "activation" and r["stat"] == "std")
    name = f"deepscope/monitor/activation/std/{row['layer']}"
    history = {m.step: m.value for m in client.get_metric_history(sink.run_id, name)}
    expected = {r["step"]: r["value"] for r in probe.records if r["source"] == "monitor"
                and r["quantity"] == "activation" and r["stat"] == "std" and r["layer"] == row["layer"]}
    assert history == pytest.approx(expected, rel=1e-9) and len(history) == 4
    assert len(client.get_run(sink.run_id).data.metrics) == len({(r["source"], r["quantity"], r["stat"], r["layer"])
                                                                  for r in probe.records})


def test_mlflow_metric_names_are_sanitized():
    from deepscope.probe.sinks import MLflowSink

    assert MLflowSink.metric_name("deepscope/train/activation/std/block.act@2") == \
        "deepscope/train/activation/std/block.act_2"


def test_tensorboard_sink_round_trip(tmp_path):
    """What TensorBoardSink writes, read_tensorboard reads back as the same rows (float32 scalars)."""
    pytest.importorskip("tensorboard")
    from deepscope.integrations.trackers import read_tensorboard

    sink = TensorBoardSink(tmp_path)
    probe = probed_rows([sink])
    sink.close()
    stats, histograms, _ = read_tensorboard(tmp_path)
    key = ("step", "source", "quantity", "stat", "layer")
    assert [tuple(r[k] for k in key) for r in stats] == \
        [tuple(r[k] for k in key) for r in sorted(probe.records, key=lambda r: (r["step"], r["source"] != "monitor"))]
    assert {tuple(r[k] for k in key): r["value"] for r in stats} == \
        pytest.approx({tuple(r[k] for k in key): r["value"] for r in probe.records}, rel=1e-6, abs=1e-7)
    assert sorted((h["step"], h["source"], h["layer"], h["quantity"], tuple(h["counts"])) for h in histograms) == \
        sorted((h["step"], h["source"], h["layer"], h["quantity"], tuple(h["counts"])) for h in probe.histograms)


@pytest.mark.parametrize(("blocked", "make", "message"), [
    ("wandb", lambda: importlib.import_module("deepscope.probe.sinks").WandbSink(),
     "WandbSink needs the wandb package: pip install 'deepscope[wandb]'"),
    ("mlflow", lambda: importlib.import_module("deepscope.probe.sinks").MLflowSink(),
     "MLflowSink needs the mlflow package: pip install 'deepscope[mlflow]'"),
    ("torch.utils.tensorboard", lambda: importlib.import_module("deepscope.probe.sinks").TensorBoardSink(),
     "TensorBoardSink needs the tensorboard package: pip install 'deepscope[tensorboard]'"),
    ("lightning lightning.pytorch", lambda: importlib.import_module("deepscope.integrations.lightning"),
     "deepscope.integrations.lightning needs the lightning package: pip install 'deepscope[lightning]'"),
    ("transformers", lambda: importlib.import_module("deepscope.integrations.transformers"),
     "deepscope.integrations.transformers needs the transformers package: pip install 'deepscope[transformers]'"),
    ("tensorboard", lambda: importlib.import_module("deepscope.integrations.trackers").read_tensorboard("."),
     "reading a TensorBoard log directory needs the tensorboard package: pip install 'deepscope[tensorboard]'"),
])
def test_missing_extra_is_one_clear_line(monkeypatch, blocked, make, message):
    for name in blocked.split():  # `import name` now raises ImportError, even when imported before
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("deepscope.integrations.lightning", "deepscope.integrations.transformers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError) as info:
        make()
    assert str(info.value) == message


def test_report_on_a_log_dir_without_tensorboard_exits_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from deepscope.cli import app

    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    result = CliRunner().invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: reading a TensorBoard log directory needs the tensorboard package: "
                                      "pip install 'deepscope[tensorboard]'")


def test_findings_table_printed(capsys):
    from deepscope.diagnosis import Finding
    from deepscope.diagnosis.findings import print_findings

    print_findings([Finding("saturation", "error", "top layer saturated", ["hidden5"], first_step=100,
                            recovers=False, evidence={"saturated": 0.97}, advice="Replace sigmoid by tanh")], "run")
    out = capsys.readouterr().out
    for text in ("saturation", "hidden5", "since update 100", "does not recover", "saturated=0.97", "Replace"):
        assert text in out
    print_findings([], "run")
    assert "healthy" in capsys.readouterr().out
