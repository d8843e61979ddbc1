"""The learning-rate rules (deepscope.diagnosis.rules.rate) on hand-made curves, and the evidence the labels need."""

import torch

from deepscope.diagnosis import Finding, diagnose
from deepscope.diagnosis.causes import explain
from deepscope.diagnosis.rules import rate


def curve(name, values, start=1):
    return [dict(step=start + i, name=name, value=v) for i, v in enumerate(values)]


def ratios(values_at):
    return [dict(step=s, source="train", layer=layer, quantity="update_ratio", stat="ratio", value=v)
            for s, per_layer in values_at.items() for layer, v in per_layer.items()]


def noisy(n, level, amplitude=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (level * (1 + amplitude * (2 * torch.rand(n, generator=g) - 1))).tolist()


def by_code(findings):
    return {f.code: f for f in findings}


def test_a_blow_up_in_the_first_updates_that_the_network_never_recovers_from_is_too_high_a_rate():
    flat = noisy(297, 1.39)
    loss = [1.385, 19.4, 5.6, *flat]  # Adam at lr 0.2 on a small CNN: a jump at the second update, then chance
    moving = ratios({0: {"conv1": 0.02, "head": 0.03}, 150: {"conv1": 1e-3, "head": 1e-3}})
    f = by_code(diagnose(moving, scalars=curve("train/loss", loss)))["lr_too_high"]
    assert f.first_step == 2 and f.evidence["early_jump"] == 19.4 / 1.385 and f.severity == "error"
    # the same flat curve without the jump: no rate finding; with a huge first step (4x the weights' norm): one
    assert "lr_too_high" not in by_code(diagnose(moving, scalars=curve("train/loss", [1.385, *flat])))
    huge = ratios({0: {"conv1": 4.0, "head": 1.0}, 150: {"conv1": 1e-3, "head": 1e-3}})
    f = by_code(diagnose(huge, scalars=curve("train/loss", [1.385, *flat])))["lr_too_high"]
    assert f.evidence["early_step"] == 4.0 and f.first_step == 0
    # a jump the network recovers from (the loss then falls well below its start) is no finding of this rule
    learning = [1.385, 19.4, 5.6, *[1.39 * 0.995 ** i for i in range(297)]]
    assert "lr_too_high" not in by_code(diagnose(moving, scalars=curve("train/loss", learning)))


def test_tiny_steps_and_a_network_still_at_chance_are_too_low_a_rate_even_when_the_training_loss_falls():
    # from a start far above chance (large initial logits) the training loss falls 10 %, the validation loss 2 %
    train = [2.0 - 0.2 * i / 299 + 0.05 * (-1) ** i for i in range(300)]
    valid = [1.846 - 0.0035 * i for i in range(10)]
    tiny = ratios({s: {"hidden1": 2e-6, "output": 5e-6} for s in (0, 150, 270)})
    scalars = curve("train/loss", train) + [dict(step=30 * (i + 1), name="valid/loss", value=v)
                                            for i, v in enumerate(valid)]
    chance = [dict(step=0, name="valid/chance_error", value=0.727), dict(step=0, name="valid/chance_loss", value=1.38)]
    at_chance = [dict(step=30 * (i + 1), name="valid/error", value=0.76) for i in range(10)]
    f = by_code(diagnose(tiny, scalars=scalars + chance + at_chance))["lr_too_low"]
    # independent: the validation loss's drop from the first evaluation to the smaller of the last two
    assert abs(f.evidence["relative_drop"] - (valid[0] - valid[-1]) / valid[0]) < 1e-12
    assert f.evidence["update_ratio"] == 5e-6 and "validation loss" in f.message
    # the same steps in a network that already classifies well below chance: not a rate too low
    learned = [dict(step=r["step"], name="valid/error", value=0.3) for r in at_chance]
    assert "lr_too_low" not in by_code(diagnose(tiny, scalars=scalars + chance + learned))
    # normal steps (Adam at 1e-3): no finding, whatever the curves
    normal = ratios({s: {"hidden1": 1e-3, "output": 2e-3} for s in (0, 150, 270)})
    assert "lr_too_low" not in by_code(diagnose(normal, scalars=scalars + chance + at_chance))
    assert rate.LR_CHANCE_MARGIN > 0 and rate.LR_MIN_EVALS <= len(valid)


def test_labels_are_blamed_only_while_the_held_out_loss_stays_at_or_above_chance():
    labels = torch.arange(50) % 4
    stuck = Finding("plateau", "warning", "", evidence={"valid_loss_best_late": 1.388, "chance_loss": 1.381,
                                                        "update_ratio": 2e-3})
    found = explain([stuck], {}, {}, labels=labels)
    assert [f.code for f in found] == ["labels_unexplained", "plateau"] and found[1].cause == "labels_unexplained"
    # a held-out loss below the chance level: something in the inputs explains the labels (a slow learner)
    slow = Finding("plateau", "warning", "", evidence={"valid_loss_best_late": 1.362, "chance_loss": 1.365,
                                                       "update_ratio": 7e-3})
    found = explain([slow], {}, {}, labels=labels)
    assert [f.code for f in found] == ["plateau"] and found[0].cause == "plateau"
