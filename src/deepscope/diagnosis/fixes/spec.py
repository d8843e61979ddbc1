"""Fixes as data: for each finding code, the candidate repairs, each a small named transformation of a run.

A :class:`Fix` transforms either the run's specification (a plain dict, as ``RunSpec.to_dict()`` gives)
or, for a network of your own, the ``nn.Module`` itself:

- *run-level* fixes change ``[optim]``, ``[schedule]``, ``[train]`` or ``[data]``: they apply to any run,
  spec-built or your own module (the trainer uses the spec's optimizer, schedule and data for both);
- *model-level* fixes change ``[model]`` / ``[init]`` of a spec-built network, and have a module-level
  version (:mod:`deepscope.diagnosis.fixes.module`: swap activation modules, insert ``BatchNorm`` after each
  Linear/Conv of an ``nn.Sequential``, re-initialize by formula, unfreeze parameters) that works on your
  module where it is safe. Where it is not, :func:`apply_fix` raises :class:`NotApplicable` with the reason.

:data:`FIXES_FOR` maps each finding code to its candidates, best first; :func:`deepscope.workflows.repair`
tries them. The techniques: learning-rate scaling and annealing (LeCun et al. 1998, "Efficient BackProp",
sec. 4.7; Loshchilov & Hutter 2017 for cosine), momentum (Polyak 1964) and Adam (Kingma & Ba 2015),
gradient-norm clipping (Pascanu et al. 2013), the initialization that fits the activation (Glorot & Bengio
2010; He et al. 2015; Klambauer et al. 2017), LSUV (Mishkin & Matas 2016), zero-centred activations
instead of the sigmoid (Glorot & Bengio 2010), Leaky ReLU (Maas et al. 2013) and PReLU (He et al. 2015)
against dead units, batch normalization (Ioffe & Szegedy 2015), input centering and scaling (LeCun et
al. 1998, sec. 4.3), dropout (Srivastava et al. 2014), weight decay (Krogh & Hertz 1992) and early
stopping (Prechelt 1998) against overfitting.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepscope.diagnosis.fixes.causes import (
    LOW_DROPOUT,
    lower_dropout_module,
    remove_output_activation,
    swap_any_activation,
)
from deepscope.diagnosis.fixes.modes import TrainMode, train_mode_module, unfreeze_module
from deepscope.diagnosis.fixes.module import (
    BN_MOMENTUM,
    AsLogits,
    NotApplicable,
    as_logits_module,
    batch_norm_module,
    bn_momentum_module,
    register_module,
    reinit_module,
    swap_module,
)
from deepscope.registry import unknown

__all__ = ["FIXES", "FIXES_FOR", "AsLogits", "Fix", "NotApplicable", "TrainMode", "apply_fix", "apply_fixes"]

ADAM_LR = 1e-3  # Kingma & Ba (2015), the default step size of Adam
CLIP_NORM = 1.0  # Pascanu et al. (2013) clip the gradient norm at a threshold of the order of its usual size
PLATEAU = {"factor": 0.3, "patience": 1}  # reduce_on_plateau: x0.3 after two evaluations without progress
DROPOUT = 0.3  # Srivastava et al. (2014) keep hidden units with p = 0.5-0.8
WEIGHT_DECAY = 5e-4  # L2 penalty of the order used for small nets (Krogh & Hertz 1992); x10 is tried too
PATIENCE = 2  # early stopping: evaluations without a better validation loss (Prechelt 1998)


@dataclass(frozen=True)
class Fix:
    """A named transformation of a run. ``group`` names what it changes ("a+b": both): a combination takes one fix
    per group.

    ``spec(d)`` changes the spec dict ``d`` in place (raising :class:`NotApplicable` when it does not apply);
    ``run_level`` fixes do so for your own module too. ``module(model, seed)`` changes your module in place (or
    returns a module wrapping it).
    """

    name: str
    title: str
    group: str
    spec: Callable[[dict], None] | None = None
    module: Callable[[Any, int], None] | None = None
    run_level: bool = False


# --- spec-level transformations ----------------------------------------------------------------------


def _lr(factor: float) -> Callable[[dict], None]:
    def fn(spec: dict) -> None:
        spec["optim"]["lr"] = spec["optim"]["lr"] * factor

    return fn


def _schedule(name: str, **params) -> Callable[[dict], None]:
    def fn(spec: dict) -> None:
        if spec["schedule"]["name"] != "constant":
            raise NotApplicable(f"the run already anneals the learning rate (schedule {spec['schedule']['name']!r})")
        spec["schedule"] = {"name": name, **params}

    return fn


def _optimizer(name: str, lr: float | None = None) -> Callable[[dict], None]:
    def fn(spec: dict) -> None:
        current = spec["optim"]["name"]
        if name == "momentum" and current != "sgd":
            raise NotApplicable(f"momentum replaces plain SGD; the optimizer is {current!r}")
        if current == name and lr is not None and spec["optim"]["lr"] < lr:  # already it, at a lower rate
            spec["optim"]["lr"] = lr
            return
        if current == name:
            raise NotApplicable(f"the optimizer is already {name!r}")
        kept = {k: v for k, v in spec["optim"].items() if k == "weight_decay"}
        spec["optim"] = {"name": name, "lr": lr if lr is not None else spec["optim"]["lr"], **kept}

    return fn


def _clip(spec: dict) -> None:
    if spec["train"].get("clip_norm") is not None:
        raise NotApplicable(f"the gradient norm is already clipped (train.clip_norm={spec['train']['clip_norm']})")
    spec["train"]["clip_norm"] = CLIP_NORM


def _activation(spec: dict) -> str:
    return spec["model"]["activation"]


def _reinit(spec: dict) -> None:
    from deepscope.nn.activations import ACTIVATIONS

    activation = _activation(spec)
    fitting = ACTIVATIONS[activation].init
    scheme = spec["init"]["scheme"]
    if scheme == "auto" or (scheme == fitting and len(spec["init"]) == 1):
        raise NotApplicable(f"the init already fits {activation} (init.scheme={scheme!r})")
    spec["init"] = {"scheme": fitting}


def _lsuv(spec: dict) -> None:
    if spec["init"]["scheme"] == "lsuv":
        raise NotApplicable("the run is already LSUV-initialized")
    spec["init"] = {"scheme": "lsuv"}


def _swap(old: str, new: str) -> Callable[[dict], None]:
    """Activation ``old`` -> ``new``, with the init that fits ``new`` (its registry pairing) unless the init adapts
    by itself ("auto", "lsuv"): Glorot & Bengio (2010) pair tanh/softsign with the normalized init, He et al.
    (2015) ReLU-like units with theirs."""

    def fn(spec: dict) -> None:
        from deepscope.nn.activations import ACTIVATIONS

        if _activation(spec) != old:
            raise NotApplicable(f"replaces {old}; the activation is {_activation(spec)}")
        spec["model"]["activation"], spec["model"]["activation_kwargs"] = new, {}
        if spec["init"]["scheme"] not in ("auto", "lsuv"):
            spec["init"] = {"scheme": ACTIVATIONS[new].init}

    return fn


def _batch_norm(spec: dict) -> None:
    if spec["model"].get("norm") == "batch":
        raise NotApplicable("the network already has batch normalization")
    spec["model"]["norm"] = "batch"


def _preprocess(method: str) -> Callable[[dict], None]:
    def fn(spec: dict) -> None:
        current = [m for m in spec["data"].get("preprocess", []) if m != "none"]
        if method in current or (method == "center" and "standardize" in current):
            raise NotApplicable(f"the inputs are already preprocessed with {', '.join(current)}")
        spec["data"]["preprocess"] = [method]

    return fn


def _dropout(spec: dict) -> None:
    if spec["model"].get("dropout", 0.0) > 0:
        raise NotApplicable(f"the network already has dropout {spec['model']['dropout']}")
    spec["model"]["dropout"] = DROPOUT


def _early_stopping(spec: dict) -> None:
    train = spec["train"]
    if train.get("restore_best") and train.get("monitor", "error") == "loss":
        raise NotApplicable("the run already ends with the weights of its best validation loss "
                            "(train.restore_best, train.monitor=\"loss\")")
    train["patience"] = train.get("patience") or PATIENCE
    train["monitor"], train["restore_best"] = "loss", True


def _weight_decay(value: float) -> Callable[[dict], None]:
    def fn(spec: dict) -> None:
        import inspect

        from deepscope.optim import OPTIMIZERS

        optimizer = OPTIMIZERS[spec["optim"]["name"]]
        if "weight_decay" not in optimizer.allowed():
            raise NotApplicable(f"optimizer {optimizer.name!r} takes no weight_decay")
        current = spec["optim"].get("weight_decay")
        if current is None:  # the optimizer's own default (AdamW decays by 0.01)
            current = optimizer.defaults.get("weight_decay",
                                             inspect.signature(optimizer.cls).parameters["weight_decay"].default)
        if (current or 0.0) >= value:
            raise NotApplicable(f"the optimizer already decays weights as much (weight_decay={current})")
        spec["optim"]["weight_decay"] = value

    return fn


def _swap_to(new: str) -> Callable[[dict], None]:
    def fn(spec: dict) -> None:
        if _activation(spec) == new:
            raise NotApplicable(f"the activation is already {new}")
        _swap(_activation(spec), new)(spec)

    return fn


def _lower_weight_decay(spec: dict) -> None:
    current = spec["optim"].get("weight_decay") or 0.0
    if current <= 1e-4:
        raise NotApplicable(f"the weight decay is already small (weight_decay={current})")
    spec["optim"]["weight_decay"] = min(current * 0.01, 0.01)


def _lower_dropout(spec: dict) -> None:
    if spec["model"].get("dropout", 0.0) < 0.5:
        raise NotApplicable(f"the dropout is below 0.5 ({spec['model'].get('dropout', 0.0)})")
    spec["model"]["dropout"] = LOW_DROPOUT


def _combined(name: str, title: str, *parts: str) -> Fix:
    """One fix made of the fixes ``parts``, applied in order, tried as one candidate (a pair the greedy combination
    would not reach when neither part is verified alone); its group is every part's."""
    fixes = [FIXES[p] for p in parts]
    group = "+".join(dict.fromkeys(g for f in fixes for g in f.group.split("+")))

    def spec(d: dict) -> None:
        for f in fixes:
            if f.spec is None:
                raise NotApplicable(f"{f.name} applies to a module of your own only")
            f.spec(d)

    def module(model, seed: int):
        for f in fixes:
            if f.module is None:
                raise NotApplicable(f"{f.name} changes [model]/[init] of a spec-built network; there is no "
                                    "module-level version")
            model = f.module(model, seed) or model
        return model

    return Fix(name, title, group, spec, module, all(f.run_level for f in fixes))


