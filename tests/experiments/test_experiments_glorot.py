"""The Glorot & Bengio experiments (glorot2010-table1, glorot2010-figures, sigmoid-saturation) on the tiny profile:
the machinery (a verdict with the expected numbers, figures written), and their measuring helpers checked against
hand-built records."""

import json
import math

import numpy as np
import pytest
import torch

from deepscope.experiments import EXPERIMENTS, Context, get_experiment, run_experiment
from deepscope.experiments import glorot2010_figures as figures
from deepscope.experiments import glorot2010_table1 as table1
from deepscope.experiments import sigmoid_saturation as saturation
from deepscope.experiments.training import TrainedRun
from deepscope.store import Store


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These nets are tiny: one intra-op thread avoids thread hand-offs on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registered_with_every_profile():
    for name in ("glorot2010-table1", "glorot2010-figures", "sigmoid-saturation"):
        assert {"tiny", "quick", "paper"} <= set(EXPERIMENTS[name].profiles)
    assert "demo" in get_experiment("sigmoid-saturation").profiles  # make demo runs it
    paper = get_experiment("glorot2010-table1").settings("paper")
    assert (paper["depth"], paper["width"], paper["batch_size"]) == (5, 1000, 10)  # the paper's setup


# --- the tiny profile: machinery ----------------------------------------------------------------------------


