import json
from pathlib import Path

import pytest

from deepscope.config import RunSpec, SpecError, apply_overrides, load_spec, parse_value, validate_spec
from deepscope.nn.activations import ACTIVATIONS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SPEC = """\
[data]
name = "shapeset"
options = { n_valid = 100, n_test = 100 }

[model]
depth = 3
width = 20
activation = "tanh"

[init]
scheme = "normal"
std = 0.05

[optim]
name = "sgd"
lr = 0.1
momentum = 0.5

[train]
updates = 50
batch_size = 10
"""


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "tiny-run.toml"
    path.write_text(SPEC)
    return path


def test_load_reads_every_section_and_names_the_run_after_the_file(spec_file):
    spec = load_spec(spec_file)
    assert spec.name == "tiny-run"
    assert (spec.model.depth, spec.model.width, spec.model.activation) == (3, 20, "tanh")
    assert spec.init.scheme == "normal" and spec.init.params == {"std": 0.05}
    assert spec.optim.lr == 0.1 and spec.optim.params == {"momentum": 0.5}
    assert spec.data.options == {"n_valid": 100, "n_test": 100}
    assert spec.train.updates == 50 and spec.train.epochs is None and spec.train.device == "auto"


def test_overrides_are_toml_literals_else_strings(spec_file):
    spec = load_spec(spec_file, [
        "model.activation=softsign", "model.width=7", "optim.lr=1e-3", "model.norm=batch",
        "model.channels=[8, 16]", "train.patience=3", "data.options.seed=4", "name=other",
        "data.preprocess=standardize", "optim.nesterov=true",
    ])
    assert spec.model.activation == "softsign" and spec.model.width == 7 and spec.optim.lr == 0.001
    assert spec.model.norm == "batch" and spec.model.channels == [8, 16] and spec.train.patience == 3
    assert spec.data.options["seed"] == 4 and spec.name == "other"
    assert spec.data.preprocess == ["standardize"] and spec.optim.params["nesterov"] is True
    mnist = load_spec(spec_file, ["data.name=mnist", "data.options={}", "data.options.root=/data/mnist files"])
    assert mnist.data.options == {"root": "/data/mnist files"}
    cleared = load_spec(spec_file, ["train.patience=3", "train.patience=none"])
    assert cleared.train.patience is None


@pytest.mark.parametrize("raw, value", [
    ("3", 3), ("-2.5", -2.5), ("1e-3", 0.001), ("true", True), ("[1, 2]", [1, 2]), ("tanh", "tanh"),
    ('"quoted"', "quoted"), ("2024-01-01", "2024-01-01"), ("a b", "a b"),
])
def test_parse_value(raw, value):
    assert parse_value(raw) == value and type(parse_value(raw)) is type(value)


def test_round_trip_through_a_json_dict(spec_file):
    spec = load_spec(spec_file, ["schedule.name=step", "schedule.step_size=10"])
    stored = json.loads(json.dumps(spec.to_dict()))
    assert RunSpec.model_validate(stored) == spec
    assert stored["init"] == {"scheme": "normal", "std": 0.05}
    assert stored["schedule"] == {"name": "step", "step_size": 10}


def test_bad_toml_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[model]\ndepth = 5\nwidth = = 3\n')
    with pytest.raises(SpecError, match=r"broken\.toml: invalid TOML: .*line 3"):
        load_spec(path)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="nope.toml: cannot read the spec file"):
        load_spec(tmp_path / "nope.toml")


def test_unknown_registry_name_lists_the_allowed_ones(spec_file):
    with pytest.raises(SpecError) as err:
        load_spec(spec_file, ["model.activation=tanhh"])
    message = str(err.value)
    assert "model.activation='tanhh' is not known; choose one of: " in message
    assert all(name in message for name in ACTIVATIONS)


@pytest.mark.parametrize("override, expected", [
    ("optim.name=adamm", "optim.name='adamm' is not known; choose one of: sgd, momentum"),
    ("init.scheme=xavier", "init.scheme='xavier' is not known; choose one of: zeros"),
    ("schedule.name=linear", "schedule.name='linear' is not known; choose one of: constant"),
    ("train.loss=hinge", "train.loss='hinge' is not known; choose one of: cross_entropy, nll, quadratic, "
     "bce_with_logits"),
    ("data.name=imagenet", "data.name='imagenet' is not known; choose one of: "),
    ("data.options.colour=1", "unknown key data.options.colour for dataset 'shapeset'; valid keys of data.options: "),
    ("data.augment=blur", "data.augment=['blur']: augmentation='blur' is not known; choose one of: hflip"),
    ("data.preprocess=[\"whiten\"]", "data.preprocess='whiten' is not known; choose one of: "),
    ("model.builder=resnet", "model.builder='resnet': Input should be 'mlp' or 'convnet'"),
    ("train.batch_size=0", "train.batch_size=0: Input should be greater than or equal to 1"),
    ("model.dropout=1.5", "model.dropout=1.5: Input should be less than 1"),
    ("train.device=tpu", "train.device='tpu': Input should be 'auto', 'cpu' or 'cuda'"),
    ("model.depth=deep", "model.depth='deep': Input should be a valid integer"),
    ("train.updates=none", "give exactly one of train.updates or train.epochs (got neither)"),
    ("init.std=abc", "init.std='abc' is not accepted by init scheme 'normal' (TypeError"),
    ("init.std=-1", "init.std=-1 is not accepted by init scheme 'normal'"),
    ("optim.lr=inf", "optim.lr=inf: Input should be a finite number"),
    ("optim.momentum=-1", "optim.momentum=-1 is not accepted by optimizer 'sgd'"),
    ("optim.momentum=nan", "optim.momentum=nan is not a finite number"),
    ("model.activation_kwargs={alpha=\"x\"}", "model.activation_kwargs.alpha='x' is not accepted by activation"),
    ("name=a/b", "contains '/'; a run name has no path separator"),
    ("name=" + "x" * 101, "String should have at most 100 characters"),
])
def test_bad_values_name_key_value_and_what_is_allowed(spec_file, override, expected):
    if override.startswith("model.activation_kwargs"):
        override = ["model.activation=elu", override]
    with pytest.raises(SpecError) as err:
        load_spec(spec_file, override if isinstance(override, list) else [override])
    assert expected in str(err.value)
    assert str(err.value).startswith(str(spec_file))


