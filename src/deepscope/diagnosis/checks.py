"""Checks that need more than the records: the model's weights (symmetry) and a batch of inputs.

- :func:`check_model` looks at the model itself for *symmetry* (units of a layer with identical
  incoming weights and biases, as zero or constant initialization leaves them). The probe stores
  per-layer aggregates only, so from records alone symmetry shows only as a layer whose output is the
  same for every unit and every monitor example -- :func:`~deepscope.diagnosis.rules.diagnose` reports
  that too, but the weight check also sees symmetry that training has made input-dependent.
- :func:`diagnose_input` looks at a batch of inputs for centering and scaling (LeCun et al. 1998,
  "Efficient BackProp", section 4.3; Varma & Das, ch. 7, section 7.6).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from deepscope.diagnosis.findings import Finding
from deepscope.diagnosis.rules import SYMMETRY_TOL

__all__ = ["check_model", "diagnose_input", "layer_outputs"]

# Inputs (LeCun et al. 1998, section 4.3; Varma & Das, ch. 7, section 7.6, "Centering" and "Scaling"):
INPUT_MEAN_FRACTION = 0.3  # sqrt(mean_i mu_i^2 / mean x^2): the share of the input's RMS that is the mean
INPUT_SCALE_LOW = 0.05  # RMS of the centered input below this ...
INPUT_SCALE_HIGH = 20.0  # ... or above this -> not scaled
INPUT_SPREAD_RATIO = 1e3  # largest / smallest per-component std (non-constant components) above this


def check_model(model, x=None) -> list[Finding]:
    """Symmetry: hidden layers whose units all have the same incoming weights and bias.

    Looks at every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` / ``Maxout`` except the last one (the output layer, whose
    units differ through their targets). Rows of the weight (one per output unit or channel) that are
    equal within ``SYMMETRY_TOL * max|W|`` -- all zero included -- make clones that SGD updates in lock step
    (Jen (2020); Varma & Das, ch. 7, section 7.5). With ``x`` the layers' outputs are also measured: the largest spread
    across units of one example's output is added to the evidence.
    """
    from deepscope.init import LAYER_TYPES

    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, LAYER_TYPES) and not _inside_maxout(name, model)]
    spreads = layer_outputs(model, x, layers, _unit_spread) if x is not None else {}
    clones, evidence = [], {}
    for name, m in layers[:-1]:
        w = m.weight.detach()
        if w.shape[0] < 2:
            continue
        rows = w.reshape(w.shape[0], -1)
        scale = float(rows.abs().max())
        spread = float((rows - rows[0]).abs().max())
        bias = m.bias.detach() if getattr(m, "bias", None) is not None else None
        bias_spread = float((bias - bias[0]).abs().max()) if bias is not None else 0.0
        if spread <= SYMMETRY_TOL * scale and bias_spread <= SYMMETRY_TOL * max(scale, 1.0):
            clones.append(name)
            evidence[f"{name}.weight_max_abs"] = scale
            if name in spreads:
                evidence[f"{name}.output_spread"] = spreads[name]
    if not clones:
        return []
    return [
        Finding(
            "symmetry", "error",
            f"every unit of {', '.join(clones)} has the same incoming weights and bias: the units are clones",
            layers=clones, first_step=None, recovers=False, evidence=evidence,
            advice="Break the symmetry: initialize weights randomly (normalized/Glorot or He initialization), "
            "never with zeros or a constant (Varma & Das, ch. 7, section 7.5).",
        )
    ]


def _inside_maxout(name: str, model) -> bool:
    from deepscope.nn.activations import Maxout

    parent = name.rpartition(".")[0]
    return bool(name) and "." in name and isinstance(model.get_submodule(parent), Maxout)


def _unit_spread(output) -> float:
    """The largest difference between a unit's output and the first unit's, over examples and positions."""
    units = output.detach().transpose(0, 1).reshape(output.shape[1], -1)  # (units, examples * positions)
    return float((units - units[0]).abs().max())


def layer_outputs(model, x, layers: Iterable[tuple[str, Any]], measure: Callable[[Any], Any]) -> dict[str, Any]:
    """``{name: measure(output)}`` of each ``(name, module)`` of ``layers`` in one forward pass of ``x`` without
    autograd, in the order the modules ran (forward hooks, removed afterwards; a module run twice keeps its last).

    The pass leaves no trace: the random number generators and the model's buffers (batch-norm running
    statistics) are as they were before, so a check inside training does not change the run.
    """
    import torch

    out: dict[str, Any] = {}
    handles = [m.register_forward_hook(lambda module, inputs, output, name=name: out.__setitem__(name, measure(output)))
               for name, m in layers]
    buffers = [(b, b.clone()) for b in model.buffers()]
    devices = [x.device.index or 0] if getattr(x, "device", None) is not None and x.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model(x)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return out


def diagnose_input(x) -> list[Finding]:
    """Centering and scaling of a batch of inputs, per component (Varma & Das, ch. 7, section 7.6).

    ``x`` is a batch (first dimension = examples). Centered: the per-component means carry less than
    ``INPUT_MEAN_FRACTION`` of the input's RMS. Scaled: the RMS of the centered input lies in
    [INPUT_SCALE_LOW, INPUT_SCALE_HIGH] and the per-component stds (of non-constant components) differ by
    less than ``INPUT_SPREAD_RATIO``.
    """
    import torch

    x = torch.as_tensor(x).detach().reshape(len(x), -1).double()
    if x.shape[0] < 2:
        raise ValueError(f"diagnose_input needs a batch of at least 2 examples, got x.shape={tuple(x.shape)}")
    mu = x.mean(0)
    std = x.std(0)
    rms = float(x.pow(2).mean().sqrt())
    mean_fraction = float(mu.pow(2).mean().sqrt()) / rms if rms > 0 else 0.0
    scale = float(std.pow(2).mean().sqrt())
    varying = std[std > 1e-12 * max(scale, 1e-30)]
    spread = float(varying.max() / varying.min()) if varying.numel() else 1.0
    findings = []
    if mean_fraction > INPUT_MEAN_FRACTION:
        findings.append(Finding(
            "input_not_centered", "warning",
            f"the per-component means make up {mean_fraction:.0%} of the input RMS (mean {float(mu.mean()):.3g})",
            layers=["input"], evidence={"mean_fraction": mean_fraction, "mean": float(mu.mean()),
                                        "threshold": INPUT_MEAN_FRACTION},
            advice="Center the inputs: subtract the per-component mean of the training set (LeCun et al. 1998; "
            "Varma & Das, ch. 7, section 7.6; deepscope preprocessing 'center' or 'standardize', fitted on training "
            "data only).",
        ))
    if not INPUT_SCALE_LOW <= scale <= INPUT_SCALE_HIGH or spread > INPUT_SPREAD_RATIO:
        findings.append(Finding(
            "input_not_scaled", "warning",
            f"the per-component std is {scale:.3g} on average (largest/smallest {spread:.3g})",
            layers=["input"], evidence={"std": scale, "std_spread": spread, "low": INPUT_SCALE_LOW,
                                        "high": INPUT_SCALE_HIGH, "spread_threshold": INPUT_SPREAD_RATIO},
            advice="Scale the inputs after centering: divide each component by its training-set std, or map "
            "to [-1, 1] (Varma & Das, ch. 7, section 7.6; preprocessing 'standardize').",
        ))
    return findings


