"""Held-out set-ups of the causes: the examples of a user trying doctor on models nobody here wrote.

Each broken case is labelled with the *cause* the user must change (a code of ``deepscope.diagnosis.causes``),
chosen before doctor ran on it: a stack of ``exp`` activations that overflows in the forward pass at the first
batch (change the activation, not the learning rate); AdamW with ``weight_decay=50`` (lower the decay); inputs
that are all zero (a cause in the data: no training change can help); a ReLU after the last layer (logits that
cannot be negative: remove it); a 30-layer ReLU net (depth without normalization). The healthy twin: a correct
MLP whose output layer starts at zero (constant outputs at initialization, which is no output/loss mismatch).
"""

from __future__ import annotations

from functools import partial

import torch
from cases import CLASSES, HEALTHY, SHAPE, Case, _case, teacher_data
from torch import nn

from deepscope.models import mlp


class Exp(nn.Module):
    """A user's own activation module: exp(x), unbounded."""

    def forward(self, x):
        return torch.exp(x)


def exp_stack(depth: int = 6, width: int = 64) -> nn.Module:
    """Linear + Exp, ``depth`` times, then a linear head; PyTorch's default init."""
    layers, fan_in = [nn.Flatten()], 64
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), Exp()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(width, CLASSES))


def relu_after_last() -> nn.Module:
    """A 3 x 64 ReLU MLP (He init) with one more ReLU after its output layer: logits that cannot be negative."""
    return nn.Sequential(mlp(SHAPE, CLASSES, 3, 64, "relu", init="he_normal"), nn.ReLU())


def zero_output_layer() -> nn.Module:
    """A healthy 3 x 64 tanh MLP (Glorot init) whose output layer starts at zero (weights and bias)."""
    model = mlp(SHAPE, CLASSES, 3, 64, "tanh", init="glorot_uniform")
    nn.init.zeros_(model.output.weight)
    nn.init.zeros_(model.output.bias)
    return model


def _decayed(case: Case, weight_decay: float) -> Case:
    case.spec["optim"]["weight_decay"] = weight_decay
    return case


def _twin(case: Case, twin: str) -> Case:
    case.twin = twin
    return case


CAUSE_CASES: list[Case] = [
    _twin(_case("exp-activations-overflow", ("forward_overflow",), model=exp_stack, optim="adam", lr=1e-3),
          "relu-he-adam"),
    _decayed(_case("adamw-weight-decay-50", ("weight_decay_strong",), depth=3, width=64, activation="relu",
                   init="he_normal", optim="adamw", lr=1e-3), 50.0),
    _case("all-zero-inputs", ("input_constant",), activation="tanh", init="glorot_uniform",
          data=partial(teacher_data, scale=0.0)),
    _twin(_case("relu-after-last-layer", ("output_activation",), model=relu_after_last, optim="adam", lr=1e-3),
          "relu-he-adam"),
    _case("relu30-he", ("depth_unnormalized",), depth=30, width=32, activation="relu", init="he_normal",
          optim="momentum", lr=0.01),
    _case("zero-output-layer", HEALTHY, model=zero_output_layer, lr=0.05),
]
