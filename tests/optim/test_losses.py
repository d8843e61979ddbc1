"""Every loss of deepscope.losses against its formula, computed by hand (Python floats or elementary tensor ops)."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deepscope import losses
from deepscope.losses import LOSSES, describe, make_loss, match_shape

# softmax rows (.25, .25, .5) and (.6, .2, .2)
LOGITS = torch.log(torch.tensor([[1.0, 1.0, 2.0], [3.0, 1.0, 1.0]]))
TARGETS = torch.tensor([2, 1])


def test_cross_entropy_is_minus_the_mean_log_probability_of_the_target():
    assert make_loss("cross_entropy")(LOGITS, TARGETS).item() == pytest.approx(-(math.log(0.5) + math.log(0.2)) / 2)


def test_cross_entropy_with_label_smoothing_mixes_in_the_uniform_distribution():
    e, k = 0.3, 3
    rows = [[0.25, 0.25, 0.5], [0.6, 0.2, 0.2]]
    by_hand = sum((1 - e) * -math.log(p[y]) + e * sum(-math.log(q) for q in p) / k
                  for p, y in zip(rows, [2, 1], strict=True))
    assert make_loss("cross_entropy", label_smoothing=e)(LOGITS, TARGETS).item() == pytest.approx(by_hand / 2)


def test_cross_entropy_on_tokens_leaves_out_the_padding():
    logits = LOGITS.reshape(1, 2, 3).repeat(2, 1, 1)  # (N=2, T=2, K=3)
    tokens = torch.tensor([[2, 1], [0, -1]])  # -1: padding
    # positions: (row .25/.25/.5, y=2), (row .6/.2/.2, y=1), (row .25/.25/.5, y=0); the fourth is ignored
    by_hand = -(math.log(0.5) + math.log(0.2) + math.log(0.25)) / 3
    assert make_loss("cross_entropy", ignore_index=-1)(logits, tokens).item() == pytest.approx(by_hand)


def test_nll_reads_log_probabilities():
    logp = torch.log(torch.tensor([[0.7, 0.3], [0.4, 0.6]]))
    assert make_loss("nll")(logp, torch.tensor([0, 0])).item() == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)


def test_quadratic_is_the_squared_distance_of_softmax_to_the_one_hot_target():
    # row 1: .25^2 + .25^2 + .5^2 = .375; row 2: .6^2 + .8^2 + .2^2 = 1.04
    assert make_loss("quadratic")(LOGITS, TARGETS).item() == pytest.approx((0.375 + 1.04) / 2)


def _bce(z, y):
    s = 1 / (1 + math.exp(-z))
    return -(y * math.log(s) + (1 - y) * math.log(1 - s))


def test_bce_with_logits_one_output_against_targets_of_shape_n():
    z = torch.tensor([[2.0], [-1.0], [0.5]])  # (N, 1) from a one-output model
    y = torch.tensor([1.0, 0.0, 0.0])
    by_hand = (_bce(2.0, 1) + _bce(-1.0, 0) + _bce(0.5, 0)) / 3
    assert make_loss("bce_with_logits")(z, y).item() == pytest.approx(by_hand)


def test_bce_with_logits_multi_label_averages_every_label():
    z = torch.tensor([[2.0, -3.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    by_hand = (_bce(2, 1) + _bce(-3, 1) + _bce(0, 0) + _bce(1, 1)) / 4
    assert make_loss("bce_with_logits")(z, y).item() == pytest.approx(by_hand)


def test_regression_losses_by_hand():
    z = torch.tensor([[1.0], [2.0], [5.0]])
    y = torch.tensor([1.5, 2.0, 2.0])  # differences -0.5, 0, 3
    assert make_loss("mse")(z, y).item() == pytest.approx((0.25 + 0 + 9) / 3)
    assert make_loss("l1")(z, y).item() == pytest.approx((0.5 + 0 + 3) / 3)
    # huber, delta 1: 0.5 * 0.25, 0, 1 * (3 - 0.5); delta 4: all quadratic
    assert make_loss("huber")(z, y).item() == pytest.approx((0.125 + 0 + 2.5) / 3)
    assert make_loss("huber", delta=4.0)(z, y).item() == pytest.approx((0.125 + 0 + 4.5) / 3)


def test_element_wise_losses_never_broadcast_n1_against_n():
    z = torch.tensor([[1.0], [2.0]])
    y = torch.tensor([1.0, 2.0])
    assert make_loss("mse")(z, y).item() == 0.0  # broadcasting would compare every pair: (0 + 1 + 1 + 0) / 4
    with pytest.raises(ValueError, match=r"output has shape \(2, 3\) but the targets have shape \(2,\)"):
        match_shape(torch.zeros(2, 3), y)


def test_unknown_names_and_options_get_the_registry_errors():
    with pytest.raises(ValueError, match=r"^loss='hinge' is not known; choose one of: cross_entropy, nll"):
        make_loss("hinge")
    with pytest.raises(ValueError, match=r"loss 'huber' does not take 'dleta'; its parameters are: delta"):
        make_loss("huber", dleta=1.0)
    with pytest.raises(ValueError, match=r"loss 'mse' does not take 'delta'; its parameters are: \(none\)"):
        make_loss("mse", delta=1.0)


def test_every_loss_says_what_it_fits_and_what_it_expects():
    assert set(losses.FAMILIES) == set(LOSSES) == set(losses.OUTPUTS)
    assert describe("nll").output == "log_probabilities" and describe("bce_with_logits").output == "logits"
    assert describe("huber").family == "regression" and describe("mse").output == "values"
    assert describe("cross_entropy", {"ignore_index": 0}).ignore_index == 0


def test_describe_recognizes_torch_losses_and_names_any_callable():
    assert describe(nn.BCEWithLogitsLoss()) == losses.LossInfo("BCEWithLogitsLoss", "binary", "logits")
    assert describe(nn.CrossEntropyLoss(ignore_index=3)).ignore_index == 3
    assert describe(F.mse_loss).family == "regression"
    assert describe(nn.BCELoss()).output == "probabilities"

    def my_loss(output, target):
        return (output - target).abs().mean()

    info = describe(my_loss)
    assert info.name.endswith("my_loss") and info.family is None
    with pytest.raises(TypeError, match="loss_fn=3 is not allowed"):
        describe(3)
