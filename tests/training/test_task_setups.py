"""Set-ups beyond the examples, on data the tests make: several regression targets, multi-label, token ids fed to
an embedding with padding -- their metrics against a hand computation -- and the data faults that used to end as a
torch traceback, a "diverged" run with learning-rate advice, or a silent 0: each named before a run is stored."""

import math
import struct

import pytest
import torch
from torch import nn

from deepscope import train
from deepscope.config import SpecError
from deepscope.data import Dataset
from deepscope.data.preprocess import Preprocessor
from deepscope.diagnosis import diagnose_input
from deepscope.metrics import Task, batch_sums, r2, reduce_sums
from deepscope.store import Store


def _spec(loss: str, updates: int = 40, **train) -> dict:
    return {"model": {"depth": 1, "width": 16, "activation": "tanh"}, "optim": {"name": "adam", "lr": 0.01},
            "train": {"updates": updates, "batch_size": 16, "eval_every": 20, "device": "cpu", "loss": loss,
                      **train}}


def _features(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 1, 5, generator=torch.Generator().manual_seed(seed))


def _dataset(make_y, outputs: int, n: int = 96) -> Dataset:
    splits = [(x, make_y(x.reshape(len(x), -1))) for x in (_features(n, 0), _features(40, 1), _features(40, 2))]
    return Dataset("mine", (1, 1, 5), outputs, [str(k) for k in range(max(outputs, 1))], *splits)


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_three_regression_targets_record_r2_averaged_over_the_outputs():
    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.5], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    data = _dataset(lambda x: x @ w * torch.tensor([1.0, 10.0, 0.1]), outputs=3)  # targets on three scales
    result = train(_spec("huber", loss_options={"delta": 0.5}), dataset=data, quiet=True)
    z, y = _outputs(result.model, data.valid[0]).double(), data.valid[1].double()
    per_output = [1 - ((y[:, k] - z[:, k]) ** 2).sum() / ((y[:, k] - y[:, k].mean()) ** 2).sum() for k in range(3)]
    assert result.task.kind == "regression"
    assert result.metrics["valid/r2"] == pytest.approx(float(sum(per_output) / 3), abs=1e-5)
    assert result.metrics["valid/rmse"] == pytest.approx(float(((y - z) ** 2).mean().sqrt()), rel=1e-5)


def test_multilabel_error_and_exact_match_against_a_count():
    data = _dataset(lambda x: torch.stack([x[:, 0] > 0, x[:, 1] > 0.5, x[:, 2] + x[:, 3] > 0, x[:, 4] > 1], 1).float(),
                    outputs=4)
    result = train(_spec("bce_with_logits"), dataset=data, quiet=True)
    right = (_outputs(result.model, data.valid[0]) > 0) == (data.valid[1] > 0.5)
    assert result.task.kind == "multilabel"
    assert result.metrics["valid/error"] == pytest.approx(1 - right.float().mean().item(), abs=1e-6)
    assert result.metrics["valid/exact_match"] == pytest.approx(right.all(1).float().mean().item(), abs=1e-6)


class _Tagger(nn.Module):
    """Token ids (N, T) int64 -> scores (N, T, V) through an embedding, which refuses float indices."""

    def __init__(self, vocabulary: int = 6):
        super().__init__()
        self.embed, self.act, self.out = nn.Embedding(vocabulary, 8), nn.Tanh(), nn.Linear(8, vocabulary)

    def forward(self, x):
        return self.out(self.act(self.embed(x)))


def _tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 6, (n, 5), generator=torch.Generator().manual_seed(seed))
    y = (x + 1) % 6
    y[:, 3:] = -100  # the last two positions are padding
    return x, y


def test_token_ids_reach_an_embedding_as_integers_and_the_error_skips_padding():
    data = Dataset("tags", (1, 1, 5), 6, list("abcdef"), _tokens(96, 0), _tokens(40, 1), None)
    result = train(_spec("cross_entropy", updates=60), dataset=data, model=_Tagger(), quiet=True)
    x, y = data.valid
    keep = y != -100
    wrong = (_outputs(result.model, x).argmax(-1) != y) & keep
    assert result.status == "finished" and result.task.kind == "tokens"
    assert result.metrics["valid/error"] == pytest.approx(wrong.sum().item() / keep.sum().item(), abs=1e-6)
    assert Preprocessor("none").fit(x)(x).dtype == torch.int64  # no preprocessing: ids as they are
    assert Preprocessor("standardize").fit(x)(x).is_floating_point()
    assert diagnose_input(x) == []  # ids are not features to centre


