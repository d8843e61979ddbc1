"""Training and diagnosing other tasks than softmax classification: the spec's loss, loss_fn=, the task's metrics
in the store and early stopping, a loss that does not fit the targets named before a run, doctor without a wrapper."""

import math

import pytest
import torch
from torch import nn

from deepscope import doctor, train
from deepscope.config import SpecError
from deepscope.data import Dataset
from deepscope.store import Store


def _data(targets: str, n: int = 96, seed: int = 0) -> Dataset:
    """Inputs (1, 1, 4); a linear teacher's targets as float values, 0/1 floats, 2 labels or token sequences."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.0, -2.0, 0.5, 1.5])

    def split(m):
        x = torch.randn(m, 1, 1, 4, generator=g)
        s = x.reshape(m, 4) @ w
        y = {"regression": s, "binary": (s > 0).float(), "multilabel": torch.stack([s > 0, s > 1], 1).float(),
             "tokens": torch.stack([(x.reshape(m, 4)[:, :2] > 0).long().sum(1)] * 3, 1)}[targets]
        return x, y

    outputs = {"regression": 1, "binary": 1, "multilabel": 2, "tokens": 3}[targets]
    return Dataset(targets, (1, 1, 4), outputs, ["a", "b", "c"], split(n), split(48), split(48))


def _spec(loss: str, updates: int = 30, **train) -> dict:
    return {"model": {"depth": 1, "width": 16, "activation": "tanh"}, "optim": {"name": "adam", "lr": 0.01},
            "train": {"updates": updates, "batch_size": 16, "eval_every": 10, "device": "cpu", "loss": loss,
                      **train}}


def test_a_regression_run_records_rmse_and_r2_named_in_the_store(tmp_path):
    data = _data("regression")
    result = train(_spec("mse", 60), dataset=data, store=tmp_path, quiet=True)
    rows = {r["name"] for r in result.store.scalars(result.run_id)}
    assert {"valid/rmse", "valid/r2", "train/rmse", "test/r2", "valid/loss"} <= rows and "valid/error" not in rows
    m = result.metrics
    with torch.no_grad():  # the recorded RMSE is the model's, computed here another way
        z = result.model.eval()(data.valid[0])[:, 0]
    assert m["valid/rmse"] == pytest.approx(float(((z - data.valid[1]) ** 2).mean().sqrt()), rel=1e-4)
    assert m["valid/loss"] == pytest.approx(m["valid/rmse"] ** 2, rel=1e-4)  # mse
    assert result.task.kind == "regression" and m["valid/r2"] > 0.5


def test_binary_multilabel_and_token_runs_record_their_error():
    for kind, loss in (("binary", "bce_with_logits"), ("multilabel", "bce_with_logits")):
        result = train(_spec(loss), dataset=_data(kind), quiet=True)
        assert result.task.kind == kind and 0 <= result.metrics["valid/error"] <= 1
    assert "valid/exact_match" in result.metrics


def test_token_targets_train_a_tagger_with_padding():
    data = _data("tokens")
    data.train[1][:, -1] = -1  # the last position is padding
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 9), nn.Unflatten(1, (3, 3)))  # (N, T=3, K=3)
    result = train(_spec("cross_entropy", loss_options={"ignore_index": -1}), dataset=data, model=net, quiet=True)
    assert result.task.kind == "tokens" and result.task.ignore_index == -1
    assert math.isfinite(result.metrics["train/error"])


def test_a_loss_that_does_not_fit_the_targets_is_named_before_a_run_is_created(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(SpecError, match=r"train.loss='cross_entropy' does not fit the targets \(float32 targets "
                       r"of shape \(N\)\).*choose one of: mse, huber, l1"):
        train(_spec("cross_entropy"), dataset=_data("regression"), store=store, quiet=True)
    with pytest.raises(SpecError, match=r"train.loss='mse' does not fit.*integer"):
        train(_spec("mse"), dataset=Dataset("c", (1, 1, 4), 3, list("abc"), (torch.randn(32, 1, 1, 4),
                                            torch.randint(0, 3, (32,))), None, None), store=store, quiet=True)
    with pytest.raises(SpecError, match=r"train.monitor='r2' is not a metric of this binary task"):
        train(_spec("bce_with_logits", monitor="r2"), dataset=_data("binary"), store=store, quiet=True)
    assert store.runs() == []


def test_loss_fn_is_any_callable_and_its_name_is_recorded(tmp_path):
    def halved_mse(output, target):
        return 0.5 * ((output[:, 0] - target) ** 2).mean()

    result = train(_spec("cross_entropy"), dataset=_data("regression"), store=tmp_path, quiet=True,
                   loss_fn=halved_mse)
    assert result.task.kind == "regression"
    assert result.store.get_run(result.run_id)["spec"]["train"]["loss"].endswith("halved_mse")
    assert result.metrics["valid/loss"] == pytest.approx(0.5 * result.metrics["valid/rmse"] ** 2, rel=1e-4)
    # torch's loss modules fit a one-output model's (N, 1) to targets (N,)
    result = train(_spec("cross_entropy"), dataset=_data("binary"), quiet=True, loss_fn=nn.BCEWithLogitsLoss())
    assert result.task.kind == "binary" and "valid/error" in result.metrics


def test_early_stopping_watches_the_tasks_measure():
    result = train(_spec("mse", 200, patience=1, monitor="r2"), dataset=_data("regression"), quiet=True)
    assert "valid/r2" in result.best and result.best["valid/r2"] == max(
        result.best["valid/r2"], result.metrics["valid/r2"])


def test_doctor_on_a_one_output_bce_model_needs_no_wrapper_and_finds_a_squashed_output():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    result = doctor(_spec("bce_with_logits", 40), model=net, dataset=_data("binary"), report=False, monitor=32)
    assert result.status == "finished" and "output_loss_mismatch" not in {f.code for f in result.findings}
    squashed = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1), nn.Sigmoid())
    result = doctor(_spec("mse", 40), model=squashed, dataset=_data("regression"), report=False, monitor=32)
    f = next(f for f in result.findings if f.code == "output_loss_mismatch")
    assert "regresses unbounded values" in f.message
