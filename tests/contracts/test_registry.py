"""The one registry helper: every registry answers an unknown name, a bad parameter or a bad count alike."""

import types

import numpy as np
import pytest
import torch

from deepscope.registry import check_kwargs, discover, integer, lookup, unknown


def test_lookup_names_the_key_the_value_and_every_valid_name():
    assert lookup({"a": 1, "b": 2}, "thing", "b") == 2
    with pytest.raises(ValueError, match=r"^thing='c' is not known; choose one of: a, b$"):
        lookup({"a": 1, "b": 2}, "thing", "c")
    with pytest.raises(ValueError, match=r"thing=\['a'\] is not known"):  # unhashable: still the same error
        lookup({"a": 1}, "thing", ["a"])
    assert str(unknown("k", 3, [1, 2])) == "k=3 is not known; choose one of: 1, 2"


@pytest.mark.parametrize("lookup_call, message", [
    (lambda: __import__("deepscope.losses", fromlist=["x"]).make_loss("hinge"), r"^loss='hinge' is not known"),
    (lambda: __import__("deepscope.optim", fromlist=["x"]).get_optimizer("lbfgs"), r"^optimizer='lbfgs' is not known"),
    (lambda: __import__("deepscope.init", fromlist=["x"]).get_scheme("kaiming"), r"^init='kaiming' is not known"),
    (lambda: __import__("deepscope.nn", fromlist=["x"]).get_activation("swish"), r"^activation='swish' is not known"),
    (lambda: __import__("deepscope.data", fromlist=["x"]).get_dataset("imagenet"), r"^dataset='imagenet' is not known"),
    (lambda: __import__("deepscope.experiments", fromlist=["x"]).get_experiment("x"), r"^experiment='x' is not known"),
])
def test_every_registry_speaks_through_it(lookup_call, message):
    with pytest.raises(ValueError, match=message + r"; choose one of: "):
        lookup_call()


def test_check_kwargs_refuses_unknown_and_missing_parameters():
    def scheme(tensor, std, mean=0.0):
        return tensor

    check_kwargs("init 'x'", {"std": 1.0}, scheme, skip=1)
    with pytest.raises(ValueError, match=r"init 'x' does not take 'sd'; its parameters are: std, mean"):
        check_kwargs("init 'x'", {"sd": 1.0}, scheme, skip=1)
    with pytest.raises(ValueError, match=r"init 'x' needs std"):
        check_kwargs("init 'x'", {}, scheme, skip=1)
    with pytest.raises(ValueError, match=r"does not take 'b'; its parameters are: a"):
        check_kwargs("f", {"b": 1}, allowed=["a"])


def test_integer_accepts_integers_of_every_kind_and_refuses_the_rest():
    assert integer("n", 3) == 3 and integer("n", np.int64(4)) == 4 and integer("n", torch.tensor(5)) == 5
    for bad in (0, -1, 2.5, "3", True, None):
        with pytest.raises(ValueError, match=rf"^n={bad!r} is not allowed; give an integer >= 1$"):
            integer("n", bad)


def test_discover_finds_every_module_that_defines_the_attribute():
    import deepscope.experiments as package

    found = discover(package, "EXPERIMENT")
    files = [p.stem for p in __import__("pathlib").Path(package.__file__).parent.glob("*.py")]
    defining = [f for f in files if "\nEXPERIMENT = " in (__import__("pathlib").Path(package.__file__).parent
                                                          / f"{f}.py").read_text()]
    assert len(found) == len(defining) >= 16
    assert discover(types.SimpleNamespace(__path__=[], __name__="none"), "EXPERIMENT") == []
