"""AUTOTRAINER's Circle and Blob models as translated: layer counts of the Keras files, Keras's initial weights,
the outputs the losses expect, and one diagnosis run of an exp stack."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "external"))

from autotrainer_models import Exp  # noqa: E402
from autotrainer_toy_models import MODELS  # noqa: E402

# Counted from Models_Circle.py and Models_Blob.py (each block's Dense layers, output included, and its hidden
# Activation layers, the repeated ones included): name -> (Dense layers, hidden activation, how many).
KERAS = {
    "circle/model_0ae2cd88": (9, "exponential", 8), "circle/model_0eb8d545": (12, "exponential", 11),
    "circle/model_01bb8f27": (11, "exponential", 10), "circle/model_5ab0aeda": (12, "sigmoid", 11),
    "circle/model_8de47bdc": (9, "relu", 8), "circle/model_8e28bdef": (17, "relu", 16),
    "circle/model_9e7361d4": (10, "exponential", 9), "circle/model_46edb7df": (16, "relu", 15),
    "circle/model_169a3fa1": (11, "exponential", 10), "circle/model_205c07d5": (9, "exponential", 8),
    "circle/model_636bde2e": (12, "exponential", 11), "circle/model_10702695": (9, "relu", 8),
    "circle/model_14989730": (9, "relu", 8), "circle/model_c54b3d2e": (10, "relu", 9),
    "circle/model_c632dcbd": (13, "sigmoid", 12), "circle/model_d064a5da": (10, "exponential", 10),
    "circle/model_dd8c879b": (14, "sigmoid", 13), "circle/model_e8a6e959": (18, "relu", 17),
    "circle/model_ebc164bf": (12, "sigmoid", 11), "circle/model_f476c610": (13, "sigmoid", 12),
    "circle/model_mi_al_13": (12, "tanh", 12), "circle/model_mi_7": (6, "tanh", 5),
    "circle/model_al_10": (9, "tanh", 8), "circle/simplednn": (6, "tanh", 5),
    "circle/model_mi_al_16": (15, "tanh", 14), "circle/model_al_13": (12, "tanh", 11),
    "circle/model_mi_al_19": (18, "tanh", 17), "circle/model_ma_7": (6, "tanh", 5),
    "circle/model_al_19": (18, "tanh", 17), "circle/model_mi_al_10": (9, "tanh", 8),
    "blob/model_0b6f114d": (10, "exponential", 9), "blob/model_9b8bdaab": (10, "exponential", 9),
    "blob/model_84c77206": (16, "relu", 15), "blob/model_0448d813": (9, "exponential", 8),
    "blob/model_661b4e86": (11, "exponential", 10), "blob/model_2569b90f": (12, "sigmoid", 11),
    "blob/model_384108d9": (9, "relu", 8), "blob/model_mi_7": (6, "tanh", 5),
    "blob/model_bd4e58b7": (13, "sigmoid", 12), "blob/model_e706e7cd": (12, "sigmoid", 11),
    "blob/model_e73037c2": (9, "exponential", 8), "blob/model_f7e7b91b": (10, "relu", 9),
    "blob/model_al_13": (12, "tanh", 11), "blob/simplednn_blob": (6, "tanh", 5),
    "blob/model_mi_7_second": (6, "tanh", 5), "blob/model_mi_al_10": (9, "tanh", 8),
    "blob/model_al_19": (18, "tanh", 18), "blob/model_ma_mi_7": (6, "tanh", 5),
    "blob/model_mi_al_19": (18, "tanh", 17), "blob/model_mi_al_13": (12, "tanh", 11),
    "blob/model_mi_al_16": (15, "tanh", 14),
}
TYPES = {"exponential": Exp, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def test_every_block_of_the_two_files_is_translated():
    assert set(MODELS) == set(KERAS)
    assert sum(m.buggy for m in MODELS.values()) == 20 + 11  # the hexadecimal names of the "repaired" sets


@pytest.mark.parametrize("name", list(KERAS))
def test_layer_counts_and_outputs_follow_the_keras_files(name):
    dense, act, count = KERAS[name]
    model = MODELS[name].build()
    modules = list(model.modules())[1:]
    assert sum(isinstance(m, nn.Linear) for m in modules) == dense
    assert sum(isinstance(m, TYPES[act]) for m in modules) == count
    assert sum(isinstance(m, nn.Sigmoid | nn.Softmax) for m in modules) == (count if act == "sigmoid" else 0)
    out = model(torch.randn(4, 1, 1, 2) * 0.01)
    last = list(model.children())[-1]
    if name.startswith("circle/"):  # one logit: the sigmoid is bce_with_logits's
        assert out.shape == (4, 1) and isinstance(last, nn.Linear)
    else:  # Keras's sigmoid + categorical cross-entropy = cross_entropy of log sigmoid
        assert out.shape == (4, 3) and isinstance(last, nn.LogSigmoid)


def test_he_uniform_and_random_uniform_statistics():
    torch.manual_seed(0)
    he = [m.weight.detach() for m in MODELS["circle/model_8e28bdef"].build().modules() if isinstance(m, nn.Linear)]
    w = torch.cat([p.reshape(-1) for p in he[1:-1]])  # 5 -> 5 layers: VarianceScaling(2, fan_in, uniform)
    limit = math.sqrt(3 * 2.0 / 5)
    assert float(w.abs().max()) <= limit and float(w.abs().max()) > 0.9 * limit
    assert float(w.var()) == pytest.approx(limit**2 / 3, rel=0.15)  # U(-a, a): a^2 / 3 = 2 / fan_in
    assert float(he[0].abs().max()) <= math.sqrt(3.0)  # the first layer's fan_in is 2
    ru = [m.weight.detach() for m in MODELS["circle/model_8de47bdc"].build().modules() if isinstance(m, nn.Linear)]
    assert all(float(p.abs().max()) <= 0.05 for p in ru[:-1]) and float(ru[-1].abs().max()) > 0.05


def test_output_initializers_of_the_mutants():
    torch.manual_seed(1)
    out = list(MODELS["blob/model_mi_al_13"].build().children())[-2]  # Dense(3, kernel Ones, bias RandomUniform)
    assert torch.equal(out.weight.detach(), torch.ones(3, 5)) and float(out.bias.detach().abs().max()) <= 0.05
    out = list(MODELS["blob/model_mi_al_10"].build().children())[-2]  # Zeros kernel, Constant() bias
    assert float(out.weight.detach().abs().max()) == 0.0 and float(out.bias.detach().abs().max()) == 0.0


def test_an_exp_stack_is_diagnosed_and_repaired_without_a_crash():
    import autotrainer_toy

    from deepscope.data import get_dataset

    data = get_dataset("circles")
    m = MODELS["circle/model_0ae2cd88"]
    with torch.no_grad():
        torch.manual_seed(0)
        assert not bool(torch.isfinite(m.build()(data.valid[0])).all())  # exp of exp ... overflows at the start
    result = autotrainer_toy.run(m, data, 40, 50)
    codes = {f.code for f in result.baseline.findings if f.severity in ("error", "warning")}
    assert "forward_overflow" in codes
