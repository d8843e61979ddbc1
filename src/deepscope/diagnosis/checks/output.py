"""``output_loss_mismatch`` for every loss: does the model's output have the form its loss expects?

Each loss of :mod:`deepscope.losses` says what it expects (:data:`deepscope.losses.OUTPUTS`):

- ``logits`` (``cross_entropy``, ``quadratic``, ``bce_with_logits``): any real scores; the loss applies softmax or
  the sigmoid itself, so an output made by softmax, sigmoid or tanh, or rows that are already probabilities, is
  squashed twice: the loss can barely move and the gradients are small (PyTorch documents ``CrossEntropyLoss`` and
  ``BCEWithLogitsLoss`` as taking unnormalized scores; Bridle 1990 pairs softmax with the log-likelihood);
- ``log_probabilities`` (``nll``): the rows of ``exp(output)`` sum to 1 (the model ends in ``log_softmax``);
  probabilities (a final softmax) or raw scores (no ``log_softmax``) are a mismatch -- on raw scores ``nll`` is
  -z[y], which falls without bound;
- ``values`` (``mse``, ``huber``, ``l1``): unbounded predictions; a squashing output (sigmoid, tanh, softmax ...)
  cannot reach targets outside its range and its gradient vanishes where it saturates, so it is a finding
  unless every target lies in the output's range.

A loss of your own whose family is unknown is not checked.
"""

from __future__ import annotations

from typing import Any

from deepscope.diagnosis.findings import Finding

__all__ = ["BOUNDED_OUTPUTS", "LOG_PROBABILITY_TOL", "output_fit"]

# the last operation of the output's graph -> (what it makes, its range)
BOUNDED_OUTPUTS: dict[str, tuple[str, tuple[float, float]]] = {
    "SoftmaxBackward0": ("softmax probabilities", (0.0, 1.0)),
    "SigmoidBackward0": ("sigmoid outputs in (0, 1)", (0.0, 1.0)),
    "TanhBackward0": ("tanh outputs in (-1, 1)", (-1.0, 1.0)),
    "HardtanhBackward0": ("hardtanh outputs in [-1, 1]", (-1.0, 1.0)),
    "HardsigmoidBackward0": ("hardsigmoid outputs in [0, 1]", (0.0, 1.0)),
    "SoftsignBackward0": ("softsign outputs in (-1, 1)", (-1.0, 1.0)),
}
LOG_PROBABILITY_TOL = 1e-3  # rows whose logsumexp is within this of 0 are log-probabilities
PROBABILITY_TOL = 1e-4  # rows >= -tol that sum to 1 within tol are probabilities, whatever computed them


def _finding(message: str, lo: float, hi: float, advice: str, **evidence: float) -> list[Finding]:
    return [Finding("output_loss_mismatch", "error", message, layers=["output"], first_step=0, recovers=False,
                    evidence={"output_min": lo, "output_max": hi, **evidence}, advice=advice)]


def output_fit(out: Any, last_op: str, loss: Any = None, targets: Any = None) -> list[Finding] | None:
    """The ``output_loss_mismatch`` finding for ``out`` (a detached output of the model on a few examples, whose
    autograd node was ``last_op``) under ``loss`` (a :class:`deepscope.losses.LossInfo`; None: ``cross_entropy``),
    or ``[]``; None when the loss expects logits of classes (the caller's softmax checks apply)."""
    output = getattr(loss, "output", "logits") if loss is not None else "logits"
    family = getattr(loss, "family", "class") if loss is not None else "class"
    name = getattr(loss, "name", "cross_entropy") if loss is not None else "cross_entropy"
    if output is None or output == "probabilities":
        return []  # a loss of your own, or one that takes probabilities (nn.BCELoss): nothing to check
    if output == "logits" and family == "class":
        return None
    rows = out.reshape(len(out), -1).double() if out.dim() >= 1 else out.reshape(1, 1).double()
    if not bool(rows.isfinite().all()):
        return []  # Inf/NaN outputs: the exploding-gradient rule reports non-finite statistics
    lo, hi = float(rows.min()), float(rows.max())
    made_by, bounds = BOUNDED_OUTPUTS.get(last_op, (None, None))
    if output == "logits":  # bce_with_logits
        if made_by is None:
            return []
        return _finding(
            f"the model outputs {made_by} (from {lo:.3g} to {hi:.3g}) but {name} expects logits: it applies the "
            "sigmoid itself, so the output is squashed twice, the loss can barely move and the gradients are small",
            lo, hi, "Return the logits (remove the final sigmoid/tanh from forward); apply torch.sigmoid only to "
            "read probabilities at prediction time (or keep the sigmoid and use nn.BCELoss, less stable).")
    if output == "log_probabilities":
        scores = out.double().movedim(-1, 1) if out.dim() >= 2 else rows
        lse = scores.logsumexp(1)
        probabilities = bool((scores >= -PROBABILITY_TOL).all()
                             and ((scores.sum(1) - 1).abs() <= PROBABILITY_TOL).all())
        if probabilities or made_by is not None:
            what = "probabilities" if probabilities else made_by
        elif float((lse.abs()).max()) > LOG_PROBABILITY_TOL:
            what = f"unnormalized scores (the log-sum-exp of a row goes from {float(lse.min()):.3g} to " \
                   f"{float(lse.max()):.3g}, not 0)"
        else:
            return []
        return _finding(
            f"the model outputs {what} (from {lo:.3g} to {hi:.3g}) but {name} expects log-probabilities: it reads "
            "-output[target], which on these values does not measure the likelihood of the target", lo, hi,
            "End forward() with torch.log_softmax(z, dim=-1) for nll, or return the logits z and use "
            "train.loss = \"cross_entropy\".", log_sum_exp_max=float(lse.abs().max()))
    # values: a regression loss
    return _class_labels(targets, name) + _values_fit(lo, hi, made_by, bounds, last_op, name, targets)


