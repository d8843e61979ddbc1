"""The diagnosis benchmark's set-ups beyond softmax classification: regression, binary, multi-label and token
sequences, healthy and broken, on the same fixed random teacher as benchmarks/cases.py.

- regression: the teacher's first score, standardized, plus N(0, 0.1^2) noise; loss ``mse`` (``huber``), 1 output;
- binary: the sign of that score as a 0/1 float target; ``bce_with_logits`` with one output;
- multi-label: the signs of the teacher's 4 scores as 4 labels; ``bce_with_logits`` with 4 outputs;
- tokens: the input's 8 rows as 8 steps; the target of step t is the class of a fixed linear map of rows t and
  t - 1 (4 classes), learned by an LSTM or a Transformer encoder that returns (N, 8, 4); ``cross_entropy``.

Each task checks the rules against its own baseline: no warning on the healthy set-ups, and the classic problems
(a saturated sigmoid net, dead ReLUs, too high a learning rate, vanishing gradients, a squashing output fed to a
loss that expects logits or unbounded values, nothing to learn) named on the broken ones.
"""

from __future__ import annotations

from functools import cache

import torch
from cases import CLASSES, HEALTHY, N_TEST, N_TRAIN, N_VALID, SHAPE, UPDATES, Case, _teacher, relu_mlp, spec
from torch import nn

from deepscope.data import Dataset
from deepscope.models import mlp

REGRESSION_NOISE = 0.1
STEPS, TOKENS = 8, 4


# --- data -------------------------------------------------------------------------------------------


@cache
def _score_scale() -> tuple[float, float]:
    """Mean and standard deviation of the teacher's first score on N(0, 1) inputs (a fixed sample)."""
    x = torch.randn(20000, *SHAPE, generator=torch.Generator().manual_seed(99))
    s = _teacher()(x)[:, 0]
    return float(s.mean()), float(s.std())


def task_data(task: str, n_train: int = N_TRAIN, *, random_targets: bool = False, seed: int = 0) -> Dataset:
    """Teacher inputs N(0, 1) shaped (1, 8, 8) with the targets of ``task`` (see the module's docstring);
    ``random_targets``: targets drawn independently of the inputs (nothing to learn)."""
    g = torch.Generator().manual_seed(seed)
    teacher = _teacher()
    mean, std = _score_scale()

    def targets(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if task == "tokens":
            return _token_targets(x)
        scores = teacher(x)
        if random_targets:
            scores = torch.randn(n, CLASSES, generator=g)
        if task == "regression":
            return (scores[:, 0] - mean) / std + REGRESSION_NOISE * torch.randn(n, generator=g)
        if task == "binary":
            return (scores[:, 0] > mean).float()
        return (scores > 0).float()  # multilabel

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *SHAPE, generator=g)
        y = targets(x)
        if task == "tokens" and random_targets:
            y = torch.randint(0, TOKENS, y.shape, generator=g)
        return x, y

    outputs = {"regression": 1, "binary": 1, "multilabel": CLASSES, "tokens": TOKENS}[task]
    return Dataset(f"teacher-{task}", SHAPE, outputs, [str(i) for i in range(max(outputs, 2))], split(n_train),
                   split(N_VALID), split(N_TEST))


@cache
def _token_maps() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4321)
    return torch.randn(8, TOKENS, generator=g), torch.randn(8, TOKENS, generator=g)


def _token_targets(x: torch.Tensor) -> torch.Tensor:
    """The class of step t: argmax of rows t A + rows t-1 B (the first step sees a zero row before it)."""
    a, b = _token_maps()
    rows = x.reshape(len(x), STEPS, 8)
    before = torch.cat([torch.zeros_like(rows[:, :1]), rows[:, :-1]], 1)
    return (rows @ a + before @ b).argmax(-1)


# --- modules ----------------------------------------------------------------------------------------


class OneLogit(nn.Module):
    """The Keras/PyTorch binary classifier: an MLP with one output, trained with BCE on logits (no wrapper)."""

    def __init__(self, activation: str = "relu", outputs: int = 1):
        super().__init__()
        self.net = mlp(SHAPE, outputs, 3, 64, activation, init="he_normal" if activation == "relu" else None)

    def forward(self, x):
        return self.net(x)


class SquashedOut(nn.Module):
    """An MLP whose output goes through a sigmoid before a loss that expects logits (or unbounded values)."""

    def __init__(self, outputs: int = 1):
        super().__init__()
        self.net = mlp(SHAPE, outputs, 2, 64, "tanh")

    def forward(self, x):
        return torch.sigmoid(self.net(x))


class TokenLSTM(nn.Module):
    """An LSTM tagger: one score per step and token class, (N, 8, 4)."""

    def __init__(self, hidden: int = 32, softmax: bool = False):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, TOKENS)
        self.softmax = softmax

    def forward(self, x):
        out, _ = self.lstm(x.reshape(len(x), STEPS, 8))
        scores = self.head(out)
        return scores.softmax(-1) if self.softmax else scores


