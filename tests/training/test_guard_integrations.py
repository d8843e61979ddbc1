"""The guard in the deepscope trainer (train.guard / --guard), in Lightning and in the Hugging Face Trainer: a batch
with a NaN example is skipped -- the optimizer's own step count says so --, the events reach the store, the run
folder and the report."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

BAD = 8  # the batch (0-based) holding the NaN example
BATCH, STEPS = 16, 14


def _xy(n=BATCH * STEPS, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    x[BAD * BATCH + 5] = math.nan  # example 5 of batch BAD
    return x, y


def _adam_steps(optimizer) -> int:
    return int(next(iter(optimizer.state.values()))["step"])


def test_lightning_callback_skips_the_nan_batch_and_names_the_example(tmp_path):
    L = pytest.importorskip("lightning")
    from deepscope.integrations.lightning import DeepscopeCallback

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    L.seed_everything(0, verbose=False)
    module = Net()
    callback = DeepscopeCallback(monitor=False, diagnose=False, log=False, guard={"warmup": 4, "refresh": 1})
    trainer = L.Trainer(max_steps=STEPS, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(*_xy()), batch_size=BATCH))
    events = callback.guard.events
    assert [(e.step, e.kind, e.action) for e in events] == [(BAD, "nonfinite", "skip")]
    assert events[0].examples[0] == 5
    assert _adam_steps(trainer.optimizers[0]) == STEPS - 1  # Adam never saw the skipped update
    assert all(p.isfinite().all() for p in module.parameters())
    assert "step" not in vars(trainer.optimizers[0])  # the optimizer's own step is back


def test_lightning_with_a_grad_scaler_checks_the_unscaled_loss_and_skips_the_spike(tmp_path):
    """16-bit mixed precision: Lightning runs the closure itself and the GradScaler calls optimizer.step(); the
    guard still sees the step, with the loss the training step computed (not the scaled one)."""
    L = pytest.importorskip("lightning")
    from lightning.pytorch.plugins.precision import MixedPrecision

    from deepscope.integrations.lightning import DeepscopeCallback

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
            self.seen = {}

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            loss = F.cross_entropy(self(batch[0]).float(), batch[1])
            self.seen[batch_idx] = loss.item()
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    x, y = _xy()
    # a huge input twice, with either label: one of the two is confidently wrong (a loss spike, finite in fp16)
    x[BAD * BATCH + 5: BAD * BATCH + 7] = 300.0
    y[BAD * BATCH + 5: BAD * BATCH + 7] = torch.tensor([0, 1])
    L.seed_everything(0, verbose=False)
    module = Net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    callback = DeepscopeCallback(monitor=False, diagnose=False, log=False, guard={"warmup": 4, "refresh": 1})
    trainer = L.Trainer(max_steps=STEPS, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    events = callback.guard.events
    assert [(e.step, e.action) for e in events] == [(BAD, "skip")] and events[0].kind.endswith("spike")
    assert events[0].loss == pytest.approx(module.seen[BAD], rel=1e-3)  # unscaled (the scale is 1024)
    assert events[0].examples[0] in (5, 6)
    assert _adam_steps(trainer.optimizers[0]) == STEPS - 1


def test_hugging_face_callback_skips_and_holds_the_schedule(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from deepscope.integrations.transformers import DeepscopeCallback

    x, y = _xy()

    class Data(Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))

        def forward(self, x, labels=None):
            logits = self.net(x)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    torch.manual_seed(0)
    args = transformers.TrainingArguments(str(tmp_path), max_steps=STEPS, per_device_train_batch_size=BATCH,
                                          report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True,
                                          learning_rate=1e-2, seed=0)
    callback = DeepscopeCallback(monitor=False, diagnose=False, guard={"warmup": 4, "refresh": 1})
    trainer = transformers.Trainer(model=Net(), args=args, train_dataset=Data(), callbacks=[callback])
    trainer.train()
    events = callback.guard.events
    assert [(e.kind, e.action) for e in events] == [("nonfinite", "skip")]
    # the dict batch's examples ranked by the model's own loss: the one NaN example first, the others finite
    assert len(events[0].examples) == 3 and math.isnan(events[0].example_loss[0])
    assert all(math.isfinite(v) for v in events[0].example_loss[1:])
    assert _adam_steps(trainer.optimizer) == STEPS - 1
    assert trainer.lr_scheduler.last_epoch == STEPS - 1  # the Trainer did not step the schedule on the skip
    assert all(p.isfinite().all() for p in trainer.model.parameters())


class _NaNAt(nn.Module):
    """An MLP whose training forward pass of update ``at`` sees a NaN input (what a corrupt batch gives)."""

    def __init__(self, at: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        self.at, self.calls = at, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls - 1 == self.at:
                x = x.clone()
                x[0] = math.nan
        return self.net(x)


def test_deepscope_train_guard_records_events_in_the_store_run_folder_and_report(tmp_path):
    from deepscope import train
    from deepscope.plots.html import render
    from deepscope.store import Store
    from deepscope.workflows.report import run_data

    spec = {"name": "guarded", "data": {"name": "digits"}, "optim": {"name": "sgd", "lr": 0.05},
            "train": {"updates": 120, "batch_size": 16, "device": "cpu", "eval_every": 40,
                      "guard": {"warmup": 8, "refresh": 2}}}
    torch.manual_seed(0)
    result = train(spec, store=tmp_path, quiet=True, model=_NaNAt(50))
    assert result.status == "finished" and math.isfinite(result.metrics["train/loss"])
    assert [(e.step, e.kind, e.action) for e in result.guard.events] == [(50, "nonfinite", "skip")]
    assert result.guard.updates == 119
    saved = json.loads((result.store.run_dir(result.run_id) / "guard.json").read_text())
    assert saved["events"][0]["kind"] == "nonfinite" and len(saved["events"][0]["ids"]) == 3
    store = Store(tmp_path)
    assert [(r["step"], r["name"]) for r in store.scalars(result.run_id) if r["name"].startswith("guard/")] == [
        (50, "guard/skip")]
    html = render([run_data(store, result.run_id)])
    assert "<dt>guard</dt><dd>1 skip at update 50</dd>" in html


def test_the_command_line_guard_flag(tmp_path):
    from typer.testing import CliRunner

    from deepscope.cli.main import app

    spec = tmp_path / "run.toml"
    spec.write_text('[data]\nname = "digits"\n[model]\ndepth = 1\nwidth = 16\n[train]\nupdates = 30\n'
                    'batch_size = 16\ndevice = "cpu"\n')
    out = CliRunner().invoke(app, ["train", str(spec), "--guard", "--quiet", "--store", str(tmp_path / "s")])
    assert out.exit_code == 0, out.output
    assert "guard: 30 updates applied, no action" in out.output
    run = next((tmp_path / "s").glob("run-*/guard.json"))
    assert json.loads(run.read_text())["events"] == []
