"""The cause ranking (deepscope.diagnosis.ranking): a symptom yields to the finding whose root explains it, read
from the instruments (when a symptom appears, in which layer), and the roots come first."""

import torch

from deepscope.diagnosis import Finding, diagnose, diagnose_input
from deepscope.diagnosis import ranking as rk
from deepscope.diagnosis.causes import explain


def F(code, severity="error", first_step=0, **evidence):  # noqa: N802 - a short constructor for the tables below
    return Finding(code, severity, code, first_step=first_step, evidence=dict(evidence))


def ranked(*findings):
    found = explain(list(findings), {}, {})
    return [f.code for f in found], {f.code: f.cause for f in found}


def test_off_centre_inputs_explain_a_first_layer_saturated_at_initialization():
    # the real rule and the real input check: tanh units of the first layer saturated from the first record
    rows = [dict(step=0, source="monitor", layer=layer, quantity="activation", stat="saturated", value=v)
            for layer, v in (("hidden1", 0.6), ("hidden2", 0.0))]
    saturation = diagnose(rows)
    x = torch.randn(200, 16) + 4.0  # mean 4, std 1: the means carry 97 % of the RMS
    inputs = diagnose_input(x)
    assert [f.code for f in saturation] == ["saturation"] and saturation[0].evidence["in_first_layer"] == 1.0
    assert inputs[0].code == "input_not_centered" and inputs[0].evidence["rms"] > rk.LARGE_INPUT
    found = explain(saturation + inputs, {}, {})
    assert [f.code for f in found] == ["input_not_centered", "saturation"]
    assert found[1].cause == "input_not_centered" and found[0].severity == "error"  # the root takes the worst
    # saturation in a deeper layer only is not the inputs'
    deep = diagnose([{**r, "value": 0.6 - r["value"]} for r in rows])
    assert deep[0].evidence["in_first_layer"] == 0.0
    assert explain(deep + diagnose_input(x), {}, {})[0].code == "saturation"


def test_saturation_that_appears_after_updates_is_not_the_inputs():
    codes, causes = ranked(F("saturation", first_step=30, in_first_layer=1.0),
                           F("input_not_centered", "warning", None, rms=1.2))
    assert codes[0] == "saturation" and causes["saturation"] == "saturation"


def test_large_inputs_explain_a_diverging_loss_and_a_saturated_output():
    codes, causes = ranked(F("lr_too_high", first_step=11), F("exploding_gradients", first_step=30),
                           F("output_saturated", "warning"), F("input_not_scaled", "warning", None, rms=50.0))
    assert codes[0] == "input_not_scaled" and set(causes.values()) == {"input_not_scaled"}
    # inputs of unit scale whose components differ in spread do not make the rate too high
    codes, causes = ranked(F("lr_too_high", first_step=11), F("input_not_scaled", "warning", None, rms=1.0))
    assert codes[0] == "lr_too_high" and causes["lr_too_high"] == "lr_too_high"


def test_identical_units_explain_saturated_and_dead_layers():
    for symptom in ("saturation", "dead_units", "vanishing_gradients", "plateau"):
        codes, causes = ranked(F(symptom), F("symmetry"))
        assert codes == ["symmetry", symptom] and causes[symptom] == "symmetry"
    # symmetry seen only at the end of the run (training collapsed the units) explains nothing at initialization
    codes, causes = ranked(F("dead_units"), F("symmetry", first_step=None))
    assert codes[0] == "dead_units" and causes["dead_units"] == "dead_units"


def test_a_loss_that_grows_under_updates_explains_what_was_not_there_at_initialization():
    codes, causes = ranked(F("dead_units", first_step=30), F("lr_too_high", first_step=30))
    assert codes == ["lr_too_high", "dead_units"] and causes["dead_units"] == "lr_too_high"
    codes, causes = ranked(F("dead_units", first_step=0), F("lr_too_high", first_step=30))
    assert codes[0] == "dead_units" and causes["dead_units"] == "dead_units"  # dead before any update


