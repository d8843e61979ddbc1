"""AUTOTRAINER's Circle and Blob models translated from Keras to PyTorch (the models of autotrainer_toy.py).

Source: the Keras code of the AUTOTRAINER benchmark (Zhang et al., "AUTOTRAINER: An Automatic DNN Training Problem
Detection and Repair System", ICSE 2021) as published by Wardat et al. with DeepDiagnosis ("DeepDiagnosis:
Automatically Diagnosing Faults and Recommending Actionable Fixes in Deep Learning Programs", ICSE 2022) in the
repository DeepDiagnosis/ICSE2022: ``AUTOTRAINER Model Code/Models_Circle.py`` (30 models) and ``Models_Blob.py``
(21 blocks); DeepDiagnosis's diagnosis of each run is in ``DeepDiagnosis Result/Circle_Result.txt`` and
``Blob_Result.txt``.

The layers are built by ``autotrainer_models.build`` (one translation of Keras's layers and initializers for the
MNIST and the toy models: Keras 2.2's ``VarianceScaling``, ``RandomUniform()`` = U(-0.05, 0.05), ``RandomNormal()``
= N(0, 0.05), ``TruncatedNormal()``, ``Zeros``, ``Ones``, ``Constant()`` = 0; biases zero unless the file says
otherwise). Every model is a stack of ``Dense(5)`` + ``Activation`` on the 2-D input (``nn.Flatten`` first, since
deepscope's datasets hold rows as ``(1, 1, 2)``); Keras's ``Activation('exponential')`` is
``autotrainer_models.Exp``, a module whose ``forward`` is ``torch.exp(x)``. The files use no BatchNormalization or
Dropout (BatchNormalization is imported, never added). Three models apply their activation twice in a row
(Circle ``model_d064a5da``: exp(exp(.)) after the fifth layer; Circle ``model_mi_al_13`` and Blob ``model_al_19``:
tanh(tanh(.))); the translation keeps it.

The outputs:

- Circle ends in ``Dense(1)`` + ``Activation('sigmoid')`` trained with ``binary_crossentropy``: in PyTorch the
  ``Dense`` layer's one logit into ``bce_with_logits`` (which applies the sigmoid itself), so the sigmoid is left
  out of the model.
- Blob ends in ``Dense(3)`` + ``sigmoid`` (not softmax) trained with ``categorical_crossentropy``. Keras's
  categorical cross-entropy on probabilities normalizes them: -log(p_y / sum_k p_k) with p = sigmoid(z). That is
  exactly PyTorch's ``cross_entropy`` of log p, so the sigmoid stays in the model as ``nn.LogSigmoid`` (the loss
  does not apply it; the log is the loss's own step) and the loss is ``cross_entropy``.

Which models are buggy: the 20 Circle and 11 Blob models with hexadecimal names are the ones AUTOTRAINER's data put
in its "repaired" set (each is listed under ``/Circle/repaired/`` or ``/Blob/repaired/`` in DeepDiagnosis's
results). The others are the seed models (``simplednn``, ``simplednn_blob``) and mutants (``al`` added layers, ``mi``
modified initializers, ``ma`` modified activations) whose runs sit in the ``normal`` set: the published folder
``difference threshold/`` holds normal runs of ``model_al_13``, ``model_al_19``, ``model_mi_7``,
``model_mi_al_10``, ``model_al_10``, ``simplednn`` (Circle), ``model_mi_al_19``, ``model_al_19`` and
``simplednn_blob`` (Blob). They are the healthy models here.

The file's ``get_model(name)`` picks the first block whose name is a substring of ``name``, so in the file some
names reach an earlier block (Circle ``model_mi_al_10`` gets ``model_al_10``; Blob ``model_ma_mi_7`` gets
``model_mi_7``, ``model_mi_al_13`` gets ``model_al_13``, ``model_mi_al_19`` gets ``model_al_19``), and Blob defines
``model_mi_7`` twice. Each block is translated as written under its own name; the second ``model_mi_7`` of the
Blob file is ``model_mi_7_second``.
"""

from __future__ import annotations

from dataclasses import dataclass

from autotrainer_models import build
from torch import nn

HE_U = ("vs", 2.0, "fan_in", "uniform")  # VarianceScaling(scale=2.0, mode='fan_in', distribution='uniform')
ZEROS = ("zeros",)
RU = ("uniform",)  # RandomUniform(): U(-0.05, 0.05)
E, S, R, T = "exponential", "sigmoid", "relu", "tanh"


