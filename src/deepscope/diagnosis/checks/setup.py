"""The set-up as it trains: parameters the optimizer moves, the output fed to the loss, train/eval modes
and batch-norm statistics."""

from __future__ import annotations

from deepscope.diagnosis.checks.output import output_fit
from deepscope.diagnosis.findings import Finding

__all__ = ["OUTPUT_CHECK_EXAMPLES", "OUTPUT_LOGIT_GAP", "OUTPUT_SATURATED_FRACTION", "PROBABILITY_TOL",
           "batchnorm_state", "check_batchnorm", "check_modes", "check_training"]

# --- the model as it trains: parameters the optimizer moves, the output it feeds the loss, its mode --------

# Functions whose output is probabilities or bounded: fed to a loss that expects logits (cross_entropy applies
# log-softmax itself), they squash the gradient and cap the logits the loss sees (PyTorch documents
# nn.CrossEntropyLoss as taking unnormalized logits; Bridle 1990 pairs softmax with the log-likelihood).
_BOUNDED_OUTPUTS = {
    "SoftmaxBackward0": "softmax probabilities", "SigmoidBackward0": "sigmoid outputs in (0, 1)",
    "TanhBackward0": "tanh outputs in (-1, 1)", "HardtanhBackward0": "hardtanh outputs in [-1, 1]",
    "HardsigmoidBackward0": "hardsigmoid outputs in [0, 1]", "SoftsignBackward0": "softsign outputs in (-1, 1)",
}
# Output saturated at initialization: the largest logit exceeds the second by more than OUTPUT_LOGIT_GAP on at least
# OUTPUT_SATURATED_FRACTION of the monitor examples. A gap of 10 puts the top softmax probability above
# 1 - 5e-5 before any training: the cross-entropy of a wrong guess is then ~10 nats, its gradient is carried by
# the few wrong examples only (Glorot & Bengio 2010 sec. 4.1 on saturated outputs); a well-initialized net
# starts with logits of order 1 (gaps below 5 on the benchmark's healthy set-ups).
OUTPUT_LOGIT_GAP = 10.0
OUTPUT_SATURATED_FRACTION = 0.5
PROBABILITY_TOL = 1e-4  # rows >= -tol that sum to 1 within tol are probabilities, whatever computed them
OUTPUT_CHECK_EXAMPLES = 64  # monitor examples of the one forward pass the output/optimizer check makes

_NORM_TYPES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "Dropout", "Dropout1d", "Dropout2d",
               "Dropout3d", "AlphaDropout")