def test_uint8_images_train_the_specs_network_as_floats():
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g) for n in (64, 32)]
    splits = [(x, (x[:, 0, 0, 0] > 127).long()) for x in images]
    result = train(_spec("cross_entropy"), dataset=Dataset("bytes", (1, 4, 4), 2, ["dark", "light"], *splits, None),
                   quiet=True)
    x, y = splits[1]
    wrong = (_outputs(result.model, x.float()).argmax(1) != y).float().mean().item()
    assert result.status == "finished" and result.metrics["valid/error"] == pytest.approx(wrong, abs=1e-6)
    augmented = {"data": {"augment": ["hflip"]}, **_spec("cross_entropy")}  # kornia takes floats: cast first
    assert train(augmented, dataset=Dataset("bytes", (1, 4, 4), 2, ["dark", "light"], *splits, None),
                 quiet=True).status == "finished"


def test_the_specs_network_with_too_few_outputs_is_named_before_a_run(tmp_path):
    data = _dataset(lambda x: x[:, :3].clone(), outputs=1)  # three targets, one output
    for splits in ((data.train, data.valid, data.test), (data.train, None, None)):  # no eval set: train
        with pytest.raises(SpecError, match=r"model.builder='mlp': the model returns shape \(2, 1\).*needs \(2, 3\)"
                                            r".*num_classes=1"):
            train(_spec("mse"), dataset=Dataset("mine", (1, 1, 5), 1, ["y"], *splits), store=tmp_path, quiet=True)
    tokens = Dataset("tags", (1, 1, 5), 6, list("abcdef"), _tokens(96, 0), _tokens(40, 1), None)
    with pytest.raises(SpecError, match=r"data 'tags': the inputs are int64; the spec's network "
                                        r"\(model.builder='mlp'\) takes floats"):
        train(_spec("cross_entropy"), dataset=tokens, store=tmp_path, quiet=True)
    floats = Dataset("tags", (1, 1, 5), 6, list("abcdef"), *[(x.float(), y) for x, y in (_tokens(96, 0),
                                                                                           _tokens(40, 1))], None)
    with pytest.raises(SpecError, match=r"returns shape \(2, 6\).*tokens task needs \(2, 5, 6\)"):
        train(_spec("cross_entropy"), dataset=floats, store=tmp_path, quiet=True)
    assert Store(tmp_path).runs() == []


@pytest.mark.parametrize(("where", "split", "index"), [("inputs", "train", 7), ("targets", "valid", 3)])
def test_a_nan_in_the_data_is_named_not_reported_as_a_divergence(tmp_path, where, split, index):
    data = _dataset(lambda x: x[:, 0] * 2, outputs=1)
    pair = getattr(data, split)
    (pair[0][index, 0, 0, 2] if where == "inputs" else pair[1][index:index + 1]).fill_(math.nan)
    with pytest.raises(ValueError, match=rf"data 'mine', {split} split: the {where} of 1 example\(s\) hold NaN or "
                                         rf"infinite values \(the first is example {index}\)"):
        train(_spec("mse"), dataset=data, store=tmp_path, quiet=True)
    assert Store(tmp_path).runs() == []
    if split == "train":  # train.guard skips the batches that hold them instead, one event each
        result = train(_spec("mse", guard=True), dataset=data, quiet=True)
        assert result.status == "finished" and {e.kind for e in result.guard.events} == {"nonfinite"}


def test_nan_targets_are_left_to_a_loss_of_your_own_that_masks_them():
    data = _dataset(lambda x: x[:, 0] * 2, outputs=1)
    data.train[1][::5] = math.nan

    def masked_mse(out, y):
        keep = ~y.isnan()
        return ((out.reshape(y.shape) - y.nan_to_num()) ** 2 * keep).sum() / keep.sum().clamp_min(1)

    assert train(_spec("mse"), dataset=data, loss_fn=masked_mse, quiet=True).status == "finished"


def test_empty_mismatched_and_all_padding_data_are_named():
    x, y = _features(30, 0), torch.zeros(30)
    with pytest.raises(ValueError, match=r"train split: the training set is empty \(0 examples\)"):
        train(_spec("mse"), dataset=Dataset("mine", (1, 1, 5), 1, ["y"], (x[:0], y[:0]), (x, y), None), quiet=True)
    with pytest.raises(ValueError, match=r"valid split: the inputs have shape \(30, 1, 1, 5\) and the targets "
                                         r"\(20,\); expected one target per example"):
        train(_spec("mse"), dataset=Dataset("mine", (1, 1, 5), 1, ["y"], (x, y), (x, y[:20]), None), quiet=True)
    ids, pad = torch.randint(0, 6, (30, 5)), torch.full((30, 5), -100)
    with pytest.raises(ValueError, match=r"every target position is the padding label "
                                         r"train.loss_options.ignore_index=-100"):
        train(_spec("cross_entropy"), dataset=Dataset("tags", (1, 1, 5), 6, list("abcdef"), (ids, pad), None, None),
              model=_Tagger(), quiet=True)


