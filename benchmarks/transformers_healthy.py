"""Healthy transformers raise no warning: BERT, GPT-2 and ``nn.TransformerEncoder`` built from configs, trained until
they learn, with deepscope attached the way a user attaches it; broken twins show the rules still fire.

Every model is built from a config (nothing is downloaded) and trained on a generated token task it can learn:

- ``bert-cls``: ``BertForSequenceClassification``, the README's Hugging Face example (is the first of 16 tokens above
  50?), lr 1e-3, in the Hugging Face ``Trainer`` with ``DeepscopeCallback``;
- ``gpt2-lm``: ``GPT2LMHeadModel`` on arithmetic sequences ``x_t = x_0 + t k mod V`` (``k`` in 1..4, so the model
  must read the step off the context), next-token loss, lr 3e-3, ``Trainer`` + ``DeepscopeCallback``;
- ``encoder-cls``: ``nn.TransformerEncoder`` (post-LN, ReLU, dropout 0.1, batch_first) + mean pooling + a linear
  head: are most of the 15 tokens in the upper half of the vocabulary? Adam 1e-3 in a plain loop with
  ``deepscope.Probe`` and ``deepscope.diagnose``;
- ``encoder-tagger-preln``: ``nn.TransformerEncoder`` with ``norm_first=True`` and GELU, a token head: is each token
  above the one before it? Same plain loop;
- ``transformer-seq2seq``: ``nn.Transformer`` (encoder-decoder, causal decoder mask) reversing a sequence.

Printed per model: the final evaluation loss against the chance loss (the entropy of the target frequencies,
computed here from the data, i.e. the loss of the best constant prediction), the accuracy against the majority
baseline, learned yes/no (loss below half the chance loss), and every finding with its severity. The target is no
warning and no error on any healthy model that learned. Then the README's example at its default lr 5e-5 for
200 steps (expected: ``lr_too_low``, the loss has not moved) and broken twins: GPT-2 at lr 1e-7 (``lr_too_low``)
and at lr 10, the pre-LN tagger at Adam lr 3 (``lr_too_high`` or ``exploding_gradients``).

    python benchmarks/transformers_healthy.py [--only NAME ...] [--threads 1] [--seed 0]

``--seed`` changes the initial weights and the order of the batches (the data stay the same).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

try:
    import transformers
    from transformers import Trainer, TrainingArguments

    from deepscope.integrations.transformers import DeepscopeCallback
except ImportError as e:  # without the extra: say so, do not fail the other benchmarks
    print(f"benchmarks/transformers_healthy.py skipped: {e}")
    sys.exit(0)

from deepscope import Probe, diagnose

EVERY = 50
SEED = 0  # initial weights and batch order (--seed)

# --- data: generated token tasks ------------------------------------------------------------------------------


class Dicts(torch.utils.data.Dataset):
    """Examples as dicts of tensors (the Hugging Face Trainer's form)."""

    def __init__(self, **columns: torch.Tensor):
        self.columns = columns

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.columns.items()}


def first_token_task(n: int, seed: int) -> Dicts:
    """The README's task: 16 tokens in 5..99; the label is whether the first one is above 50."""
    ids = torch.randint(5, 100, (n, 16), generator=torch.Generator().manual_seed(seed))
    return Dicts(input_ids=ids, labels=(ids[:, 0] > 50).long())


def arithmetic_sequences(n: int, seed: int, vocab: int = 64, length: int = 16) -> torch.Tensor:
    """``x_t = x_0 + t k mod vocab`` with ``x_0`` uniform and ``k`` in 1..4 drawn per sequence."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    step = torch.randint(1, 5, (n, 1), generator=g)
    return (start + step * torch.arange(length)) % vocab


def lm_task(n: int, seed: int) -> Dicts:
    ids = arithmetic_sequences(n, seed)
    return Dicts(input_ids=ids, labels=ids.clone())  # GPT2LMHeadModel shifts the labels itself


def majority_task(n: int, seed: int, vocab: int = 32, length: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    return x, ((x >= vocab // 2).sum(1) > length // 2).long()


def rising_task(n: int, seed: int, vocab: int = 32, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    return x, torch.cat([torch.zeros(n, 1, dtype=torch.long), (x[:, 1:] > x[:, :-1]).long()], 1)


def reverse_task(n: int, seed: int, vocab: int = 16, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(1, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    return x, x.flip(1)


def chance(targets: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy) of the best constant prediction: the entropy of the target frequencies, the majority's share."""
    counts = Counter(targets[targets != -100].flatten().tolist())
    total = sum(counts.values())
    p = [c / total for c in counts.values()]
    return -sum(q * math.log(q) for q in p), max(p)


