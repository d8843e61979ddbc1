"""The metrics, the baselines ("chance") and the task a loss and its targets make, against hand computations."""

import math

import pytest
import torch
from torch import nn

from deepscope import metrics as M
from deepscope.losses import make_loss
from deepscope.metrics import Task, baseline, task_of
from deepscope.training.setup import output_problem

CLS, TOK, BIN, ML, REG = Task("classification"), Task("tokens", -1), Task("binary"), Task("multilabel"), \
    Task("regression")


# --- the task ------------------------------------------------------------------------------------------------------


def test_the_task_comes_from_the_loss_and_the_targets():
    assert task_of("cross_entropy", torch.tensor([0, 2, 1])).kind == "classification"
    assert task_of("cross_entropy", torch.tensor([[0, 2], [1, -100]])).kind == "tokens"
    assert task_of("bce_with_logits", torch.tensor([0.0, 1.0])).kind == "binary"
    assert task_of("bce_with_logits", torch.tensor([[0.0], [1.0]])).kind == "binary"
    assert task_of("bce_with_logits", torch.tensor([[0.0, 1.0], [1.0, 1.0]])).kind == "multilabel"
    assert task_of("huber", torch.tensor([0.3, -1.2])).kind == "regression"
    assert task_of("nll", torch.tensor([[1, 0]]), options={"ignore_index": 5}).ignore_index == 5
    assert task_of("cross_entropy", torch.tensor([1, 0])).ignore_index is None  # labels (N,) have no padding


def test_a_callable_of_your_own_gets_its_task_from_the_targets():
    def mine(out, y):
        return out.sum()

    assert task_of(mine, torch.tensor([1, 0])).kind == "classification"
    assert task_of(mine, torch.tensor([[1, 0]])).kind == "tokens"
    assert task_of(mine, torch.tensor([1.0, 0.0])).kind == "binary"
    assert task_of(mine, torch.tensor([[1.0, 0.0], [0.0, 0.0]])).kind == "multilabel"
    assert task_of(mine, torch.tensor([0.5, 2.0])).kind == "regression"
    assert task_of(nn.BCELoss(), torch.tensor([1.0, 0.0])).threshold == 0.5  # probabilities: decide at 0.5


@pytest.mark.parametrize("loss, targets, message", [
    ("cross_entropy", torch.tensor([0.5, 1.5]), r"train.loss='cross_entropy' does not fit the targets \(float32 "
     r"targets of shape \(N\)\): cross_entropy needs integer class labels; for these targets \(regression\); choose "
     r"one of: mse, huber, l1"),
    ("mse", torch.tensor([0, 3, 1]), r"mse regresses real values.*\(classification\); choose one of: cross_entropy, "
     r"nll, quadratic"),
    ("bce_with_logits", torch.tensor([0, 1]), r"needs 0/1 targets as floats"),
    ("bce_with_logits", torch.tensor([0.0, 2.0]), r"needs targets in \[0, 1\]"),
    ("cross_entropy", torch.tensor([0, 1, 9]), r"labels go from 0 to 9, outside 0..3"),
    ("quadratic", torch.zeros(2, 2, 2, dtype=torch.long), r"takes labels \(N,\) or token labels \(N, T\)"),
])
def test_a_loss_that_does_not_fit_the_targets_is_named(loss, targets, message):
    with pytest.raises(ValueError, match=message):
        task_of(loss, targets, num_classes=4)


def test_output_shape_problems_are_described():
    y = torch.tensor([0.0, 1.0, 1.0])
    assert output_problem(BIN, torch.zeros(3, 1), y) is None
    assert output_problem(BIN, torch.zeros(3), y) is None
    assert "needs (3,) (or (3, 1))" in output_problem(BIN, torch.zeros(3, 2), y)
    assert output_problem(CLS, torch.zeros(3, 4), torch.tensor([0, 1, 2]), 4) is None
    assert "(3, 5): one score per class" in output_problem(CLS, torch.zeros(3, 4), torch.tensor([0, 1, 2]), 5)
    assert output_problem(TOK, torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long), 7) is None
    assert output_problem(TOK, torch.zeros(2, 7), torch.zeros(2, 5, dtype=torch.long), 7) is not None


