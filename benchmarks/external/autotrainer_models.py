"""AUTOTRAINER's MNIST models translated from Keras to PyTorch (the models of benchmarks/external/autotrainer.py).

Source: the Keras code of the AUTOTRAINER benchmark (Zhang et al., "AUTOTRAINER: An Automatic DNN Training Problem
Detection and Repair System", ICSE 2021) as published by Wardat et al. with DeepDiagnosis ("DeepDiagnosis:
Automatically Diagnosing Faults and Recommending Actionable Fixes in Deep Learning Programs", ICSE 2022) in the
repository DeepDiagnosis/ICSE2022, file ``AUTOTRAINER Model Code/Models_MNIST.py``; DeepDiagnosis's diagnosis of
each model is in ``DeepDiagnosis Result/MNIST_Result.txt`` of the same repository.

Each model is a list of Keras layers written as data (:data:`ARCHS`) and built by :func:`build` with Keras's
semantics:

- ``Conv2D`` with ``padding="valid"``, stride 1; ``MaxPooling2D`` 2x2, stride 2; ``Flatten``; ``Dense``; a separate
  ``Activation`` layer after each, in the file's order. The input is one 28x28 grey image (PyTorch's NCHW; Keras's
  NHWC only permutes the flattened features, which an i.i.d. initialization of the next ``Dense`` does not see).
- Keras's initializers (Keras 2.2, the version DeepDiagnosis names): ``glorot_uniform`` when none is given,
  ``RandomUniform()`` = U(-0.05, 0.05), ``RandomNormal()`` = N(0, 0.05), ``TruncatedNormal()`` = N(0, 0.05) cut at two
  standard deviations, ``VarianceScaling(scale, mode, distribution)``: ``normal`` draws N(0, scale / fan) truncated
  at two standard deviations (not rescaled in Keras 2.2), ``uniform`` draws U(-sqrt(3 scale / fan),
  +sqrt(3 scale / fan)); ``fan_in`` of a conv kernel is kh * kw * in_channels, ``fan_avg`` the mean of fan_in and
  fan_out. Biases are zero unless the file says otherwise.
- The output: every model ends in ``Dense(10)`` + ``Activation('softmax')`` trained with
  ``categorical_crossentropy``; in PyTorch that is the ``Dense`` layer's logits into ``nn.CrossEntropyLoss`` (which
  applies log-softmax itself), so the softmax is left out.
- ``kernel_regularizer=l1_l2(l1=0, l2=1e-4)`` adds 1e-4 * sum(w^2) to the loss: a gradient of 2e-4 * w, the
  optimizer's ``weight_decay=2e-4`` (applied to the biases too, which Keras leaves out; see :data:`L2`).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

HE = ("vs", 2.0, "fan_in", "normal")  # VarianceScaling(scale=2.0, mode='fan_in', distribution='normal')
L2 = 2e-4  # the weight decay equal to Keras's l2(1e-4) kernel penalty (d/dw of 1e-4 w^2)


def _fans(weight: torch.Tensor) -> tuple[float, float]:
    """Keras's fans: (in, out) x the receptive field for a kernel; sqrt(size) both for a bias (a 1-d shape)."""
    if weight.dim() == 1:
        return math.sqrt(weight.numel()), math.sqrt(weight.numel())
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def keras_init_(tensor: torch.Tensor, init: tuple, fans: tuple[float, float]) -> torch.Tensor:
    """Fill ``tensor`` as the Keras 2.2 initializer ``init`` would (``fans`` = the kernel's (fan_in, fan_out))."""
    kind = init[0]
    with torch.no_grad():
        if kind == "zeros":
            return tensor.zero_()
        if kind == "ones":
            return tensor.fill_(1.0)
        if kind == "constant":  # Constant(value=0)
            return tensor.fill_(float(init[1]) if len(init) > 1 else 0.0)
        if kind == "uniform":  # RandomUniform(minval=-0.05, maxval=0.05)
            return tensor.uniform_(-0.05, 0.05)
        if kind == "normal":  # RandomNormal(mean=0, stddev=0.05)
            return tensor.normal_(0.0, 0.05)
        if kind == "truncated":  # TruncatedNormal(mean=0, stddev=0.05): redraws beyond two standard deviations
            return nn.init.trunc_normal_(tensor, 0.0, 0.05, -0.1, 0.1)
        if kind == "glorot_uniform":
            limit = math.sqrt(6.0 / (fans[0] + fans[1]))
            return tensor.uniform_(-limit, limit)
        if kind == "vs":
            _, scale, mode, distribution = init
            fan = {"fan_in": fans[0], "fan_out": fans[1], "fan_avg": (fans[0] + fans[1]) / 2}[mode]
            if distribution == "normal":
                std = math.sqrt(scale / fan)
                return nn.init.trunc_normal_(tensor, 0.0, std, -2 * std, 2 * std)
            limit = math.sqrt(3.0 * scale / fan)
            return tensor.uniform_(-limit, limit)
    raise ValueError(f"unknown Keras initializer {init!r}")


