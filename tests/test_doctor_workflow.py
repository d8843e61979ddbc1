"""doctor is an ordinary training run: the same spec and seed give the same run as `train`, model of your own or not."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepscope.data import Dataset
from deepscope.training.callbacks import Callback
from deepscope.training.loop import train
from deepscope.workflows.doctor import doctor

SPEC = {
    "name": "same",
    "data": {"name": "shapeset", "options": {"n_valid": 40, "n_test": 40, "size": 16}, "preprocess": "standardize",
             "augment": ["hflip"]},
    "optim": {"name": "momentum", "lr": 0.05},
    "schedule": {"name": "cosine"},
    "train": {"batch_size": 16, "seed": 3, "device": "cpu", "clip_norm": 0.5},
}
UPDATES = 30


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 9))


class Losses(Callback):
    def __init__(self):
        self.losses, self.lrs = [], []

    def on_step(self, ctx):
        self.losses.append(float(ctx.loss))
        self.lrs.append(ctx.optimizer.param_groups[0]["lr"])


def test_doctor_on_a_user_model_is_the_run_train_makes():
    m_doctor, m_train = net(), net()
    found = doctor(SPEC, model=m_doctor, updates=UPDATES, report=False)
    seen = Losses()
    spec = {**SPEC, "train": {**SPEC["train"], "updates": UPDATES, "eval_every": UPDATES // 5}}
    result = train(spec, model=m_train, callbacks=[seen], quiet=True)
    assert result.model is m_train and result.step == UPDATES
    assert found.losses == seen.losses  # bit for bit: the same batches, augmentation, dropout and schedule
    for p, q in zip(m_doctor.parameters(), m_train.parameters(), strict=True):
        assert torch.equal(p, q)
    # the schedule was applied (cosine from 0.05 down), and the loss is the loss of the module's output
    assert seen.lrs[0] < 0.05 and seen.lrs[-1] < seen.lrs[len(seen.lrs) // 2] < seen.lrs[0]
    assert found.records and {r["layer"] for r in found.records} >= {"1", "4"}


def test_train_with_a_user_model_takes_the_first_step_a_hand_loop_takes():
    """One update of plain SGD on a one-label dataset, recomputed by hand on the batch the trainer drew."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 1, 4, 4, generator=g)
    y = torch.full((48,), 2)
    data = Dataset("ones", (1, 4, 4), 3, ["a", "b", "c"], (x, y), (x[:8], y[:8]), (x[:8], y[:8]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    reference = copy.deepcopy(model)
    drawn = []
    model.register_forward_pre_hook(lambda m, args: drawn.append(args[0].detach().clone()) if m.training else None)
    seen = Losses()
    spec = {"name": "hand", "optim": {"name": "sgd", "lr": 0.5}, "train": {"updates": 1, "batch_size": 12,
            "eval_every": 1, "device": "cpu"}}
    train(spec, model=model, dataset=data, callbacks=[seen], quiet=True)
    xb = drawn[0]
    assert xb.shape == (12, 1, 4, 4) and any(torch.equal(xb[0], row) for row in x)  # a batch of the training set
    loss = F.cross_entropy(reference(xb), torch.full((12,), 2))
    assert seen.losses[0] == pytest.approx(loss.detach().item(), rel=1e-6)
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.5 * p.grad
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_callbacks_are_objects_or_functions_and_anything_else_is_refused():
    events = []

    class Events(Callback):
        def on_start(self, ctx):
            events.append(("object", ctx.event))

        def on_end(self, ctx):
            events.append(("object", ctx.event))

    spec = {"name": "cb", "data": SPEC["data"] | {"augment": None, "preprocess": None},
            "train": {"updates": 2, "eval_every": 2, "device": "cpu"}}
    train(spec, model=net(), callbacks=[Events(), lambda ctx: events.append(("function", ctx.event))], quiet=True)
    assert [e for e in events if e[0] == "object"] == [("object", "start"), ("object", "end")]
    assert [e[1] for e in events if e[0] == "function"] == ["start", "step", "step", "eval", "end"]
    with pytest.raises(TypeError, match="callbacks: 3 is not allowed"):
        train(spec, model=net(), callbacks=[3], quiet=True)
    with pytest.raises(TypeError, match="model=str is not allowed"):
        train(spec, model="resnet", quiet=True)


class FunctionalTanh(nn.Module):
    """Layers called from forward() with torch.tanh between them: the probe sees the layers, not the tanh."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(256, 32), nn.Linear(32, 9)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.flatten(1))))


def test_doctor_says_which_modules_the_probe_cannot_see_into():
    hidden = doctor(SPEC, model=FunctionalTanh(), updates=UPDATES, monitor=20, report=False, quiet=True)
    notes = [f for f in hidden.findings if f.code == "unobservable"]
    assert len(notes) == 1 and notes[0].severity == "info" and notes[0].layers == ["(model)"]
    assert "calls tanh inside forward" in notes[0].message
    seen = doctor(SPEC, model=net(), updates=UPDATES, monitor=20, report=False, quiet=True)
    assert "unobservable" not in {f.code for f in seen.findings}