def _swap_fix(name: str, old: str, new: str) -> Fix:
    return Fix(name, f"{old} -> {new}, with the init that fits it", "activation+init", _swap(old, new),
               swap_module(old, new))


# --- the registry -----------------------------------------------------------------------------------

FIXES: dict[str, Fix] = {f.name: f for f in [
    Fix("lr_x0.01", "learning rate x0.01", "lr", _lr(0.01), run_level=True),
    Fix("lr_x0.1", "learning rate x0.1", "lr", _lr(0.1), run_level=True),
    Fix("lr_x0.3", "learning rate x0.3", "lr", _lr(0.3), run_level=True),
    Fix("lr_x3", "learning rate x3", "lr", _lr(3.0), run_level=True),
    Fix("lr_x10", "learning rate x10", "lr", _lr(10.0), run_level=True),
    Fix("warmup_cosine", "linear warm-up, then cosine decay", "schedule", _schedule("warmup_cosine"),
        run_level=True),
    Fix("cosine", "cosine decay of the learning rate", "schedule", _schedule("cosine"), run_level=True),
    Fix("reduce_on_plateau", "learning rate x0.3 when the validation accuracy stalls", "schedule",
        _schedule("reduce_on_plateau", **PLATEAU), run_level=True),
    Fix("momentum", "SGD -> SGD with momentum 0.9", "optimizer", _optimizer("momentum"), run_level=True),
    Fix("adam", f"optimizer -> Adam (lr {ADAM_LR:g})", "optimizer", _optimizer("adam", ADAM_LR), run_level=True),
    Fix("clip_norm", f"clip the gradient norm at {CLIP_NORM:g}", "clip", _clip, run_level=True),
    Fix("center", "center the inputs (training-set mean)", "preprocess", _preprocess("center"), run_level=True),
    Fix("standardize", "standardize the inputs (training-set mean and std)", "preprocess",
        _preprocess("standardize"), run_level=True),
    Fix("reinit", "re-initialize with the scheme that fits the activation", "init", _reinit, reinit_module),
    Fix("lsuv", "LSUV initialization", "init", _lsuv),
    _swap_fix("act_tanh", "sigmoid", "tanh"),
    _swap_fix("act_softsign", "tanh", "softsign"),
    _swap_fix("act_leaky_relu", "relu", "leaky_relu"),
    _swap_fix("act_prelu", "relu", "prelu"),
    Fix("batch_norm", "batch normalization after each hidden layer", "norm", _batch_norm, batch_norm_module),
    Fix("unfreeze", "unfreeze the frozen parameters", "unfreeze", None, unfreeze_module),
    Fix("register", "register layers kept in Python lists/dicts (nn.ModuleList / nn.ModuleDict)", "register",
        None, register_module),
    Fix("bn_momentum", f"batch-norm running statistics updated again (momentum {BN_MOMENTUM})", "bn_momentum",
        None, bn_momentum_module),
    Fix("train_mode", "every submodule in train mode while training (overrides your train() and .eval() in forward)",
        "train_mode", None, train_mode_module),
    Fix("as_logits", "read the squashed outputs back as logits (better: return logits from forward())",
        "output", None, as_logits_module),
    Fix("dropout", f"dropout {DROPOUT} after each hidden layer", "dropout", _dropout),
    # the fixes of causes (deepscope.diagnosis.causes)
    Fix("swap_activation", "the activation -> ReLU (any module, your own too), with He init", "activation+init",
        _swap_to("relu"), swap_any_activation("relu")),
    Fix("swap_activation_tanh", "the activation -> tanh (any module, your own too), with Glorot init",
        "activation+init", _swap_to("tanh"), swap_any_activation("tanh")),
    Fix("remove_output_activation", "remove the activation after the last layer (logits into the loss)", "output",
        None, remove_output_activation),
    Fix("lower_weight_decay", "weight decay x0.01 (at most 0.01)", "weight_decay", _lower_weight_decay,
        run_level=True),
    Fix("lower_dropout", f"dropout {LOW_DROPOUT}", "dropout", _lower_dropout, lower_dropout_module),
    Fix("weight_decay", f"weight decay {WEIGHT_DECAY:g}", "weight_decay", _weight_decay(WEIGHT_DECAY), run_level=True),
    Fix("strong_weight_decay", f"weight decay {10 * WEIGHT_DECAY:g}", "weight_decay", _weight_decay(10 * WEIGHT_DECAY),
        run_level=True),
    Fix("early_stopping", f"stop when the validation loss has not improved for {PATIENCE} evaluations and keep the "
        "weights of the best one", "stopping", _early_stopping, run_level=True),
]}