class Exp(nn.Module):
    """Keras's ``Activation('exponential')``: exp(x), element-wise (a user's own activation module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


def build(layers: list[tuple], in_shape: tuple[int, int, int] = (1, 28, 28)) -> nn.Sequential:
    """An ``nn.Sequential`` of Keras ``layers``: ("conv", filters, kernel, init[, bias_init]), ("pool",),
    ("flatten",), ("dense", units, init[, bias_init]), ("act", name); numbered as Keras numbers its layers."""
    mods: list[nn.Module] = []
    c, h, w = in_shape
    features = None
    for layer in layers:
        kind = layer[0]
        if kind == "conv":
            _, filters, k, init, *bias = layer
            mod = nn.Conv2d(c, filters, k)
            c, h, w = filters, h - k + 1, w - k + 1
        elif kind == "pool":
            mod, h, w = nn.MaxPool2d(2, 2), h // 2, w // 2
        elif kind == "flatten":
            mod, features = nn.Flatten(), c * h * w
        elif kind == "dense":
            _, units, init, *bias = layer
            mod, features = nn.Linear(features, units), units
        elif kind == "act":
            mod = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "exponential": Exp,
                   "log_sigmoid": nn.LogSigmoid}[layer[1]]()
        else:
            raise ValueError(f"unknown layer {layer!r}")
        if kind in ("conv", "dense"):
            keras_init_(mod.weight, init, _fans(mod.weight))
            keras_init_(mod.bias, bias[0] if bias else ("zeros",), _fans(mod.bias))
        mods.append(mod)
    return nn.Sequential(*mods)


def lenet(act: str, hidden: list[int], init: tuple = HE, out_init: tuple = HE, out_bias: tuple = ("zeros",),
          filters: tuple[int, int] = (6, 16), pool2: bool = True) -> list[tuple]:
    """The LeNet-5 pattern of the file: conv 5x5 -> act -> pool -> conv 5x5 -> act [-> pool] -> flatten ->
    dense (each + act) -> dense(10) (its softmax left to the loss)."""
    layers = [("conv", filters[0], 5, init), ("act", act), ("pool",), ("conv", filters[1], 5, init), ("act", act)]
    layers += [("pool",)] if pool2 else []
    layers.append(("flatten",))
    for units in hidden:
        layers += [("dense", units, init), ("act", act)]
    return layers + [("dense", 10, out_init, out_bias)]


@dataclass(frozen=True)
class Model:
    """One model of the file: its layers, training configuration and what the two published tools said."""

    name: str
    layers: tuple
    l2: bool  # the file's kernel_regularizer l2(1e-4) on every layer
    optim: dict  # the training configuration (see OPTIM_NOTE)
    batch_size: int
    deepdiagnosis: str  # DeepDiagnosis's published diagnosis (MNIST_Result.txt), or why there is none
    autotrainer: str  # the set AUTOTRAINER's data put it in
    buggy: bool  # in AUTOTRAINER's buggy ("repaired") set, or not training on its published configuration

    def build(self) -> nn.Sequential:
        return build(list(self.layers))


# The file has the architectures only: the training configurations sit in the benchmark's data archive, except the
# one DeepDiagnosis published beside model_al_22 (config_RMSprop_....pkl: RMSprop, lr 0.01, rho 0.6751, batch 256).
# Elsewhere Keras's defaults: SGD (lr 0.01, no momentum) and fit()'s batch size 32.
KERAS_SGD = {"name": "sgd", "lr": 0.01}
OPTIM_NOTE = "Keras defaults (SGD lr 0.01, batch 32) where the configuration is not published"
VANISH = "Batch 1 layer 7: Vanishing Gradient Problem in delta Weights -> Learning Rate"

ARCHS: dict[str, Model] = {m.name: m for m in [
    Model("model_2af630c4", tuple(lenet("sigmoid", [120] + [84] * 8)), True, KERAS_SGD, 32,
          VANISH, "repaired", True),
    Model("model_44ae76ae", tuple(lenet("sigmoid", [120] + [84] * 7)), True, KERAS_SGD, 32, VANISH, "repaired", True),
    Model("model_70e5f698", tuple(lenet("sigmoid", [120] + [84] * 8)), True, KERAS_SGD, 32, VANISH, "repaired", True),
    Model("model_97f07775", tuple(lenet("sigmoid", [120] + [84] * 7)), True, KERAS_SGD, 32, VANISH, "repaired", True),
    Model("model_ac055404", tuple(lenet("sigmoid", [120] + [84] * 9)), True, KERAS_SGD, 32, VANISH, "repaired", True),
    # deep ReLU with Keras's RandomUniform(-0.05, 0.05) everywhere and no second pooling
    Model("tmp_lenet5", tuple(lenet("relu", [64] * 16 + [32], ("uniform",), ("uniform",), filters=(32, 64),
                                    pool2=False)), False, KERAS_SGD, 32,
          "not in MNIST_Result.txt by this name", "hand-made buggy model", True),
    # the configuration DeepDiagnosis published: it stays at 11 % accuracy, and AUTOTRAINER's monitor saw no issue
    Model("model_al_22", tuple(lenet("relu", [120] + [84] * 13)), True,
          {"name": "rmsprop", "lr": 0.01, "alpha": 0.6751, "eps": 1e-7}, 256,
          "Batch 0 layer 4: Numerical Problem Forward -> Learning Rate", "normal (11.35 % accuracy)", True),
    # the seed LeNet-5 the mutants come from: the healthy twin
    Model("lenet_seed", tuple(lenet("relu", [120, 84], out_bias=("zeros",))), True, KERAS_SGD, 32,
          "healthy (not diagnosed)", "seed model", False),
    # further mutants of the file (added layers "al", modified initializers "mi"); their configurations are not
    # published, so they run with Keras's defaults and are judged as they turn out (run them with --all)
    Model("model_al_13", tuple(lenet("relu", [120] * 4 + [84])), True, KERAS_SGD, 32, "-", "mutant", False),
    Model("model_al_16", tuple(lenet("relu", [120] * 7 + [84])), True, KERAS_SGD, 32, "-", "mutant", False),
    Model("model_mi_10", tuple(lenet("relu", [120, 84], out_init=("normal",))), True, KERAS_SGD, 32, "-", "mutant",
          False),
    Model("model_mi_al_13", tuple(lenet("relu", [120] + [84] * 4, out_init=("vs", 1.0, "fan_in", "uniform"),
                                        out_bias=("ones",))), True, KERAS_SGD, 32, "-", "mutant", False),
    Model("model_mi_al_16", tuple(lenet("relu", [120] * 7 + [84], out_init=("vs", 1.0, "fan_in", "normal"),
                                        out_bias=("vs", 2.0, "fan_in", "normal"))), True, KERAS_SGD, 32, "-",
          "mutant", False),
    Model("model_mi_al_19", tuple(lenet("relu", [120] + [84] * 10, out_init=("vs", 1.0, "fan_avg", "uniform"),
                                        out_bias=("vs", 1.0, "fan_in", "uniform"))), True, KERAS_SGD, 32, "-",
          "mutant", False),
    Model("model_ma_al_16", tuple(lenet("relu", [120] + [84] * 7)), True, KERAS_SGD, 32, "-", "mutant", False),
    Model("model_ma_mi_10", tuple(lenet("relu", [120, 84], out_init=("truncated",), out_bias=("truncated",))), True,
          KERAS_SGD, 32, "-", "mutant", False),
    Model("model_mi_al_22", tuple(lenet("relu", [120] + [84] * 13, out_init=("vs", 1.0, "fan_avg", "normal"),
                                        out_bias=("vs", 1.0, "fan_avg", "normal"))), True, KERAS_SGD, 32, "-",
          "mutant", False),
]}

DEFAULT = ("model_2af630c4", "model_44ae76ae", "model_70e5f698", "model_97f07775", "model_ac055404", "tmp_lenet5",
           "model_al_22", "lenet_seed")


@contextlib.contextmanager
def scratch_dir():
    """Run the block in a temporary working directory (repair writes ``<run>-fixed.toml`` into the working directory),
    and come back to the current one afterwards."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield tmp
        finally:
            os.chdir(cwd)
