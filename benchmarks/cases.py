"""The labelled set-ups of the diagnosis benchmark: each a short training run with a known answer.

A :class:`Case` is a run spec (``kind="spec"``: the network of ``spec["model"]``) or a module of your own
(``kind="module"``: ``model()`` builds it, the spec gives data, optimizer and training), the data it
trains on (``data()``, a small generated :class:`~deepscope.data.Dataset`), and what ``deepscope doctor``
should say: ``"healthy"`` (no warning, no error) or the finding codes that name the problem (any one of
them counts as named; the first is the case's problem class).

    from cases import CASES
    for case in CASES:
        result = doctor(case.spec, model=case.build_model(), dataset=case.data(), updates=case.updates)

The data are a fixed random "teacher" network's labels of N(0, 1) inputs shaped ``(1, 8, 8)``: an MLP
reads 64 numbers, a conv net an 8 x 8 image, an LSTM or a Transformer encoder 8 steps of 8 features.
Everything is small (a few hundred updates, widths <= 128) so that the whole set runs in minutes on 2 cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import torch
from torch import nn

from deepscope.data import Dataset
from deepscope.models import mlp

SHAPE = (1, 8, 8)
CLASSES = 4
UPDATES = 300  # updates per case
N_TRAIN, N_VALID, N_TEST = 4000, 300, 100

HEALTHY = "healthy"


# --- data -------------------------------------------------------------------------------------------


@cache
def _teacher() -> Callable[[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    w1 = torch.randn(64, 32, generator=g) / 8.0
    w2 = torch.randn(32, CLASSES, generator=g) / math.sqrt(32)
    return lambda x: torch.tanh(x.reshape(len(x), -1) @ w1 * 2.0) @ w2


@cache
def _conv_teacher(filters: int = 8) -> Callable[[torch.Tensor], torch.Tensor]:
    """A random conv teacher: ``filters`` 3 x 3 filters, tanh, the mean over the image, a linear map to the classes.

    Its labels depend on local patterns wherever they are in the image (what a conv net with pooling can express
    and a dense teacher's labels are not). The pooled features are standardized and the class scores centred with
    statistics of a fixed reference sample, so that the classes are about balanced.
    """
    g = torch.Generator().manual_seed(4321)
    w1 = torch.randn(filters, 1, 3, 3, generator=g) / 3.0
    w2 = torch.randn(filters, CLASSES, generator=g)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(2.0 * torch.nn.functional.conv2d(x, w1, padding=1)).mean((2, 3))

    reference = pooled(torch.randn(8192, *SHAPE, generator=g))
    mean, std = reference.mean(0), reference.std(0)
    scores = ((reference - mean) / std) @ w2
    centre = torch.zeros(CLASSES)
    for _ in range(300):  # offsets that balance the classes of the reference sample
        share = torch.bincount((scores - centre).argmax(1), minlength=CLASSES) / len(scores)
        centre += 2.0 * (share - 1.0 / CLASSES)
    return lambda x: ((pooled(x) - mean) / std) @ w2 - centre


def teacher_data(n_train: int = N_TRAIN, *, label_noise: float = 0.0, offset: float = 0.0, scale: float = 1.0,
                 random_labels: bool = False, outliers: float = 0.0, seed: int = 0, teacher: str = "mlp") -> Dataset:
    """Inputs N(0, 1) (times ``scale``, plus ``offset``) shaped (1, 8, 8); labels of a fixed random tanh teacher.

    ``teacher``: ``"mlp"`` (a dense tanh layer of the 64 inputs) or ``"conv"`` (local patterns anywhere in the
    image, :func:`_conv_teacher`: the data of the conv cases). ``label_noise``: the fraction of training labels
    replaced by random ones (valid/test stay clean); ``random_labels``: every label random (nothing to learn);
    ``outliers``: the fraction of training inputs multiplied by 30 (rare corrupted examples).
    """
    g = torch.Generator().manual_seed(seed)
    teacher = {"mlp": _teacher, "conv": _conv_teacher}[teacher]()

    def split(n: int, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *SHAPE, generator=g)
        y = teacher(x).argmax(1)
        if random_labels:
            y = torch.randint(0, CLASSES, (n,), generator=g)
        elif noisy and label_noise > 0:
            flip = torch.rand(n, generator=g) < label_noise
            y = torch.where(flip, torch.randint(0, CLASSES, (n,), generator=g), y)
        if noisy and outliers > 0:
            x = torch.where((torch.rand(n, generator=g) < outliers).reshape(n, 1, 1, 1), 30.0 * x, x)
        return x * scale + offset, y

    return Dataset("teacher", SHAPE, CLASSES, [str(i) for i in range(CLASSES)], split(n_train, True),
                   split(N_VALID, False), split(N_TEST, False))


def conv_data(**kw) -> Callable[[], Dataset]:
    """The conv cases' data: the conv teacher's labels (``teacher_data(teacher="conv", **kw)``)."""
    return partial(teacher_data, teacher="conv", **kw)


SHAPESET = {"name": "shapeset", "options": {"n_valid": N_VALID, "n_test": N_TEST, "size": 16}}


def shapeset_data() -> Dataset:
    """Shapeset-3x2 at 16 x 16 (Glorot & Bengio 2010), learned online; 300 validation examples."""
    from deepscope.data import get_dataset

    return get_dataset("shapeset", **SHAPESET["options"])


# --- modules of the user kind -------------------------------------------------------------------------


class Residual(nn.Module):
    """Pre-norm residual MLP: x + W2 gelu(W1 LayerNorm(x)) blocks."""

    def __init__(self, width: int = 64, blocks: int = 4):
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                                  nn.Linear(width, width)) for _ in range(blocks))
        self.out = nn.Linear(width, CLASSES)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class ResNet(nn.Module):
    """A small residual conv net with batch normalization (He et al. 2016 basic blocks)."""

    def __init__(self, channels: int = 16, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                          nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
            for _ in range(blocks))
        self.act = nn.ReLU()
        self.head = nn.Linear(channels, CLASSES)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = self.act(h + block(h))
        return self.head(h.mean((2, 3)))


class Encoder(nn.Module):
    """A small Transformer encoder over the 8 rows of the input as tokens."""

    def __init__(self, d_model: int = 32, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.pos = nn.Parameter(torch.randn(8, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(8 * d_model, CLASSES)

    def forward(self, x):
        h = self.encoder(self.embed(x.reshape(len(x), 8, 8)) + self.pos)
        return self.head(h.flatten(1))


class Recurrent(nn.Module):
    """An LSTM over the 8 rows of the input as time steps; the last hidden state classifies."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        out, _ = self.lstm(x.reshape(len(x), 8, 8))
        return self.head(out[:, -1])


class SoftmaxOut(nn.Module):
    """An MLP that ends in softmax, trained with cross-entropy (which applies log-softmax again)."""

    def __init__(self):
        super().__init__()
        self.net = mlp(SHAPE, CLASSES, 2, 64, "relu", init="he_normal")

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


class SigmoidOut(nn.Module):
    """An MLP that ends in a sigmoid: bounded "logits" in (0, 1) fed to cross-entropy."""

    def __init__(self):
        super().__init__()
        self.net = mlp(SHAPE, CLASSES, 2, 64, "tanh")

    def forward(self, x):
        return torch.sigmoid(self.net(x))


class Unregistered(nn.Module):
    """Hidden layers kept in a plain Python list: not registered, so not in ``parameters()`` nor the optimizer."""

    def __init__(self):
        super().__init__()
        self.hidden = [nn.Linear(64, 64), nn.Linear(64, 64)]  # the bug: not an nn.ModuleList
        self.act = nn.Tanh()
        self.out = nn.Linear(64, CLASSES)

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)


