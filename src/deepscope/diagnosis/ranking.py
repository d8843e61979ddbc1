"""Root causes over symptoms: which finding explains which, and the order findings are reported in.

One fault shows as several findings: inputs off-centre saturate the first layer, an output layer initialized
too large makes the first gradients huge and the hidden layers saturate after the first updates, too high a
learning rate kills ReLU units. The *cause* of a finding (:attr:`Finding.cause`) is the root of that chain -- the
finding nothing else present explains -- and the roots come first, so the first finding names what the user must
change and the repair tries its fixes first. A finding *yields* to another (is explained by it) along an edge of
:data:`EDGES`, when the instruments say the symptom is downstream of the root:

1. the data causes (``input_constant``, ``labels_constant``, ``labels_unexplained``) explain every finding, and a
   cause in the model or the set-up (:data:`deepscope.diagnosis.causes.EXPLAINS`) the symptoms it produces;
2. ``eval_mode`` explains ``bn_stats_frozen``: a batch norm in eval mode does not update its running statistics;
3. inputs off-centre or unscaled (LeCun et al. 1998, "Efficient BackProp", sec. 4.3) explain saturation and dead
   units *in the first layer at initialization*, and in deeper layers too only when the inputs are large (else the
   weights' scale is the cause there);
   inputs whose RMS is :data:`LARGE_INPUT` times the unit scale the initializations assume also explain an output
   saturated at initialization and a loss that grows under updates (the first layer's gradient and the curvature
   grow with the input's second moment: the rate that fits standardized inputs is too high for them);
4. identical units (``symmetry`` at initialization) explain the layer symptoms: saturated, dead or constant
   layers, vanishing gradients, a flat loss (Varma & Das, ch. 7, section 7.5);
5. an output saturated at initialization (Glorot & Bengio 2010, sec. 4.1) explains the symptoms that appear
   *after* the first updates -- saturation, dead units, a growing loss, spikes: its huge first gradients cause them;
6. a loss that grows under updates (``lr_too_high``) explains the symptoms that were not there at initialization
   (saturation, dead units, non-finite values, a plateau): compare with the state at initialization;
7. an activation variance that shrinks or grows with depth at initialization (the init scale does not fit the
   activation: Glorot & Bengio 2010, He et al. 2015) explains ``depth_unnormalized``: the depth is only a problem
   because of the scale; one that grows explains an output saturated at initialization too (the last layer reads
   activations grown layer after layer);
8. an output that does not fit the loss (``output_loss_mismatch``) explains a network none of whose layers moves (a
   softmax over a single output is the constant 1: no gradient reaches any weight).

When a finding has several explainers, the first in :data:`ROOT_ORDER` wins; chains are followed to their root
(cycles are cut). A root takes the severity of the worst finding it explains. Order (:func:`rank`): the roots,
causes of :data:`deepscope.diagnosis.causes.CAUSES` first, then by severity and the order they had; then the
findings they explain; then the info findings.
"""

from __future__ import annotations

from collections.abc import Callable

from deepscope.diagnosis.findings import SEVERITIES, Finding

__all__ = ["EDGES", "LARGE_INPUT", "ROOT_ORDER", "explainer", "rank"]

LARGE_INPUT = 3.0  # input RMS at which the first layer's pre-activations are 3x what the init assumes (unit inputs)
INPUTS = ("input_not_centered", "input_not_scaled")
LAYER_SYMPTOMS = {"saturation", "dead_units", "vanishing_gradients", "variance_shrinks", "variance_grows", "plateau",
                  "lr_too_low", "not_learning"}
AFTER_UPDATES = {"saturation", "dead_units", "exploding_gradients", "vanishing_gradients", "not_learning", "plateau",
                 "loss_spikes", "gradient_spikes", "symmetry", "variance_shrinks", "variance_grows"}
RATE_SYMPTOMS = {"lr_too_high", "exploding_gradients", "loss_spikes", "gradient_spikes"}


def at_init(f: Finding) -> bool:
    """Seen at initialization: the first record (update 0) or a check of the start."""
    return f.first_step == 0


def after_updates(f: Finding) -> bool:
    """Not there at initialization: first seen after some updates (or only at the end of the run)."""
    return f.first_step != 0


def _in_first_layer_at_init(root: Finding, f: Finding) -> bool:
    """The symptom is in the first layer at initialization, and there only unless the inputs are large (their RMS
    LARGE_INPUT x the unit scale: an offset of 10 carries through every ReLU-like layer). When deeper layers saturate
    (or die) at initialization too under inputs of a unit scale, the weights' scale does it in every layer, and
    centring the inputs would not bring the first layer back (sigmoid units on 1,024 inputs in [0, 1] with N(0, 1)
    weights: pre-activations of std ~18 either way)."""
    return at_init(f) and f.evidence.get("in_first_layer", 0.0) > 0 and (len(f.layers) <= 1 or _large_input(root, f))