# A deep plain stack: PReLU keeps every unit passing gradient (He et al. 2015, "Delving Deep into Rectifiers",
# sec. 2) and LSUV scales each layer to unit output variance (Mishkin & Matas 2016, "All you need is a good init",
# sec. 2), with which they trained deep thin nets without batch normalization.
FIXES["act_prelu_lsuv"] = _combined("act_prelu_lsuv", "relu -> PReLU, with LSUV initialization", "act_prelu", "lsuv")

FIXES_FOR: dict[str, list[str]] = {
    "symmetry": ["reinit", "lsuv"],
    "exploding_gradients": ["lr_x0.1", "clip_norm", "reinit", "batch_norm"],
    "vanishing_gradients": ["reinit", "act_tanh", "batch_norm", "lsuv"],
    "saturation": ["reinit", "act_tanh", "act_softsign", "batch_norm"],
    "dead_units": ["act_leaky_relu", "act_prelu", "reinit", "lr_x0.1", "batch_norm"],
    "variance_shrinks": ["reinit", "lsuv", "batch_norm"],
    "variance_grows": ["reinit", "lsuv", "batch_norm"],
    "lr_too_high": ["lr_x0.1", "lr_x0.01", "lr_x0.3", "clip_norm", "warmup_cosine"],
    "lr_too_low": ["lr_x3", "lr_x10", "momentum", "adam"],
    "input_not_centered": ["center", "standardize"],
    "input_not_scaled": ["standardize"],
    "not_learning": ["unfreeze", "register", "reinit", "lr_x0.1"],
    "output_loss_mismatch": ["as_logits"],
    "loss_for_classes": [],  # the change is the targets' form (class indices) and the loss: the user's, not a trial's
    "output_saturated": ["reinit", "lr_x0.1", "clip_norm"],
    "loss_spikes": ["clip_norm", "lr_x0.3", "warmup_cosine"],
    "gradient_spikes": ["clip_norm", "lr_x0.3", "warmup_cosine"],
    "plateau": ["adam", "momentum", "lr_x3", "lr_x0.1", "batch_norm"],
    "overfitting": ["early_stopping", "weight_decay", "strong_weight_decay", "dropout"],
    "eval_mode": ["train_mode"],
    "bn_stats_frozen": ["bn_momentum", "train_mode"],
    # causes: the change the user must make comes first
    "forward_overflow": ["swap_activation", "swap_activation_tanh", "batch_norm"],
    "output_activation": ["remove_output_activation", "as_logits"],
    "weight_decay_strong": ["lower_weight_decay"],
    "dropout_strong": ["lower_dropout"],
    "depth_unnormalized": ["act_prelu_lsuv", "batch_norm", "lsuv", "reinit"],
    "input_constant": [],
    "labels_constant": [],
    "labels_unexplained": [],
}
"""Candidate fixes per finding code, best first. ``diagnosis_error`` (a bug of deepscope) and ``unobservable`` (a
note on what the probe cannot see) have none."""


