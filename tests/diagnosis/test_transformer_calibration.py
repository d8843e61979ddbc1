"""Two rules as calibrated on transformers (benchmarks/transformers_healthy.py), on hand-built records:

- activation variance with depth compares layers of one kind (``transformer.h.#.attn`` with each other), so an
  attention output smaller than a feed-forward output in a residual block is not a depth effect;
- a loss that rises 25 % above its lowest value and then falls below where it rose from (Adam's bump near a small
  loss) is not a too-high learning rate; one that stays up is."""

import math

import pytest

from deepscope.diagnosis import diagnose
from deepscope.diagnosis.rules import layers as rl
from deepscope.diagnosis.rules import training as rt


def stds(per_layer: dict[str, float], step: int = 0) -> list[dict]:
    return [dict(step=step, source="monitor", layer=layer, quantity="activation", stat="std", value=v)
            for layer, v in per_layer.items()]


def loud(findings):
    return {f.code for f in findings if f.severity in ("warning", "error")}


def test_layer_kind_strips_numbers_and_call_counts():
    assert rl._layer_kind("transformer.h.11.attn") == rl._layer_kind("transformer.h.0.attn") == "transformer.h.#.attn"
    assert rl._layer_kind("hidden1") == rl._layer_kind("hidden12") == "hidden#"
    assert rl._layer_kind("act") == rl._layer_kind("act@3") == "act"  # a shared module called three times
    assert rl._layer_kind("encoder.layers.1") != rl._layer_kind("encoder.layers.1.self_attn")


def test_attention_and_feed_forward_outputs_are_not_compared():
    """GPT-2 at initialization (measured): attention outputs 0.006, MLP outputs 0.08; 13x between the first and the
    last layer recorded, 1.1x within each kind."""
    rows = stds({"transformer.h.0.attn": 0.0060, "transformer.h.0.mlp": 0.0808,
                 "transformer.h.1.attn": 0.0069, "transformer.h.1.mlp": 0.0815})
    assert not {"variance_grows", "variance_shrinks"} & loud(diagnose(rows))


@pytest.mark.parametrize("growth", [20.0, 1 / 20.0])
def test_variance_with_depth_within_one_kind_is_still_named(growth):
    """Blocks whose outputs grow (shrink) 20x from the first to the last, with attention outputs that do not."""
    per_layer = {}
    for i in range(4):
        per_layer[f"blocks.{i}.attn"] = 0.1
        per_layer[f"blocks.{i}"] = growth ** (i / 3)
    (f,) = [f for f in diagnose(stds(per_layer)) if f.code.startswith("variance_")]
    assert f.code == ("variance_grows" if growth > 1 else "variance_shrinks")
    assert f.evidence["ratio"] == pytest.approx(growth)
    assert f.layers == ["blocks.3"]  # beyond 10x of blocks.0: the last one only (20^(2/3) = 7.4)


def test_a_plain_stack_is_judged_as_before():
    """hidden1..hidden5 of an MLP are one kind: the ratio is the last layer's std over the first's."""
    growth = rl.VARIANCE_DEPTH_RATIO * 1.5
    rows = stds({f"hidden{i + 1}": growth ** (i / 4) for i in range(5)})
    (f,) = [f for f in diagnose(rows) if f.code == "variance_grows"]
    assert f.evidence["ratio"] == pytest.approx(growth)
    assert not diagnose(stds({f"hidden{i + 1}": (0.9 * rl.VARIANCE_DEPTH_RATIO) ** (i / 4) for i in range(5)}))


def loss_rows(values):
    return [dict(step=i + 1, name="train/loss", value=v) for i, v in enumerate(values)]


def windows_of(levels, size=40):
    return [v for level in levels for v in [level] * size]


def test_a_bump_the_loss_leaves_behind_is_not_lr_too_high():
    """The smoothed curve of a torch.nn TransformerEncoder classifier at Adam lr 1e-3 (measured: windows of 40
    updates): it rises 72 % above its lowest value for two windows, then falls to a new low 7x below it."""
    levels = [0.557, 0.191, 0.095, 0.052, 0.089, 0.096, 0.019, 0.036, 0.024, 0.007]
    assert max(levels[4:6]) / min(levels[:4]) - 1 > rt.LR_RISE  # the old reading: a rise above the threshold
    assert "lr_too_high" not in loud(diagnose([], scalars=loss_rows(windows_of(levels))))


def test_a_rise_that_stays_is_still_lr_too_high():
    levels = [0.557, 0.191, 0.095, 0.052, 0.089, 0.096, 0.09, 0.08, 0.085, 0.09]
    f = [f for f in diagnose([], scalars=loss_rows(windows_of(levels))) if f.code == "lr_too_high"]
    assert len(f) == 1 and f[0].severity == "error"
    highest_pair = max(min(a, b) for a, b in zip(levels[4:], levels[5:], strict=False))  # two windows in a row
    assert f[0].evidence["rise"] == pytest.approx(highest_pair / 0.052 - 1)
    # ending exactly where it rose from is not below it: still named
    assert "lr_too_high" in loud(diagnose([], scalars=loss_rows(windows_of(levels[:-1] + [0.052]))))
    assert math.isclose(rt.LR_RISE, 0.25)


def test_a_loss_thrown_up_from_its_start_is_lr_too_high_even_when_it_falls_back_below_it():
    """Not a bump in a learning curve: the rise starts at the first losses, and ending a little below them (a rate
    that throws the loss up, then an adaptive optimizer settling back near chance) is no learning past it."""
    levels = [2.3, 6.0, 5.0, 4.0, 3.0, 2.5, 2.25, 2.2, 2.2, 2.2]
    f = [f for f in diagnose([], scalars=loss_rows(windows_of(levels))) if f.code == "lr_too_high"]
    assert len(f) == 1 and f[0].evidence["rise"] == pytest.approx(5.0 / 2.3 - 1)
