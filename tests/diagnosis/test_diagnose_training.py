"""The rules on training curves and update ratios, and the checks of the model while it trains."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from deepscope.data import Dataset
from deepscope.diagnosis import checks, diagnose
from deepscope.diagnosis.checks import batchnorm_state, check_batchnorm, check_modes, check_training
from deepscope.diagnosis.rules import training as rt
from deepscope.models import mlp


def codes(findings):
    return {f.code for f in findings}


def only(findings, code):
    found = [f for f in findings if f.code == code]
    assert len(found) == 1, findings
    return found[0]


def ratios(per_layer, steps=(0, 10, 20)):
    return [dict(step=s, source="train", layer=layer, quantity="update_ratio", stat="ratio", value=v)
            for s in steps for layer, v in per_layer.items()]


def curve(name, values, start=1):
    return [dict(step=start + i, name=name, value=v) for i, v in enumerate(values)]


def noisy(n, level=1.0, seed=0):
    """A flat noisy loss: level x (1 +- 30%), as mini-batch losses are."""
    g = torch.Generator().manual_seed(seed)
    return (level * (1 + 0.3 * (2 * torch.rand(n, generator=g) - 1))).tolist()


# --- layers that do not learn ---------------------------------------------------------------------


def test_layers_whose_weights_do_not_move_are_named():
    f = only(diagnose(ratios({"hidden1": 0.0, "hidden2": 0.0, "output": 1e-2})), "not_learning")
    assert f.layers == ["hidden1", "hidden2"] and f.severity == "error"
    assert f.evidence["update_ratio_fastest"] == 1e-2
    # just above the relative threshold: a slow layer, not a still one
    assert not diagnose(ratios({"hidden1": 2 * rt.NOT_LEARNING_RELATIVE * 1e-2, "output": 1e-2}))
    slow = only(diagnose(ratios({"hidden1": 0.5 * rt.NOT_LEARNING_RELATIVE * 1e-2, "output": 1e-2})), "not_learning")
    assert slow.severity == "warning"


def test_not_learning_is_silent_when_a_stall_is_explained_and_says_when_nothing_moves():
    dead = [dict(step=0, source="monitor", layer="hidden1", quantity="activation", stat="dead", value=1.0)]
    assert "not_learning" not in codes(diagnose(dead + ratios({"hidden1": 0.0, "output": 1e-2})))
    assert "not_learning" not in codes(diagnose(dead + ratios({"hidden1": 0.0, "output": 0.0})))
    # nothing moves and no other rule says why (activations the probe cannot see, a detached graph)
    f = only(diagnose(ratios({"hidden1": 0.0, "output": 0.0})), "not_learning")
    assert f.severity == "error" and f.layers == ["hidden1", "output"] and f.first_step == 0


# --- spikes ---------------------------------------------------------------------------------------


def test_loss_spikes_are_transient_jumps_above_both_neighbourhoods():
    values = noisy(200)
    for i in (60, 130):
        values[i] = 10.0
    f = only(diagnose([], scalars=curve("train/loss", values)), "loss_spikes")
    # independent: the jump over the larger of the medians of the 20 losses before and after
    w = rt.SPIKE_WINDOW
    expected = max(values[i] / max(np.median(values[i - w: i]), np.median(values[i + 1: i + 1 + w]))
                   for i in (60, 130))
    assert f.evidence["spikes"] == 2 and f.first_step == 61
    assert f.evidence["worst_ratio"] == pytest.approx(expected)
    values[130] = values[129]  # one jump alone can be chance
    assert "loss_spikes" not in codes(diagnose([], scalars=curve("train/loss", values)))


def test_a_level_shift_or_a_small_absolute_jump_is_not_a_spike():
    shift = noisy(100) + noisy(100, level=5.0)  # the loss moves up and stays: the lr rules look at that
    assert "loss_spikes" not in codes(diagnose([], scalars=curve("train/loss", shift)))
    tiny = noisy(200, level=0.01)  # a well-trained net: 0.01 -> 0.1 is 10x but far below the starting level
    start = noisy(20, level=1.0)
    tiny[60] = tiny[130] = 0.1
    assert "loss_spikes" not in codes(diagnose([], scalars=curve("train/loss", start + tiny)))


def test_the_batch_losses_of_a_rare_class_are_no_spikes_but_a_jump_above_them_is():
    # a binary task with 5 % positives, batches of 16: a batch holding k positives the net misses has a loss of about
    # (k x 3 + (16 - k) x 0.02) / 16 -- many times the median batch's (k = 0), every few updates
    g = torch.Generator().manual_seed(0)
    k = (torch.rand(300, 16, generator=g) < 0.05).sum(1).tolist()
    values = [(n * 3.0 + (16 - n) * 0.02) / 16 for n in k]
    start = [1.0] * 20  # the loss at the start of training
    assert max(values) > 3 * 0.02 * 4 and "loss_spikes" not in codes(diagnose([], scalars=curve("train/loss",
                                                                                                  start + values)))
    w = rt.SPIKE_WINDOW
    for i in (100, 200):  # two jumps far above what any batch of this task gives (3 per missed positive): spikes
        around = sorted(values[i - w: i] + values[i + 1: i + 1 + w])
        center, high = math.log(np.median(around)), math.log(around[int(0.9 * 2 * w)])
        values[i] = 1.01 * max(2 * rt.SPIKE_ABOVE_HIGH * around[int(0.9 * 2 * w)],
                               math.exp(center + rt.SPIKE_Z * (high - center) / 1.2816))
    assert only(diagnose([], scalars=curve("train/loss", start + values)), "loss_spikes").evidence["spikes"] == 2


def test_gradient_norm_spikes():
    norms = noisy(200, level=2.0)
    norms[50] = norms[150] = 2.0 * 3 * rt.GRAD_SPIKE_FACTOR
    f = only(diagnose([], scalars=curve("train/grad_norm", norms)), "gradient_spikes")
    assert f.first_step == 51 and f.evidence["spikes"] == 2 and "clip" in f.advice
    norms[50] = norms[150] = 2.0 * 0.5 * rt.GRAD_SPIKE_FACTOR
    assert not diagnose([], scalars=curve("train/grad_norm", norms))


def test_one_bumpy_window_is_not_a_too_high_rate_but_a_sustained_rise_is():
    values = [1.0 - 0.05 * i for i in range(10) for _ in range(30)]  # falling, in 10 windows of 30
    bump = values[:240] + [v * 1.6 for v in values[240:270]] + values[270:]
    assert "lr_too_high" not in codes(diagnose([], scalars=curve("train/loss", bump)))
    rise = values[:210] + [v * 1.6 for v in values[210:]]
    f = only(diagnose([], scalars=curve("train/loss", rise)), "lr_too_high")
    assert f.evidence["rise"] > rt.LR_RISE


# --- overfitting and plateau ----------------------------------------------------------------------


def evals(valid, every=30):
    return [dict(step=every * (i + 1), name="valid/loss", value=v) for i, v in enumerate(valid)]


def test_overfitting_when_the_validation_loss_rises_as_the_training_loss_falls():
    train = [1.0 * 0.99 ** i for i in range(300)]
    valid = [1.0, 0.9, 0.8, 0.8, 0.85, 0.9, 1.0, 1.1, 1.2, 1.3]
    f = only(diagnose([], scalars=curve("train/loss", train) + evals(valid)), "overfitting")
    # independent: the mean training loss over the 30 updates before the best (3rd) and the last evaluation
    assert f.first_step == 90 and f.evidence["valid_loss_min"] == 0.8
    assert f.evidence["train_loss_at_min"] == pytest.approx(sum(train[60:90]) / 30)
    assert f.evidence["gap_end"] == pytest.approx(1.3 - sum(train[270:300]) / 30)
    rising = [0.5 + 0.001 * i for i in range(300)]  # train rises too: not overfitting
    assert "overfitting" not in codes(diagnose([], scalars=curve("train/loss", rising) + evals(valid)))
    noise = [0.8, 0.75, 0.8, 0.78, 0.77, 0.8, 0.76, 0.8, 0.77, 0.8 * (1 + rt.OVERFIT_RISE / 2)]
    assert "overfitting" not in codes(diagnose([], scalars=curve("train/loss", train) + evals(noise)))


def test_overfitting_judges_the_weights_a_run_restored():
    """train.restore_best logs the update whose weights the run ended with: the rise after it is info."""
    train = [1.0 * 0.99 ** i for i in range(300)]
    valid = [1.0, 0.9, 0.8, 0.8, 0.85, 0.9, 1.0, 1.1, 1.2, 1.3]  # the minimum at update 90
    rows = curve("train/loss", train) + evals(valid)
    restored = [dict(step=300, name="restored_step", value=90.0)]
    f = only(diagnose([], scalars=rows + restored), "overfitting")
    assert f.severity == "info" and f.recovers is True and "weights of update 90" in f.message
    assert f.evidence["valid_loss_restored"] == 0.8
    # weights restored from within the rise (update 210: 1.0 >= 1.1 x 0.8) are still overfitted
    late = [dict(step=300, name="restored_step", value=210.0)]
    f = only(diagnose([], scalars=rows + late), "overfitting")
    assert f.severity == "warning" and f.evidence["valid_loss_restored"] == 1.0


def test_plateau_at_the_chance_level_with_moving_weights():
    chance = math.log(4)
    flat = [chance * 1.05, chance * 1.01, chance, chance * 1.004, chance * 0.995, chance * 1.002]
    rows = ratios({"hidden1": 1e-3, "output": 2e-3})
    scalars = evals(flat, every=60) + [dict(step=0, name="valid/chance_loss", value=chance)]
    f = only(diagnose(rows, scalars=scalars), "plateau")
    assert f.evidence["chance_loss"] == chance and f.evidence["valid_loss_best_late"] == pytest.approx(chance * 0.995)
    assert "labels" in f.advice
    # small steps: the learning rate's business, not a plateau; learning below chance: no plateau
    assert "plateau" not in codes(diagnose(ratios({"hidden1": 1e-6, "output": 1e-6}), scalars=scalars))
    learned = evals([v * 0.9 for v in flat], every=60) + [dict(step=0, name="valid/chance_loss", value=chance)]
    assert "plateau" not in codes(diagnose(rows, scalars=learned))
    early = evals(flat, every=rt.PLATEAU_MIN_UPDATES // 10) + [dict(step=0, name="valid/chance_loss", value=chance)]
    assert "plateau" not in codes(diagnose(rows, scalars=early))  # too soon to tell
    quadratic = {"train": {"loss": "quadratic"}}  # doctor writes the chance level of the loss in use
    assert "plateau" in codes(diagnose(rows, scalars=scalars, spec=quadratic))
    # the loss at chance but the error well below the chance error (3 of 4 wrong): it learns, the loss lags
    errors = [dict(step=60 * (i + 1), name="valid/error", value=v)
              for i, v in enumerate([0.75, 0.7, 0.66, 0.6, 0.6, 0.6])]
    chance_error = [dict(step=0, name="valid/chance_error", value=0.75)]
    assert "plateau" not in codes(diagnose(rows, scalars=scalars + errors + chance_error))
    at_chance = [dict(step=r["step"], name="valid/error", value=0.75 * (1 - rt.PLATEAU_ERROR_MARGIN / 2))
                 for r in errors]
    assert "plateau" in codes(diagnose(rows, scalars=scalars + at_chance + chance_error))


def test_a_run_the_trainer_stopped_as_diverged_is_a_learning_rate_finding():
    finite = curve("train/loss", [2.0, 40.0, 900.0, 5e4])  # finite: no NaN/Inf, too few points for the rise rule
    assert "lr_too_high" not in codes(diagnose([], scalars=finite))
    stopped = finite + [dict(step=4, name="train/diverged", value=1.0)]
    f = only(diagnose([], scalars=stopped), "lr_too_high")
    assert f.first_step == 4 and f.severity == "error" and "Lower the learning rate" in f.advice


def test_plateau_of_a_regression_reads_the_rmse_against_the_targets_spread():
    var = 0.8  # mse of predicting the mean: the targets' variance
    flat = [var * 1.05, var * 1.01, var, var * 1.004, var * 0.995, var * 1.002]
    rows = ratios({"hidden1": 1e-3, "output": 2e-3})
    chance = [dict(step=0, name="valid/chance_loss", value=var), dict(step=0, name="valid/chance_rmse",
                                                                      value=math.sqrt(var))]
    stuck = [dict(step=60 * (i + 1), name="valid/rmse", value=math.sqrt(v)) for i, v in enumerate(flat)]
    f = only(diagnose(rows, scalars=evals(flat, every=60) + chance + stuck, spec={"train": {"loss": "mse"}}),
             "plateau")
    assert f.evidence["chance_loss"] == var
    # an RMSE clearly below the targets' spread (R^2 about 0.3): it learns, the loss lags
    learning = [dict(step=r["step"], name="valid/rmse", value=0.83 * math.sqrt(var)) for r in stuck]
    assert "plateau" not in codes(diagnose(rows, scalars=evals(flat, every=60) + chance + learning))


# --- checks of the model as it trains ---------------------------------------------------------------

X = torch.randn(80, 10, generator=torch.Generator().manual_seed(0))


def small(**kwargs):
    torch.manual_seed(0)
    return mlp(10, 3, 2, 16, "tanh", **kwargs)


def test_frozen_and_missing_parameters_are_named():
    model = small()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("output"))
    f = only(check_training(model, torch.optim.SGD(model.parameters(), lr=0.1), X), "not_learning")
    assert f.layers == ["hidden1.linear", "hidden2.linear"] and f.evidence["frozen_parameters"] == 4
    assert f.severity == "warning"  # freezing can be on purpose
    model = small()
    f = only(check_training(model, torch.optim.SGD(model.output.parameters(), lr=0.1)), "not_learning")
    assert f.severity == "error" and f.evidence["parameters_not_in_optimizer"] == 4
    assert check_training(small(), torch.optim.SGD(small().parameters(), lr=0.1)) != []  # another model's params
    model = small()
    assert check_training(model, torch.optim.SGD(model.parameters(), lr=0.1), X) == []


class PlainList(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = [nn.Linear(10, 16), nn.Linear(16, 16)]  # not registered
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.tanh(layer(x))
        return self.out(x)


def test_layers_in_a_plain_list_are_found_through_the_graph():
    model = PlainList()
    f = only(check_training(model, torch.optim.SGD(model.parameters(), lr=0.1), X), "not_learning")
    assert f.evidence["unregistered_tensors"] == 4  # two weights, two biases
    assert "(16, 10)" in f.message and "ModuleList" in f.advice


class Head(nn.Module):
    def __init__(self, last):
        super().__init__()
        self.net, self.last = small(), last

    def forward(self, x):
        return self.last(self.net(x))


@pytest.mark.parametrize("last, what", [(lambda z: torch.softmax(z, 1), "softmax probabilities"),
                                        (torch.sigmoid, "sigmoid outputs"), (torch.tanh, "tanh outputs")])
def test_probabilities_or_bounded_outputs_fed_to_cross_entropy(last, what):
    model = Head(last)
    f = only(check_training(model, None, X), "output_loss_mismatch")
    assert what in f.message and "logits" in f.advice
    with torch.no_grad():  # independent: the output's range on the checked examples
        out = model(X[: checks.OUTPUT_CHECK_EXAMPLES])
    assert f.evidence["output_min"] == pytest.approx(float(out.min())) and f.evidence["output_max"] == pytest.approx(
        float(out.max()))


def test_logits_and_log_probabilities_are_fine():
    assert check_training(small(), None, X) == []
    assert check_training(Head(lambda z: torch.log_softmax(z, 1)), None, X) == []


def test_saturated_output_at_initialization():
    model = small()
    with torch.no_grad():
        model.output.weight.mul_(300)
        logits = model(X[: checks.OUTPUT_CHECK_EXAMPLES]).topk(2, 1).values
    expected = float(((logits[:, 0] - logits[:, 1]) > checks.OUTPUT_LOGIT_GAP).double().mean())
    assert expected >= checks.OUTPUT_SATURATED_FRACTION  # the set-up is what the test means
    f = only(check_training(model, None, X), "output_saturated")
    assert f.evidence["saturated_fraction"] == pytest.approx(expected)


def test_the_output_check_leaves_modes_and_statistics_alone():
    model = small(norm="batch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_training(model, None, X)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_eval_mode_during_training():
    model = small(norm="batch", dropout=0.1)
    assert check_modes(model) == []
    model.hidden2.eval()
    f = only(check_modes(model), "eval_mode")
    assert set(f.layers) == {"hidden2.norm", "hidden2.dropout"}
    model.eval()
    assert "model.training is False" in only(check_modes(model), "eval_mode").message


@pytest.mark.parametrize("momentum, frozen", [(0.0, True), (0.1, False)])
def test_batchnorm_running_statistics_that_never_move(momentum, frozen):
    model = small(norm="batch")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.momentum = momentum
    before = batchnorm_state(model)
    model(X)  # one training-mode forward pass updates the running statistics (unless momentum is 0)
    found = check_batchnorm(before, model, updates=1)
    assert (codes(found) == {"bn_stats_frozen"}) == frozen
    if frozen:
        assert found[0].layers == ["hidden1.norm", "hidden2.norm"]


# --- doctor on user modules -----------------------------------------------------------------------


def tiny_data(n=400):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 200, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3].argmax(1))
    return Dataset("tiny", (1, 4, 4), 3, ["a", "b", "c"], (x[:n], y[:n]), (x[n:n + 100], y[n:n + 100]),
                   (x[n + 100:], y[n + 100:]))


SPEC = {"name": "t", "optim": {"name": "sgd", "lr": 0.1}, "train": {"updates": 60, "device": "cpu", "batch_size": 10}}


def test_doctor_names_frozen_layers_and_dead_units():
    from deepscope.workflows.doctor import doctor

    torch.manual_seed(0)
    model = mlp((1, 4, 4), 3, 3, 16, "relu", init="he_normal")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("output"))
    result = doctor(SPEC, model=model, dataset=tiny_data(), updates=60, monitor=100, report=False)
    f = only(result.findings, "not_learning")
    assert f.layers == ["hidden1.linear", "hidden2.linear", "hidden3.linear"]
    assert result.timings["findings"] >= 0 and result.grad_norms and len(result.grad_norms) == 60

    model = mlp((1, 4, 4), 3, 3, 16, "relu", init="he_normal")
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, -3.0)  # every unit dead: the crash of issue 13
    with torch.no_grad():  # independent: no example gets through hidden2 (activation std 0: the old crash)
        assert bool((model.hidden2(model.hidden1(tiny_data().valid[0].flatten(1))) == 0).all())
    result = doctor(SPEC, model=model, dataset=tiny_data(), updates=60, monitor=100, report=False)
    f = only(result.findings, "dead_units")
    assert f.severity == "error" and f.evidence["dead_fraction"] == 1.0 and "Leaky ReLU" in f.advice
    assert "diagnosis_error" not in codes(result.findings)


def test_doctor_names_softmax_into_cross_entropy():
    from deepscope.workflows.doctor import doctor

    model = Head(lambda z: torch.softmax(z, 1))
    model.net = mlp((1, 4, 4), 3, 2, 16, "tanh")
    result = doctor(SPEC, model=model, dataset=tiny_data(), updates=40, monitor=100, report=False)
    f = only(result.findings, "output_loss_mismatch")
    assert f.evidence["rows_are_probabilities"] == 1.0 and not result.healthy


def test_doctor_command_prints_findings_before_the_report_and_can_skip_it(tmp_path):
    from typer.testing import CliRunner

    from deepscope.cli import app

    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\n[data]\noptions = { n_valid = 100, n_test = 100, size = 16 }\n'
                    '[model]\ndepth = 2\nwidth = 16\n[init]\nscheme = "zeros"\n[train]\nupdates = 20\n')
    store = tmp_path / "runs"
    out = CliRunner().invoke(app, ["doctor", str(spec), "--updates", "20", "--monitor", "100", "--store", str(store),
                                   "-q", "-o", str(tmp_path / "r.html")]).output
    assert out.index("symmetry") < out.index("report:") and (tmp_path / "r.html").exists()
    skipped = CliRunner().invoke(app, ["doctor", str(spec), "--updates", "20", "--monitor", "100", "--store",
                                       str(store), "-q", "--no-report"])
    assert skipped.exit_code == 1 and "symmetry" in skipped.output and "report:" not in skipped.output
    assert not (store / "s-2" / "report.html").exists()


def test_doctor_sees_a_model_left_in_eval_mode_after_an_evaluation():
    from deepscope.training.callbacks import Callback
    from deepscope.workflows.run import _Checks

    class Forgets(Callback):  # a user's evaluation callback that never calls model.train() again
        def on_eval(self, ctx):
            ctx.model.eval()

    torch.manual_seed(0)
    from deepscope.training.loop import train

    checks_ = _Checks(monitor=50)
    spec = {**SPEC, "train": {**SPEC["train"], "updates": 30, "eval_every": 10}}
    train(spec, model=mlp((1, 4, 4), 3, 2, 16, "relu", init="he_normal", dropout=0.1), dataset=tiny_data(),
          callbacks=[checks_, Forgets()], quiet=True)
    f = only(checks_.findings(), "eval_mode")
    assert f.first_step == 11 and "model.training is False" in f.message


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(10, 3)

    def forward(self, x):
        return {"logits": self.lin(x)}


def test_checks_accept_odd_models():
    """Lazy batch norm not yet initialized, NaN weights, an output that is not a tensor: no finding, no error."""
    lazy = nn.Sequential(nn.LazyLinear(8), nn.LazyBatchNorm1d(), nn.Linear(8, 3))
    assert batchnorm_state(lazy) == {}
    assert check_training(lazy, None, X) == [] and check_batchnorm({}, lazy, 3) == []
    broken = nn.Linear(10, 3)
    with torch.no_grad():
        broken.weight.fill_(math.nan)
    assert check_training(broken, None, X) == []  # non-finite statistics are the records' rules' business
    assert check_training(DictOut(), None, X) == [] and check_modes(DictOut()) == []


def test_an_early_rise_the_loss_falls_back_below_is_not_a_too_high_rate():
    # the shape of a post-LN transformer regressor under Adam: up for the first windows, then far below its start
    values = [0.5] * 3 + [0.8] * 40 + [0.8 * 0.97 ** i for i in range(157)]
    assert "lr_too_high" not in codes(diagnose([], scalars=curve("train/loss", values)))
    stays = [0.5] * 3 + [0.8] * 40 + [0.8 - 0.001 * i for i in range(157)]  # it falls, but ends above 0.5
    assert "lr_too_high" in codes(diagnose([], scalars=curve("train/loss", stays)))


def test_a_flat_noisy_loss_after_three_lucky_low_losses_is_not_a_rise():
    """Small-batch MSE: every loss 0.93 x (1 +- 0.45) and no trend, the first three low by chance."""
    g = torch.Generator().manual_seed(3)
    values = [0.5, 0.52, 0.48] + [0.93 * (1 + 0.45 * float(e)) for e in torch.randn(397, generator=g).clamp(-2, 2)]
    assert "lr_too_high" not in codes(diagnose([], scalars=curve("train/loss", values)))
    thrown = [2.3, 2.3, 2.3] + [6.0 * (1 + 0.05 * float(e)) for e in torch.randn(397, generator=g)]  # up, and stays
    assert "lr_too_high" in codes(diagnose([], scalars=curve("train/loss", thrown)))


def test_an_early_jump_within_the_batches_noise_is_not_a_blow_up_but_a_blow_up_to_a_flat_chance_level_is():
    g = torch.Generator().manual_seed(5)
    noise = [float(e) for e in torch.randn(300, generator=g).clamp(-2, 2)]
    values = [0.9 * (1 + 0.45 * e) for e in noise]  # MSE of batches of 10: +-45 %, no trend
    values[0], values[7] = 0.45, 2.1  # a lucky first batch, an unlucky one: 4.7x
    assert "lr_too_high" not in codes(diagnose([], scalars=curve("train/loss", values)))
    blown = [1.39, 19.5, 9.0, 4.0] + [1.39 * (1 + 0.01 * e) for e in noise[4:]]  # 14x, then flat at chance
    f = only(diagnose([], scalars=curve("train/loss", blown)), "lr_too_high")
    assert f.evidence["early_jump"] == pytest.approx(19.5 / 1.39)


def test_the_losses_of_batches_of_four_vary_by_factors_and_are_no_spikes():
    # MSE of 4 examples of unit variance: chi-square with 4 degrees of freedom over 4 -- the largest of 300 is 4-5x
    # the median, and above 2x the 90th percentile of its neighbours now and then
    g = torch.Generator().manual_seed(1)
    values = (torch.randn(300, 4, generator=g) ** 2).mean(1).tolist()
    w = rt.SPIKE_WINDOW
    assert any(values[i] > 3 * max(np.median(values[i - w:i]), np.median(values[i + 1:i + 1 + w]))
               for i in range(w, 300 - w))  # the old factor rule alone fires here
    assert "loss_spikes" not in codes(diagnose([], scalars=curve("train/loss", values)))
    for i in (100, 200):
        values[i] = 100.0  # an outlier batch: spikes
    assert only(diagnose([], scalars=curve("train/loss", values)), "loss_spikes").evidence["spikes"] == 2
