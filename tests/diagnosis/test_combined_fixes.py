"""The combined fixes of deepscope.diagnosis.fixes: each the same as its parts applied one after the other."""

import pytest
from torch import nn

from deepscope.config import validate_spec
from deepscope.diagnosis.fixes import FIXES, FIXES_FOR, NotApplicable, apply_fix, apply_fixes


def spec(activation: str = "relu", scheme: str = "glorot_uniform") -> dict:
    return validate_spec({"name": "s", "model": {"depth": 30, "width": 32, "activation": activation},
                          "init": {"scheme": scheme}, "optim": {"name": "sgd", "lr": 0.05},
                          "train": {"updates": 100}}).to_dict()


def test_prelu_lsuv_is_prelu_then_lsuv_on_a_spec():
    before = spec()
    combined, _ = apply_fix("act_prelu_lsuv", before)
    assert combined == apply_fixes(["act_prelu", "lsuv"], before)[0]
    assert combined["model"]["activation"] == "prelu" and combined["init"] == {"scheme": "lsuv"}
    assert before["model"]["activation"] == "relu"  # the input is left as it was
    validate_spec(combined)


def test_prelu_lsuv_is_the_first_candidate_of_a_deep_plain_stack_and_names_both_groups():
    assert FIXES_FOR["depth_unnormalized"][0] == "act_prelu_lsuv"
    assert set(FIXES["act_prelu_lsuv"].group.split("+")) == {"activation", "init"}


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_prelu_lsuv_does_not_apply_without_relu(activation):
    with pytest.raises(NotApplicable, match="replaces relu"):
        apply_fix("act_prelu_lsuv", spec(activation))


def test_prelu_lsuv_on_a_module_says_lsuv_has_no_module_version():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(NotApplicable, match="lsuv"):
        apply_fix("act_prelu_lsuv", spec(), model)
    assert isinstance(model[1], nn.ReLU)  # the caller's module is untouched