def stack(*blocks: tuple) -> list[tuple]:
    """Hidden layers: each block is (count, activation[, kernel init]) of Dense(5) + Activation, or ("act", name)
    for an extra Activation layer; starting with the Flatten of the (1, 1, 2) rows."""
    layers: list[tuple] = [("flatten",)]
    for block in blocks:
        if block[0] == "act":
            layers.append(block)
            continue
        count, act, *init = block
        for _ in range(count):
            layers += [("dense", 5, init[0] if init else HE_U, ZEROS), ("act", act)]
    return layers


def circle_out(init: tuple = HE_U, bias: tuple = ZEROS) -> list[tuple]:
    """Dense(1): the logit (Keras's sigmoid is applied by bce_with_logits)."""
    return [("dense", 1, init, bias)]


def blob_out(init: tuple = HE_U, bias: tuple = ZEROS) -> list[tuple]:
    """Dense(3) + sigmoid under Keras's categorical cross-entropy = LogSigmoid into cross_entropy."""
    return [("dense", 3, init, bias), ("act", "log_sigmoid")]


@dataclass(frozen=True)
class ToyModel:
    """One model of the files: its task, layers, what DeepDiagnosis published for it, and its set."""

    name: str
    task: str  # "circle" or "blob"
    layers: tuple
    deepdiagnosis: str  # DeepDiagnosis's published diagnosis (Circle_Result.txt / Blob_Result.txt)
    buggy: bool  # in AUTOTRAINER's "repaired" set

    def build(self) -> nn.Sequential:
        return build(list(self.layers), in_shape=(1, 1, 2))

    @property
    def hidden(self) -> int:
        """Hidden Dense layers (the Keras definition's Dense layers minus the output)."""
        return sum(1 for layer in self.layers if layer[0] == "dense") - 1


def _dd(batch: int, layer: int, problem: str, fix: str) -> str:
    return f"Batch {batch} layer {layer}: {problem} -> {fix}"


NPF_ACT = _dd(0, 0, "Numerical Problem Forward", "change the activation at layer 1")
NPF_NORM = _dd(0, 0, "Numerical Problem Forward", "Normalize the data")
NORMAL = "normal set: not diagnosed"


def _vg(layer: int) -> str:
    return _dd(0, layer, "Vanishing Gradient", "Learning Rate")


def _c(name, layers, dd, buggy=True) -> ToyModel:
    return ToyModel(name, "circle", tuple(layers), dd, buggy)


def _b(name, layers, dd, buggy=True) -> ToyModel:
    return ToyModel(name, "blob", tuple(layers), dd, buggy)


CIRCLE = [
    _c("model_0ae2cd88", stack((8, E)) + circle_out(), NPF_ACT),
    _c("model_0eb8d545", stack((11, E)) + circle_out(), NPF_ACT),
    _c("model_01bb8f27", stack((10, E)) + circle_out(), NPF_ACT),
    _c("model_5ab0aeda", stack((11, S)) + circle_out(), _vg(2)),
    _c("model_8de47bdc", stack((8, R, RU)) + circle_out(), _dd(0, 15, "Numerical Problem Forward", "Learning Rate")),
    _c("model_8e28bdef", stack((16, R)) + circle_out(), _vg(16)),
    _c("model_9e7361d4", stack((9, E)) + circle_out(), NPF_ACT),
    _c("model_46edb7df", stack((15, R)) + circle_out(),
       _dd(319, 29, "Dead Node", "add dropout or a missing activation")),
    _c("model_169a3fa1", stack((10, E)) + circle_out(), NPF_ACT),
    _c("model_205c07d5", stack((8, E)) + circle_out(), NPF_ACT),
    _c("model_636bde2e", stack((11, E)) + circle_out(), NPF_ACT),
    _c("model_10702695", stack((8, R, RU)) + circle_out(), _vg(12)),
    _c("model_14989730", stack((8, R, RU)) + circle_out(), _vg(12)),
    _c("model_c54b3d2e", stack((9, R, RU)) + circle_out(), _dd(0, 11, "Numerical Problem Forward", "Learning Rate")),
    _c("model_c632dcbd", stack((12, S)) + circle_out(), _vg(6)),
    _c("model_d064a5da", stack((5, E), ("act", E), (4, E)) + circle_out(), NPF_ACT),
    _c("model_dd8c879b", stack((13, S)) + circle_out(), _vg(4)),
    _c("model_e8a6e959", stack((17, R)) + circle_out(), _dd(0, 31, "Numerical Problem Forward", "Learning Rate")),
    _c("model_ebc164bf", stack((11, S)) + circle_out(), _vg(6)),
    _c("model_f476c610", stack((12, S)) + circle_out(), _vg(2)),
    # the normal set: the seed model and its mutants
    _c("simplednn", stack((5, T)) + circle_out(), NORMAL, False),
    _c("model_mi_7", stack((5, T)) + circle_out(("vs", 1.0, "fan_in", "uniform")), NORMAL, False),
    _c("model_ma_7", stack((5, T)) + circle_out(), NORMAL, False),
    _c("model_al_10", stack((8, T)) + circle_out(), NORMAL, False),
    _c("model_al_13", stack((11, T)) + circle_out(), NORMAL, False),
    _c("model_al_19", stack((17, T)) + circle_out(), NORMAL, False),
    _c("model_mi_al_10", stack((8, T)) + circle_out(("vs", 1.0, "fan_in", "normal"), ("vs", 1.0, "fan_avg", "normal")),
       NORMAL, False),
    _c("model_mi_al_13", stack((7, T), ("act", T), (4, T)) + circle_out(("vs", 1.0, "fan_avg", "uniform"),
                                                                        ("normal",)), NORMAL, False),
    _c("model_mi_al_16", stack((14, T)) + circle_out(("truncated",), ("vs", 1.0, "fan_avg", "uniform")), NORMAL,
       False),
    _c("model_mi_al_19", stack((17, T)) + circle_out(("vs", 1.0, "fan_avg", "normal"),
                                                     ("vs", 1.0, "fan_in", "uniform")), NORMAL, False),
]