# --- models built from configs ----------------------------------------------------------------------------------


def bert() -> nn.Module:
    config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=2, bos_token_id=0,
                                     eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


class EncoderClassifier(nn.Module):
    """Token and position embeddings, ``nn.TransformerEncoder``, mean pooling, a linear head (or one per token)."""

    def __init__(self, vocab: int, length: int, outputs: int, per_token: bool = False, norm_first: bool = False,
                 activation: str = "relu", d_model: int = 64, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 128, dropout=0.1, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model) if norm_first else None,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d_model, outputs)
        self.per_token = per_token

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.pos(torch.arange(x.shape[1])))
        return self.head(h if self.per_token else h.mean(1))


class Seq2Seq(nn.Module):
    """``nn.Transformer`` with token embeddings; the decoder reads the target shifted right (teacher forcing)."""

    def __init__(self, vocab: int, length: int, d_model: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(length, d_model)
        self.transformer = nn.Transformer(d_model, 4, 2, 2, 128, dropout=0.1, batch_first=True)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, pair):
        src, tgt = pair[:, 0], pair[:, 1]
        tgt_in = torch.cat([torch.zeros_like(tgt[:, :1]), tgt[:, :-1]], 1)  # 0 is the start token
        position = self.pos(torch.arange(src.shape[1]))
        h = self.transformer(self.embed(src) + position, self.embed(tgt_in) + position, tgt_mask=self.mask,
                             tgt_is_causal=True)
        return self.head(h)


# --- training ---------------------------------------------------------------------------------------------------


def run_trainer(build, train_set: Dicts, eval_set: Dicts, lr: float, steps: int, batch: int = 16,
                every: int = EVERY) -> dict:
    """Train with the Hugging Face Trainer and DeepscopeCallback (monitor: the evaluation set, the default)."""
    torch.manual_seed(SEED)
    model = build()
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        args = TrainingArguments(out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
                                 logging_steps=10, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True,
                                 seed=SEED)
        trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set)
        callback = DeepscopeCallback(every=every).attach(trainer)
        trainer.train()
    model.eval()
    batch = torch.utils.data.default_collate([eval_set[i] for i in range(len(eval_set))])
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits, batch["labels"]
    if logits.dim() == 3:  # a language model: position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    return dict(loss=float(out.loss), accuracy=accuracy, chance=chance(labels), findings=callback.findings)


def run_loop(model: nn.Module, data, valid, lr: float, steps: int, batch: int = 32, every: int = EVERY) -> dict:
    """A plain PyTorch loop with ``deepscope.Probe`` on 300 fixed validation examples; the loss curve as scalars."""
    x, y = data
    xv, yv = valid
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(SEED + 1)
    losses = []
    with Probe(model, every=every, monitor=(xv[:300], yv[:300])) as probe:
        for _ in range(steps):
            i = torch.randint(0, len(x), (batch,), generator=g)
            logits = model(x[i])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad()
            probe.step()
            losses.append(loss.detach())
    scalars = [{"step": s + 1, "name": "train/loss", "value": v} for s, v in enumerate(torch.stack(losses).tolist())]
    findings = diagnose(probe.records, scalars=scalars, histograms=probe.histograms)
    model.eval()
    with torch.no_grad():
        logits = model(xv)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yv.reshape(-1)).item()
    accuracy = (logits.argmax(-1) == yv).float().mean().item()
    return dict(loss=loss, accuracy=accuracy, chance=chance(yv), findings=findings)


# --- the runs ----------------------------------------------------------------------------------------------------


def _seeded(cls, *args, **kwargs):
    torch.manual_seed(SEED)
    return cls(*args, **kwargs)