def test_r2_of_a_nan_is_nan_not_zero():
    y, z = torch.tensor([1.0, 2.0, math.nan, 4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    task = Task("regression")
    assert math.isnan(r2(z, y)) and math.isnan(reduce_sums(task, batch_sums(task, z, y))["r2"])
    constant = torch.ones(3)  # targets that do not vary: 1 if predicted exactly, else 0, NaN stays NaN
    assert [float(r2(torch.tensor(v), constant)) for v in ([1.0, 1, 1], [1.0, 2, 1])] == [1.0, 0.0]
    assert math.isnan(r2(torch.tensor([1.0, math.nan, 1]), constant))


def test_a_bad_dataset_option_is_named_as_its_spec_key_and_empty_idx_files_are_named(tmp_path):
    spec = {"data": {"name": "friedman", "options": {"n_valid": -5}}, **_spec("mse")}
    with pytest.raises(ValueError, match=r"^data.options.n_valid=-5 is not allowed; give an integer >= 0"):
        train(spec, quiet=True)
    for name, shape in (("train-images-idx3-ubyte", (0, 28, 28)), ("train-labels-idx1-ubyte", (0,)),
                        ("t10k-images-idx3-ubyte", (0, 28, 28)), ("t10k-labels-idx1-ubyte", (0,))):
        header = struct.pack(">I", 0x0800 | len(shape)) + b"".join(struct.pack(">I", n) for n in shape)
        (tmp_path / name).write_bytes(header)
    spec = {"data": {"name": "mnist", "options": {"root": str(tmp_path)}}, **_spec("cross_entropy")}
    with pytest.raises(ValueError, match=r"mnist: the training files hold 0 example\(s\); at least 2 are needed"):
        train(spec, quiet=True)


def test_wrong_arguments_to_train_are_named(tmp_path):
    data = _dataset(lambda x: x[:, 0] * 2, outputs=1)
    x, y = data.train
    with pytest.raises(TypeError, match=r"^dataset=tuple is not allowed; give a deepscope.data.Dataset\("):
        train(_spec("mse"), dataset=(x, y), quiet=True)
    numpy_data = Dataset("mine", (1, 1, 5), 1, ["y"], (x.numpy(), y.numpy()), None, None)
    with pytest.raises(ValueError, match=r"got \(ndarray, ndarray\); numpy arrays convert with torch.from_numpy"):
        train(_spec("mse"), dataset=numpy_data, quiet=True)
    with pytest.raises(ValueError, match=r"loss_fn=<lambda> fails on an output of shape \(2, 1\) and targets of shape "
                                         r"\(2,\) \(TypeError: .*\); it must take \(output, target\)"):
        train(_spec("mse"), dataset=data, loss_fn=lambda out: out.sum(), store=tmp_path, quiet=True)
    with pytest.raises(ValueError, match=r"loss_fn=<lambda> returns \(2,\) for 2 examples; it must return a scalar"):
        train(_spec("mse"), dataset=data, loss_fn=lambda out, t: (out[:, 0] - t) ** 2, store=tmp_path, quiet=True)
    assert Store(tmp_path).runs() == []
    with pytest.raises(TypeError, match=r"^store=int is not allowed; give a Store or a directory path"):
        train(_spec("mse"), dataset=data, store=3, quiet=True)
    with pytest.raises(SpecError, match=r"^spec=list is not allowed; give a RunSpec, a dict of its sections or the "
                                        r"path of a TOML spec file"):
        train([("train", {})], quiet=True)


def test_a_spec_file_path_is_a_spec(tmp_path):
    path = tmp_path / "tiny-regression.toml"
    path.write_text('[data]\nname = "friedman"\noptions = { n_valid = 20, n_test = 20 }\n[model]\ndepth = 1\n'
                    'width = 8\n[train]\nupdates = 5\nloss = "mse"\ndevice = "cpu"\n')
    result = train(path, quiet=True)
    assert result.status == "finished" and result.spec["name"] == "tiny-regression" and result.task.kind == "regression"
    assert train(str(path), quiet=True).metrics == result.metrics  # the same run from the same spec and seed


def test_the_repair_summary_of_a_regression_names_1_minus_r2():
    from types import SimpleNamespace

    from deepscope.workflows.repair import summary
    from deepscope.workflows.trials import Trial

    r2_metrics = [{"valid/r2": r2_value, "valid/rmse": 1.0, "valid/loss": 1.0} for r2_value in (0.2, 0.8)]
    best = Trial(("act_tanh",), ("saturation",), {}, status="finished", metrics=r2_metrics[1])
    best.improved = True
    baseline = SimpleNamespace(healthy=False, metrics=r2_metrics[0], status="finished", findings=[])
    result = SimpleNamespace(healthy=False, data_cause=None, skipped=[], interrupted=False, baseline=baseline,
                             best=best, trials=[best], fixed_path="run-fixed.toml")
    assert summary(result)[-1] == "repaired: act_tanh: valid 1 - R² 80.0% -> 20.0%; fixed spec: run-fixed.toml"


def test_unlabelled_examples_marked_with_ignore_index_are_left_out_of_the_class_error():
    x = _features(96, 0)
    y = (x.reshape(96, -1)[:, 0] > 0).long()
    y[::2] = -100  # half of the examples carry no label: cross_entropy ignores them, so must the error
    data = Dataset("half", (1, 1, 5), 2, ["a", "b"], (x, y), (x, y), None)
    result = train(_spec("cross_entropy"), dataset=data, quiet=True)
    keep = y != -100
    wrong = ((_outputs(result.model, x).argmax(1) != y) & keep).sum().item() / keep.sum().item()
    assert result.task.ignore_index == -100 and result.metrics["valid/error"] == pytest.approx(wrong, abs=1e-6)
    assert train(_spec("cross_entropy"), dataset=_dataset(lambda f: (f[:, 0] > 0).long(), 2),
                 quiet=True).task.ignore_index is None  # fully labelled: the one-op error of the hot path


def test_nll_needs_a_module_that_returns_log_probabilities(tmp_path):
    data = _dataset(lambda f: (f[:, 0] > 0).long(), 2)
    with pytest.raises(SpecError, match=r"^train.loss='nll' takes log-probabilities, and the spec's network "
                                        r"\(model.builder='mlp'\) returns logits: use cross_entropy"):
        train(_spec("nll"), dataset=data, store=tmp_path, quiet=True)  # was: a loss falling without bound
    assert Store(tmp_path).runs() == []
    net = nn.Sequential(nn.Flatten(), nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2), nn.LogSoftmax(1))
    result = train(_spec("nll"), dataset=data, model=net, quiet=True)
    x, y = data.valid
    logp = _outputs(result.model, x)
    assert result.metrics["valid/loss"] == pytest.approx(-logp.gather(1, y[:, None]).mean().item(), rel=1e-5)
    assert result.metrics["valid/error"] == pytest.approx((logp.argmax(1) != y).float().mean().item(), abs=1e-6)


def test_a_sigmoid_output_with_bce_loss_gets_the_chance_level_in_probabilities():
    import torch.nn.functional as F

    from deepscope import doctor
    from deepscope.losses import resolve
    from deepscope.metrics import baseline, label_entropy, task_of

    y = (torch.rand(200, 3, generator=torch.Generator().manual_seed(0)) < torch.tensor([0.2, 0.5, 0.9])).float()
    fn, _ = resolve(nn.BCELoss())  # what the trainer hands to the baseline: a wrapped torch loss
    chance = baseline(task_of(fn, y), y, fn)
    assert chance["loss"] == pytest.approx(label_entropy(y), rel=1e-5)  # -(p log p + (1-p) log(1-p)), averaged
    def mine(o, t):  # a loss of your own on probabilities: its form is unknown, so no chance-level loss, no error
        return F.binary_cross_entropy(o, t)

    unknown = baseline(task_of(mine, y), y, mine)
    assert "loss" not in unknown and unknown["error"] == pytest.approx(chance["error"])
    data = _dataset(lambda x: torch.stack([x[:, 0] > 0, x[:, 1] > 0.5], 1).float(), outputs=2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2), nn.Sigmoid())
    result = doctor(_spec("bce_with_logits"), model=net, dataset=data, updates=40, report=False, loss_fn=nn.BCELoss())
    assert result.metrics["valid/error"] < 0.5


def test_a_module_of_your_own_is_stored_without_the_specs_init_which_it_never_received(tmp_path):
    data = _dataset(lambda x: x[:, :1] * 2.0, outputs=1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    result = train({**_spec("mse", updates=4), "init": {"scheme": "lsuv"}}, model=net, dataset=data,
                   store=Store(tmp_path), quiet=True)
    stored = Store(tmp_path).get_run(result.run_id)["spec"]
    assert stored["model"] == {"class": "Sequential", "activation": "tanh"} and "init" not in stored
