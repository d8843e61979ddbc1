"""The callbacks on set-ups beyond the plain loop: Lightning manual optimization, gradient accumulation, resuming
from a checkpoint; Hugging Face models that return tuples, accumulation, resuming. A guarded run with a NaN batch
and a x1000 batch must end exactly where a run without those batches ends (the skipped updates leave no trace),
name the offending example by its position in the whole update, and keep its state across a resume."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

B, N, NAN_AT, BIG_AT = 16, 12, 5, 9  # batch size, updates, the update with a NaN example, the update scaled x1000
OPTIONS = {"warmup": 4, "refresh": 1}


def xy(accumulate: int = 1, drop: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """N updates of ``accumulate`` batches; update NAN_AT holds a NaN in example 5 of its last micro-batch, update
    BIG_AT is scaled x1000 (a loss spike for a ReLU net); ``drop``: the updates left out (the reference run)."""
    size = B * accumulate
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N * size, 8, generator=g)
    y = (x[:, 0] > 0).long()
    x[NAN_AT * size + (accumulate - 1) * B + 5] = math.nan
    x[BIG_AT * size:(BIG_AT + 1) * size] *= 1000
    keep = torch.cat([torch.arange(i * size, (i + 1) * size) for i in range(N) if i not in drop])
    return x[keep], y[keep]


def relu_net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def assert_same_state(model_a, opt_a, model_b, opt_b):
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    for i in sb:
        for key in sb[i]:
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)


# ---------------------------------------------------------------------------------------------------- Lightning

L = pytest.importorskip("lightning")
from deepscope.integrations.lightning import DeepscopeCallback  # noqa: E402


class Module(L.LightningModule):
    def __init__(self, manual: bool = False, backward: str = "manual_backward", optimizers: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.other = relu_net(), nn.Linear(8, 2)
        self.automatic_optimization = not manual
        self.backward_call, self.n_optimizers, self.big_at = backward, optimizers, None

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x = batch[0] * (1000 if self.global_step == self.big_at else 1)
        loss = F.cross_entropy(self(x), batch[1])
        if self.automatic_optimization:
            return loss
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for o in opts:
            o.zero_grad()
        if self.n_optimizers == 2:
            loss = loss + F.cross_entropy(self.other(batch[0]), batch[1])
        self.manual_backward(loss) if self.backward_call == "manual_backward" else loss.backward()
        for o in opts:
            o.step()
        return loss

    def configure_optimizers(self):
        first = torch.optim.Adam(self.net.parameters(), lr=0.01)
        return [first, torch.optim.SGD(self.other.parameters(), lr=0.1)] if self.n_optimizers == 2 else first


def lightning_fit(module, data, callback=None, steps=N, root=None, ckpt_path=None, **kwargs):
    trainer = L.Trainer(max_steps=steps, callbacks=[callback] if callback else [], logger=False,
                        enable_checkpointing=root is not None, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=root, **kwargs)
    trainer.fit(module, DataLoader(TensorDataset(*data), batch_size=B), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("manual, accumulate", [(True, 1), (False, 4)])
def test_lightning_guarded_run_equals_the_run_without_the_bad_batches(tmp_path, manual, accumulate):
    """Manual optimization (the guard used to swallow every step: Lightning's closure returns None there) and
    accumulation over 4 batches (the NaN example used to be looked for in the last micro-batch only)."""
    callback = DeepscopeCallback(monitor=False, diagnose=False, log=False, guard=OPTIONS)
    module = Module(manual)
    trainer = lightning_fit(module, xy(accumulate), callback, accumulate_grad_batches=accumulate) if not manual \
        else lightning_fit(module, xy(accumulate), callback)
    reference = Module(manual)
    ref_trainer = lightning_fit(reference, xy(accumulate, drop=(NAN_AT, BIG_AT)), steps=N - 2,
                                **({} if manual else {"accumulate_grad_batches": accumulate}))
    events = callback.guard.events
    assert [(e.step, e.kind, e.action) for e in events] == [(NAN_AT, "nonfinite", "skip"),
                                                            (BIG_AT, "loss_spike", "skip")]
    assert events[0].examples[0] == (accumulate - 1) * B + 5  # its position in the whole update
    assert callback.guard.updates == N - 2
    assert_same_state(module, trainer.optimizers[0], reference, ref_trainer.optimizers[0])


def test_lightning_manual_optimization_without_the_guard_seeing_a_loss_trains_as_without_it(tmp_path, capsys):
    """loss.backward() bypasses Lightning's hooks: the guard cannot check, so the update goes through (training as
    without the guard) and it says so once; with two optimizers it says that it watches the first only."""
    plain = Module(True, "backward", optimizers=2)
    lightning_fit(plain, xy(), steps=8)
    guarded = Module(True, "backward", optimizers=2)
    callback = DeepscopeCallback(monitor=False, diagnose=False, log=False, guard=OPTIONS)
    lightning_fit(guarded, xy(), callback, steps=8)
    out = capsys.readouterr().out
    assert out.count("applied unchecked") == 1 and "self.manual_backward(loss)" in out
    assert "2 optimizers; the guard watches the first one only" in out
    for a, b in zip(plain.state_dict().values(), guarded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_lightning_resume_from_a_checkpoint_keeps_the_guards_state(tmp_path, capsys):
    """The guard's state goes into Lightning's checkpoint: after ckpt_path= the events of the first fit are kept,
    the update index goes on, and a spike on the first resumed update is caught (a fresh window would be warming
    up and let it through)."""
    first = DeepscopeCallback(monitor=False, diagnose=False, log=False, guard=OPTIONS)
    module = Module()
    lightning_fit(module, xy(), first, steps=8, root=tmp_path)
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    assert torch.load(ckpt, weights_only=True)["callbacks"]["DeepscopeCallback"]["guard"]["step_index"] == 8
    resumed, module = DeepscopeCallback(monitor=False, diagnose=False, log=False, guard=OPTIONS), Module()
    module.big_at = 8
    lightning_fit(module, xy(), resumed, steps=N, root=tmp_path, ckpt_path=ckpt)
    events = [(e.step, e.kind, e.action) for e in resumed.guard.events]
    assert events[0] == (NAN_AT, "nonfinite", "skip") and (8, "loss_spike", "skip") in events
    assert resumed.guard.step_index == N


def test_lightning_without_a_validation_loader_says_there_is_no_monitor_set(tmp_path, capsys):
    callback = DeepscopeCallback(every=4, diagnose=False, log=False)
    lightning_fit(Module(), xy(drop=(NAN_AT,)), callback, steps=5)
    assert "no validation dataloader, so no monitor set" in capsys.readouterr().out
    assert {r["source"] for r in callback.records} == {"train"}


# ---------------------------------------------------------------------------------------------------- Hugging Face

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from deepscope.integrations.transformers import GUARD_FILE  # noqa: E402
from deepscope.integrations.transformers import DeepscopeCallback as HFCallback  # noqa: E402


class Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class TupleNet(nn.Module):
    """A model that returns ``(loss, logits)`` (``return_dict=False``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = relu_net()

    def forward(self, x, labels=None):
        logits = self.net(x)
        return F.cross_entropy(logits, labels), logits


def hf_trainer(out, data, callbacks=(), steps=N, accumulate=1, save=False, eval_data=None):
    args = transformers.TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=B, report_to=[],
                                          save_strategy="steps" if save else "no", save_steps=8, disable_tqdm=True,
                                          use_cpu=True, learning_rate=1e-2, seed=0, lr_scheduler_type="constant",
                                          gradient_accumulation_steps=accumulate, train_sampling_strategy="sequential")
    return transformers.Trainer(model=TupleNet(), args=args, train_dataset=Pairs(*data), eval_dataset=eval_data,
                                callbacks=list(callbacks))