class FrozenBN(nn.Module):
    """A BN MLP whose ``train()`` keeps the batch-norm layers in eval mode (a "frozen BN" left in by mistake)."""

    def __init__(self):
        super().__init__()
        self.net = mlp(SHAPE, CLASSES, 3, 64, "relu", init="he_normal", norm="batch")

    def forward(self, x):
        return self.net(x)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.eval()
        return self


class EvalMode(nn.Module):
    """An MLP with dropout and BN whose ``train()`` never leaves eval mode."""

    def __init__(self):
        super().__init__()
        self.net = mlp(SHAPE, CLASSES, 3, 64, "relu", init="he_normal", norm="batch", dropout=0.2)

    def forward(self, x):
        return self.net(x)

    def train(self, mode: bool = True):
        return super().train(False)


def relu_mlp(bias: float | None = None, momentum_bn: float | None = None, **kwargs) -> nn.Module:
    """A 4 x 64 ReLU MLP, He init; optionally every bias set to ``bias`` or BN with running-stat ``momentum_bn``."""
    outputs = kwargs.pop("outputs", CLASSES)
    model = mlp(SHAPE, outputs, kwargs.pop("depth", 4), kwargs.pop("width", 64), "relu", init="he_normal", **kwargs)
    for m in model.modules():
        if bias is not None and isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, bias)
        if momentum_bn is not None and isinstance(m, nn.BatchNorm1d):
            m.momentum = momentum_bn
    return model


