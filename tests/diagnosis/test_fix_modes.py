"""The train_mode and unfreeze fixes on your own modules (deepscope.diagnosis.fixes.modes), and eval mode named as
the cause of batch-norm statistics that never moved: each against a computation written out by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deepscope.config import validate_spec
from deepscope.data.datasets import Dataset
from deepscope.diagnosis.checks import batchnorm_state, check_batchnorm, check_modes
from deepscope.diagnosis.fixes import NotApplicable, TrainMode, apply_fix
from deepscope.diagnosis.fixes.modes import changes_modes
from deepscope.workflows.trials import run_trial

SPEC = validate_spec({"name": "s", "optim": {"name": "sgd", "lr": 0.1}, "train": {"updates": 20}}).to_dict()


class AlwaysEvalNorm(nn.BatchNorm1d):
    """A batch norm whose own train() ignores its argument: a submodule that stays in eval mode."""

    def train(self, mode: bool = True):
        return super().train(False)


class SubmoduleInEval(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.norm = nn.Linear(4, 3), AlwaysEvalNorm(3)

    def forward(self, x):
        return self.norm(self.linear(x))


class EvalInForward(nn.Module):
    """forward() puts its batch norm in eval mode on every call (a "freeze BN" left in the forward pass)."""

    def __init__(self):
        super().__init__()
        self.linear, self.norm = nn.Linear(4, 3), nn.BatchNorm1d(3)

    def forward(self, x):
        self.norm.eval()
        return self.norm(self.linear(x))


def batch_normalized(z: torch.Tensor) -> torch.Tensor:
    """Batch norm in training, by hand (Ioffe & Szegedy 2015, Alg. 1; weight 1, bias 0): the batch's statistics."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)


@pytest.mark.parametrize("make", [SubmoduleInEval, EvalInForward])
def test_train_mode_makes_a_submodule_left_in_eval_use_and_update_batch_statistics(make):
    torch.manual_seed(0)
    x = torch.randn(16, 4) * 3 + 1
    net = make()
    net.train()
    z = net.linear(x).detach()
    # the bug, as it is: running statistics (mean 0, var 1) normalize, and nothing is updated
    assert torch.allclose(net(x), z / (1 + 1e-5) ** 0.5, atol=1e-6)
    assert torch.equal(net.norm.running_mean, torch.zeros(3))
    assert changes_modes(net)
    _, fixed = apply_fix("train_mode", {}, net)
    assert isinstance(fixed, TrainMode) and fixed.module is not net  # a copy: your module is left as it was
    fixed.train()
    assert torch.allclose(fixed(x), batch_normalized(z), atol=1e-5)
    # the running mean moved by momentum 0.1 towards the batch mean (and survives a copy to a trial process)
    assert torch.allclose(fixed.module.norm.running_mean, 0.1 * z.mean(0), atol=1e-6)
    fixed.eval()  # evaluation reads the running statistics, as usual
    mean, var = fixed.module.norm.running_mean, fixed.module.norm.running_var
    assert torch.allclose(fixed(x), (z - mean) / torch.sqrt(var + 1e-5), atol=1e-5)
    again = copy.deepcopy(fixed).train()
    assert torch.allclose(again(x), batch_normalized(z), atol=1e-5)


def test_train_mode_reaches_an_eval_called_by_a_hook_and_dropout_drops_again():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5))
    net[1].register_forward_pre_hook(lambda module, args: module.eval() and None)  # a hook of yours: off
    x = torch.randn(8, 4)
    net.train()
    assert torch.equal(net(x), net[0](x))  # no unit dropped
    _, fixed = apply_fix("train_mode", {}, net)
    out, kept = fixed.train()(x), fixed.module[0](x)
    dropped = out == 0
    assert 0.3 < dropped.float().mean() < 0.7  # about half the units dropped ...
    assert torch.allclose(out[~dropped], 2 * kept[~dropped])  # ... and the others scaled by 1 / (1 - p)


def test_train_mode_does_not_apply_to_a_module_whose_mode_is_the_trainers():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.1))
    assert changes_modes(net) == []
    with pytest.raises(NotApplicable, match="its mode is the trainer's"):
        apply_fix("train_mode", {}, net)