def test_an_output_saturated_at_initialization_is_the_root_of_the_chain():
    # output saturated -> huge first gradients -> the loss grows -> the hidden layers saturate after the updates
    codes, causes = ranked(F("saturation", first_step=30), F("lr_too_high", first_step=91),
                           F("output_saturated", "warning", 0), F("loss_spikes", "warning", 38))
    assert codes[0] == "output_saturated" and set(causes.values()) == {"output_saturated"}


def test_eval_mode_explains_frozen_batch_norm_statistics_and_the_init_scale_explains_depth():
    codes, causes = ranked(F("bn_stats_frozen"), F("eval_mode", first_step=1))
    assert codes == ["eval_mode", "bn_stats_frozen"] and causes["bn_stats_frozen"] == "eval_mode"
    found = explain([F("variance_shrinks", "warning"), F("dead_units", first_step=30)],
                    {"depth": 13, "norm_layers": False}, {})
    assert [f.code for f in found][:2] == ["variance_shrinks", "depth_unnormalized"]
    assert {f.cause for f in found} == {"variance_shrinks"} and found[0].severity == "error"


def test_causes_in_the_data_and_the_model_come_before_the_symptoms_and_cycles_end():
    codes, causes = ranked(F("saturation"), F("symmetry"), F("x", "info"))
    assert codes[-1] == "x"  # info last
    a, b = F("a"), F("b")
    rk.EDGES.append(("a", {"b"}, lambda r, f: True))
    rk.EDGES.append(("b", {"a"}, lambda r, f: True))
    try:
        found = rk.rank([a, b], {}, set())
    finally:
        del rk.EDGES[-2:]
    assert {f.code for f in found} == {"a", "b"} and {f.cause for f in found} <= {"a", "b"}


def test_sorting_keeps_a_root_before_what_it_explains_and_diagnose_ranks_the_rules_findings():
    from deepscope.diagnosis import sort_findings

    found = explain([F("bn_stats_frozen", first_step=0), F("eval_mode", first_step=1)], {}, {})
    # re-sorted by severity and update (the HTML report does), the root stays first although it was seen later
    assert [f.code for f in sort_findings(reversed(found))] == ["eval_mode", "bn_stats_frozen"]
    # the rules alone: units that die after the first updates of a diverging run are the rate's
    rows = [dict(step=s, source="monitor", layer="hidden1", quantity="activation", stat="dead", value=v)
            for s, v in ((0, 0.0), (30, 0.95))]
    scalars = [dict(step=1, name="train/loss", value=1.4), dict(step=30, name="train/diverged", value=1.0)]
    found = diagnose(rows, scalars=scalars)
    assert [f.code for f in found] == ["lr_too_high", "dead_units"] and found[1].cause == "lr_too_high"


def test_activations_grown_with_depth_explain_an_output_saturated_at_initialization():
    codes, causes = ranked(F("lr_too_high", first_step=30), F("output_saturated", "warning"),
                           F("variance_grows", "warning"))
    assert codes[0] == "variance_grows" and set(causes.values()) == {"variance_grows"}


def test_every_layer_saturated_at_initialization_is_the_inputs_only_when_they_are_large():
    def saturation(*layers):
        return Finding("saturation", "error", "", layers=list(layers), first_step=0, evidence={"in_first_layer": 1.0})

    def inputs(rms):  # off-centre: the means carry 84 % of the RMS
        return Finding("input_not_centered", "warning", "", first_step=0, evidence={"rms": rms, "mean": 0.84 * rms})

    def cause(*found):
        return {f.code: f.cause for f in explain(list(found), {}, {})}["saturation"]

    assert cause(saturation("hidden1"), inputs(0.57)) == "input_not_centered"  # the first layer alone
    # every layer at initialization under inputs of a unit scale (images in [0, 1]): the weights' scale does it
    assert cause(saturation("hidden1", "hidden2", "hidden3"), inputs(0.57)) == "saturation"
    # ... under inputs of RMS 10 (an offset of 10), the inputs carry into the deeper layers
    assert cause(saturation("hidden1", "hidden2", "hidden3"), inputs(10.0)) == "input_not_centered"
