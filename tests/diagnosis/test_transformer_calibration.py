"""Two rules as calibrated on transformers (benchmarks/transformers_healthy.py), on hand-built records:

- activation variance with depth compares layers of one kind (``transformer.h.#.attn`` with each other), so an
  attention output smaller than a feed-forward output in a residual block is not a depth effect;
- a loss that rises 25 % above its lowest value by a few percent of its start (Adam near a loss of 0) is not a
  too-high learning rate; a rise of more than a tenth of the starting loss is."""

import pytest

from deepscope.diagnosis import diagnose
from deepscope.diagnosis.rules import layers as rl
from deepscope.diagnosis.rules import training as rt


def stds(per_layer: dict[str, float], step: int = 0) -> list[dict]:
    return [dict(step=step, source="monitor", layer=layer, quantity="activation", stat="std", value=v)
            for layer, v in per_layer.items()]


def loud(findings):
    return {f.code for f in findings if f.severity in ("warning", "error")}


def test_a_shared_module_called_at_every_depth_is_one_kind():
    """``act``, ``act@2``, ``act@3``: one activation module called three times (its k-th call is ``act@k``)."""
    (f,) = [f for f in diagnose(stds({"act": 1.0, "act@2": 4.0, "act@3": 16.0})) if f.code.startswith("variance_")]
    assert f.code == "variance_grows" and f.evidence["ratio"] == pytest.approx(16.0) and f.layers == ["act@3"]


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


@pytest.mark.parametrize("levels", [
    [0.557, 0.191, 0.095, 0.052, 0.089, 0.096, 0.019, 0.036, 0.024, 0.007],  # seed 0: a bump, then a new low
    [0.557, 0.191, 0.05, 0.02, 0.01, 0.006, 0.005, 0.005, 0.022, 0.022],  # seed 1: up 4x at the end, near 0
])
def test_a_small_rise_near_zero_is_not_lr_too_high(levels):
    """The smoothed curves of a torch.nn TransformerEncoder classifier at Adam lr 1e-3 (measured, windows of 40
    updates; 98-99 % accuracy): relative rises far above LR_RISE, by a few percent of the starting loss."""
    rises = [min(levels[i:i + 2]) / min(levels[:i]) - 1 for i in range(1, len(levels) - 1)]  # over the lowest before
    assert max(rises) > rt.LR_RISE
    assert "lr_too_high" not in loud(diagnose([], scalars=loss_rows(windows_of(levels))))


@pytest.mark.parametrize("jump", [0.09, 0.11])
def test_a_rise_is_named_when_it_is_material(jump):
    """The same shape at a loss that fell from 2.3 to 0.3: named when the rise exceeds LR_RISE_MIN_JUMP (0.1) x 2.3."""
    top = 0.3 + jump * 2.3
    levels = [2.3, 1.0, 0.5, 0.3, top, top, top, top, top, top]
    f = [f for f in diagnose([], scalars=loss_rows(windows_of(levels))) if f.code == "lr_too_high"]
    assert rt.LR_RISE_MIN_JUMP == 0.1 and top / 0.3 - 1 > rt.LR_RISE
    assert len(f) == (jump > rt.LR_RISE_MIN_JUMP)
    if f:
        assert f[0].severity == "error" and f[0].evidence["rise"] == pytest.approx(top / 0.3 - 1)


def test_a_loss_thrown_up_from_its_start_is_lr_too_high_even_when_it_falls_back_below_it():
    """Not a bump in a learning curve: the rise starts at the first losses, and ending a little below them (a rate
    that throws the loss up, then an adaptive optimizer settling back near chance) is no learning past it."""
    levels = [2.3, 6.0, 5.0, 4.0, 3.0, 2.5, 2.25, 2.2, 2.2, 2.2]
    f = [f for f in diagnose([], scalars=loss_rows(windows_of(levels))) if f.code == "lr_too_high"]
    assert len(f) == 1 and f[0].evidence["rise"] == pytest.approx(5.0 / 2.3 - 1)