def _large_input(root: Finding, f: Finding) -> bool:
    return root.evidence.get("rms", 0.0) >= LARGE_INPUT


def _large_input_at_init(root: Finding, f: Finding) -> bool:
    return _large_input(root, f) and at_init(f)


def _root_at_init(root: Finding, f: Finding) -> bool:
    return at_init(root)


def _symptom_after_updates(root: Finding, f: Finding) -> bool:
    return after_updates(f)


def _always(root: Finding, f: Finding) -> bool:
    return True


Condition = Callable[[Finding, Finding], bool]
# (root, the symptoms it explains, when): see the module's docstring for the reasoning of each edge
EDGES: list[tuple[str, set[str], Condition]] = [
    ("eval_mode", {"bn_stats_frozen"}, _always),
    *[(code, {"saturation", "dead_units"}, _in_first_layer_at_init) for code in INPUTS],
    *[(code, {"output_saturated", "variance_grows"}, _large_input_at_init) for code in INPUTS],
    *[(code, RATE_SYMPTOMS, _large_input) for code in INPUTS],
    ("symmetry", LAYER_SYMPTOMS, _root_at_init),
    ("output_saturated", AFTER_UPDATES | RATE_SYMPTOMS, lambda root, f: at_init(root) and (
        f.code in RATE_SYMPTOMS or after_updates(f))),
    ("lr_too_high", AFTER_UPDATES, _symptom_after_updates),
    # an output the loss cannot use (softmax over one unit is always 1) stops every layer: no step anywhere
    ("output_loss_mismatch", {"not_learning"}, lambda root, f: f.evidence.get("update_ratio_fastest", 1.0) == 0.0),
    ("variance_shrinks", {"depth_unnormalized"}, _root_at_init),
    ("variance_grows", {"depth_unnormalized", "output_saturated"}, _root_at_init),
]
# which explainer wins when several are present: the data, the model's causes, then the most upstream symptom
ROOT_ORDER = ("input_constant", "labels_constant", "labels_unexplained", "eval_mode", *INPUTS, "symmetry",
              "output_saturated", "variance_shrinks", "variance_grows", "lr_too_high")
PROBLEM = ("error", "warning")


def explainer(f: Finding, findings: list[Finding], causes: dict[str, set[str]], everything: set[str]
              ) -> Finding | None:
    """The finding of ``findings`` that explains ``f`` directly, or None. ``causes``: cause code -> the symptoms it
    explains (:data:`deepscope.diagnosis.causes.EXPLAINS`); ``everything``: codes that explain every finding."""
    candidates = []
    for g in findings:
        if g is f or g.severity not in PROBLEM or f.code == g.code:
            continue
        if g.code in everything or f.code in causes.get(g.code, ()) or any(
                g.code == root and f.code in symptoms and when(g, f) for root, symptoms, when in EDGES):
            candidates.append(g)
    order = {code: i for i, code in enumerate(ROOT_ORDER)}
    # the data first, then the causes of the model and set-up (in the order given), then ROOT_ORDER
    candidates.sort(key=lambda g: (g.code not in everything, g.code not in causes, order.get(g.code, len(order))))
    return candidates[0] if candidates else None


def rank(findings: list[Finding], causes: dict[str, set[str]] | None = None, everything: set[str] | None = None
         ) -> list[Finding]:
    """``findings`` ordered roots first, each problem finding's ``cause`` set to its root's code, each root's severity
    raised to the worst it explains (see the module's docstring). ``causes``: cause code -> the symptoms it explains
    (:func:`deepscope.diagnosis.causes.explain` passes its table); ``everything``: the codes that explain every
    finding (the data causes); without them, only the edges between symptoms and checks (:data:`EDGES`) apply."""
    causes = causes or {}
    everything = everything or set()
    problems = [f for f in findings if f.severity in PROBLEM]
    parent = {id(f): explainer(f, problems, causes, everything) for f in problems}

    def root_of(f: Finding) -> Finding:
        seen = {id(f)}
        while (p := parent.get(id(f))) is not None and id(p) not in seen:
            seen.add(id(p))
            f = p
        return f

    severity = {s: i for i, s in enumerate(SEVERITIES)}
    roots = {id(f): root_of(f) for f in problems}
    for f in problems:
        r = roots[id(f)]
        if r is not f:
            f.cause = r.code
            if severity[f.severity] < severity[r.severity]:
                r.severity = f.severity
        else:
            f.cause = f.code
    position = {id(f): i for i, f in enumerate(findings)}

    def key(f: Finding) -> tuple:
        if f.severity not in PROBLEM:
            return (2, 0, 0, position[id(f)])
        return (0 if roots[id(f)] is f else 1, f.code not in causes and f.code not in everything,
                severity.get(f.severity, 9), position[id(f)])

    return sorted(findings, key=key)