def big_output(gain: float = 100.0) -> nn.Module:
    """A 4 x 64 tanh MLP, Glorot init, whose output layer's weights are ``gain`` times too large."""
    model = mlp(SHAPE, CLASSES, 4, 64, "tanh")
    with torch.no_grad():
        model.output.weight.mul_(gain)
    return model


def frozen_backbone(net: nn.Module, head: str) -> nn.Module:
    """``net`` with every parameter outside the module ``head`` frozen (``requires_grad=False``)."""
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(head))
    return net


class SoftmaxEncoder(Encoder):
    """The Transformer encoder, ending in softmax."""

    def forward(self, x):
        return torch.softmax(super().forward(x), dim=1)


class EvalResidual(Residual):
    """The residual GELU MLP with dropout, whose ``train()`` never leaves eval mode."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return super().forward(self.drop(x))

    def train(self, mode: bool = True):
        return super().train(False)


def dead_conv() -> nn.Module:
    """A ReLU conv net (He init) whose biases all start at -3."""
    from deepscope.models import convnet

    model = convnet(1, CLASSES, (8, 8), (8, 16), 3, "relu", init="he_normal")
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.constant_(m.bias, -3.0)
    return model


def frozen_but_head() -> nn.Module:
    """A 4 x 64 tanh MLP whose every parameter but the output layer's has ``requires_grad=False``."""
    model = mlp(SHAPE, CLASSES, 4, 64, "tanh")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("output"))
    return model


# --- the cases ----------------------------------------------------------------------------------------


@dataclass
class Case:
    """One labelled set-up: ``expected`` is ``"healthy"`` or the codes that name its problem."""

    name: str
    expected: str | tuple[str, ...]
    kind: str  # "spec" or "module"
    spec: dict
    model: Callable[[], nn.Module] | None = None
    data: Callable[[], Dataset] = field(default=teacher_data)
    updates: int = UPDATES
    family: str = "mlp"  # mlp, conv, residual, transformer, lstm
    task: str = "classification"  # classification, regression, binary, multilabel, tokens (benchmarks/task_cases.py)
    twin: str = ""  # the name of a healthy case it differs from by its bug (its error is printed beside)

    @property
    def healthy(self) -> bool:
        return self.expected == HEALTHY

    @property
    def problem(self) -> str:
        """The problem class: "healthy" or the first expected code."""
        return HEALTHY if self.healthy else self.expected[0]

    def build_model(self) -> nn.Module | None:
        """A fresh module (seeded by the spec's seed) for ``kind="module"``, else None."""
        if self.model is None:
            return None
        with torch.random.fork_rng():
            torch.manual_seed(self.spec.get("train", {}).get("seed", 0))
            return self.model()


def spec(name: str, *, depth: int = 4, width: int = 64, activation: str = "tanh", init: Any = "auto",
         optim: str = "sgd", lr: float = 0.05, preprocess: str | None = None, batch_size: int = 20,
         **sections: dict) -> dict:
    """A run spec dict for the teacher data: ``init`` a scheme name or a dict ``{"scheme": ..., params}``."""
    init = {"scheme": init} if isinstance(init, str) else dict(init)
    out = {
        "name": name,
        "data": {"preprocess": preprocess} if preprocess else {},
        "model": {"depth": depth, "width": width, "activation": activation},
        "init": init,
        "optim": {"name": optim, "lr": lr},
        "train": {"updates": UPDATES, "batch_size": batch_size, "device": "cpu", "seed": 0},
    }
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value}
    return out


