"""The probe on the ways models are really trained: weight tying, stochastic depth, DDP, gradient
accumulation, functional activations, frozen layers, dict/dataclass outputs, torch.compile."""

import copy
import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from deepscope.probe import Probe
from deepscope.probe.stats import MAX_UPDATE_VALUES, weight_sample


def stats(probe, **filters):
    return {(r["layer"], r["stat"]): r["value"] for r in probe.to_rows(**filters)}


def test_module_used_twice_in_a_sequential_is_in_the_jacobian_map():
    torch.manual_seed(0)
    shared = nn.Linear(48, 48)
    model = nn.Sequential(nn.Linear(20, 48), nn.Tanh(), shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(48, 3))
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    with Probe(model, monitor=(x, y), jacobian_method="exact", jacobian_examples=5) as probe:
        pass
    assert probe.jacobian_unavailable == {}
    got = stats(probe, quantity="jacobian")
    with torch.no_grad():
        z1, z3 = model[:2](x[:5]), model[:4](x[:5])
    for layer, z in (("3", z1), ("5", z3)):  # both maps are tanh(shared(z)), at different points
        sv = torch.cat([torch.linalg.svdvals(jacobian(lambda v: torch.tanh(shared(v)), e)) for e in z])
        assert got[(layer, "sv_mean")] == pytest.approx(sv.mean().item(), rel=1e-5)
        assert got[(layer, "sv_max")] == pytest.approx(sv.max().item(), rel=1e-5)