@pytest.mark.parametrize("override, expected", [
    ("model.widht=3", "unknown key model.widht; valid keys of [model]: builder, depth, width"),
    ("train.update=3", "unknown key train.update; valid keys of [train]: updates, epochs"),
    ("init.gain=2", "unknown key init.gain for init scheme 'normal'; valid keys of [init]: scheme, std, mean"),
    ("optim.momentun=0.9", "unknown key optim.momentun for optimizer 'sgd'; valid keys of [optim]: name, lr, "),
    ("schedule.gamma=0.5", "unknown key schedule.gamma for schedule 'constant'; valid keys of [schedule]: name"),
    ("trian.updates=3", "unknown section or key 'trian'; valid ones: name, data, model, init, optim, schedule, "),
])
def test_unknown_keys_list_the_valid_keys_of_their_section(spec_file, override, expected):
    with pytest.raises(SpecError) as err:
        load_spec(spec_file, [override])
    assert expected in str(err.value)


def test_missing_required_parameters(spec_file):
    with pytest.raises(SpecError, match=r"schedule 'step' needs schedule.step_size"):
        load_spec(spec_file, ["schedule.name=step"])
    with pytest.raises(SpecError, match=r"init scheme 'uniform' needs init.bound"):
        load_spec(spec_file, ["init.scheme=uniform", "init.std=none"])


def test_malformed_set_values():
    with pytest.raises(SpecError, match=r"--set 'model.width': expected key=value"):
        apply_overrides({}, ["model.width"])
    with pytest.raises(SpecError, match=r"model.depth is a value, not a section"):
        apply_overrides({"model": {"depth": 3}}, ["model.depth.x=1"])


def test_overrides_do_not_touch_the_input():
    data = {"model": {"depth": 3}}
    assert apply_overrides(data, ["model.depth=4"]) == {"model": {"depth": 4}}
    assert data == {"model": {"depth": 3}}


def test_a_spec_needs_a_training_length():
    with pytest.raises(SpecError, match=r"missing train \(with train.updates or train.epochs\)"):
        validate_spec({})
    with pytest.raises(SpecError, match="got neither"):
        validate_spec({"train": {"batch_size": 3}})


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_examples_are_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem


def test_the_later_of_updates_and_epochs_wins(spec_file):
    """As --updates replaces the length of a spec, so does --set train.updates / train.epochs (the last one given)."""
    epochs = load_spec(spec_file, ["train.epochs=3"])
    assert (epochs.train.updates, epochs.train.epochs) == (None, 3)
    back = load_spec(spec_file, ["train.epochs=3", "train.updates=50"])
    assert (back.train.updates, back.train.epochs) == (50, None)


@pytest.mark.parametrize("override, key", [
    (["schedule.name=step", "schedule.step_size=0"], "schedule.step_size=0"),
    (["schedule.name=exponential", "schedule.gamma=abc"], "schedule.gamma='abc'"),
    (["schedule.name=warmup_cosine", "schedule.warmup_updates=500"], "schedule.warmup_updates=500"),
    (["init.std=none", "init.scheme=lsuv", "init.tol=-1"], "init.tol=-1"),
    (["init.std=none", "init.scheme=constant", "init.value=1e400"], "init.value=inf"),
    (["optim.momentum=none", "optim.name=adam", "optim.betas=[2, 0.9]"], "optim.betas=[2, 0.9]"),
    (["data.augment=rotate", "data.augment_options.degrees=abc"], "data.augment_options.degrees='abc'"),
])
def test_every_registry_parameter_is_tried_before_a_run(spec_file, override, key):
    """Values of the right key but a wrong type or range fail at validation, naming the key (not at update 1)."""
    with pytest.raises(SpecError) as err:
        load_spec(spec_file, override)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_a_spec_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("name = 'caf\xe9'\n[train]\nupdates = 5\n".encode("latin-1"))
    with pytest.raises(SpecError, match=f"{path}: the spec file is not UTF-8"):
        load_spec(path)
