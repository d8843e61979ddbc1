import itertools
import json
import math
import re
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deepscope.cli import app
from deepscope.experiments import (
    EXPERIMENTS,
    Experiment,
    Verdict,
    get_experiment,
    optimizers_2d,
    orthogonal_isometry,
    run_experiment,
    run_grid,
    zero_init_symmetry,
)
from deepscope.models import mlp
from deepscope.store import Store

runner = CliRunner()


def _keys(prefixes, suffixes):
    return {f"{p}/{s}" for p, s in itertools.product(prefixes, suffixes)}


EXPECTED_NUMBERS = {
    "zero-init-symmetry": _keys(
        ["zeros", "constant", "glorot_uniform"], ["unit_spread", "moved", "distinct_units", "final_loss"]
    ),
    "small-init-vanishing": _keys(
        ["tanh_normal_0.01", "tanh_glorot", "sigmoid_normal_1"],
        ["std_first", "std_last", "std_ratio", "saturated_last"],
    ),
    "optimizers-2d": _keys(["valley"], [f"{o}/final_loss" for o in optimizers_2d.OPTIMIZERS])
    | _keys(["saddle"], [f"{o}/escape_step" for o in optimizers_2d.OPTIMIZERS]),
    "selu-lecun": _keys(["selu_lecun", "relu_lecun", "selu_he"], ["max_abs_mean", "max_var_error", "var_last"]),
    "lsuv": _keys(
        ["relu/lsuv", "relu/orthogonal", "tanh/lsuv", "tanh/orthogonal"],
        ["max_var_error", "max_var_error_heldout", "var_last_hidden"],
    ),
    "orthogonal-isometry": _keys(
        ["tanh_orthogonal", "tanh_gaussian", "relu_orthogonal"], ["spread", "near_1", "sv_median", "sv_max"]
    ),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Every experiment of this file run once on the tiny profile: name -> (verdict, out_dir)."""
    out = tmp_path_factory.mktemp("tiny")
    return {name: (run_experiment(name, "tiny", out_dir=out), out) for name in EXPECTED_NUMBERS}


# --- registry ------------------------------------------------------------------------------------


def test_registry_holds_the_experiments_with_three_profiles():
    assert set(EXPECTED_NUMBERS) <= set(EXPERIMENTS)
    for exp in EXPERIMENTS.values():
        assert set(exp.profiles) >= {"tiny", "quick", "paper"} and exp.claim and exp.source


def test_unknown_experiment_lists_the_valid_names():
    with pytest.raises(ValueError, match="experiment='nope' is not known; choose one of: .*lsuv"):
        get_experiment("nope")


def test_bad_profile_and_seeds_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="profile='huge' is not known; choose one of: tiny, quick, paper"):
        run_experiment("lsuv", "huge", out_dir=tmp_path)
    with pytest.raises(ValueError, match="seeds=0"):
        run_experiment("lsuv", "tiny", seeds=0, out_dir=tmp_path)


def test_experiment_needs_all_profiles_and_something_to_run():
    with pytest.raises(ValueError, match="lacks profile"):
        Experiment("x", "c", "s", {"tiny": {}}, verdict=lambda r, c: None, figure=lambda r, c: [], run=lambda c: 0)
    with pytest.raises(ValueError, match="needs a run function, a grid, or both"):
        Experiment("x", "c", "s", dict.fromkeys(("tiny", "quick", "paper"), {}), verdict=None, figure=None)


# --- every experiment on the tiny profile (machinery) --------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED_NUMBERS))
def test_tiny_profile_gives_a_verdict_and_a_figure(tiny, name):
    verdict, out = tiny[name]
    assert isinstance(verdict, Verdict) and verdict.name == name and verdict.profile == "tiny"
    assert set(verdict.numbers) == EXPECTED_NUMBERS[name]
    assert all(isinstance(v, float) and not math.isnan(v) for v in verdict.numbers.values())
    assert verdict.checks and verdict.passed == all(verdict.checks.values())
    assert verdict.figures and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in verdict.figures)
    saved = json.loads((out / f"{name}.json").read_text())
    assert saved["passed"] == verdict.passed and saved["numbers"].keys() == verdict.numbers.keys()


# --- science where it is cheap and robust on the tiny profile ------------------------------------


def test_zero_init_units_stay_identical_and_glorot_units_differ(tiny):
    verdict, _ = tiny["zero-init-symmetry"]
    assert verdict.passed, verdict.checks
    assert verdict.numbers["zeros/distinct_units"] == 1 and verdict.numbers["constant/distinct_units"] == 1
    assert verdict.numbers["glorot_uniform/distinct_units"] == 16  # the tiny width


def test_unit_spread_and_distinct_units_match_a_brute_force_count():
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2, 3], [1, 2, 3], [1, 2.5, 3], [0, 0, 0]]))
        layer.bias.copy_(torch.tensor([0.0, 0, 0, 0.25]))
    rows = torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
    brute = max((rows[i] - rows[j]).abs().max().item() for i in range(4) for j in range(4))
    assert zero_init_symmetry.unit_spread(layer).item() == pytest.approx(brute) == 3.0
    assert zero_init_symmetry.distinct_units(layer) == 3  # rows 0 and 1 are the same unit


def test_lsuv_reaches_unit_variance_where_orthogonal_alone_does_not(tiny):
    verdict, _ = tiny["lsuv"]
    assert verdict.passed, verdict.checks
    for act in ("relu", "tanh"):
        assert verdict.numbers[f"{act}/lsuv/max_var_error"] < 0.1
        assert verdict.numbers[f"{act}/orthogonal/max_var_error"] > 0.5


def test_selu_lecun_keeps_unit_variance(tiny):
    verdict, _ = tiny["selu-lecun"]
    assert verdict.passed, verdict.checks


def test_small_init_first_layer_std_matches_the_linear_regime_formula(tiny):
    # tanh(z) ~ z for small z: std(tanh(W x)) ~ sqrt(fan_in) * 0.01 * std(x), x ~ N(0, 1), fan_in = 64
    verdict, _ = tiny["small-init-vanishing"]
    assert verdict.numbers["tanh_normal_0.01/std_first"] == pytest.approx(math.sqrt(64) * 0.01, rel=0.1)


def test_gradient_descent_in_the_valley_follows_the_closed_form():
    # f = 0.05 x^2 + 5 y^2: x(n) = x0 (1 - 0.1 lr)^n, y(n) = y0 (1 - 10 lr)^n
    lr, steps = 0.13, 25
    path = optimizers_2d.descend(optimizers_2d.valley, "sgd", lr, (-9.0, 1.5), steps)
    n = torch.arange(steps + 1, dtype=torch.float64)
    expected = torch.stack([-9.0 * (1 - 0.1 * lr) ** n, 1.5 * (1 - 10 * lr) ** n], dim=1)
    torch.testing.assert_close(path, expected)


def test_orthogonal_linear_net_jacobian_is_an_isometry():
    model = mlp(16, 2, 6, 16, activation="identity", init="orthogonal")
    sv = orthogonal_isometry.jacobian_singular_values(model, torch.randn(2, 16))
    torch.testing.assert_close(sv, torch.ones_like(sv), rtol=0, atol=1e-5)  # float32 weights, float64 Jacobian
    assert orthogonal_isometry.spread(sv) == pytest.approx(0.0, abs=1e-5)


# --- results in the store ------------------------------------------------------------------------


def test_store_records_a_summary_run(tmp_path):
    verdict = run_experiment("selu-lecun", "tiny", store=tmp_path / "store", out_dir=tmp_path / "out")
    store = Store(tmp_path / "store")
    (run,) = store.runs()
    assert run["name"] == "experiment:selu-lecun" and run["status"] == "finished"
    scalars = {row["name"]: row["value"] for row in store.scalars(run["id"])}
    assert scalars["passed"] == float(verdict.passed)
    for key, value in verdict.numbers.items():
        assert scalars[key] == pytest.approx(value)
    assert store.get_run(run["id"])["spec"]["profile"] == "tiny"


# --- sweeps --------------------------------------------------------------------------------------


def _spec(seed: int, activation: str) -> dict:
    return {
        "name": f"sweep-{activation}",
        "data": {"name": "shapeset", "options": {"n_train": 100, "n_valid": 30, "n_test": 30, "size": 8}},
        "model": {"depth": 1, "width": 8, "activation": activation},
        "optim": {"name": "sgd", "lr": 0.1},
        "train": {"updates": 10, "batch_size": 10, "seed": seed, "device": "cpu"},
    }


def _grid_experiment(specs) -> Experiment:
    def verdict(outcomes, ctx):
        losses = {o.spec["model"]["activation"]: o.metrics["test/loss"] for o in outcomes}
        return Verdict.from_checks({"ran": len(outcomes) == len(specs)}, losses, "grid ran")

    return Experiment("grid-check", "c", "s", dict.fromkeys(("tiny", "quick", "paper"), {}), verdict=verdict,
                      figure=lambda outcomes, ctx: [], grid=lambda ctx: specs)


def test_grid_runs_in_processes_into_the_store_with_the_numbers_of_a_serial_run(tmp_path, monkeypatch):
    specs = [_spec(0, "tanh"), _spec(1, "sigmoid")]
    serial = run_grid(specs, jobs=1)
    monkeypatch.setitem(EXPERIMENTS, "grid-check", _grid_experiment(specs))
    verdict = run_experiment("grid-check", "tiny", store=tmp_path, jobs=2, out_dir=tmp_path)
    assert verdict.passed and len(verdict.run_ids) == 2
    # the same numbers up to float rounding (a multi-threaded BLAS may split its sums differently under load)
    assert verdict.numbers == pytest.approx({o.spec["model"]["activation"]: o.metrics["test/loss"] for o in serial},
                                            rel=1e-4)
    runs = {run["id"]: run for run in Store(tmp_path).runs()}
    assert all(runs[rid]["status"] == "finished" for rid in verdict.run_ids)
    assert any(run["name"] == "experiment:grid-check" for run in runs.values())


def test_bad_backend_jobs_and_specs_are_rejected_before_any_run():
    with pytest.raises(ValueError, match="backend='dask' is not known; choose one of: local, ray"):
        run_grid([_spec(0, "tanh")], backend="dask")
    with pytest.raises(ValueError, match="jobs=0"):
        run_grid([_spec(0, "tanh")], jobs=0)
    with pytest.raises(ValueError, match="grid spec 1: model.activation='tanhh' is not known"):
        run_grid([_spec(0, "tanh"), _spec(0, "tanhh")], jobs=2)


def test_ray_backend_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"deepscope\[ray\]"):
        run_grid([_spec(0, "tanh")], backend="ray")


def test_ray_backend_gives_the_numbers_of_the_local_one():
    ray = pytest.importorskip("ray")
    specs = [_spec(0, "tanh"), _spec(1, "tanh")]
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        remote = run_grid(specs, backend="ray")
    finally:
        ray.shutdown()
    local = run_grid(specs, jobs=1)
    for r, l in zip(remote, local, strict=True):
        assert r.metrics == pytest.approx(l.metrics, rel=1e-4)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_lists_the_experiments():
    result = runner.invoke(app, ["experiments", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in EXPECTED_NUMBERS:
        assert name in result.output


def test_cli_run_passes_with_exit_0_and_writes_the_figure(tmp_path):
    result = runner.invoke(app, ["experiments", "run", "selu-lecun", "--profile", "tiny", "-o", str(tmp_path)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "selu_lecun/var_last" in result.output
    assert (tmp_path / "selu-lecun.png").exists()


def test_cli_run_exits_1_on_a_failed_verdict(tmp_path, monkeypatch):
    failing = Experiment("always-fails", "c", "s", dict.fromkeys(("tiny", "quick", "paper"), {}), run=lambda ctx: None,
                         verdict=lambda r, ctx: Verdict.from_checks({"impossible": False}, {"x": 1.0}, "no"),
                         figure=lambda r, ctx: [])
    monkeypatch.setitem(EXPERIMENTS, "always-fails", failing)
    result = runner.invoke(app, ["experiments", "run", "always-fails", "-p", "tiny", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "FAILED" in result.output and "impossible (does not hold)" in result.output


def test_set_changes_the_settings_the_experiment_sees(tmp_path, monkeypatch):
    seen = {}
    probe_exp = Experiment(
        "settings-check", "c", "s",
        {"tiny": {"updates": 10, "lr": 0.1, "widths": [8, 16], "net": {"depth": 2}}, "quick": {}, "paper": {}},
        run=lambda ctx: seen.update(ctx.settings), figure=lambda r, ctx: [],
        verdict=lambda r, ctx: Verdict.from_checks({"ran": True}, {}, "ok"),
    )  # fmt: skip
    monkeypatch.setitem(EXPERIMENTS, "settings-check", probe_exp)
    overrides = ["updates=20", "lr=1", "widths=[4]", "net.depth=3"]
    verdict = run_experiment("settings-check", "tiny", out_dir=tmp_path, store=tmp_path / "store",
                             overrides=overrides)
    assert seen == {"updates": 20, "lr": 1.0, "widths": [4], "net": {"depth": 3}}
    saved = json.loads((tmp_path / "settings-check.json").read_text())
    assert saved["settings"] == seen and saved["overrides"] == overrides == verdict.overrides
    assert isinstance(seen["lr"], float)
    (run,) = Store(tmp_path / "store").runs()
    assert Store(tmp_path / "store").get_run(run["id"])["spec"]["settings"] == seen  # recorded as run
    assert probe_exp.profiles["tiny"]["net"] == {"depth": 2}  # the profile itself is untouched
    for bad, message in [
        ("nope=1", "--set nope: not a setting of settings-check --profile tiny; choose one of: lr, net, updates, "
                   "widths"),
        ("net.nope=1", "--set net.nope: not a setting of settings-check --profile tiny; choose one of: net.depth"),
        ("updates=abc", "--set updates=abc: give an integer, as the profile's 10"),
        ("lr=[1]", "--set lr=[1]: give a number, as the profile's 0.1"),
        ('widths=["a"]', """--set widths=["a"]: give a list of integers, as the profile's [8, 16]"""),
        ("updates", "--set 'updates': expected key=value, e.g. --set updates=2000"),
    ]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            run_experiment("settings-check", "tiny", out_dir=tmp_path, overrides=[bad])
    result = runner.invoke(app, ["experiments", "run", "settings-check", "-p", "tiny", "-o", str(tmp_path),
                                 "--set", "updates=x"])
    assert result.exit_code == 2 and "give an integer" in result.output
    result = runner.invoke(app, ["experiments", "run", "settings-check", "-p", "tiny", "-o", str(tmp_path),
                                 "--set", "updates=30"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "profile tiny, --set updates=30" in result.output


def test_cli_show_lists_each_profiles_settings():
    result = runner.invoke(app, ["experiments", "show", "dropout"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    quick = get_experiment("dropout").profiles["quick"]
    assert all(key in result.output for key in quick) and repr(quick["width"]) in result.output
    assert runner.invoke(app, ["experiments", "show", "nope"]).exit_code == 2


@pytest.mark.parametrize("args", [["nope"], ["lsuv", "--profile", "huge"], ["lsuv", "--seeds", "0"]])
def test_cli_run_exits_2_on_bad_input(tmp_path, args):
    result = runner.invoke(app, ["experiments", "run", *args, "-o", str(tmp_path)])
    assert result.exit_code == 2