BLOB = [
    _b("model_0b6f114d", stack((9, E)) + blob_out(), NPF_NORM),
    _b("model_9b8bdaab", stack((9, E)) + blob_out(), NPF_NORM),
    _b("model_84c77206", stack((15, R)) + blob_out(), "buggy set: not diagnosed"),
    _b("model_0448d813", stack((8, E)) + blob_out(), NPF_NORM),
    _b("model_661b4e86", stack((10, E)) + blob_out(), NPF_NORM),
    _b("model_2569b90f", stack((11, S)) + blob_out(), _vg(4)),
    _b("model_384108d9", stack((8, R, RU)) + blob_out(), _vg(10)),
    _b("model_bd4e58b7", stack((12, S)) + blob_out(), _vg(8)),
    _b("model_e706e7cd", stack((11, S)) + blob_out(), _vg(4)),
    _b("model_e73037c2", stack((8, E)) + blob_out(), NPF_NORM),
    _b("model_f7e7b91b", stack((9, R, RU)) + blob_out(), _vg(14)),
    # the normal set
    _b("simplednn_blob", stack((5, T)) + blob_out(), NORMAL, False),
    _b("model_mi_7", stack((5, T)) + blob_out(("constant",), ("vs", 1.0, "fan_in", "uniform")), NORMAL, False),
    _b("model_mi_7_second", stack((5, T)) + blob_out(RU, ("vs", 1.0, "fan_avg", "normal")), NORMAL, False),
    _b("model_ma_mi_7", stack((5, T)) + blob_out(("vs", 2.0, "fan_in", "normal"), ("vs", 2.0, "fan_in", "normal")),
       NORMAL, False),
    _b("model_al_13", stack((11, T)) + blob_out(), NORMAL, False),
    _b("model_al_19", stack((14, T), ("act", T), (3, T)) + blob_out(), NORMAL, False),
    _b("model_mi_al_10", stack((8, T)) + blob_out(ZEROS, ("constant",)), NORMAL, False),
    _b("model_mi_al_13", stack((11, T)) + blob_out(("ones",), RU), NORMAL, False),
    _b("model_mi_al_16", stack((14, T)) + blob_out(("vs", 1.0, "fan_avg", "uniform"), ("vs", 2.0, "fan_in", "normal")),
       NORMAL, False),
    _b("model_mi_al_19", stack((17, T)) + blob_out(("vs", 1.0, "fan_in", "normal"), ("vs", 1.0, "fan_avg", "normal")),
       "normal set: model_random_953b07b0 " + _dd(4, 0, "Saturated Activation", "Normalize the data"), False),
]

MODELS: dict[str, ToyModel] = {f"{m.task}/{m.name}": m for m in CIRCLE + BLOB}

# The training configuration of each task: the one of the published normal runs of the seed models (DeepDiagnosis's
# ``difference threshold/`` folder: Circle ``config_simplednn_adam.pkl``: Adam, lr 0.001, batch 128, 300 epochs,
# binary_crossentropy; Blob ``model_random_953b07b0/config_SGD_c9a754a0....pkl``, whose content is Adam, lr 0.001,
# batch 256, 300 epochs, categorical_crossentropy). The buggy models' own configurations are not published.
CONFIG = {
    "circle": {"data": "circles", "loss": "bce_with_logits", "optim": {"name": "adam", "lr": 1e-3, "eps": 1e-7},
               "batch_size": 128, "epochs": 300},
    "blob": {"data": "blobs", "loss": "cross_entropy", "optim": {"name": "adam", "lr": 1e-3, "eps": 1e-7},
             "batch_size": 256, "epochs": 300},
}