def _case(name, expected, model=None, family="mlp", data=teacher_data, updates=UPDATES, **kw) -> Case:
    s = spec(name, **kw)
    s["train"]["updates"] = updates
    if model is not None:
        s["model"] = {}
    return Case(name, expected if expected == HEALTHY else tuple(expected), "module" if model else "spec", s,
                model, data, updates, family)


CASES: list[Case] = [
    # --- healthy -----------------------------------------------------------------------------------
    _case("tanh-glorot-sgd", HEALTHY, activation="tanh", init="glorot_uniform", lr=0.05),
    _case("relu-he-adam", HEALTHY, activation="relu", init="he_normal", optim="adam", lr=1e-3),
    Case("relu-bn-momentum", HEALTHY, "spec",
         spec("relu-bn-momentum", activation="relu", init="he_normal", optim="momentum", lr=0.02,
              model={"norm": "batch"})),
    _case("residual-gelu-layernorm", HEALTHY, model=Residual, family="residual", optim="adam", lr=1e-3),
    Case("conv-bn", HEALTHY, "spec",
         spec("conv-bn", activation="relu", init="he_normal", optim="momentum", lr=0.02,
              model={"builder": "convnet", "channels": [8, 16], "norm": "batch"}), data=conv_data(), family="conv"),
    _case("transformer-encoder", HEALTHY, model=Encoder, family="transformer", optim="adam", lr=1e-3),
    _case("lstm", HEALTHY, model=Recurrent, family="lstm", optim="adam", lr=3e-3),
    _case("softsign-glorot", HEALTHY, activation="softsign", init="glorot_uniform", lr=0.05),
    _case("selu-lecun", HEALTHY, activation="selu", init="lecun_normal", lr=0.02),
    _case("resnet-bn", HEALTHY, model=ResNet, family="residual", optim="momentum", lr=0.02, data=conv_data()),
    Case("conv-relu-he", HEALTHY, "spec",
         spec("conv-relu-he", activation="relu", init="he_normal", optim="adam", lr=1e-3,
              model={"builder": "convnet", "channels": [8, 16]}), data=conv_data(), family="conv"),
    # healthy twins on other seeds and batch sizes, and on Shapeset (the thresholds were not tuned on these)
    _case("tanh-glorot-sgd-b10-seed1", HEALTHY, activation="tanh", init="glorot_uniform", lr=0.02, batch_size=10,
          train={"seed": 1}),
    _case("relu-he-adam-seed2", HEALTHY, activation="relu", init="he_normal", optim="adam", lr=1e-3,
          train={"seed": 2}),
    _case("lstm-seed1", HEALTHY, model=Recurrent, family="lstm", optim="adam", lr=3e-3, train={"seed": 1}),
    Case("shapeset-tanh-glorot", HEALTHY, "spec",
         spec("shapeset-tanh-glorot", width=128, activation="tanh", init="glorot_uniform", lr=0.05, batch_size=10,
              preprocess="standardize", data=SHAPESET), data=shapeset_data, family="shapeset"),
    # doctor's default length: with the authors' fill, 300 updates leave this net at the chance error (0.76-0.82
    # against 0.79), which the plateau rule rightly calls; by 500 it is clearly below
    Case("shapeset-relu-he-adam", HEALTHY, "spec",
         spec("shapeset-relu-he-adam", width=128, activation="relu", init="he_normal", optim="adam", lr=1e-3,
              batch_size=10, preprocess="standardize", data=SHAPESET), data=shapeset_data, updates=500,
         family="shapeset"),
    # --- broken: the fifteen ---------------------------------------------------------------
    _case("deep-sigmoid", ("saturation", "vanishing_gradients"), depth=6, activation="sigmoid",
          init={"scheme": "normal", "std": 1.0}),
    _case("relu-normal-1", ("variance_grows", "exploding_gradients", "lr_too_high"), activation="relu",
          init={"scheme": "normal", "std": 1.0}),
    _case("lr-too-high-sgd", ("lr_too_high", "exploding_gradients"), activation="tanh", init="glorot_uniform",
          lr=20.0),
    _case("lr-too-high-adam", ("lr_too_high", "exploding_gradients", "loss_spikes"), activation="relu",
          init="he_normal", optim="adam", lr=0.5),
    _case("lr-too-low", ("lr_too_low",), activation="tanh", init="glorot_uniform", lr=1e-5),
    _case("zero-init", ("symmetry",), activation="tanh", init="zeros"),
    # doctor's default length, as its healthy twin above: in 300 updates of 10 examples no net, broken or not,
    # leaves the chance error on Shapeset, so a repair could not show
    Case("shapeset-deep-sigmoid", ("saturation", "vanishing_gradients"), "spec",
         spec("shapeset-deep-sigmoid", depth=5, width=128, activation="sigmoid", init="standard", lr=0.05,
              batch_size=10, preprocess="standardize", data=SHAPESET), data=shapeset_data,
         updates=500, family="shapeset"),
    _case("constant-init", ("symmetry",), activation="tanh", init={"scheme": "constant", "value": 0.05}),
    _case("saturated-tanh", ("saturation",), activation="tanh", init={"scheme": "normal", "std": 2.0}),
    _case("uncentred-inputs", ("input_not_centered",), activation="tanh", init="glorot_uniform",
          data=lambda: teacher_data(offset=4.0)),
    _case("unscaled-inputs", ("input_not_scaled",), activation="tanh", init="glorot_uniform",
          data=lambda: teacher_data(scale=100.0)),
    _case("small-init-collapse", ("vanishing_gradients", "variance_shrinks"), depth=8, activation="tanh",
          init={"scheme": "normal", "std": 0.01}),
    _case("relu30-glorot", ("variance_shrinks", "vanishing_gradients", "depth_unnormalized"),
          depth=30, width=32, activation="relu",
          init="glorot_uniform"),
    _case("dead-relu-bias-3", ("dead_units",), model=lambda: relu_mlp(bias=-3.0)),
    _case("frozen-but-head", ("not_learning",), model=frozen_but_head),
    _case("softmax-into-ce", ("output_loss_mismatch", "output_activation"), model=SoftmaxOut, optim="adam", lr=1e-3),
    # --- broken: the new rules -----------------------------------------------------------------------
    _case("sigmoid-into-ce", ("output_loss_mismatch", "output_activation"), model=SigmoidOut),
    _case("unregistered-layers", ("not_learning",), model=Unregistered),
    _case("outlier-examples", ("gradient_spikes", "loss_spikes"), activation="relu", init="he_normal",
          optim="momentum", lr=0.02, data=lambda: teacher_data(outliers=0.005)),
    _case("huge-output-init", ("output_saturated",), model=big_output),
    _case("plateau-random-labels", ("labels_unexplained", "plateau"),
          activation="tanh", init="glorot_uniform", optim="adam", lr=1e-3,
          data=lambda: teacher_data(random_labels=True)),
    _case("overfitting", ("overfitting",), width=128, depth=3, activation="relu", init="he_normal", optim="adam",
          lr=3e-3, data=lambda: teacher_data(200, label_noise=0.4), updates=600),
    _case("bn-frozen-in-train", ("bn_stats_frozen", "eval_mode"), model=FrozenBN, optim="momentum", lr=0.02),
    _case("bn-momentum-0", ("bn_stats_frozen",), model=lambda: relu_mlp(norm="batch", momentum_bn=0.0),
          optim="momentum", lr=0.02),
    _case("left-in-eval", ("eval_mode",), model=EvalMode, optim="momentum", lr=0.02),
    # --- broken, other families (added after the thresholds were set) -------------------------------------
    Case("conv-zero-init", ("symmetry",), "spec",
         spec("conv-zero-init", activation="relu", init="zeros", optim="momentum", lr=0.02,
              model={"builder": "convnet", "channels": [8, 16]}), data=conv_data(), family="conv"),
    _case("conv-dead-bias-3", ("dead_units",), model=dead_conv, family="conv", data=conv_data()),
    _case("lstm-lr-too-high", ("lr_too_high", "exploding_gradients", "loss_spikes", "gradient_spikes"),
          model=Recurrent, family="lstm", optim="sgd", lr=50.0),
    _case("transformer-softmax-out", ("output_loss_mismatch", "output_activation"),
          model=SoftmaxEncoder, family="transformer",
          optim="adam", lr=1e-3),
    _case("resnet-frozen-backbone", ("not_learning",), model=lambda: frozen_backbone(ResNet(), "head"),
          family="residual", optim="momentum", lr=0.02, data=conv_data()),
    _case("residual-left-in-eval", ("eval_mode",), model=EvalResidual, family="residual", optim="adam", lr=1e-3),
]