def runs() -> dict:
    """name -> (kind, expected codes (empty: healthy), thunk)."""
    bert_data = (first_token_task(2000, 0), first_token_task(300, 1))
    lm_data = (lm_task(2000, 0), lm_task(300, 1))
    majority = (majority_task(4000, 0), majority_task(300, 1))
    rising = (rising_task(4000, 0), rising_task(300, 1))
    (src, tgt), (vsrc, vtgt) = reverse_task(4000, 0), reverse_task(300, 1)
    pairs = (torch.stack([src, tgt], 1), tgt), (torch.stack([vsrc, vtgt], 1), vtgt)
    return {
        "bert-cls": ("healthy", (), lambda: run_trainer(bert, *bert_data, lr=1e-3, steps=200)),
        "gpt2-lm": ("healthy", (), lambda: run_trainer(gpt2, *lm_data, lr=3e-3, steps=400)),
        "encoder-cls": ("healthy", (), lambda: run_loop(_seeded(EncoderClassifier, 32, 15, 2), *majority, lr=1e-3,
                                                        steps=400)),
        "encoder-tagger-preln": ("healthy", (), lambda: run_loop(
            _seeded(EncoderClassifier, 32, 16, 2, per_token=True, norm_first=True, activation="gelu"), *rising,
            lr=1e-3, steps=400)),
        "transformer-seq2seq": ("healthy", (), lambda: run_loop(_seeded(Seq2Seq, 16, 10), *pairs, lr=1e-3,
                                                                steps=400)),
        "bert-readme-lr5e-5": ("not learning", ("lr_too_low",),
                               lambda: run_trainer(bert, *bert_data, lr=5e-5, steps=200)),
        "gpt2-lr1e-7": ("broken", ("lr_too_low",), lambda: run_trainer(gpt2, *lm_data, lr=1e-7, steps=200)),
        "gpt2-lr10": ("broken", ("lr_too_high", "exploding_gradients"),
                      lambda: run_trainer(gpt2, *lm_data, lr=10.0, steps=200)),
        "encoder-tagger-lr3": ("broken", ("lr_too_high", "exploding_gradients"), lambda: run_loop(
            _seeded(EncoderClassifier, 32, 16, 2, per_token=True, norm_first=True, activation="gelu"), *rising,
            lr=3.0, steps=400)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    global SEED
    SEED = args.seed
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    table = runs()
    unknown = set(args.only or ()) - set(table)
    if unknown:
        parser.error(f"--only {sorted(unknown)}: choose from {sorted(table)}")
    alarms, misses, healthy, broken, start = 0, 0, 0, 0, time.perf_counter()
    print(f"{'model':<22} {'loss':>6} {'chance':>6} {'acc':>6} {'base':>6} {'learned':<7} {'s':>5}  "
          "findings (severity)")
    for name, (kind, expected, thunk) in table.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        r = thunk()
        seconds = time.perf_counter() - t0
        (chance_loss, base), loud = r["chance"], [f for f in r["findings"] if f.severity in ("warning", "error")]
        learned = r["loss"] < 0.5 * chance_loss
        shown = ", ".join(f"{f.code} ({f.severity})" for f in r["findings"]) or "-"
        if kind == "healthy":
            healthy += 1
            bad = loud or not learned
            alarms += bool(loud)
            verdict = "FALSE ALARM" if loud else "ok" if learned else "DID NOT LEARN"
        else:
            broken += 1
            bad = not any(f.code in expected for f in loud)
            misses += bad
            verdict = f"{'MISSED' if bad else 'named'} (expected {'|'.join(expected)})"
        print(f"{name:<22} {r['loss']:6.3f} {chance_loss:6.3f} {r['accuracy']:6.1%} {base:6.1%} "
              f"{'yes' if learned else 'no':<7} {seconds:5.1f}  {shown}  -> {verdict}", flush=True)
        for f in loud if bad or kind != "healthy" else ():
            print(f"    {f.code} ({f.severity}): {f.message}")
    print(f"healthy models with a warning or error   {alarms}/{healthy}   (target 0)")
    print(f"broken set-ups not named                 {misses}/{broken}   (target 0)")
    print(f"total {time.perf_counter() - start:.0f} s")
    return int(alarms > 0 or misses > 0)


if __name__ == "__main__":
    sys.exit(main())