class StochasticDepth(nn.Module):
    """Residual blocks skipped at random in training (``torch.rand`` in forward), with a call counter."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.inp, self.act = nn.Linear(6, 16), nn.Tanh()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3))
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        self.calls += 1
        h = self.act(self.inp(x))
        for block in self.blocks:
            if not self.training or torch.rand(()) > 0.5:
                h = h + block(h)
        return self.out(h)


def test_attaching_runs_nothing_and_training_is_bit_identical_with_stochastic_depth():
    torch.manual_seed(0)
    base = StochasticDepth()
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    rng = torch.get_rng_state()
    probe = Probe(base, every=2, monitor=(x[:20], y[:20]), jacobian_examples=3)
    assert base.calls == 0 and torch.equal(torch.get_rng_state(), rng)  # building the probe ran nothing
    runs = []
    for with_probe in (False, True):
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        torch.manual_seed(7)
        probe = Probe(model, every=2, monitor=(x[:20], y[:20]), jacobian_examples=3) if with_probe else None
        grads = []
        with probe if probe else torch.no_grad():  # (a no-op context for the plain run)
            with torch.enable_grad():
                for i in range(5):
                    F.cross_entropy(model(x[i * 8 : i * 8 + 8]), y[i * 8 : i * 8 + 8]).backward()
                    grads.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
                    opt.step()
                    opt.zero_grad()
                    if probe:
                        probe.step()
        runs.append((model, opt.state_dict(), grads, torch.get_rng_state()))
    (m0, o0, g0, r0), (m1, o1, g1, r1) = runs
    monitor_passes = len({r["step"] for r in probe.records if r["source"] == "monitor"})
    assert monitor_passes == 3 and m1.calls == 5 + monitor_passes  # one forward per record, no more
    assert all(torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters(), strict=True))
    assert all(
        (a is None and b is None) or torch.equal(a, b)
        for ga, gb in zip(g0, g1, strict=True)
        for a, b in zip(ga, gb, strict=True)
    )
    for k, state in o0["state"].items():
        assert all(torch.equal(state[n], o1["state"][k][n]) for n in ("exp_avg", "exp_avg_sq", "step"))
    assert torch.equal(r0, r1)


def _ddp_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _ddp_data(rank):
    g = torch.Generator().manual_seed(10 + rank)
    return torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g)


def _ddp_worker(rank, path):
    dist.init_process_group("gloo", init_method=f"file://{path}/init", rank=rank, world_size=2)
    out = {}
    for all_ranks in (False, True):
        ddp = nn.parallel.DistributedDataParallel(_ddp_model())
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        x, y = _ddp_data(rank)
        with Probe(ddp, every=1, all_ranks=all_ranks, monitor=(x, y)) as probe:
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            opt.zero_grad()
            probe.step()
        out[str(all_ranks)] = probe.records
    with open(f"{path}/rank{rank}.json", "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_records_the_averaged_gradient_on_rank_0_or_every_rank(tmp_path):
    mp.start_processes(_ddp_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    local = []
    for r in range(2):  # each rank's own gradient, computed here without DDP
        model = _ddp_model()
        x, y = _ddp_data(r)
        F.cross_entropy(model(x), y).backward()
        local.append(model[0].weight.grad)
    averaged = (local[0] + local[1]) / 2
    assert abs(local[0].norm() - averaged.norm()) > 0.05  # the local gradient would be told apart

    def weight_grad(rows):
        return {r["stat"]: r["value"] for r in rows if r["layer"] == "0" and r["quantity"] == "weight_grad"}

    assert records[1]["False"] == []  # by default only rank 0 records
    assert all("rank" not in r for r in records[0]["False"])  # ... in the usual row format
    for rows in (records[0]["False"], records[0]["True"], records[1]["True"]):
        got = weight_grad(rows)
        assert got["norm"] == pytest.approx(averaged.norm().item(), rel=1e-5)
        assert got["mean"] == pytest.approx(averaged.mean().item(), rel=1e-4, abs=1e-7)
    assert {r["rank"] for r in records[0]["True"]} == {0} and {r["rank"] for r in records[1]["True"]} == {1}


def test_gradient_accumulation_records_the_first_micro_batch_and_the_summed_gradient():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 10, 5), torch.randint(0, 3, (4, 10))
    first = model[1](model[0](x[0])).detach()
    with Probe(model, every=1) as probe:
        for k in range(4):  # four micro-batches per optimizer step
            (F.cross_entropy(model(x[k]), y[k]) / 4).backward()
        accumulated = model[0].weight.grad.clone()
        opt.step()
        opt.zero_grad()
        probe.step()
    assert {r["layer"] for r in probe.records} == {"0", "1", "2"}  # no "1@2" ... "1@4"
    got = stats(probe, quantity="activation")
    assert got[("1", "mean")] == pytest.approx(first.mean().item(), rel=1e-5)
    assert stats(probe, quantity="weight_grad")[("0", "norm")] == pytest.approx(accumulated.norm().item(), rel=1e-5)


def test_frozen_first_layer_gets_its_backpropagated_gradient_on_both_sources():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    model[0].requires_grad_(False)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    s = model[0](x).detach().requires_grad_(True)
    (want,) = torch.autograd.grad(F.cross_entropy(model[2:](torch.tanh(s)), y), s)
    with Probe(model, every=1, monitor=(x, y)) as probe:
        F.cross_entropy(model(x), y).backward()
        grads = [p.grad for p in model.parameters()]
        probe.step()
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()  # the same step without the probe
    assert [g is None for g in grads] == [p.grad is None for p in reference.parameters()]
    assert all(torch.equal(a, p.grad) for a, p in zip(grads[2:], list(reference.parameters())[2:], strict=True))
    for source in ("train", "monitor"):
        got = stats(probe, source=source, quantity="preact_grad")
        assert got[("1", "std")] == pytest.approx(want.std(correction=0).item(), rel=1e-5)
    assert ("0", "norm") not in stats(probe, quantity="weight_grad")  # a frozen weight has no gradient


@dataclass
class Output:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class Classifier(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.body, self.act, self.head = kind, nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)

    def forward(self, x):
        logits = self.head(self.act(self.body(x)))
        if self.kind == "dataclass":
            return Output(logits=logits)
        return {"logits": logits} if self.kind == "dict" else {"scores": logits}


@pytest.mark.parametrize("kind", ["dataclass", "dict"])
def test_dict_and_dataclass_outputs_are_scored_on_their_logits(kind):
    torch.manual_seed(4)
    model = Classifier(kind)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    with Probe(model, monitor=(x, y)) as probe:
        pass
    s = model.body(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model.head(torch.tanh(s)), y), s)
    assert stats(probe, quantity="preact_grad")[("act", "std")] == pytest.approx(g.std(correction=0).item(), rel=1e-5)


def test_output_that_cannot_be_scored_says_to_pass_loss_fn():
    model = Classifier("other")
    with pytest.raises(TypeError, match=r"no 'logits'.*pass loss_fn=, e\.g\. Probe\("):
        with Probe(model, monitor=(torch.randn(4, 5), torch.randint(0, 3, (4,)))):
            pass
    probe = Probe(model, monitor=(torch.randn(4, 5), torch.randint(0, 3, (4,))),
                  loss_fn=lambda out, y: F.cross_entropy(out["scores"], y))
    with probe:
        pass
    assert stats(probe, quantity="preact_grad")


def test_tiny_bert_from_a_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(5)
    model = transformers.BertForSequenceClassification(config)
    x, y = torch.randint(0, 50, (4, 7)), torch.randint(0, 3, (4,))
    captured = {}
    act = model.bert.encoder.layer[0].intermediate.intermediate_act_fn
    handle = act.register_forward_hook(lambda m, a, out: captured.update(z=out.detach()))
    with Probe(model, monitor=(x, y), jacobian_examples=0) as probe:
        pass
    handle.remove()
    name = next(layer.name for layer in probe.layers if layer.module is act)
    assert stats(probe, quantity="activation")[(name, "mean")] == pytest.approx(captured["z"].mean().item(), rel=1e-5)
    assert (name, "std") in stats(probe, quantity="preact_grad")
    unobservable = dict(probe.unobservable)
    # the attention (scaled_dot_product_attention, or softmax with attn_implementation="eager") is listed
    assert "inside forward" in unobservable["bert.encoder.layer.0.attention.self"]


def test_update_ratio_sample_of_a_300x300_weight():
    torch.manual_seed(8)
    w = torch.randn(300, 300)
    sample = weight_sample(torch.arange(90_000.0).reshape(300, 300))
    assert sample.numel() == MAX_UPDATE_VALUES
    assert set((sample % 300).long().tolist()) == set(range(300))  # every unit (column) is visited
    model = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 3))
    with torch.no_grad():
        model[0].weight.copy_(w * torch.linspace(0.1, 3, 300)[:, None])  # rows of very different scale
    before = model[0].weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 300), torch.randint(0, 3, (32,))
    with Probe(model, every=1) as probe:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        probe.step()
    exact = ((model[0].weight.detach() - before).norm() / before.norm()).item()
    assert stats(probe, quantity="update_ratio")[("0", "ratio")] == pytest.approx(exact, rel=0.005)


def test_rows_filter_on_rank():
    from deepscope.probe.sinks import filter_rows

    rows = [{"step": 0, "source": "train", "layer": "1", "quantity": "activation", "stat": "mean", "value": v,
             "rank": r} for r, v in ((0, 0.5), (1, 0.25))]
    assert [r["value"] for r in filter_rows(rows, {"rank": 1})] == [0.25]
    with pytest.raises(ValueError, match=r"filter node=1 is not allowed; filter on one of: .*, rank"):
        filter_rows(rows, {"node": 1})


def test_an_empty_batch_records_nothing_and_an_empty_monitor_set_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, every=1, monitor=(x[:10], y[:10])) as probe:
        for t in range(3):
            xb, yb = (x[:0], y[:0]) if t == 1 else (x[:5], y[:5])  # the last batch of an epoch can be empty
            out = model(xb)
            loss = nn.functional.cross_entropy(out, yb) if len(xb) else out.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.step(t)
    # the monitor pass records at every step; the training batches at the steps where they had examples
    assert {r["step"] for r in probe.records if r["source"] == "monitor"} == {0, 1, 2}
    assert all(math.isfinite(r["value"]) for r in probe.records if r["quantity"] == "activation")
    with pytest.raises(ValueError, match=r"monitor set has no examples \(shape \(0, 4\)\)"):
        Probe(model, every=1, monitor=(x[:0], y[:0]))


def test_a_shapeset_split_of_zero_examples_is_no_split():
    from deepscope.data import get_dataset

    data = get_dataset("shapeset", n_valid=0, n_test=5, size=16)
    assert data.valid is None and len(data.test[1]) == 5


def test_a_float64_model_probed_with_a_float32_monitor_set():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))  # float32, as data usually comes
    with Probe(model, every=1, monitor=(x, y)) as probe:
        probe.step(0)
    with torch.no_grad():
        h = torch.tanh(model[0](x.double()))
    got = {r["stat"]: r["value"] for r in probe.records
           if r["source"] == "monitor" and r["quantity"] == "activation" and r["step"] == 0}
    assert got["mean"] == pytest.approx(h.mean().item(), abs=1e-9)
