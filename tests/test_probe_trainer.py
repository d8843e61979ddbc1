"""The probe inside the trainer: `deepscope train --probe-every N` and TrainerProbe."""

import pytest
import torch
from typer.testing import CliRunner

from deepscope.cli import app
from deepscope.config import validate_spec
from deepscope.data import get_dataset
from deepscope.store import Store
from deepscope.training.checkpoint import load_model
from deepscope.training.loop import train
from deepscope.training.probe import TrainerProbe

OPTIONS = {"n_valid": 50, "n_test": 50, "size": 16, "seed": 3}


def spec(updates=40):
    return validate_spec({
        "name": "probed",
        "data": {"name": "shapeset", "options": OPTIONS, "preprocess": ["standardize"]},
        "model": {"depth": 3, "width": 12, "activation": "tanh"},
        "init": {"scheme": "glorot_uniform"},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"updates": updates, "batch_size": 10, "eval_every": 20, "device": "cpu"},
    })


def test_records_reach_the_store_and_match_a_hand_computation_on_the_final_model(tmp_path):
    store = Store(tmp_path)
    probe = TrainerProbe(every=10, monitor=30)
    result = train(spec(), store=store, callbacks=[probe], quiet=True)
    rows = store.stats(result.run_id)
    assert {r["step"] for r in rows} == {0, 10, 20, 30, 40}
    assert len(rows) == len(probe.records)  # everything recorded in memory was written to the store

    # independent computation: the final model's tanh outputs on the first 30 preprocessed valid examples
    model, pre, _ = load_model(result.run_id, store)
    x = pre(get_dataset("shapeset", **OPTIONS).valid[0][:30])
    captured = {}
    for name in ("hidden1", "hidden2", "hidden3"):
        getattr(model, name).act.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
    with torch.no_grad():
        model(x)
    for name, out in captured.items():
        stored = [r["value"] for r in rows if (r["step"], r["source"], r["layer"], r["quantity"], r["stat"])
                  == (40, "monitor", name, "activation", "std")]
        assert stored == pytest.approx([out.std(correction=0).item()], rel=1e-4)  # population std


def test_probe_options_reach_the_probe_and_bad_ones_fail_before_training(tmp_path):
    probe = TrainerProbe(every=10, monitor=20, layers=["hidden2.act"], bins=7)
    train(spec(20), store=Store(tmp_path), callbacks=[probe], quiet=True)
    assert {r["layer"] for r in probe.records if r["quantity"] == "activation"} == {"hidden2"}
    assert {len(h["counts"]) for h in probe.histograms} == {7}
    with pytest.raises(ValueError, match="bins=0 is not allowed"):
        TrainerProbe(every=10, bins=0)


def test_hooks_are_removed_when_training_ends(tmp_path):
    probe = TrainerProbe(every=5, monitor=10)
    result = train(spec(10), store=Store(tmp_path), callbacks=[probe], quiet=True)
    for module in result.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


def test_cli_probe_every_and_bad_value(tmp_path):
    runner = CliRunner()
    toml = tmp_path / "run.toml"
    toml.write_text(
        'name = "cli"\n[data]\nname = "shapeset"\noptions = { n_valid = 40, n_test = 40, size = 16 }\n'
        '[model]\ndepth = 2\nwidth = 8\n[train]\nupdates = 20\nbatch_size = 10\ndevice = "cpu"\n'
    )
    ok = runner.invoke(app, ["train", str(toml), "--store", str(tmp_path), "-q", "--probe-every", "10"])
    assert ok.exit_code == 0, ok.output
    run_id = Store(tmp_path).runs()[0]["id"]
    assert {r["step"] for r in Store(tmp_path).stats(run_id)} == {0, 10, 20}
    bad = runner.invoke(app, ["train", str(toml), "--store", str(tmp_path), "-q", "--probe-every", "0"])
    assert bad.exit_code == 2
    assert "--probe-every=0 is not allowed" in bad.output


def test_cli_jacobian_options(tmp_path):
    runner = CliRunner()
    toml = tmp_path / "run.toml"
    toml.write_text(
        'name = "cli"\n[data]\nname = "shapeset"\noptions = { n_valid = 40, n_test = 40, size = 16 }\n'
        '[model]\ndepth = 3\nwidth = 8\n[train]\nupdates = 20\nbatch_size = 10\ndevice = "cpu"\n'
    )
    args = ["train", str(toml), "--store", str(tmp_path), "-q", "--probe-every", "10"]
    ok = runner.invoke(app, [*args, "--probe-jacobian-every", "10", "--probe-jacobian-method", "exact"])
    assert ok.exit_code == 0, ok.output
    run_id = Store(tmp_path).runs()[0]["id"]
    rows = [r for r in Store(tmp_path).stats(run_id) if r["quantity"] == "jacobian"]
    assert {r["step"] for r in rows} == {0, 10, 20}
    assert {r["stat"] for r in rows} == {"sv_mean", "sv_min", "sv_max"}
    bad = runner.invoke(app, [*args, "--probe-jacobian-method", "svd"])
    assert bad.exit_code == 2
    assert "--probe-jacobian-method='svd' is not known" in bad.output and "lanczos" in bad.output
    bad = runner.invoke(app, [*args, "--probe-jacobian-every", "15"])
    assert bad.exit_code == 2 and "--probe-jacobian-every=15 is not allowed; give a multiple of --probe-every=10" in \
        bad.output
    alone = runner.invoke(app, ["train", str(toml), "--store", str(tmp_path), "-q", "--probe-jacobian-method", "exact"])
    assert alone.exit_code == 2 and "need --probe-every" in alone.output
    alone = runner.invoke(app, ["train", str(toml), "--store", str(tmp_path), "-q", "--probe-monitor", "50"])
    assert alone.exit_code == 2 and "--probe-monitor" in alone.output and "need --probe-every" in alone.output
    assert len(Store(tmp_path).runs()) == 1  # bad options fail before a run is created
