"""Set-ups the rules were not written on: token ids into an embedding, a post-LN encoder blown up by its first Adam
step, layers that stop moving after the first updates, a softmax over a single regression output."""

import math

import torch
from torch import nn

from deepscope.diagnosis import diagnose, diagnose_input
from deepscope.diagnosis.causes import explain, model_facts
from deepscope.diagnosis.checks.inputs import INPUT_MEAN_FRACTION, token_ids
from deepscope.diagnosis.checks.output import output_fit
from deepscope.losses import describe


def ratios(values_at):
    return [dict(step=s, source="train", layer=layer, quantity="update_ratio", stat="ratio", value=v)
            for s, per_layer in values_at.items() for layer, v in per_layer.items()]


def losses(values):
    return [dict(step=1 + i, name="train/loss", value=v) for i, v in enumerate(values)]


def by_code(findings):
    return {f.code: f for f in findings}


class TokenLM(nn.Module):
    def __init__(self, vocab=12):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, x):
        return self.head(self.emb(x.reshape(len(x), -1).long()))


def test_token_ids_into_an_embedding_are_not_inputs_to_centre():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (64, 1, 1, 10), generator=g)
    # independent: the share of the RMS the per-position means make up is far above the threshold ...
    x = ids.double().reshape(64, -1)
    share = float(x.mean(0).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    assert share > INPUT_MEAN_FRACTION
    # ... so as measurements they are "not centred"; as ids (long, or floats read by an embedding) nothing is said
    assert "input_not_centered" in by_code(diagnose_input(ids.float()))
    assert diagnose_input(ids) == [] and token_ids(ids)
    assert diagnose_input(ids.float(), TokenLM()) == [] and token_ids(ids.float(), TokenLM())
    # ids beyond the embedding's vocabulary, fractions, or a model without an embedding: measurements again
    assert not token_ids(ids.float() + 12, TokenLM()) and not token_ids(ids.float() + 0.5, TokenLM())
    assert not token_ids(ids.float(), nn.Linear(10, 2))
    # uint8 is read as pixels: an image in [0, 255] is still checked
    pixels = torch.randint(0, 256, (64, 1, 4, 4), generator=g, dtype=torch.uint8)
    assert {"input_not_centered", "input_not_scaled"} <= set(by_code(diagnose_input(pixels)))


def test_a_first_step_that_moves_the_median_layer_by_a_third_of_its_norm_then_a_flat_loss_is_too_high_a_rate():
    # a post-LN encoder under Adam at lr 0.05: every layer moved by 0.34-0.69 of its norm at the first update (no
    # single layer by 1x), the loss went 1.79 -> 2.84 (1.6x, under the 3x jump) and then sat at ln 6 = 1.79
    layers = ["embed", "attn", "linear1", "linear2", "head"]
    first = dict(zip(layers, [0.34, 0.41, 0.49, 0.69, 0.50], strict=True))
    later = {layer: 3e-6 for layer in layers[:-1]} | {"head": 0.03}
    flat = [1.79 + 0.01 * math.sin(i) for i in range(297)]
    found = by_code(diagnose(ratios({0: first, 30: later, 60: later}), scalars=losses([1.79, 2.84, 2.70, *flat])))
    f = found["lr_too_high"]
    assert f.evidence["early_step_median"] == sorted(first.values())[2] and f.evidence["early_jump"] < 3
    # the same flat curve after healthy first steps (0.01-0.04 of the norm): no rate finding
    healthy = ratios({0: {layer: 0.01 + 0.0075 * i for i, layer in enumerate(layers)}, 30: later, 60: later})
    assert "lr_too_high" not in by_code(diagnose(healthy, scalars=losses([1.79, 1.80, 1.78, *flat])))


def test_layers_that_stop_moving_after_the_first_updates_date_from_when_they_stopped_and_yield_to_the_rate():
    per_step = {0: {"embed": 0.4, "attn": 0.5, "head": 0.5}, 30: {"embed": 4e-3, "attn": 5e-3, "head": 0.03}}
    per_step |= {s: {"embed": 1e-6, "attn": 2e-6, "head": 0.03 + 1e-4 * s} for s in range(60, 300, 30)}
    flat = [1.79 + 0.01 * math.sin(i) for i in range(297)]
    found = diagnose(ratios(per_step), scalars=losses([1.79, 2.84, 2.70, *flat]))
    # independent: each layer's median ratio, the layers at most 1e-4 x the fastest median, and the first record at
    # which one of them is under that bound
    medians = {layer: sorted(v[layer] for v in per_step.values())[len(per_step) // 2 - 1:len(per_step) // 2 + 1]
               for layer in ("embed", "attn", "head")}
    medians = {layer: sum(pair) / 2 for layer, pair in medians.items()}
    bound = 1e-4 * max(medians.values())
    still = {layer for layer, v in medians.items() if v <= bound}
    since = min(s for s, v in per_step.items() for layer in still if v[layer] <= bound)
    ranked = by_code(explain(found, {}, {}))
    assert set(ranked["not_learning"].layers) == still == {"embed", "attn"}
    # frozen from the start it would be update 0; here it is the record at update 60, after the rate's blow-up
    assert ranked["not_learning"].first_step == since == 60 and ranked["not_learning"].cause == "lr_too_high"
    frozen = ratios({s: {"embed": 0.0, "head": 0.03} for s in (0, 30, 60)})
    falling = losses([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert by_code(diagnose(frozen, scalars=falling))["not_learning"].first_step == 0


def test_a_softmax_over_a_single_regression_output_names_the_softmax_and_yields_every_stalled_layer_to_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1), nn.Softmax(dim=1))
    x, y = torch.randn(32, 5), 3 * torch.randn(32)
    out = model(x)
    # independent: the output is 1 for every example, and mse's gradient reaches no weight
    assert torch.equal(out, torch.ones_like(out))
    torch.nn.functional.mse_loss(out.squeeze(1), y).backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())
    mismatch = output_fit(out.detach(), type(out.grad_fn).__name__, describe("mse"), y)
    assert mismatch and "constant 1" in mismatch[0].message and "no gradient" in mismatch[0].message
    stalled = diagnose(ratios({s: {"0": 0.0, "2": 0.0} for s in (0, 30, 60)}),
                       scalars=losses([4.9 + 0.01 * math.sin(i) for i in range(60)]))
    assert by_code(stalled)["not_learning"].evidence["update_ratio_fastest"] == 0.0
    spec = {"train": {"loss": "mse"}, "optim": {"lr": 1e-3}}
    ranked = by_code(explain(mismatch + stalled, model_facts(model, x), spec, y, updates=60))
    assert ranked["output_activation"].layers == ["3"] and "mse" in ranked["output_activation"].message
    assert ranked["not_learning"].cause == "output_activation" == ranked["output_loss_mismatch"].cause
    # targets inside the range of a sigmoid output (a probability regressed with mse): no finding, no cause
    sig = nn.Sequential(nn.Linear(5, 1), nn.Sigmoid())
    p = sig(x)
    assert output_fit(p.detach(), type(p.grad_fn).__name__, describe("mse"), torch.rand(32)) == []
    assert "output_activation" not in by_code(explain([], model_facts(sig, x), spec, None, updates=60))


def test_a_loss_that_rose_in_tiny_steps_says_rose():
    tiny = ratios({s: {"hidden": 1e-6, "out": 2e-6} for s in (0, 150, 270)})
    rising = [1.80 + 0.044 * i / 299 for i in range(300)]
    f = by_code(diagnose(tiny, scalars=losses(rising)))["lr_too_low"]
    assert f.evidence["relative_drop"] < 0 and f"rose {-f.evidence['relative_drop']:.1%}" in f.message


def test_a_huge_variance_ratio_is_written_in_three_significant_digits():
    # a 10-layer tanh MLP with N(0, 1e-6) weights: each layer multiplies the std by about 48 x 1e-6 (hand-made here)
    stds = [1e-3 * (48 ** 0.5 * 1e-3) ** i for i in range(5)]
    rows = [dict(step=0, source="monitor", layer=f"hidden{i + 1}", quantity="activation", stat="std", value=v)
            for i, v in enumerate(stds)]
    f = by_code(diagnose(rows))["variance_shrinks"]
    assert f"shrinks {stds[0] / stds[-1]:.3g}x" in f.message and "e+" in f.message