def test_bn_stats_frozen_names_eval_mode_as_its_cause_when_the_layers_were_in_eval():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2), nn.BatchNorm1d(2))
    x = torch.randn(8, 4)
    net.eval()  # the whole model in eval mode while it "trains"
    before = batchnorm_state(net)
    modes = check_modes(net)
    net(x)
    found = check_batchnorm(before, net, 1, modes)
    assert [f.code for f in found] == ["bn_stats_frozen"] and found[0].cause == "eval_mode"
    assert found[0].layers == ["1", "3"] and "in eval mode" in found[0].message
    # momentum 0 in train mode: the statistics do not move either, and the finding is its own cause
    net.train()
    net[1].momentum = 0.0
    before, modes = batchnorm_state(net), check_modes(net)
    net(x)
    found = check_batchnorm(before, net, 1, modes)
    assert modes == [] and found[0].layers == ["1"] and found[0].cause == ""
    # one layer in eval, another frozen by momentum 0: eval mode does not explain both
    net[3].eval()
    before, modes = batchnorm_state(net), check_modes(net)
    net(x)
    found = check_batchnorm(before, net, 1, modes)
    assert found[0].layers == ["1", "3"] and found[0].cause == "" and "in eval mode" not in found[0].message
    # only the batch norms in eval mode (a frozen batch norm): named by the finding itself, the mode in its message
    net[1].momentum = 0.1
    net[1].eval()
    before, modes = batchnorm_state(net), check_modes(net)
    net(x)
    found = check_batchnorm(before, net, 1, modes)
    assert found[0].layers == ["1", "3"] and found[0].cause == "" and "in eval mode" in found[0].message


class FirstConvFrozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)
        self.conv1.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def _data() -> Dataset:
    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.randint(0, 2, (n,), generator=g)
        return torch.randn(n, 1, 6, 6, generator=g) + y.reshape(n, 1, 1, 1), y

    return Dataset("two", (1, 6, 6), 2, ["a", "b"], split(64), split(32), split(32))


def test_unfreeze_reaches_a_frozen_first_conv_and_the_trial_trains_it():
    torch.manual_seed(0)
    net = FirstConvFrozen()
    _, fixed = apply_fix("unfreeze", SPEC, net)
    assert all(p.requires_grad for p in fixed.parameters()) and not net.conv1.weight.requires_grad
    start = copy.deepcopy(fixed.state_dict())
    assert torch.equal(start["conv1.weight"], net.conv1.weight)  # unfreezing changes no value
    out = run_trial(SPEC, model=fixed, dataset=_data(), updates=5, monitor=16)
    assert out["status"] == "finished"
    moved = {k: float((fixed.state_dict()[k] - v).abs().max()) for k, v in start.items()}
    assert moved["conv1.weight"] > 0 and moved["conv1.bias"] > 0  # the layer that was frozen now learns
    # the same trial of the frozen module leaves the first conv exactly where it was (the check can fail)
    frozen = copy.deepcopy(net)
    run_trial(SPEC, model=frozen, dataset=_data(), updates=5, monitor=16)
    assert torch.equal(frozen.conv1.weight, net.conv1.weight) and not torch.equal(frozen.head.weight, net.head.weight)
    assert "not_learning" not in {f.code for f in out["findings"] if f.severity in ("error", "warning")}


def test_unfreeze_says_what_it_cannot_reach():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(NotApplicable, match=r"\.detach\(\), \.data or torch\.no_grad"):
        apply_fix("unfreeze", {}, net)


class Cut(nn.Module):
    """The first layer's output detached (or computed under no_grad) in forward: its weights never get a gradient."""

    def __init__(self, how: str):
        super().__init__()
        self.first, self.out, self.how = nn.Linear(4, 3), nn.Linear(3, 2), how
        self.aux = nn.Linear(3, 2)  # used only in training mode: not called by the check's eval-mode pass

    def forward(self, x):
        if self.how == "no_grad":
            with torch.no_grad():
                h = self.first(x)
        else:
            h = self.first(x).detach()
        return self.out(torch.tanh(h)) + (self.aux(h) if self.training else 0)


@pytest.mark.parametrize("how", ["detach", "no_grad"])
def test_not_learning_sees_parameters_forward_cuts_from_the_loss(how):
    from deepscope.diagnosis.checks import check_training

    net = Cut(how)
    found = [f for f in check_training(net, None, torch.randn(8, 4)) if f.code == "not_learning"]
    assert len(found) == 1 and found[0].severity == "error" and found[0].layers == ["first"]
    assert found[0].evidence["parameters_cut_from_the_loss"] == 2.0  # first.weight, first.bias (not aux: not called)
    # by hand: the gradient of the loss reaches out.weight but not first.weight
    net(torch.randn(8, 4)).sum().backward()
    assert net.first.weight.grad is None and net.out.weight.grad is not None
    with pytest.raises(NotApplicable, match="torch.no_grad there must be changed in your code"):
        apply_fix("unfreeze", {}, net)
    healthy = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    assert [f for f in check_training(healthy, None, torch.randn(8, 4)) if f.code == "not_learning"] == []