def apply_fix(name: str, spec: dict, model: Any = None, seed: int = 0) -> tuple[dict, Any]:
    """``(spec, model)`` with fix ``name`` applied, as copies; the inputs are left as they are.

    For a spec-built network (``model=None``) the spec changes. For your own module, run-level fixes change
    the spec and the others change a deep copy of ``model`` (``seed`` seeds a re-initialization). Raises
    :class:`NotApplicable` with the reason when the fix does not apply, ``ValueError`` for an unknown name.
    """
    if name not in FIXES:
        raise unknown("fix", name, FIXES)
    fix = FIXES[name]
    spec = copy.deepcopy(spec)
    if model is None or fix.run_level:
        if fix.spec is None:
            raise NotApplicable("applies to a module of your own only")
        fix.spec(spec)
        return spec, model
    if fix.module is None:
        raise NotApplicable("changes [model]/[init] of a spec-built network; there is no module-level version")
    model = copy.deepcopy(model)
    return spec, fix.module(model, seed) or model  # a wrapping fix returns the wrapper


def apply_fixes(names, spec: dict, model: Any = None, seed: int = 0) -> tuple[dict, Any]:
    """:func:`apply_fix` of each of ``names`` in turn."""
    for name in names:
        spec, model = apply_fix(name, spec, model, seed)
    return spec, model
