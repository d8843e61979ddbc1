"""The verification rule of a repair on hand-made before/after numbers (no training): a baseline that does not
train needs a gain and an error 10 points below chance; a baseline that trains already needs its finding gone and
an error at most NOISE_MARGIN above its own -- and the verdict and the summary say so."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deepscope.diagnosis.findings import Finding
from deepscope.workflows.repair import ERROR_MARGIN, NOISE_MARGIN, TRAINS_MARGIN, judge, summary, trains
from deepscope.workflows.trials import Trial

EVAL = Finding("eval_mode", "error", "")
FROZEN = Finding("bn_stats_frozen", "error", "")


def m(err, loss=1.0):
    return {"valid/error": err, "valid/loss": loss}


# chance error 0.75 (4 balanced classes): a network trains from an error of 0.65
@pytest.mark.parametrize("before, after, verified", [
    (0.33, 0.33, True),  # the baseline trained; the fix removes the finding and keeps the error
    (0.33, 0.347, True),  # 1.7 points worse: within the 3-point noise margin
    (0.33, 0.33 + NOISE_MARGIN - 1e-9, True),
    (0.33, 0.33 + NOISE_MARGIN + 1e-3, False),  # beyond the noise: the fix costs error
    (0.33, 0.20, True),  # a gain is welcome, of course
    (0.64, 0.66, False),  # within the noise of a baseline that trained, but no longer 10 points below chance
    (0.70, 0.70, False),  # the baseline did not train: no gain, not a repair
    (0.70, 0.66, False),  # a gain, but not 10 points below chance
    (0.70, 0.60, True),  # a gain, and it trains
])
def test_the_rule_on_hand_made_numbers(before, after, verified):
    # the rule written out independently of the implementation
    chance, trained = 0.75, before <= 0.75 - TRAINS_MARGIN
    gain = after <= before - ERROR_MARGIN
    expected = after <= chance - TRAINS_MARGIN and (after <= before + NOISE_MARGIN if trained else gain)
    assert expected is verified
    got = judge(m(before), m(after), ["eval_mode"], [EVAL], [], chance=chance)
    assert got[1] is True and got[2] is verified
    assert trains(after, chance, before) is (after <= chance - TRAINS_MARGIN and (
        after <= before + NOISE_MARGIN if trained else after < before))


def test_the_finding_must_be_gone_even_when_the_baseline_trained():
    still = Finding("eval_mode", "error", "", recovers=False)
    improved, cleared, verified, verdict = judge(m(0.33), m(0.33), ["eval_mode"], [EVAL], [still], chance=0.75)
    assert (cleared, verified) == (False, False) and "eval_mode remains" in verdict


def test_the_verdict_says_the_network_already_trained_and_names_what_the_fix_removes():
    # tried for one finding, the fix removes both the baseline had (and not the plateau that remains)
    targets = ["bn_stats_frozen"]
    plateau = Finding("plateau", "warning", "")
    improved, _, verified, verdict = judge(m(0.330), m(0.347), targets, [FROZEN, EVAL, plateau], [plateau],
                                           chance=0.75)
    assert verified and not improved
    assert verdict.startswith("verified: the network already trained; the fix removes bn_stats_frozen, eval_mode (")
    assert "33.0% -> 34.7%" in verdict
    # a gain on a baseline that trained: the plain verdict
    assert judge(m(0.33), m(0.25, 0.5), targets, [FROZEN, EVAL], [], chance=0.75)[3] == "verified"
    # worse beyond the noise: the reason names the baseline
    verdict = judge(m(0.33), m(0.40), targets, [FROZEN, EVAL], [], chance=0.75)[3]
    assert "does not train as well as the baseline" in verdict


def test_the_summary_says_plainly_when_the_fix_did_not_change_the_error():
    best = Trial(("train_mode",), ("eval_mode",), {}, status="finished", metrics=m(0.347))
    best.improved, best.cleared, best.verified = judge(m(0.33), best.metrics, best.targets, [EVAL], [],
                                                       chance=0.75)[:3]
    baseline = SimpleNamespace(healthy=False, metrics=m(0.33), status="finished", findings=[EVAL])
    result = SimpleNamespace(healthy=False, data_cause=None, skipped=[], interrupted=False, baseline=baseline,
                             best=best, trials=[best], fixed_path="run-fixed.toml")
    line = summary(result)[-1]
    assert line.startswith("repaired: train_mode: the network already trained (valid error 33.0% -> 34.7%")
    assert "the fix removes eval_mode" in line
    best.improved, best.metrics = True, m(0.25)
    assert summary(result)[-1] == "repaired: train_mode: valid error 33.0% -> 25.0%; fixed spec: run-fixed.toml"
