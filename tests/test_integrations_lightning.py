"""The Lightning callback: records at the right global steps, leaves training untouched, logs through the
Trainer's loggers, diagnoses and writes the report; under DDP, rank 0 records the all-reduced gradients."""

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

L = pytest.importorskip("lightning")
pytest.importorskip("tensorboard")

from deepscope.integrations.lightning import DeepscopeCallback  # noqa: E402
from deepscope.integrations.trackers import read_tensorboard  # noqa: E402

EVERY, STEPS, ACCUMULATE, BATCH = 5, 23, 2, 16
HERE = Path(__file__).parent


def dataset(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long())


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 16), nn.Tanh(),
                                 nn.Linear(16, 3))
        self.seen: list[float] = []  # every training_step's loss, as returned

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        self.seen.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def fit(tmp: Path, callbacks: list) -> tuple[Net, dict, dict]:
    L.seed_everything(0, verbose=False)
    module = Net()
    initial = copy.deepcopy(module.state_dict())
    loggers = [L.pytorch.loggers.CSVLogger(tmp, name="csv"), L.pytorch.loggers.TensorBoardLogger(tmp, name="tb")]
    trainer = L.Trainer(max_steps=STEPS, accumulate_grad_batches=ACCUMULATE, callbacks=callbacks, logger=loggers,
                        accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, val_check_interval=10,
                        log_every_n_steps=5)
    train = DataLoader(dataset(512, 0), batch_size=BATCH, shuffle=True)
    trainer.fit(module, train, DataLoader(dataset(200, 1), batch_size=64))
    return module, initial, trainer.optimizers[0].state_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lightning")
    callback = DeepscopeCallback(every=EVERY, monitor_size=150)
    probed = fit(tmp / "probed", [callback])
    plain = fit(tmp / "plain", [])
    return tmp, callback, probed, plain


def test_records_at_global_steps_counted_in_updates(runs):
    _, callback, _, _ = runs
    steps = {source: sorted({r["step"] for r in callback.records if r["source"] == source})
             for source in ("monitor", "train")}
    # 23 updates of 2 accumulated batches each: a record every 5 updates; the last armed one (20) gets its
    # training batch, the monitor pass at 20 is the last one
    assert steps == {"monitor": [0, 5, 10, 15, 20], "train": [0, 5, 10, 15, 20]}
    assert [r["step"] for r in callback.scalars] == list(range(1, STEPS + 1))



def test_the_loss_of_an_update_is_the_mean_of_its_micro_batches(runs):
    """Lightning divides the loss it hands callbacks by accumulate_grad_batches; train/loss is the mean of the
    losses training_step returned for the update's micro-batches."""
    _, callback, (module, _, _), _ = runs
    seen = module.seen
    expected = [sum(seen[i:i + ACCUMULATE]) / ACCUMULATE for i in range(0, ACCUMULATE * STEPS, ACCUMULATE)]
    assert [r["value"] for r in callback.scalars] == pytest.approx(expected, rel=1e-5)


def test_training_identical_to_a_run_without_the_callback(runs):
    _, _, (module, initial, opt_state), (plain, plain_initial, plain_opt) = runs
    for key, value in plain_initial.items():
        assert torch.equal(initial[key], value)
    for (k, a), (_, b) in zip(module.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    for i, s in plain_opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_state["state"][i][key], s[key])


def test_monitor_is_the_validation_set(runs):
    """The step-0 monitor record equals the activations of the initial network on the first 150 validation
    examples, computed here in eval mode (no dropout)."""
    _, callback, (_, initial, _), _ = runs
    net = Net()
    net.load_state_dict(initial)
    net.eval()
    x = dataset(200, 1).tensors[0][:150]
    with torch.no_grad():
        h1 = torch.tanh(net.net[0](x))
        h2 = torch.tanh(net.net[3](h1))
    got = {(r["layer"], r["stat"]): r["value"] for r in callback.records
           if r["step"] == 0 and r["source"] == "monitor" and r["quantity"] == "activation"}
    layers = sorted({layer for layer, _ in got})
    assert len(layers) == 2
    for layer, h in zip(layers, (h1, h2), strict=True):
        assert got[(layer, "mean")] == pytest.approx(h.mean().item(), abs=1e-6)
        assert got[(layer, "std")] == pytest.approx(h.std(correction=0).item(), rel=1e-5)


def test_weight_gradient_is_the_accumulated_one(runs):
    """With 2 accumulated batches, the train record at step 0 holds the gradient the optimizer stepped on:
    the mean of the two batches' loss gradients at the initial weights, recomputed here by replaying the
    first two training steps from the same seed (same shuffled batches, same dropout masks)."""
    _, callback, (_, initial, _), _ = runs
    L.seed_everything(0, verbose=False)
    net = Net()  # consumes the RNG exactly as in fit()
    net.load_state_dict(initial)
    loader = DataLoader(dataset(512, 0), batch_size=BATCH, shuffle=True)
    batches = iter(loader)
    net.train()
    for _ in range(ACCUMULATE):
        x, y = next(batches)
        (F.cross_entropy(net(x), y) / ACCUMULATE).backward()
    rows = {(r["layer"], r["stat"]): r["value"] for r in callback.records
            if r["step"] == 0 and r["source"] == "train" and r["quantity"] == "weight_grad"}
    g = net.net[5].weight.grad
    layer = next(layer for layer, _ in rows if layer.endswith("5"))
    assert rows[(layer, "norm")] == pytest.approx(g.norm().item(), rel=1e-4)
    assert rows[(layer, "std")] == pytest.approx(g.std(correction=0).item(), rel=1e-4)


