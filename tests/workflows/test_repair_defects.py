"""doctor --fix: the defects found trying it as a new user (a spec without train.updates, where the fixed spec
goes), a cause in the data gets no trials, and a custom activation that overflows is swapped."""

import torch
from torch import nn

import deepscope
from deepscope.data.datasets import Dataset


def blobs(seed=0, scale=1.0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    means = 0.7 * torch.randn(4, 1, 4, 4, generator=g)

    def split(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return scale * (means[y] + torch.randn(n, 1, 4, 4, generator=g)), y

    return Dataset("blobs", (1, 4, 4), 4, list("abcd"), split(600), split(300), split(300))


SPEC = {"name": "tiny", "model": {"depth": 2, "width": 16, "activation": "tanh"}, "optim": {"lr": 2.0},
        "train": {"batch_size": 20, "seed": 0}}  # no train.updates: doctor(spec) accepts it, so must --fix


def test_fix_accepts_a_spec_without_updates_and_writes_the_fixed_spec_beside_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = deepscope.doctor(SPEC, dataset=blobs(), updates=60, monitor=50, report=False)
    result = deepscope.doctor(SPEC, dataset=blobs(), updates=60, monitor=50, report=False, fix=True,
                              store=tmp_path / "store").repair
    assert plain.status == result.baseline.status
    assert result.baseline.spec["train"]["updates"] == 60
    assert result.best is not None  # lr 2.0 is repaired
    # beside the run in the store, not in the working directory
    assert result.fixed_path.parent == result.baseline.store.run_dir(result.baseline.run_id)
    assert result.fixed_path.exists()
    assert not list(tmp_path.glob("*-fixed.toml"))


def test_a_cause_in_the_data_gets_no_trials(tmp_path):
    result = deepscope.doctor({**SPEC, "optim": {"lr": 0.05}}, dataset=blobs(scale=0.0), updates=60, monitor=50,
                              report=False, fix=True).repair
    assert result.data_cause == "input_constant"
    assert result.trials == [] and result.best is None
    from deepscope.workflows.repair_output import summary

    assert "no training change can help" in summary(result)[0]


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def test_an_overflowing_custom_activation_is_named_and_swapped(tmp_path):
    torch.manual_seed(0)
    layers = [nn.Flatten()]
    for fan_in in (16, 32, 32, 32, 32, 32):
        layers += [nn.Linear(fan_in, 32), Exp()]
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    spec = {"name": "exp", "optim": {"name": "adam", "lr": 1e-3}, "train": {"batch_size": 20, "seed": 0}}
    result = deepscope.doctor(spec, model=model, dataset=blobs(), updates=150, monitor=50, report=False, fix=True,
                              store=tmp_path).repair
    first = next(f for f in result.baseline.findings if f.severity == "error")
    assert first.code == "forward_overflow" and first.cause == "forward_overflow"
    lr = [f for f in result.baseline.findings if f.code == "lr_too_high"]
    assert all(f.cause == "forward_overflow" for f in lr)
    assert result.best is not None and result.best.fixes[0].startswith("swap_activation")
    assert not any(isinstance(m, Exp) for m in result.model.modules())
