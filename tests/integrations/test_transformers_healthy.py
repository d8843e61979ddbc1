"""Healthy transformers trained until they learn raise no warning or error; a broken twin gets the right finding.

A tiny GPT-2 from a config in the Hugging Face Trainer with DeepscopeCallback, and a pre-LN ``nn.TransformerEncoder``
tagger in a plain loop with ``Probe`` + ``diagnose``, each on a task it learns in a few hundred updates; "learned"
is judged against the chance loss computed here from the data (ln V for uniform tokens, the entropy of the tag
frequencies). The full-size runs are in benchmarks/transformers_healthy.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from deepscope import Probe, diagnose  # noqa: E402
from deepscope.integrations.transformers import DeepscopeCallback  # noqa: E402

VOCAB, LENGTH = 32, 12


def counting(n: int, seed: int) -> torch.Tensor:
    """Sequences ``x_t = x_0 + t mod VOCAB`` with ``x_0`` uniform: every next token is uniform over the vocabulary
    unconditionally (chance loss ln VOCAB) and determined by the token before it."""
    start = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + torch.arange(LENGTH)) % VOCAB


class LM(Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def loud(findings):
    return [(f.code, f.severity, f.message) for f in findings if f.severity in ("warning", "error")]


def train_gpt2(tmp_path, lr: float, steps: int):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                                      eos_token_id=0)
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(str(tmp_path), max_steps=steps, per_device_train_batch_size=16,
                                          learning_rate=lr, logging_steps=5, report_to=[], save_strategy="no",
                                          disable_tqdm=True, use_cpu=True, seed=0)
    valid = counting(64, 1)
    trainer = transformers.Trainer(model=lm, args=args, train_dataset=LM(counting(1000, 0)), eval_dataset=LM(valid))
    callback = DeepscopeCallback(every=25, diagnose=False).attach(trainer)
    trainer.train()
    lm.eval()
    with torch.no_grad():
        logits = lm(input_ids=valid).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), valid[:, 1:].reshape(-1)).item()
    findings = diagnose(callback.records, scalars=callback.scalars, histograms=callback.histograms)
    return loss, findings, callback


def test_gpt2_learns_without_a_warning(tmp_path):
    loss, findings, callback = train_gpt2(tmp_path, lr=3e-3, steps=150)
    assert loss < 0.25 * math.log(VOCAB)  # chance: every next token uniform
    assert {r["layer"] for r in callback.records} >= {"transformer.h.0.attn", "transformer.h.1.mlp"}
    assert loud(findings) == []


def test_gpt2_at_a_tiny_rate_is_lr_too_low(tmp_path):
    loss, findings, _ = train_gpt2(tmp_path, lr=1e-7, steps=60)
    assert loss > 0.95 * math.log(VOCAB)  # it has learned nothing
    assert [f.code for f in findings if f.severity in ("warning", "error")] == ["lr_too_low"]


class Tagger(nn.Module):
    """Token and position embeddings, a pre-LN ``nn.TransformerEncoder`` with GELU (its activations are functions:
    the probe records the blocks' and their linear layers' outputs) and a token head."""

    def __init__(self, d_model: int = 32):
        super().__init__()
        self.embed, self.pos = nn.Embedding(VOCAB, d_model), nn.Embedding(LENGTH, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 2)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x) + self.pos(torch.arange(x.shape[1]))))


def tag_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    return x, (x >= VOCAB // 2).long()  # tag: upper half of the vocabulary


def train_tagger(lr: float, steps: int = 200):
    torch.manual_seed(0)
    model, (x, y), (xv, yv) = Tagger(), tag_data(2000, 0), tag_data(200, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    with Probe(model, every=50, monitor=(xv, yv)) as probe:
        for step in range(steps):
            i = slice(32 * step % 1984, 32 * step % 1984 + 32)
            loss = F.cross_entropy(model(x[i]).flatten(0, 1), y[i].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
            probe.step()
            losses.append(loss.detach())
    scalars = [{"step": s + 1, "name": "train/loss", "value": v} for s, v in enumerate(torch.stack(losses).tolist())]
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(xv).flatten(0, 1), yv.flatten()).item()
    p = yv.float().mean().item()
    chance = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    return loss, chance, diagnose(probe.records, scalars=scalars, histograms=probe.histograms), probe


def test_pre_ln_encoder_learns_without_a_warning():
    loss, chance, findings, probe = train_tagger(lr=1e-3)
    assert loss < 0.25 * chance
    # the attention and the block outputs are recorded: layers of different kinds, compared only with their own kind
    assert {"encoder.layers.0.self_attn", "encoder.layers.1"} <= {r["layer"] for r in probe.records}
    assert loud(findings) == []


def test_encoder_at_a_tiny_rate_is_lr_too_low():
    loss, chance, findings, _ = train_tagger(lr=1e-6, steps=150)
    assert loss > 0.9 * chance
    assert [f.code for f in findings if f.severity in ("warning", "error")] == ["lr_too_low"]