# --- metrics ------------------------------------------------------------------------------------------------------


def test_error_rate_and_token_error():
    out = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 2])  # right, wrong, right, wrong
    assert M.error_rate(out, y).item() == 0.5
    tokens = torch.tensor([[0, 1], [1, -1]])  # the fourth position is padding: 1 wrong of 3
    assert M.token_error(out.reshape(2, 2, 3), tokens, ignore_index=-1).item() == pytest.approx(1 / 3)


def test_binary_error_thresholds_logits_at_zero_and_probabilities_at_one_half():
    logits = torch.tensor([[1.0], [-2.0], [0.3], [-0.1]])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])  # right, wrong, wrong, right
    assert M.binary_error(logits, y).item() == 0.5
    assert M.binary_error(torch.sigmoid(logits), y, threshold=0.5).item() == 0.5


def test_per_label_error_and_exact_match():
    z = torch.tensor([[1.0, -1.0, 2.0], [1.0, 1.0, -1.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # row 1 all right; row 2 one wrong
    assert M.label_error(z, y).item() == pytest.approx(1 / 6)
    assert M.exact_match(z, y).item() == 0.5


def test_rmse_and_r2_by_hand():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    z = torch.tensor([[1.5], [2.0], [2.0], [4.0]])  # errors .5, 0, 1, 0
    assert M.rmse(z, y).item() == pytest.approx(math.sqrt(1.25 / 4))
    assert M.r2(z, y).item() == pytest.approx(1 - 1.25 / 5.0)  # SST = 2.25 + .25 + .25 + 2.25
    assert M.r2(torch.full((4,), 2.5), y).item() == pytest.approx(0.0)
    # two outputs: the mean of the two R^2
    y2 = torch.stack([y, 2 * y], 1)
    z2 = torch.stack([z[:, 0], 2 * y], 1)
    assert M.r2(z2, y2).item() == pytest.approx((0.75 + 1.0) / 2)


@pytest.mark.parametrize("task, loss, out, y", [
    (CLS, "cross_entropy", torch.randn(50, 4), torch.randint(0, 4, (50,))),
    (TOK, "cross_entropy", torch.randn(10, 6, 5), torch.randint(-1, 5, (10, 6))),
    (BIN, "bce_with_logits", torch.randn(50, 1), torch.randint(0, 2, (50,)).float()),
    (ML, "bce_with_logits", torch.randn(50, 3), torch.randint(0, 2, (50, 3)).float()),
    (REG, "mse", torch.randn(50, 2), torch.randn(50, 2) * 3 + 1),
])
def test_sums_over_batches_give_the_metrics_of_the_whole_set(task, loss, out, y):
    whole = M.reduce_sums(task, M.batch_sums(task, out, y))
    total = None
    for i in range(0, len(y), 7):
        total = M.add_sums(total, M.batch_sums(task, out[i:i + 7], y[i:i + 7]))
    parts = M.reduce_sums(task, total)
    assert set(whole) == set(task.metrics) and all(parts[k].item() == pytest.approx(whole[k].item()) for k in whole)
    if task.kind == "regression":
        assert whole["rmse"].item() == pytest.approx(M.rmse(out, y).item())
        assert whole["r2"].item() == pytest.approx(M.r2(out, y).item())
    elif task.kind == "tokens":
        assert whole["error"].item() == pytest.approx(M.token_error(out, y, -1).item())
    elif task.kind == "classification":
        assert whole["error"].item() == pytest.approx(M.error_rate(out, y).item())
    else:
        assert whole["error"].item() == pytest.approx(M.binary_error(out, y).item())


def test_evaluate_gives_the_loss_and_the_task_metrics_on_the_device():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(25, 3), torch.randn(25)
    values = M.evaluate(model, x, y, make_loss("mse"), REG, batch_size=10)
    with torch.no_grad():
        z = model(x)[:, 0]
    assert values["loss"].item() == pytest.approx(((z - y) ** 2).mean().item(), rel=1e-5)
    assert values["rmse"].item() == pytest.approx(((z - y) ** 2).mean().sqrt().item(), rel=1e-5)
    assert model.training


# --- baselines ----------------------------------------------------------------------------------------------------


def test_classification_baseline_is_the_prior():
    y = torch.tensor([2, 2, 2, 0])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert M.prior_error(y) == pytest.approx(0.25)
    assert M.prior_loss(y) == pytest.approx(h)
    assert M.prior_error(torch.arange(9)) == pytest.approx(8 / 9)
    base = baseline(CLS, y, "cross_entropy", num_classes=3)
    assert base["error"] == pytest.approx(0.25) and base["loss"] == pytest.approx(h, rel=1e-5)
    # quadratic cost of predicting the frequencies p: 1 - sum p^2
    assert baseline(CLS, y, "quadratic", 3)["loss"] == pytest.approx(1 - (0.75 ** 2 + 0.25 ** 2), rel=1e-5)


def test_token_baseline_leaves_out_the_padding():
    y = torch.tensor([[1, 1, -1], [1, 0, -1]])  # 3 of 4 real tokens are 1
    assert M.prior_error(y, ignore_index=-1) == pytest.approx(0.25)
    base = baseline(TOK, y, make_loss("cross_entropy", ignore_index=-1))
    assert base["error"] == pytest.approx(0.25)
    assert base["loss"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-5)


def test_binary_and_multilabel_baselines_are_the_majority_label_per_output():
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # label frequencies .75, .25
    assert M.majority_label_error(y) == pytest.approx(0.25)
    assert M.majority_exact_match(y) == pytest.approx(0.5)  # rows equal to (1, 0)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert M.label_entropy(y) == pytest.approx(h)
    base = baseline(ML, y, "bce_with_logits")
    assert base == pytest.approx({"error": 0.25, "exact_match": 0.5, "loss": h}, rel=1e-5)
    b = baseline(BIN, y[:, 0], "bce_with_logits")
    assert b == pytest.approx({"error": 0.25, "loss": h}, rel=1e-5)


def test_regression_baseline_predicts_the_mean():
    y = torch.tensor([1.0, 2.0, 3.0, 10.0])  # mean 4, median 2.5
    var = ((y - 4) ** 2).mean().item()
    assert M.mean_rmse(y) == pytest.approx(math.sqrt(var))
    assert baseline(REG, y, "mse") == pytest.approx({"rmse": math.sqrt(var), "r2": 0.0, "loss": var}, rel=1e-6)
    # l1's best constant is the median: mean |y - 2.5| = (1.5 + .5 + .5 + 7.5) / 4
    assert baseline(REG, y, "l1")["loss"] == pytest.approx(2.5)
    # huber (delta 1) at the median: (1 + .125 + .125 + 7) / 4 ; at the mean: (2.5 + 1.5 + .5 + 5.5) / 4
    assert baseline(REG, y, "huber")["loss"] == pytest.approx(min(8.25, 10.0) / 4)


def test_a_run_trains_when_it_is_clearly_past_the_baseline():
    chance = {"error": 0.5}
    assert M.beats_baseline(BIN, {"valid/error": 0.39}, chance)
    assert not M.beats_baseline(BIN, {"valid/error": 0.41}, chance)  # 0.8 x 0.5 = 0.4
    assert not M.beats_baseline(BIN, {}, chance)
    assert M.beats_baseline(REG, {"valid/r2": 0.25}, {}) and not M.beats_baseline(REG, {"valid/r2": 0.1}, {})


def test_error_rate_of_any_task():
    assert M.error_rate_of({"valid/error": 0.25}) == 0.25
    assert M.error_rate_of({"valid/r2": 0.75}) == pytest.approx(0.25)
    assert M.error_rate_of({"valid/r2": -3.0}) == 1.0  # worse than the mean: no better than chance
    assert math.isnan(M.error_rate_of({}))