def check_training(model, optimizer=None, x=None, loss=None, targets=None) -> list[Finding]:
    """What makes layers not learn or the loss see the wrong thing, from the model and its optimizer.

    - ``not_learning``: parameters with ``requires_grad=False`` (frozen), parameters the optimizer does not
      hold, and -- with ``x``, by walking the autograd graph of one forward pass -- tensors that require a
      gradient and are used in ``forward`` but are not parameters of the module (layers kept in a plain
      Python list or dict instead of ``nn.ModuleList`` / ``nn.ModuleDict``: no optimizer ever sees them), and
      parameters of the layers that forward calls which require a gradient but are not in the graph (cut from the
      loss by ``.detach()``, ``.data`` or ``torch.no_grad`` in ``forward``: they never get a gradient);
    - ``output_loss_mismatch`` (with ``x``): the model's output is made by softmax, sigmoid or tanh (the last
      operation of the graph), or its rows are probabilities (>= 0, summing to 1), while the loss expects logits;
      for the other losses (``loss``, a :class:`deepscope.losses.LossInfo`; None: cross-entropy) see
      :func:`deepscope.diagnosis.checks.output.output_fit` (log-probabilities for ``nll``, unbounded values for a
      regression, whose ``targets`` may be in a squashing output's reach).

    The forward pass runs on at most ``OUTPUT_CHECK_EXAMPLES`` examples of ``x`` with every module in eval mode
    (so no running statistic moves) and the modes restored afterwards.
    """
    import torch

    findings = []
    named = dict(model.named_parameters())
    frozen = [n for n, p in named.items() if not p.requires_grad]
    held = {id(p) for group in getattr(optimizer, "param_groups", []) for p in group["params"]}
    missing = [n for n, p in named.items() if p.requires_grad and id(p) not in held] if optimizer is not None else []
    stray: list[tuple[int, ...]] = []
    cut: list[str] = []
    out = None
    if x is not None and len(x):
        modes = [(m, m.training) for m in model.modules()]
        called: set[int] = set()
        handles = [m.register_forward_hook(lambda m, i, o: called.add(id(m))) for m in model.modules()]
        try:
            for m, _ in modes:
                m.training = False
            devices = [x.device.index or 0] if x.device.type == "cuda" else []
            with torch.enable_grad(), torch.random.fork_rng(devices=devices):  # the run's RNG is left alone
                out = model(x[:OUTPUT_CHECK_EXAMPLES])
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes:
                m.training = mode
        if isinstance(out, torch.Tensor):
            known = {id(p) for p in named.values()}
            leaves = _graph_leaves(out)
            stray = [tuple(v.shape) for v in leaves if id(v) not in known]
            reached = {id(v) for v in leaves}
            own = {id(p) for m in model.modules() if id(m) in called for p in m.parameters(recurse=False)}
            cut = [n for n, p in named.items() if p.requires_grad and id(p) in own and id(p) not in reached]
    if frozen or missing or stray or cut:
        parts, evidence = [], {}
        if cut:
            parts.append(f"{len(cut)} parameters of layers forward calls get no gradient ({_short(cut)}): forward "
                         "cuts them from the loss (.detach(), .data or torch.no_grad)")
            evidence["parameters_cut_from_the_loss"] = float(len(cut))
        if stray:
            parts.append(f"{len(stray)} tensors that require a gradient are used in forward but are not parameters "
                         f"of the module (shapes {', '.join(map(str, stray[:4]))}): no optimizer sees them")
            evidence["unregistered_tensors"] = float(len(stray))
        if missing:
            parts.append(f"{len(missing)} parameters are not in the optimizer ({_short(missing)})")
            evidence["parameters_not_in_optimizer"] = float(len(missing))
        if frozen:
            parts.append(f"{len(frozen)} of {len(named)} parameters have requires_grad=False ({_short(frozen)})")
            evidence["frozen_parameters"] = float(len(frozen))
        layers = list(dict.fromkeys(n.rpartition(".")[0] or n for n in missing + frozen + cut))
        findings.append(Finding(
            "not_learning", "warning" if frozen and not (missing or stray or cut) else "error",
            "; ".join(parts), layers=layers, first_step=0, recovers=False, evidence=evidence,
            advice="Register every layer (nn.ModuleList / nn.ModuleDict, not a Python list or dict), build the "
            "optimizer from model.parameters() after the model is complete, set requires_grad=True on what "
            "should learn (freeze layers only on purpose, e.g. a pretrained backbone), and keep .detach(), .data "
            "and torch.no_grad out of the path from the weights to the loss.",
        ))
    if isinstance(out, torch.Tensor) and out.dim() >= 1 and out.is_floating_point():
        last_op = type(out.grad_fn).__name__ if out.grad_fn is not None else ""
        fit = output_fit(out.detach(), last_op, loss, targets)
        findings += _output_check(out.detach(), last_op) if fit is None else fit
    return findings