class TokenEncoder(nn.Module):
    """A causal Transformer encoder tagger over the 8 rows: (N, 8, 4)."""

    def __init__(self, d_model: int = 32):
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.pos = nn.Parameter(torch.randn(STEPS, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, TOKENS)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(STEPS))

    def forward(self, x):
        h = self.encoder(self.embed(x.reshape(len(x), STEPS, 8)) + self.pos, mask=self.mask, is_causal=True)
        return self.head(h)


def small_init_mlp(outputs: int, std: float = 0.01, depth: int = 8) -> nn.Module:
    """A deep tanh MLP with N(0, std^2) weights: the signal and its gradient shrink layer by layer."""
    model = mlp(SHAPE, outputs, depth, 64, "tanh", init=None)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
    return model


# --- the cases ----------------------------------------------------------------------------------------

LOSS = {"regression": "mse", "binary": "bce_with_logits", "multilabel": "bce_with_logits", "tokens": "cross_entropy"}


def _task_case(task: str, name: str, expected, *, model=None, family: str = "mlp", data=None, updates=UPDATES,
               loss: str | None = None, **kw) -> Case:
    s = spec(f"{task}-{name}", **kw)
    s["train"]["updates"] = updates
    s["train"]["loss"] = loss or LOSS[task]
    if model is not None:
        s["model"] = {}
    data = data or (lambda: task_data(task))
    return Case(f"{task}-{name}", expected if expected == HEALTHY else tuple(expected), "module" if model else "spec",
                s, model, data, updates, family, task=task)


SATURATED = ("saturation", "vanishing_gradients")
DEAD = ("dead_units",)
LR_HIGH = ("lr_too_high", "exploding_gradients", "loss_spikes", "gradient_spikes")
VANISHING = ("vanishing_gradients", "variance_shrinks")
MISMATCH = ("output_loss_mismatch",)
PLATEAU = ("labels_unexplained", "plateau")  # random targets: no input explains them (a data cause)


def _per_task(task: str, outputs: int) -> list[Case]:
    return [
        _task_case(task, "tanh-glorot-sgd", HEALTHY, activation="tanh", init="glorot_uniform", lr=0.05),
        _task_case(task, "relu-he-adam", HEALTHY, activation="relu", init="he_normal", optim="adam", lr=1e-3),
        _task_case(task, "deep-sigmoid", SATURATED, depth=6, activation="sigmoid",
                   init={"scheme": "normal", "std": 1.0}),
        _task_case(task, "dead-relu-bias-3", DEAD, model=lambda: relu_mlp(bias=-3.0, outputs=outputs)),
        _task_case(task, "lr-too-high", LR_HIGH, activation="tanh", init="glorot_uniform", lr=20.0),
        _task_case(task, "small-init-collapse", VANISHING, model=lambda: small_init_mlp(outputs)),
        _task_case(task, "sigmoid-out", MISMATCH, model=lambda: SquashedOut(outputs)),
    ]


TASK_CASES: list[Case] = [
    *_per_task("regression", 1),
    _task_case("regression", "huber-relu-he-adam", HEALTHY, activation="relu", init="he_normal", optim="adam",
               lr=1e-3, loss="huber"),
    _task_case("regression", "random-targets", PLATEAU, activation="tanh", init="glorot_uniform", optim="adam",
               lr=1e-3, data=lambda: task_data("regression", random_targets=True)),
    *_per_task("binary", 1),
    _task_case("binary", "one-logit-module", HEALTHY, model=OneLogit, optim="adam", lr=1e-3),
    _task_case("binary", "random-labels", PLATEAU, activation="tanh", init="glorot_uniform", optim="adam", lr=1e-3,
               data=lambda: task_data("binary", random_targets=True)),
    _task_case("multilabel", "relu-he-adam", HEALTHY, activation="relu", init="he_normal", optim="adam", lr=1e-3),
    _task_case("multilabel", "lr-too-high", LR_HIGH, activation="tanh", init="glorot_uniform", lr=20.0),
    _task_case("multilabel", "dead-relu-bias-3", DEAD, model=lambda: relu_mlp(bias=-3.0, outputs=CLASSES)),
    _task_case("multilabel", "sigmoid-out", MISMATCH, model=lambda: SquashedOut(CLASSES)),
    _task_case("tokens", "lstm", HEALTHY, model=TokenLSTM, family="lstm", optim="adam", lr=3e-3),
    _task_case("tokens", "causal-transformer", HEALTHY, model=TokenEncoder, family="transformer", optim="adam",
               lr=1e-3),
    _task_case("tokens", "lstm-lr-too-high", LR_HIGH, model=TokenLSTM, family="lstm", optim="sgd", lr=50.0),
    _task_case("tokens", "lstm-softmax-out", MISMATCH, model=lambda: TokenLSTM(softmax=True), family="lstm",
               optim="adam", lr=3e-3),
    _task_case("tokens", "random-tokens", PLATEAU, model=TokenLSTM, family="lstm", optim="adam", lr=3e-3,
               data=lambda: task_data("tokens", random_targets=True)),
]