def _class_labels(targets: Any, name: str) -> list[Finding]:
    """``loss_for_classes`` when regression ``targets`` are one-hot class labels: two columns or more, every value
    0 or 1, one 1 per row. Glorot & Bengio (2010, figure 5) show the quadratic cost of such targets with plateaus
    where the cross-entropy (the conditional log-likelihood of softmax outputs) has none, and found the latter
    trains classifiers better."""
    if targets is None or targets.dim() != 2 or targets.shape[1] < 2 or not len(targets):
        return []
    t = targets.double()
    if not bool(((t == 0) | (t == 1)).all()) or not bool((t.sum(1) == 1).all()):
        return []
    k = targets.shape[1]
    return [Finding("loss_for_classes", "warning",
                    f"the targets are one-hot labels of {k} classes but {name} regresses them as values: on class "
                    "labels the quadratic cost has plateaus where the cross-entropy has none (Glorot & Bengio 2010, "
                    "figure 5), so the classifier learns slowly or stalls", layers=["output"], first_step=0,
                    recovers=False, evidence={"classes": float(k)},
                    advice="Train a classifier: give the class indices (y.argmax(1)) as targets and use "
                    "train.loss = \"cross_entropy\" on logits (no final softmax).")]


def _values_fit(lo: float, hi: float, made_by: str | None, bounds: Any, last_op: str, name: str,
                targets: Any) -> list[Finding]:
    """A regression loss: ``output_loss_mismatch`` when a squashing output cannot reach the targets."""
    if made_by is None:
        return []
    if targets is not None and len(targets):
        t = targets.double()
        t_lo, t_hi = float(t.min()), float(t.max())
        if bounds[0] <= t_lo and t_hi <= bounds[1]:
            return []  # every target is in reach: a bounded output is a choice, not a mistake
        reach = f"; the targets go from {t_lo:.3g} to {t_hi:.3g}, out of its reach"
    else:
        t_lo = t_hi = float("nan")
        reach = ""
    if last_op == "SoftmaxBackward0" and lo == hi:  # a softmax over one output: the constant 1, no gradient
        return _finding(
            f"the model ends in a softmax over a single output, which is the constant {hi:.3g} whatever the input, "
            f"so no gradient reaches any weight and {name} cannot fall{reach}", lo, hi,
            "Remove the final softmax from forward() (a linear output layer for regression; for one binary logit "
            "use a sigmoid at prediction time and train.loss = \"bce_with_logits\").", target_min=t_lo,
            target_max=t_hi)
    return _finding(
        f"the model outputs {made_by} (from {lo:.3g} to {hi:.3g}) but {name} regresses unbounded values{reach}: "
        "the loss cannot fall below the distance to the targets it cannot reach, and the gradient vanishes where "
        "the output saturates", lo, hi,
        "Remove the final squashing function from forward() (a linear output layer), or scale the targets into "
        "its range.", target_min=t_lo, target_max=t_hi)
