"""The inputs: centering and scaling of a batch, per component (LeCun et al. 1998, "Efficient BackProp",
section 4.3; Varma & Das, ch. 7, section 7.6)."""

from __future__ import annotations

from deepscope.diagnosis.findings import Finding

__all__ = ["INPUT_MEAN_FRACTION", "INPUT_SCALE_HIGH", "INPUT_SCALE_LOW", "INPUT_SPREAD_RATIO", "diagnose_input"]

# Inputs (LeCun et al. 1998, section 4.3; Varma & Das, ch. 7, section 7.6, "Centering" and "Scaling"):
# sqrt(mean_i mu_i^2 / mean x^2): the share of the input's RMS that is the mean. MNIST scaled to [0, 1] (how
# everyone trains it, and nets train well on it) has 0.63, an offset equal to the signal's std 0.71; an offset
# larger than the signal (0.75 from 1.1x) is what makes the first layer's units start off-centre.
INPUT_MEAN_FRACTION = 0.75
INPUT_SCALE_LOW = 0.05  # RMS of the centered input below this ...
INPUT_SCALE_HIGH = 20.0  # ... or above this -> not scaled
INPUT_SPREAD_RATIO = 1e3  # largest / smallest per-component std (non-constant components) above this
INPUT_VARYING = 1e-2  # ... among the components whose std is at least this fraction of the median std


def diagnose_input(x) -> list[Finding]:
    """Centering and scaling of a batch of inputs, per component (Varma & Das, ch. 7, section 7.6).

    ``x`` is a batch (first dimension = examples). Centered: the per-component means carry less than
    ``INPUT_MEAN_FRACTION`` of the input's RMS. Scaled: the RMS of the centered input lies in
    [INPUT_SCALE_LOW, INPUT_SCALE_HIGH] and the per-component stds (of non-constant components) differ by
    less than ``INPUT_SPREAD_RATIO``. Inputs of dtype int32/int64 (token ids) give no finding.
    """
    import torch

    x = torch.as_tensor(x).detach()
    if x.dtype in (torch.int32, torch.int64):  # token ids (an embedding's indices) are not features to centre/scale
        return []
    x = x.reshape(len(x), -1).double()
    if x.shape[0] < 2:
        raise ValueError(f"diagnose_input needs a batch of at least 2 examples, got x.shape={tuple(x.shape)}")
    mu = x.mean(0)
    std = x.std(0)
    rms = float(x.pow(2).mean().sqrt())
    mean_fraction = float(mu.pow(2).mean().sqrt()) / rms if rms > 0 else 0.0
    scale = float(std.pow(2).mean().sqrt())
    # components that (almost) never vary -- the border pixels of digits, lit in one example of a thousand -- carry
    # no scale of their own: the spread is judged on those whose std is at least INPUT_VARYING of the median std
    nonconstant = std[std > 1e-12 * max(scale, 1e-30)]
    typical = float(nonconstant.median()) if nonconstant.numel() else 0.0
    varying = nonconstant[nonconstant >= INPUT_VARYING * typical]
    spread = float(varying.max() / varying.min()) if varying.numel() else 1.0
    findings = []
    if mean_fraction > INPUT_MEAN_FRACTION:
        findings.append(Finding(
            "input_not_centered", "warning",
            f"the per-component means make up {mean_fraction:.0%} of the input RMS (mean {float(mu.mean()):.3g})",
            layers=["input"], evidence={"mean_fraction": mean_fraction, "mean": float(mu.mean()), "rms": rms,
                                        "threshold": INPUT_MEAN_FRACTION},
            advice="Center the inputs: subtract the per-component mean of the training set (LeCun et al. 1998; "
            "Varma & Das, ch. 7, section 7.6; deepscope preprocessing 'center' or 'standardize', fitted on training "
            "data only).",
        ))
    if not INPUT_SCALE_LOW <= scale <= INPUT_SCALE_HIGH or spread > INPUT_SPREAD_RATIO:
        findings.append(Finding(
            "input_not_scaled", "warning",
            f"the per-component std is {scale:.3g} on average (largest/smallest {spread:.3g})",
            layers=["input"], evidence={"std": scale, "std_spread": spread, "rms": rms, "low": INPUT_SCALE_LOW,
                                        "high": INPUT_SCALE_HIGH, "spread_threshold": INPUT_SPREAD_RATIO},
            advice="Scale the inputs after centering: divide each component by its training-set std, or map "
            "to [-1, 1] (Varma & Das, ch. 7, section 7.6; preprocessing 'standardize').",
        ))
    return findings
