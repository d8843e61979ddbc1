"""Figures and the HTML report, on synthetic rows (the end-to-end run is in test_report_browser.py)."""

import base64
import math
import re

import pytest
from matplotlib.figure import Figure

from deepscope.diagnosis import Finding
from deepscope.plots import activations, curves, gradients, jacobian
from deepscope.plots.figure import series
from deepscope.plots.html import FIGURES, RunData, render
from deepscope.workflows.report import report

LAYERS = ["hidden1", "hidden2", "hidden3"]
STEPS = [0, 50, 100, 150, 200]


def gaussian_counts(width, bins=40):
    return [math.exp(-(((k + 0.5) / bins - 0.5) / width) ** 2) for k in range(bins)]


def synthetic_run(name="tanh", source="monitor", **kw) -> RunData:
    """Records shaped as the probe and the trainer write them; the numbers follow simple formulas."""
    stats, hists, scalars = [], [], []
    for step in STEPS:
        for i, layer in enumerate(LAYERS):
            values = {
                ("activation", "mean"): 0.1 * i + step / 1000, ("activation", "std"): 0.5 / (i + 1),
                ("activation", "p2"): -0.9, ("activation", "p98"): 0.9 - 0.1 * i,
                ("activation", "saturated"): 0.01, ("preact_grad", "std"): 1e-3 * (i + 1),
                ("weight_grad", "mean"): 1e-4 * i, ("weight_grad", "std"): 1e-3 * (i + 1),
                ("weight_grad", "norm"): 0.1, ("jacobian", "sv_mean"): 0.8, ("jacobian", "sv_min"): 0.3,
                ("jacobian", "sv_max"): 1.4,
            }
            stats += [dict(step=step, source=source, layer=layer, quantity=q, stat=s, value=v)
                      for (q, s), v in values.items()]
            for quantity, lo, hi in [("activation", -1.0, 1.0), ("preact_grad", -0.01, 0.01),
                                     ("weight_grad", -0.02, 0.02)]:
                hists.append(dict(step=step, source=source, layer=layer, quantity=quantity, lo=lo, hi=hi,
                                  counts=gaussian_counts(0.1 * (i + 1))))
        if step:
            scalars += [dict(step=step, name="train/loss", value=2.2 * math.exp(-step / 300)),
                        dict(step=step, name="train/error", value=0.8 * math.exp(-step / 400)),
                        dict(step=step, name="test/error", value=0.85 * math.exp(-step / 500))]
    spec = {"name": name, "model": {"activation": "tanh", "depth": 3, "width": 32}, "optim": {"lr": 0.1}}
    return RunData(name, run_id=f"{name}-1", spec=spec, status="finished", stats=stats, histograms=hists,
                   scalars=scalars, **kw)


def lines(fig: Figure):
    return [line for ax in fig.axes for line in ax.get_lines()]


# --- figures ---------------------------------------------------------------------------------------


def test_series_prefers_the_monitor_source_and_keeps_layer_order():
    run = synthetic_run()
    noise = [dict(r, source="train", value=-1.0) for r in run.stats]
    got = series(noise + run.stats, "activation", "std")
    assert list(got) == LAYERS
    assert got["hidden2"] == (STEPS, [0.25] * len(STEPS))
    assert series(noise, "activation", "std")["hidden1"][1] == [-1.0] * len(STEPS)  # train when alone


def test_mean_std_figure_draws_the_recorded_means():
    fig = activations.activation_mean_std(synthetic_run().stats)
    drawn = [list(line.get_ydata()) for line in lines(fig) if len(line.get_xdata()) == len(STEPS)]
    expected = [[0.1 * i + s / 1000 for s in STEPS] for i in range(len(LAYERS))]
    for want in expected:
        assert any(got == pytest.approx(want) for got in drawn)


def test_percentile_figure_has_p98_markers_and_std_lines():
    fig = activations.activation_percentiles(synthetic_run().stats)
    labels = {line.get_label(): list(line.get_ydata()) for line in lines(fig)}
    assert labels["hidden3 p98"] == pytest.approx([0.7] * len(STEPS))
    assert labels["hidden1 std"] == pytest.approx([0.5] * len(STEPS))


@pytest.mark.parametrize("draw", [activations.activation_histograms, gradients.backprop_histograms,
                                  gradients.weight_gradient_histograms])
def test_histograms_are_densities_at_first_and_last_step(draw):
    fig = draw(synthetic_run().histograms)
    assert len(fig.axes) == 2
    assert "update 0" in fig.axes[0].get_title() and f"update {STEPS[-1]}" in fig.axes[1].get_title()
    for line in lines(fig):
        x, y = line.get_xdata(), line.get_ydata()
        width = x[1] - x[0]
        assert sum(y) * width == pytest.approx(1.0)  # area 1, whatever the bin width