def _short(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _graph_leaves(out) -> list:
    """The leaf tensors (requiring a gradient) the autograd graph of ``out`` accumulates into."""
    leaves, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack += [next_node for next_node, _ in node.next_functions]
    return leaves


def _output_check(out, last_op: str) -> list[Finding]:
    """``output_loss_mismatch`` when the output is made by a squashing function (``last_op``, the name of the
    output's autograd node) or its rows are probabilities; else ``output_saturated`` for huge logit gaps."""
    made_by = _BOUNDED_OUTPUTS.get(last_op)
    rows = out.reshape(len(out), -1).double()
    # outputs that do not vary with the input (a zero-initialized output layer: the bias alone) say nothing about
    # what the model computes: then only the module structure (the last operation) is judged
    degenerate = bool(len(rows) > 1 and (rows == rows[:1]).all())
    probabilities = bool(not degenerate and out.dim() == 2 and rows.shape[1] > 1 and (rows >= -PROBABILITY_TOL).all()
                         and ((rows.sum(1) - 1).abs() <= PROBABILITY_TOL).all())
    if made_by is None and not probabilities:
        return _saturated_logits(rows) if out.dim() == 2 and rows.shape[1] > 1 else []
    what = "softmax probabilities" if probabilities else made_by
    lo, hi = float(rows.min()), float(rows.max())
    return [Finding(
        "output_loss_mismatch", "error",
        f"the model outputs {what} (from {lo:.3g} to {hi:.3g}) but the loss expects logits: cross-entropy applies "
        "log-softmax again, so the loss can barely move and the gradients are squashed",
        layers=["output"], first_step=0, recovers=False,
        evidence={"output_min": lo, "output_max": hi, "rows_are_probabilities": float(probabilities)},
        advice="Return the logits (remove the final softmax/sigmoid/tanh from forward); apply softmax only to "
        "read probabilities at prediction time (or use log_softmax with nll_loss).",
    )]


def _saturated_logits(logits) -> list[Finding]:
    if not bool(logits.isfinite().all()):
        return []  # Inf/NaN outputs: the exploding-gradient rule reports non-finite statistics
    top2 = logits.topk(2, dim=1).values
    gaps = top2[:, 0] - top2[:, 1]
    fraction = float((gaps > OUTPUT_LOGIT_GAP).double().mean())
    if fraction < OUTPUT_SATURATED_FRACTION:
        return []
    return [Finding(
        "output_saturated", "warning",
        f"the output softmax is saturated on {fraction:.0%} of the monitor examples (median gap between the two "
        f"largest logits {float(gaps.median()):.3g}): probabilities pinned at 0 and 1",
        layers=["output"], first_step=0, recovers=None,
        evidence={"saturated_fraction": fraction, "median_logit_gap": float(gaps.median()),
                  "gap_threshold": OUTPUT_LOGIT_GAP},
        advice="Scale the output layer down at initialization (Glorot/He init, or zero-initialize the last layer), "
        "keep the hidden activations' variance near 1 (normalized initialization, batch normalization).",
    )]


def check_modes(model) -> list[Finding]:
    """``eval_mode``: the model, or its batch-norm / dropout layers, in eval mode during a training update."""
    if model.training:
        off = [n for n, m in model.named_modules() if type(m).__name__ in _NORM_TYPES and not m.training]
        if not off:
            return []
        what = f"{_short(off)} {'is' if len(off) == 1 else 'are'} in eval mode while the model trains"
    else:
        off = [n for n, m in model.named_modules() if type(m).__name__ in _NORM_TYPES] or ["model"]
        what = "the model is in eval mode (model.training is False) during training updates"
    return [Finding(
        "eval_mode", "error", what + ": batch normalization uses its running statistics instead of the batch's "
        "and does not update them, dropout is off",
        layers=off, first_step=1, recovers=None, evidence={"layers_in_eval_mode": float(len(off)),
                                                           "model_in_eval_mode": float(not model.training)},
        advice="Call model.train() before the training updates (and model.eval() only for evaluation); do not "
        "override train() to keep normalization layers in eval mode unless you freeze them on purpose.",
    )]


def batchnorm_state(model) -> dict[str, tuple]:
    """``{name: (running_mean, running_var)}`` copies of every batch-norm layer that tracks running statistics
    (lazy layers not yet initialized are left out)."""
    from torch.nn.parameter import is_lazy

    out = {}
    for n, m in model.named_modules():
        mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
        if getattr(m, "track_running_stats", False) and mean is not None and var is not None \
                and not is_lazy(mean) and not is_lazy(var):
            out[n] = (mean.detach().clone(), var.detach().clone())
    return out


def check_batchnorm(before: dict[str, tuple], model, updates: int, modes: list[Finding] = ()) -> list[Finding]:
    """``bn_stats_frozen``: batch-norm running statistics unchanged after ``updates`` training updates.

    ``modes``: the ``eval_mode`` findings of the run (:func:`check_modes`). When the whole model was in eval mode
    during training, eval mode is the cause (``cause="eval_mode"``: nothing in it updates its statistics, whatever
    the momentum); when only the batch-norm layers were (a "frozen batch norm"), or their momentum is 0, the
    finding is its own cause, and its message says which layers were in eval mode.
    """
    if updates < 1:
        return []
    now = batchnorm_state(model)
    frozen = [n for n, (mean, var) in before.items() if n in now and now[n][0].shape == mean.shape
              and now[n][1].shape == var.shape and bool((now[n][0] == mean).all()) and bool((now[n][1] == var).all())]
    if not frozen:
        return []
    in_eval = {layer for f in modes if f.code == "eval_mode" for layer in f.layers}
    model_eval = any(f.code == "eval_mode" and f.evidence.get("model_in_eval_mode") for f in modes)
    by_eval = bool(in_eval) and set(frozen) <= in_eval
    return [Finding(
        "bn_stats_frozen", "error",
        f"the running mean and variance of {_short(frozen)} did not change in {updates} updates: evaluation "
        "normalizes with statistics that are not the data's" + ("; they were in eval mode during training" if by_eval
                                                                 else ""),
        layers=frozen, first_step=0, recovers=False, evidence={"frozen_layers": float(len(frozen)),
                                                               "updates": float(updates)},
        advice="Keep batch-norm layers in train mode while training and their momentum > 0 (PyTorch's default "
        "0.1; Ioffe & Szegedy 2015 use a moving average); freeze them only on purpose, with frozen affine "
        "parameters too.",
        cause="eval_mode" if model_eval else "",
    )]
