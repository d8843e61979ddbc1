"""Causes: what the user must change, behind the symptoms the rules report.

The rules name symptoms (gradients vanish, units die, the loss rises). A symptom has causes of different kinds, and
the fix that works depends on which: an unbounded activation that overflows in the forward pass at initialization is
not a learning-rate problem; a ReLU after the last layer is not a dead-unit problem of the hidden layers; weights
held at zero by weight decay are not an initialization problem; inputs that are all the same carry no information,
and nothing in training can help. :func:`model_facts` looks at the model once at the start (one forward pass on the
monitor inputs, hooks on every leaf module) and :func:`explain` turns those facts, the spec and the labels into
*cause findings* (codes of :data:`CAUSES`), and sets each symptom's ``cause`` to the root that explains it (its own
code when none does; symptoms explain each other too -- off-centre inputs a saturated first layer -- see
:mod:`deepscope.diagnosis.ranking`). The repair tries the fixes of the causes first
(:data:`deepscope.diagnosis.fixes.FIXES_FOR`); a cause in the data (:data:`DATA_CAUSES`) gets no fix: no training
change can help.

The checks: the first module whose forward output is Inf/NaN at initialization while its input is finite
(Glorot & Bengio 2010, sec. 3: the activations of an unbounded non-linearity grow layer after layer); an activation
between the last layer and the cross-entropy (bounded logits: Bridle 1990, "Probabilistic interpretation of
feedforward classification network outputs", the softmax is the loss's, not the model's); weight decay whose shrink
over the run (lr x decay x updates, or the weights' measured shrink) holds the weights down (Krogh & Hertz 1992);
dropout that drops most of the signal (Srivastava et al. 2014 keep p >= 0.5); inputs without variance across
examples; a single label; depth without normalization (Ioffe & Szegedy 2015) or residual paths (He et al. 2016).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from deepscope.diagnosis.findings import Finding
from deepscope.diagnosis.ranking import rank

__all__ = ["CAUSES", "DATA_CAUSES", "DEEP", "SUSPECTED_DATA_CAUSES", "explain", "hidden_records", "model_facts",
           "weight_norm"]

CAUSES: dict[str, str] = {
    "forward_overflow": "an activation overflows in the forward pass at initialization: change the activation",
    "output_activation": "an activation after the last layer bounds or clips the logits: remove it",
    "weight_decay_strong": "weight decay holds the weights down: lower it",
    "dropout_strong": "dropout removes most of the signal: lower it",
    "input_constant": "the inputs carry no information (no variance across examples): no training change can help",
    "labels_constant": "every label is the same: no training change can help",
    "labels_unexplained": "nothing in the inputs explains the labels the network sees: no training change can help",
    "depth_unnormalized": "a deep stack without normalization or residual paths: add batch normalization",
}
DATA_CAUSES = {"input_constant", "labels_constant"}  # certain: no trials
# suspected: the trials of the symptom still run (a plateau can be an optimizer's too); when none trains, the data
# are named as the cause
SUSPECTED_DATA_CAUSES = {"labels_unexplained"}

# The symptoms each cause explains (what a user would otherwise chase).
EXPLAINS: dict[str, set[str]] = {
    "forward_overflow": {"exploding_gradients", "lr_too_high", "loss_spikes", "gradient_spikes", "variance_grows",
                         "saturation", "plateau", "vanishing_gradients", "dead_units", "output_saturated"},
    "output_activation": {"dead_units", "output_loss_mismatch", "plateau", "saturation", "vanishing_gradients",
                          "output_saturated", "lr_too_low"},
    "weight_decay_strong": {"vanishing_gradients", "dead_units", "plateau", "variance_shrinks", "symmetry",
                            "not_learning", "lr_too_low", "saturation"},
    "dropout_strong": {"plateau", "lr_too_low", "loss_spikes", "gradient_spikes"},
    # an init scale that does not fit the activation (variance_shrinks/grows) is a cause of its own: the depth yields
    # to it (deepscope.diagnosis.ranking)
    "depth_unnormalized": {"vanishing_gradients", "dead_units", "saturation", "plateau", "exploding_gradients",
                           "lr_too_low"},
}
ALL = "*"  # the data causes explain every symptom
DEEP = 12  # Linear/Conv layers in one forward pass from which depth needs normalization or residual paths
WEIGHT_DECAY_SHRINK = 2.0  # lr x weight_decay x updates: the weights would shrink by e^-2 without gradients ...
WEIGHT_NORM_RATIO = 0.3  # ... or they did shrink below this fraction of their initial norm
DROPOUT = 0.7  # a dropout probability from which most of the signal is dropped
OUTPUT_ACTIVATIONS = {"ReluBackward0": "ReLU", "SigmoidBackward0": "sigmoid", "SoftmaxBackward0": "softmax",
                      "TanhBackward0": "tanh", "ExpBackward0": "exp", "HardtanhBackward0": "hardtanh",
                      "ClampBackward1": "clamp", "ClampMinBackward0": "clamp"}
FACT_EXAMPLES = 64
LARGE_STEPS = 1e-2  # a plateau in steps that change the weights by more than this per update is the rate's
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_PASSIVE = (nn.Dropout, nn.Flatten, nn.Identity, nn.Unflatten, nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


def weight_norm(model: nn.Module) -> float:
    """The norm of all the weight matrices and kernels (parameters of 2 or more dimensions) of ``model``."""
    weights = [p.detach().float().pow(2).sum() for p in model.parameters() if p.dim() >= 2]
    return float(torch.stack(weights).sum().sqrt()) if weights else 0.0


def _is_activation_module(m: nn.Module) -> bool:
    from deepscope.diagnosis.fixes.causes import user_leaf
    from deepscope.probe.hooks import custom_activation, is_activation

    return bool(is_activation(m)[0] or custom_activation(m) or user_leaf(m) or isinstance(m, nn.Softmax | nn.Softmax2d))


def model_facts(model: nn.Module, x: Any) -> dict[str, Any]:
    """What the causes are read from, at the start of training: one forward pass on (at most FACT_EXAMPLES of) ``x``
    with every module in eval mode, hooks on every leaf module (modes and the RNG restored)."""
    from deepscope.init import LAYER_TYPES

    facts: dict[str, Any] = {"weight_norm": weight_norm(model), "norm_layers": any(isinstance(m, _NORMS)
                                                                                      for m in model.modules()),
                             "dropout": max([m.p for m in model.modules() if isinstance(m, nn.Dropout)] or [0.0])}
    if x is None or not isinstance(x, torch.Tensor) or not len(x):
        return facts
    x = x[:FACT_EXAMPLES]
    facts["input_spread"] = float(x.reshape(len(x), -1).float().std(0).max()) if len(x) > 1 else math.nan
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[tuple[str, nn.Module, bool, bool]] = []  # (name, module, input finite, output finite)

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            ins = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
            calls.append((names.get(id(module), "?"), module, all(bool(t.isfinite().all()) for t in ins),
                          bool(output.isfinite().all()) if output.is_floating_point() else True))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    modes = [(m, m.training) for m in model.modules()]
    out = None
    try:
        for m, _ in modes:
            m.training = False
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.enable_grad(), torch.random.fork_rng(devices=devices):
            out = model(x)
    except Exception:  # noqa: BLE001 -- a model that needs other inputs: the other checks report it
        return facts
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    first_bad = next(((n, m) for n, m, fin_in, fin_out in calls if fin_in and not fin_out), None)
    if first_bad is not None:
        facts["overflow"] = (first_bad[0], type(first_bad[1]).__name__, _is_activation_module(first_bad[1]))
    layer_calls = [i for i, (_, m, _, _) in enumerate(calls) if isinstance(m, LAYER_TYPES)]
    facts["depth"] = len(layer_calls)
    # an activation between the last layer and the output: the output's last operation is one (module or function)
    op = OUTPUT_ACTIVATIONS.get(type(out.grad_fn).__name__) if isinstance(out, torch.Tensor) and \
        out.grad_fn is not None else None
    after = [(n, m) for n, m, _, _ in calls[layer_calls[-1] + 1:]] if layer_calls else []
    trailing = [(n, m) for n, m in after if not isinstance(m, _PASSIVE) and _is_activation_module(m)]
    if trailing and (op is not None or not _user_leaf(trailing[-1][1])):
        facts["output_activation"] = (trailing[-1][0], type(trailing[-1][1]).__name__, True)
    elif op is not None:
        facts["output_activation"] = ("output", op, False)
    return facts


def _user_leaf(m: nn.Module) -> bool:
    from deepscope.diagnosis.fixes.causes import user_leaf

    return user_leaf(m)


def _finding(code: str, severity: str, message: str, layers=(), evidence=None, advice: str = "") -> Finding:
    return Finding(code, severity, message, layers=list(layers), first_step=0, recovers=False,
                   evidence=dict(evidence or {}), advice=advice, cause=code)


def _spec_get(spec: dict, section: str, key: str, default=None):
    value = (spec or {}).get(section, {})
    return value.get(key, default) if isinstance(value, dict) else default


def _causes(facts: dict, spec: dict, labels: Any, symptoms: set[str], updates: int) -> list[Finding]:
    found = []
    spread = facts.get("input_spread")
    if spread is not None and spread == 0.0:
        found.append(_finding("input_constant", "error", "every monitor input is the same (no component varies "
                              "across examples): the inputs carry no information, so no training change can help",
                              evidence={"input_std_max": 0.0},
                              advice="Check the data pipeline: the inputs are all equal (all zeros?) -- a wrong "
                              "column, a normalization that divides by a huge number, a mask applied twice."))
    if labels is not None and isinstance(labels, torch.Tensor) and labels.numel() > 1 and labels.dtype in (
            torch.int64, torch.int32, torch.int16, torch.uint8) and bool((labels == labels.reshape(-1)[0]).all()):
        found.append(_finding("labels_constant", "error", f"every training label is {int(labels.reshape(-1)[0])}: "
                              "there is nothing to learn, and no training change can help",
                              advice="Check the labels (a wrong column, a filter that kept one class)."))
    if "overflow" in facts:
        name, kind, is_act = facts["overflow"]
        what = f"the activation {name} ({kind})" if is_act else f"{name} ({kind})"
        found.append(_finding("forward_overflow", "error", f"the forward pass overflows at initialization: {what} "
                              "is the first module whose output is Inf/NaN on finite inputs -- an unbounded "
                              "activation, not the learning rate", layers=[name], evidence={"at_update": 0.0},
                              advice=f"Replace {kind} with a bounded or slowly growing activation the init can "
                              "match (ReLU with He init, tanh with Glorot init)." if is_act else
                              "Scale the weights down (the init that fits the activation) or normalize the inputs."))
    loss = _spec_get(spec, "train", "loss", "cross_entropy")
    # under a regression or binary-logit loss the output check decides (targets in a bounded output's range are fine)
    fitted = loss in ("mse", "huber", "l1", "bce_with_logits") and "output_loss_mismatch" in symptoms
    if "output_activation" in facts and (loss == "cross_entropy" or fitted):
        name, kind, module = facts["output_activation"]
        reads = f"the values {loss} regresses" if loss != "bce_with_logits" else "the logits bce_with_logits reads"
        found.append(_finding("output_activation", "error", f"{kind} after the last layer ({name}) bounds or clips "
                              + (f"{reads}" if fitted else "the logits the cross-entropy reads (it applies "
                                 "log-softmax itself)"), layers=[name],
                              evidence={"is_module": float(module)},
                              advice=f"Remove the {kind} after the last layer: return the logits."))
    if not symptoms:
        return found
    wd = _spec_get(spec, "optim", "weight_decay") or 0.0
    lr = _spec_get(spec, "optim", "lr") or 0.0
    shrink = lr * wd * updates
    ratio = facts.get("weight_norm_end", math.nan) / facts["weight_norm"] if facts.get("weight_norm") else math.nan
    if wd > 0 and (shrink >= WEIGHT_DECAY_SHRINK or ratio < WEIGHT_NORM_RATIO):
        found.append(_finding("weight_decay_strong", "error", f"weight decay {wd:g} holds the weights down (lr x decay "
                              f"x updates = {shrink:.3g}; the weight norm ended at {ratio:.2g} of its initial "
                              "value)", evidence={"weight_decay": wd, "shrink": shrink, "weight_norm_ratio": ratio},
                              advice="Lower the weight decay (1e-4 to 1e-2 is usual; AdamW's default is 0.01)."))
    dropout = max(facts.get("dropout", 0.0), _spec_get(spec, "model", "dropout", 0.0) or 0.0)
    if dropout >= DROPOUT:
        found.append(_finding("dropout_strong", "warning", f"dropout drops {dropout:.0%} of the units: most of the "
                              "signal never reaches the output", evidence={"dropout": dropout},
                              advice="Lower the dropout probability (0.1-0.5)."))
    if facts.get("depth", 0) >= DEEP and not facts.get("norm_layers") and symptoms & EXPLAINS["depth_unnormalized"]:
        found.append(_finding("depth_unnormalized", "warning", f"{facts['depth']} layers in one forward pass without "
                              "normalization: signals and gradients change scale layer after layer",
                              evidence={"depth": float(facts["depth"])},
                              advice="Add batch normalization after the hidden layers (or residual connections)."))
    return found


def explain(findings: list[Finding], facts: dict, spec: dict, labels: Any = None, updates: int = 0) -> list[Finding]:
    """``findings`` with the cause findings added, ranked roots first, and each problem's ``cause`` set to its root:
    the cause or the finding that explains it, or its own code (:func:`deepscope.diagnosis.ranking.rank`). Data
    causes (:data:`DATA_CAUSES`) explain every symptom, and turn them into info."""
    symptoms = {f.code for f in findings if f.severity in ("error", "warning")}
    causes = _causes(facts, spec, labels, symptoms, updates)
    plateau = next((f for f in findings if f.code == "plateau"), None)
    if (plateau is not None and not causes and symptoms <= {"plateau", "input_not_centered", "input_not_scaled"}
            and _labels_unexplained(plateau)):
        causes.append(_finding("labels_unexplained", "error", "the loss stays at the chance level while gradients "
                               "flow and the weights move at a normal rate, the held-out loss never falls below the "
                               "chance level, and no cause in the model or the training was found: nothing in the "
                               "inputs seems to explain the labels (random or shuffled labels?) -- or the network "
                               "learns too slowly to show it within this run",
                               evidence=dict(plateau.evidence),
                               advice="Check that inputs and labels are paired (shuffled separately?) and that the "
                               "labels are the ones you meant; if they are, train faster or longer (`--fix` tries Adam "
                               "and higher rates first, and blames the data only when none of them trains)."))
    codes = {c.code for c in causes}
    existing = {f.code for f in findings}
    ranked = rank([c for c in causes if c.code not in existing] + list(findings), EXPLAINS,
                  DATA_CAUSES | SUSPECTED_DATA_CAUSES)
    if codes & DATA_CAUSES:  # the data explains everything: the symptoms are no longer problems to fix
        for f in ranked:
            if f.severity in ("error", "warning") and f.code not in codes:
                f.severity = "info"
    return ranked


def hidden_records(records: list[dict], facts: dict) -> list[dict]:
    """``records`` without the activation mean and std of the activation module after the last layer (``facts``'s
    ``output_activation``): they describe the output, not hidden units, so the rules that compare hidden layers
    (``symmetry``: units giving one value; ``variance_shrinks``/``variance_grows``: the std across depth) must not
    read them. A Keras net ending in a LogSigmoid after a zero-initialized Dense was called symmetric, and after
    re-initialization still "shrinking" from its ReLU layers to that LogSigmoid."""
    trailing = facts.get("output_activation")
    if trailing is None or not trailing[2]:
        return records
    return [r for r in records if not (r.get("layer") == trailing[0] and r.get("quantity") == "activation"
                                       and r.get("stat") in ("mean", "std"))]


def _labels_unexplained(plateau: Finding) -> bool:
    """Evidence that the labels, not the training, keep the loss at chance: steps of a normal size (LARGE_STEPS:
    larger ones are a rate too high), and a validation loss that never fell below the chance level in the second
    half of the run -- labels independent of the inputs cannot be predicted better than by their frequencies, while
    a network that learns slowly goes below it (tuned on plateau-random-labels, 1.388 against 1.381, and a slowly
    learning CNN, 1.362 against 1.365, of the repair benchmark)."""
    evidence = plateau.evidence
    best, chance = evidence.get("valid_loss_best_late", math.nan), evidence.get("chance_loss", math.nan)
    return evidence.get("update_ratio", 0.0) < LARGE_STEPS and not best < chance
