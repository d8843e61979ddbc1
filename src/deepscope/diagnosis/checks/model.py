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
from deepscope.diagnosis.rules.layers import SYMMETRY_TOL

__all__ = ["check_model", "layer_outputs"]


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