def test_scalars_in_the_loggers_files_and_report_from_tensorboard(runs):
    tmp, callback, _, _ = runs
    expected = {(r["step"], f"deepscope/{r['source']}/{r['quantity']}/{r['stat']}/{r['layer']}"): r["value"]
                for r in callback.records}
    with open(tmp / "probed" / "csv" / "version_0" / "metrics.csv") as f:
        logged = {(int(row["step"]), k): float(v) for row in csv.DictReader(f) for k, v in row.items()
                  if k.startswith("deepscope/") and k != "deepscope/loss" and v != ""}
    assert logged == pytest.approx(expected, rel=1e-6)

    stats, histograms, scalars = read_tensorboard(tmp / "probed" / "tb")
    assert {(r["step"], f"deepscope/{r['source']}/{r['quantity']}/{r['stat']}/{r['layer']}"): r["value"]
            for r in stats} == pytest.approx(expected, rel=1e-6, abs=1e-7)  # TensorBoard keeps float32
    assert [(h["step"], h["layer"], h["counts"]) for h in histograms] == \
        [(h["step"], h["layer"], h["counts"]) for h in sorted(callback.histograms, key=lambda h: h["step"])]
    losses = [r for r in scalars if r["name"] == "train/loss"]
    assert [r["step"] for r in losses] == [5, 10, 15, 20]
    window = [r["value"] for r in callback.scalars if 0 < r["step"] <= 5]
    assert losses[0]["value"] == pytest.approx(sum(window) / len(window), rel=1e-6)

    # the run read back from TensorBoard gets the same findings and figures as in memory
    from typer.testing import CliRunner

    from deepscope.cli import app

    out = tmp / "from-tb.html"
    result = CliRunner().invoke(app, ["report", str(tmp / "probed" / "tb"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "Activation" in out.read_text()
    # the same log directory twice, side by side: no store is needed either
    twice = CliRunner().invoke(app, ["report", str(tmp / "probed" / "tb"), str(tmp / "probed" / "tb"), "-o",
                                     str(tmp / "twice.html"), "--store", str(tmp / "no-store")])
    assert twice.exit_code == 0, twice.output
    from deepscope.diagnosis import diagnose

    assert [(f.code, f.layers) for f in diagnose(stats, histograms=histograms)] == \
        [(f.code, f.layers) for f in diagnose(callback.records, histograms=callback.histograms)]


def test_findings_printed_and_report_written(runs):
    tmp, callback, _, _ = runs
    assert callback.report_path == tmp / "probed" / "csv" / "version_0" / "deepscope-report.html"
    html = callback.report_path.read_text()
    assert "deepscope report: Net" in html and "data:image/png;base64" in html
    from deepscope.diagnosis import diagnose

    expected = diagnose(callback.records, scalars=callback.scalars, histograms=callback.histograms)
    assert [(f.code, f.layers) for f in callback.findings] == [(f.code, f.layers) for f in expected]
    assert all(f.code in html for f in expected)


@pytest.mark.slow
def test_ddp_rank0_records_the_averaged_gradient(tmp_path):
    """2 CPU processes on gloo: rank 0 records once; its weight gradient is the average of the two ranks'."""
    sys.path.insert(0, str(HERE))
    try:
        import lightning_ddp_run as run
    finally:
        sys.path.remove(str(HERE))
    src = str(HERE.parent / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HERE / "lightning_ddp_run.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["probed"] and not ranks[1]["probed"] and ranks[1]["records"] == []
    rows = ranks[0]["records"]
    assert {(r["source"], r["step"]) for r in rows} == {("train", 0)}
    assert len(rows) == len({(r["layer"], r["quantity"], r["stat"]) for r in rows})  # one record, no duplicates

    # by hand: Lightning gives each rank a shuffling DistributedSampler (seed 0) over the training set
    x, y = run.data()
    grads = []
    for rank in (0, 1):
        first = list(DistributedSampler(TensorDataset(x, y), num_replicas=2, rank=rank, shuffle=True, seed=0))[:8]
        net = run.network()
        F.cross_entropy(net(x[first]), y[first]).backward()
        grads.append(net[0].weight.grad)
    average = (grads[0] + grads[1]) / 2
    got = {r["stat"]: r["value"] for r in rows if r["quantity"] == "weight_grad" and r["layer"] == "net.0"}
    assert got["norm"] == pytest.approx(average.norm().item(), rel=1e-5)
    assert got["std"] == pytest.approx(average.std(correction=0).item(), rel=1e-5)
    assert abs(got["norm"] - grads[0].norm().item()) > 1e-3  # the local gradient would differ


def test_given_monitor_tensors_and_bad_options(tmp_path):
    x = dataset(40, 2).tensors[0]
    callback = DeepscopeCallback(every=2, monitor=x, diagnose=False)
    trainer = L.Trainer(max_steps=3, callbacks=[callback], logger=False, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(Net(), DataLoader(dataset(64, 0), batch_size=BATCH))
    monitor = [r for r in callback.records if r["source"] == "monitor"]
    assert sorted({r["step"] for r in monitor}) == [0, 2]
    assert {r["quantity"] for r in monitor} == {"activation", "jacobian"}  # x without y: no gradients
    with pytest.raises(ValueError, match=r"every=0 is not allowed"):
        DeepscopeCallback(every=0)
    with pytest.raises(ValueError, match=r"monitor_size=-1 is not allowed"):
        DeepscopeCallback(monitor_size=-1)
