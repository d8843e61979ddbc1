"""output_loss_mismatch for every loss: the output each loss expects (logits, log-probabilities, unbounded values)."""

import torch

from deepscope.diagnosis.checks.output import output_fit
from deepscope.losses import describe


def _out(z, op=None):
    """A model output made by ``op`` (torch.sigmoid ...) or a plain linear map, and its autograd node's name."""
    w = torch.ones((), requires_grad=True)
    out = op(z * w) if op is not None else z * w
    return out.detach(), type(out.grad_fn).__name__


Z = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.2, -4.0]])


def test_class_logits_are_left_to_the_softmax_checks():
    assert output_fit(*_out(Z), describe("cross_entropy")) is None
    assert output_fit(*_out(Z)) is None  # no loss given: cross_entropy


def test_bce_with_logits_wants_logits_not_sigmoid_outputs():
    assert output_fit(*_out(Z[:, :1]), describe("bce_with_logits")) == []
    [f] = output_fit(*_out(Z[:, :1], torch.sigmoid), describe("bce_with_logits"))
    assert f.code == "output_loss_mismatch" and "sigmoid outputs" in f.message and "expects logits" in f.message


def test_nll_wants_log_probabilities():
    assert output_fit(*_out(Z, lambda z: torch.log_softmax(z, 1)), describe("nll")) == []
    tokens = Z.reshape(1, 2, 3)  # (N, T, K): normalized over the last dimension
    assert output_fit(*_out(tokens, lambda z: torch.log_softmax(z, -1)), describe("nll")) == []
    [raw] = output_fit(*_out(Z), describe("nll"))
    assert "unnormalized scores" in raw.message
    [probs] = output_fit(*_out(Z, lambda z: torch.softmax(z, 1)), describe("nll"))
    assert "probabilities" in probs.message


def test_a_squashing_output_before_a_regression_loss_is_a_finding_unless_the_targets_are_in_reach():
    z = Z[:, :1]
    assert output_fit(*_out(z), describe("mse"), torch.tensor([3.0, -7.0])) == []
    [f] = output_fit(*_out(z, torch.sigmoid), describe("mse"), torch.tensor([3.0, -7.0]))
    assert "regresses unbounded values" in f.message and f.evidence["target_max"] == 3.0
    assert output_fit(*_out(z, torch.sigmoid), describe("huber"), torch.tensor([0.2, 0.9])) == []
    assert output_fit(*_out(z, torch.tanh), describe("l1"), torch.tensor([0.2, 1.5])) != []


def test_a_loss_of_your_own_or_one_on_probabilities_is_not_checked():
    assert output_fit(*_out(Z[:, :1], torch.sigmoid), describe(torch.nn.BCELoss())) == []
    assert output_fit(*_out(Z, torch.sigmoid), describe(lambda o, t: o.sum())) == []


def test_one_hot_class_labels_under_a_regression_loss_are_a_classifier_trained_as_a_regression():
    one_hot = torch.eye(3)[torch.tensor([2, 0])]  # two examples of 3 classes
    [f] = output_fit(*_out(Z), describe("mse"), one_hot)
    assert f.code == "loss_for_classes" and f.evidence["classes"] == 3 and "cross_entropy" in f.advice
    codes = [g.code for g in output_fit(*_out(Z, lambda z: torch.softmax(z, 1)), describe("l1"), one_hot)]
    assert codes == ["loss_for_classes"]  # a softmax reaches one-hot targets: only the loss is the matter
    assert output_fit(*_out(Z), describe("mse"), torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])) == []  # 2 ones
    assert output_fit(*_out(Z), describe("mse"), torch.tensor([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0]])) == []  # soft
    assert output_fit(*_out(Z[:, :1]), describe("mse"), torch.tensor([[1.0], [0.0]])) == []  # one column: binary