def test_table1_tiny(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPSCOPE_MNIST_ROOT", raising=False)
    monkeypatch.delenv("DEEPSCOPE_CIFAR10_ROOT", raising=False)
    verdict = run_experiment("glorot2010-table1", "tiny", out_dir=tmp_path, jobs=1, store=tmp_path / "runs")
    slugs = [slug for slug, _, _ in table1.MODELS.values()]
    assert set(verdict.numbers) == {f"shapeset/{s}/{k}" for s in slugs for k in ("test_error", "lr")}
    assert len(verdict.checks) == 2
    assert "MNIST, CIFAR-10 skipped" in verdict.summary and "82.61" in verdict.summary
    assert {p.name for p in verdict.figures} == {"glorot2010-table1-curves-shapeset.png",
                                                 "glorot2010-table1-table.png"}
    assert all(p.stat().st_size > 0 for p in verdict.figures)
    # one stored run per (model, lr, seed), and the test error reported is the chosen run's last one
    store = Store(tmp_path / "runs")
    assert len(verdict.run_ids) == len(table1.MODELS)
    for run_id in verdict.run_ids:
        run = store.get_run(run_id)
        slug = next(s for s, a, i in table1.MODELS.values()
                    if (a, i) == (run["spec"]["model"]["activation"], run["spec"]["init"]["scheme"]))
        valid = {r["step"]: r["value"] for r in store.scalars(run_id, "valid/error")}
        test = {r["step"]: r["value"] for r in store.scalars(run_id, "test/error")}
        best = min(valid, key=lambda step: (valid[step], step))
        assert verdict.numbers[f"shapeset/{slug}/test_error"] == pytest.approx(100 * test[best])
    assert json.loads((tmp_path / "glorot2010-table1.json").read_text())["name"] == "glorot2010-table1"


def test_figures_tiny(tmp_path):
    verdict = run_experiment("glorot2010-figures", "tiny", out_dir=tmp_path, jobs=1)
    keys = ["act_std_bottom", "act_std_top", "act_std_ratio", "grad_std_ratio", "jacobian_sv_mean"]
    expected = {f"{r}/{k}" for r in ("tanh", "tanh_n") for k in keys} | {f"{r}/test_error" for r in figures.RUNS}
    assert set(verdict.numbers) == expected
    assert len(verdict.checks) == 3
    assert all(math.isfinite(v) for v in verdict.numbers.values())
    assert [p.name for p in verdict.figures] == ["glorot2010-figures.png"] and verdict.figures[0].stat().st_size


def test_saturation_tiny(tmp_path):
    verdict = run_experiment("sigmoid-saturation", "tiny", out_dir=tmp_path, jobs=1)
    expected = {f"sigmoid/{k}" for k in saturation.SIGMOID_NUMBERS} | {"sigmoid_normal1/saturated_init"}
    expected |= {f"tanh_n/{k}" for k in saturation.TANH_NUMBERS}
    expected |= {f"{r}/test_error" for r in saturation.RUNS}
    assert set(verdict.numbers) == expected
    assert len(verdict.checks) == 6
    assert [p.name for p in verdict.figures] == ["sigmoid-saturation.png"] and verdict.figures[0].stat().st_size


# --- measuring helpers against hand-built records -----------------------------------------------------------


def _trained(activation, init, lr, seed, valid, test, status="finished"):
    """A run evaluated at updates 10, 20, 30 with the given validation and test error curves."""
    spec = {"name": "r", "data": {"name": "shapeset"}, "model": {"activation": activation},
            "init": {"scheme": init}, "optim": {"lr": lr}, "train": {"seed": seed}}
    steps = np.array([10, 20, 30])
    curves = {"valid/error": (steps, np.array(valid)), "test/error": (steps, np.array(test))}
    return TrainedRun(spec, status, 30, {}, curves)


def test_choose_takes_the_learning_rate_with_the_lowest_mean_validation_error():
    runs = [
        _trained("tanh", "standard", 0.1, 0, valid=[0.9, 0.3, 0.6], test=[0.9, 0.31, 0.1]),  # best at 20
        _trained("tanh", "standard", 0.1, 1, valid=[0.9, 0.6, 0.5], test=[0.9, 0.6, 0.52]),  # mean best 0.40
        _trained("tanh", "standard", 0.03, 0, valid=[0.9, 0.5, 0.35], test=[0.9, 0.5, 0.36]),
        _trained("tanh", "standard", 0.03, 1, valid=[0.37, 0.5, 0.4], test=[0.40, 0.2, 0.2]),  # mean 0.36: chosen
        _trained("tanh", "standard", 0.3, 0, valid=[0.1, 0.1, 0.1], test=[0.1, 0.1, 0.1], status="diverged"),
        _trained("tanh", "glorot_uniform", 0.03, 0, valid=[0.01] * 3, test=[0.01] * 3),  # another model
    ]
    cell = table1.choose(runs, "shapeset", "Tanh")
    assert cell.lr == 0.03
    assert cell.valid_error == pytest.approx(36.0)
    assert cell.steps == [30, 10]
    assert cell.test_errors == pytest.approx([36.0, 40.0])
    assert cell.test_error == pytest.approx(38.0)
    assert cell.valid_by_lr[0.1] == pytest.approx(40.0) and cell.valid_by_lr[0.3] == math.inf


def test_data_roots_from_settings_or_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPSCOPE_MNIST_ROOT", raising=False)
    monkeypatch.setenv("DEEPSCOPE_CIFAR10_ROOT", str(tmp_path))
    assert table1.data_roots({}) == {"cifar10": str(tmp_path)}
    assert table1.data_roots({"mnist_root": "m"}) == {"mnist": "m", "cifar10": str(tmp_path)}
    ctx = Context("glorot2010-table1", "tiny", {**get_experiment("glorot2010-table1").settings("tiny"),
                                                "mnist_root": "m"}, [0], tmp_path)
    datasets = [spec["data"]["name"] for spec in table1.grid(ctx)]
    assert datasets == ["shapeset"] * 5 + ["mnist"] * 5 + ["cifar10"] * 5


def _rows(layer, quantity, stat, steps, values, source="monitor"):
    return [{"step": s, "source": source, "layer": layer, "quantity": quantity, "stat": stat, "value": v}
            for s, v in zip(steps, values, strict=True)]


def test_init_numbers_read_the_first_record():
    stats = (_rows("hidden1", "activation", "std", [0, 10], [0.6, 0.1])
             + _rows("hidden2", "activation", "std", [0, 10], [0.15, 0.9])
             + _rows("hidden1", "preact_grad", "std", [0, 10], [0.002, 1.0])
             + _rows("hidden2", "preact_grad", "std", [0, 10], [0.01, 1.0])
             + _rows("hidden2", "jacobian", "sv_mean", [0, 10], [0.5, 2.0])
             + _rows("hidden2", "activation", "std", [0], [5.0], source="train"))
    r = figures.ProbedRun("x", {}, None, "finished", {}, stats)
    got = figures.init_numbers(r)
    assert got["act_std_ratio"] == pytest.approx(0.15 / 0.6)
    assert got["grad_std_ratio"] == pytest.approx(0.01 / 0.002)
    assert got["jacobian_sv_mean"] == pytest.approx(0.5)


def _hist(layer, step, counts, lo=0.0, hi=1.0):
    return {"step": step, "source": "monitor", "layer": layer, "quantity": "activation", "lo": lo, "hi": hi,
            "counts": counts}


def test_fraction_below_counts_the_bins_under_the_threshold():
    counts = [3.0, 1.0, 2.0] + [0.0] * 46 + [4.0]  # 50 bins of width 0.02 on [0, 1]
    r = figures.ProbedRun("x", {}, None, "finished", {}, [], [_hist("hidden2", 7, counts)])
    assert saturation.fraction_below(r, "hidden2", 7, 0.04) == pytest.approx(4 / 10)  # bins [0, .02), [.02, .04)
    assert saturation.fraction_below(r, "hidden2", 7, 0.05) == pytest.approx(4 / 10)  # [.04, .06) is not wholly below
    assert saturation.fraction_below(r, "hidden2", 7, 0.06) == pytest.approx(6 / 10)
    assert math.isnan(saturation.fraction_below(r, "hidden2", 8))


def test_early_collapse_finds_the_lowest_top_mean_in_the_window():
    steps = [0, 100, 200, 300, 400]
    stats = (_rows("hidden1", "activation", "mean", steps, [0.5, 0.6, 0.7, 0.7, 0.7])
             + _rows("hidden1", "activation", "p2", steps, [0.3, 0.4, 0.5, 0.5, 0.5])
             + _rows("hidden2", "activation", "mean", steps, [0.5, 0.2, 0.05, 0.3, 0.01])  # 0.01 is outside
             + _rows("hidden2", "activation", "p98", steps, [0.6, 0.4, 0.1, 0.5, 0.02])
             + _rows("hidden2", "activation", "saturated", steps, [0.0, 0.3, 0.2, 0.4, 0.9]))
    hists = [_hist("hidden2", 0, [0.0] * 25 + [1.0] * 25), _hist("hidden2", 200, [9.0] + [0.0] * 48 + [1.0])]
    r = figures.ProbedRun("x", {}, None, "finished", {}, stats, hists)
    got = saturation.early_collapse(r, window=0.5)
    assert got["collapse_step"] == 200  # 0.2 at update 100 is not below 0.6 / 4
    assert got["step"] == 200 and got["top_mean"] == pytest.approx(0.05)
    assert got["lower_mean"] == pytest.approx(0.7) and got["top_mean_init"] == pytest.approx(0.5)
    assert got["top_p98"] == pytest.approx(0.1) and got["lower_p2"] == pytest.approx(0.5)
    assert got["top_near_zero_init"] == 0.0 and got["top_near_zero"] == pytest.approx(0.9)
    assert got["top_saturated"] == pytest.approx(0.2) and got["top_saturated_max"] == pytest.approx(0.3)
    assert got["top_abs_mean_max"] == pytest.approx(0.5)