@pytest.mark.parametrize("accumulate", [1, 4])
def test_hf_tuple_model_guarded_run_equals_the_run_without_the_bad_batches(tmp_path, accumulate):
    """A tuple output's loss is its first element (the guard used to read 0, the monitor pass crashed); with
    accumulation the NaN example is named by its position in the whole update."""
    x, y = xy(accumulate)
    callback = HFCallback(every=4, diagnose=False, guard=OPTIONS)
    trainer = hf_trainer(tmp_path / "g", (x, y), accumulate=accumulate, eval_data=Pairs(x[:64], y[:64]))
    callback.attach(trainer)
    trainer.train()
    reference = hf_trainer(tmp_path / "r", xy(accumulate, drop=(NAN_AT, BIG_AT)), steps=N - 2, accumulate=accumulate)
    reference.train()
    events = callback.guard.events
    assert [(e.step, e.kind, e.action) for e in events] == [(NAN_AT, "nonfinite", "skip"),
                                                            (BIG_AT, "loss_spike", "skip")]
    assert events[0].examples[0] == (accumulate - 1) * B + 5
    assert math.isnan(events[0].loss) and events[1].loss > 20  # the tuple's loss, not 0 (healthy ones are ~0.7)
    assert_same_state(trainer.model, trainer.optimizer, reference.model, reference.optimizer)
    assert {r["source"] for r in callback.records} == {"monitor", "train"}  # the monitor pass ran on the tuple


def test_hf_resume_from_checkpoint_keeps_the_guards_state(tmp_path, capsys):
    x, y = xy()
    first = HFCallback(monitor=False, diagnose=False, guard=OPTIONS)
    hf_trainer(tmp_path, (x, y), [first], steps=8, save=True).train()
    assert (tmp_path / "checkpoint-8" / GUARD_FILE).is_file()
    resumed = HFCallback(monitor=False, diagnose=False, guard=OPTIONS)
    hf_trainer(tmp_path, (x, y), [resumed], save=True).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert [(e.step, e.action) for e in resumed.guard.events][:1] == [(NAN_AT, "skip")]  # the first run's event
    assert (BIG_AT, "skip") in [(e.step, e.action) for e in resumed.guard.events]
    assert resumed.guard.step_index == N  # the update index goes on from the checkpoint's
    os.remove(tmp_path / "checkpoint-8" / GUARD_FILE)
    again = HFCallback(monitor=False, diagnose=False, guard=OPTIONS)
    hf_trainer(tmp_path, (x, y), [again], save=True).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert "resumed at update 8 without the guard's state" in capsys.readouterr().out


def test_hf_without_an_evaluation_set_says_there_is_no_monitor_set(tmp_path, capsys):
    callback = HFCallback(every=4, diagnose=False)
    callback.attach(hf_trainer(tmp_path, xy(drop=(NAN_AT,)), steps=5)).trainer.train()
    assert "no monitor set (no evaluation dataset)" in capsys.readouterr().out
    assert {r["source"] for r in callback.records} == {"train"}