def test_weight_gradient_intervals_are_mean_plus_minus_std():
    fig = gradients.weight_gradient_intervals(synthetic_run().stats)
    ax = fig.axes[0]
    # errorbar(fmt="none") draws LineCollections whose segments span mean - std .. mean + std
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    spans = sorted({(round(seg[0][1], 9), round(seg[1][1], 9)) for seg in segments if seg[0][0] == seg[1][0]})
    expected = sorted({(round(1e-4 * i - 1e-3 * (i + 1), 9), round(1e-4 * i + 1e-3 * (i + 1), 9)) for i in range(3)})
    assert spans == expected


def test_jacobian_and_curves():
    run = synthetic_run()
    fig = jacobian.jacobian_singular_values(run.stats)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
    assert [c.get_label() for c in ax.containers] == ["initialization", f"update {STEPS[-1]}"]
    for c in ax.containers:
        assert list(c.lines[0].get_ydata()) == pytest.approx([0.8] * 3)  # the mean
        caps = sorted(v for cap in c.lines[1] for v in cap.get_ydata())
        assert caps == pytest.approx([0.3] * 3 + [1.4] * 3)  # bars from min to max
    assert ax.get_title().endswith("(mean, min-max)")
    lanczos = [r for r in run.stats if r.get("stat") != "sv_min"]  # Lanczos records: mean and max only
    ax = jacobian.jacobian_singular_values(lanczos).axes[0]
    caps = sorted(v for cap in ax.containers[0].lines[1] for v in cap.get_ydata())
    assert caps == pytest.approx([0.8] * 3 + [1.4] * 3) and ax.get_title().endswith("(mean, bar up to the max)")
    fig = curves.error_curves({"a": run.scalars})
    test_line = next(line for line in lines(fig) if line.get_label() == "a test")
    assert list(test_line.get_ydata()) == pytest.approx([85 * math.exp(-s / 500) for s in STEPS[1:]])
    assert curves.loss_curves({"a": run.scalars}).axes[0].get_yscale() == "linear"  # 2.2 .. 1.1: one scale
    diverging = [dict(r, value=r["value"] * 100) for r in run.scalars]
    assert curves.loss_curves({"a": run.scalars, "b": diverging}).axes[0].get_yscale() == "log"


def test_figures_without_data_return_none():
    empty = RunData("empty")
    assert all(kind.draw(empty) is None for kind in FIGURES)
    assert curves.error_curves({"empty": []}) is None and curves.loss_curves({"empty": []}) is None


# --- the report --------------------------------------------------------------------------------------


def test_report_is_self_contained_with_every_figure(tmp_path):
    out = report([synthetic_run("tanh"), synthetic_run("softsign")], out_path=tmp_path / "r.html")
    html = out.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2 + 2 * len(FIGURES)  # two comparison figures, every family for both runs
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert html.count('<div class="run">softsign</div>') == len(FIGURES)  # side by side in every family


def test_report_escapes_user_input(tmp_path):
    evil = "<script>alert(1)</script>"
    run = synthetic_run(evil)
    run.stats, run.histograms = [], []  # the names matter here, not the figures
    run.spec["model"]["activation"] = '"><img src=x onerror=alert(2)>'
    html = report([run], out_path=tmp_path / "r.html").read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "onerror=alert(2)>" not in html and "<img src=x" not in html


def test_report_notes_missing_figures_and_shows_findings_first(tmp_path):
    finding = Finding("saturation", "error", "hidden3 saturated", layers=["hidden3"], first_step=50,
                      recovers=False, evidence={"saturated_fraction": 0.8}, advice="use softsign")
    runs = [synthetic_run("full", findings=[finding]), RunData("bare", scalars=synthetic_run().scalars)]
    html = render(runs)
    assert "no Jacobian singular values recorded" in html and "no activation histograms recorded" in html
    assert html.index('id="findings"') < html.index('id="curves"') < html.index('id="activation_mean_std"')
    assert "hidden3 saturated" in html and "saturated_fraction = 0.8" in html and "use softsign" in html


def test_report_diagnoses_runs_without_findings_and_the_plots_draw_only_what_they_are_given(tmp_path):
    dead = [dict(step=s, source="monitor", layer="hidden2", quantity="activation", stat="dead", value=1.0)
            for s in STEPS]
    html = report([RunData("dead", stats=dead)], out_path=tmp_path / "r.html").read_text()
    assert "dead_units" in html and "1 error" in html
    assert "dead_units" not in render([RunData("dead", stats=dead)])  # plots never diagnose


def test_report_reads_runs_from_a_store(tmp_path):
    from deepscope.store import Store

    run = synthetic_run("stored")
    with Store(tmp_path / "runs") as store:
        run_id = store.create_run("stored", run.spec, seed=0)
        store.log_stats(run_id, run.stats)
        store.log_histograms(run_id, run.histograms)
        for row in run.scalars:
            store.log_scalars(run_id, row["step"], {row["name"]: row["value"]})
        store.flush()
        out = report([run_id], store, tmp_path / "r.html")
    html = out.read_text()
    assert run_id in html and len(re.findall(r"<img ", html)) == 2 + len(FIGURES)
    with pytest.raises(ValueError, match="pass the store"):
        report(["stored-1"], None, tmp_path / "x.html")
    with pytest.raises(ValueError, match="at least one run"):
        render([])
