"""The absolute scale of the activations: too large at initialization, and blown up by the first updates for good.

The depth rule (:func:`deepscope.diagnosis.rules.layers.diagnose`, ``variance_grows``) compares layers with each other,
so it cannot see a network whose every block starts from a normalized input: in a transformer (LayerNorm or RMSNorm
before each feed-forward) or a normalized CNN, weights initialized 500x too large give every activation layer the
same huge scale, with no growth along the depth. The scale itself tells: an initialization fitted to the activation
keeps the pre-activations of order 1 (Glorot & Bengio 2010, sec. 4.2.1; He et al. 2015, sec. 2.2), so the output of
an element-wise activation -- ReLU, GELU, SiLU and their kin -- has a std of order 1 or less at initialization.

"Activation layers" here are those recorded with dLoss/ds at their input (``preact_grad``): element-wise activation
modules, whose input is the pre-activation. Outputs of blocks the probe could not look inside (a residual stream, an
attention) have no such scale to keep and are left out.
"""

from __future__ import annotations

import math
from statistics import median

from deepscope.diagnosis.advice import fitting_init
from deepscope.diagnosis.findings import Finding
from deepscope.records import Records

__all__ = ["ACTIVATION_GROWTH_BLOWN", "ACTIVATION_STD_HIGH", "activation_growth", "rule_activation_scale"]

# Too large at initialization: the median, over the activation layers, of their activation std at the first record
# above ACTIVATION_STD_HIGH. With pre-activations of unit variance a ReLU's output std is 0.58, a GELU's 0.59, a
# SiLU's 0.56 (tanh and sigmoid stay below 1 at any scale); 10 is pre-activations of std ~17, where each unit is a
# plain ReLU or, after a softmax, a one-hot: weights N(0, 10^2) in tiny Llama, ViT, DistilBERT, RoBERTa, T5 gave
# 23-26, their healthy twins (the configs' own initialization) 0.04-0.63.
ACTIVATION_STD_HIGH = 10.0
# Blown up for good: the median, over the activation layers, of their std at the last record over their std at the
# first, at least ACTIVATION_GROWTH_BLOWN (two orders of magnitude). Adam at lr 1 on a tiny Llama moved the weights
# by 56x their norm at the first update: the SiLU outputs went from std 0.04 to 90-140 and stayed there while the
# loss fell slowly (to 1.6 in 150 updates, where the lr-1e-2 twin reached 0.004 with activations 2.6x their initial
# std); eight healthy runs of unseen model families grew 1-16x (tests/diagnosis/test_unseen_models.py).
ACTIVATION_GROWTH_BLOWN = 100.0


def _activation_layers(rec: Records) -> set[str]:
    return set(rec.get("preact_grad", "std"))


def _stds_at(rec: Records, layers: set[str]) -> dict[int, dict[str, float]]:
    return {step: {layer: v for layer, v in values.items() if layer in layers and math.isfinite(v) and v > 0}
            for step, values in rec.by_step("activation", "std").items()}


def rule_activation_scale(rec: Records, activation: str | None = None, scheme: str | None = None) -> list[Finding]:
    """``variance_grows`` when the activation layers' median std at the first record exceeds ACTIVATION_STD_HIGH."""
    layers = _activation_layers(rec)
    per_step = _stds_at(rec, layers)
    if not per_step:
        return []
    step = min(per_step)
    first = per_step[step]
    if not first:
        return []
    typical = median(first.values())
    if typical <= ACTIVATION_STD_HIGH:
        return []
    high = [layer for layer, v in first.items() if v > ACTIVATION_STD_HIGH]
    return [Finding(
        "variance_grows", "warning",
        f"the activations are far too large at initialization: median std {typical:.3g} over {len(first)} activation "
        f"layers (above {ACTIVATION_STD_HIGH:g}; a fitting initialization keeps them of order 1), so the "
        "pre-activations are tens of units wide: weights initialized too large, or inputs not scaled",
        layers=high, first_step=step, recovers=None,
        evidence={"activation_std_median": typical, "activation_std_max": max(first.values()),
                  "threshold": ACTIVATION_STD_HIGH},
        advice=f"The initialization scale does not fit the activation: use {fitting_init(activation, scheme)} (or "
        "the model's own init, e.g. transformers' std 0.02), or LSUV; scale the inputs to unit variance.",
    )]


def activation_growth(rec: Records) -> float | None:
    """The median, over the activation layers, of their activation std at the last record over the first (None
    with fewer than two records)."""
    per_step = _stds_at(rec, _activation_layers(rec))
    if len(per_step) < 2:
        return None
    first, last = per_step[min(per_step)], per_step[max(per_step)]
    ratios = [last[layer] / first[layer] for layer in first if layer in last]
    return median(ratios) if ratios else None
