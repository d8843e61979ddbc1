"""Tiny models of families the probe and the diagnosis were not written on, each with a small synthetic task it
learns in a few hundred updates on a CPU: a Llama-style decoder, T5, ViT, DistilBERT, RoBERTa, a MobileNet-style CNN, a
GroupNorm/LayerNorm CNN and ``nn.Transformer`` seq2seq (``batch_first=True``). Nothing is downloaded: the
transformers models are built from their configs.

Each builder returns a :class:`Case`: the model, ``batch(generator, n) -> (inputs, y)`` (``inputs`` a tuple of
positional arguments or a dict of keyword arguments), and ``loss(output, y)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 16


@dataclass
class Case:
    name: str
    model: nn.Module
    batch: Callable[[torch.Generator, int], tuple[Any, torch.Tensor]]
    loss: Callable[[Any, torch.Tensor], torch.Tensor]
    lr: float = 1e-2

    def call(self, model: nn.Module, inputs: Any) -> Any:
        return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def logits_of(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def token_loss(out: Any, y: torch.Tensor) -> torch.Tensor:
    logits = logits_of(out)
    return F.cross_entropy(logits.flatten(0, -2), y.flatten()) if logits.dim() == 3 else F.cross_entropy(logits, y)


def _tokens(g: torch.Generator, n: int, length: int = 6) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=g)


def _next_token_task(g, n):
    """Per position, the token after (x + 3) mod VOCAB: learnable by every token model without attention tricks."""
    x = _tokens(g, n)
    return (x,), (x + 3) % VOCAB


def _sequence_class_task(g, n):
    """The class is whether token 0 appears in the first half of the sequence more often than token 1."""
    x = _tokens(g, n, 8) % 4
    y = ((x == 0).sum(1) > (x == 1).sum(1)).long()
    return {"input_ids": x}, y


def _image_task(g, n, channels=1, size=8):
    """3 classes: the bright quadrant (top-left, top-right, or bottom) of a noisy image."""
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.5 * torch.randn(n, channels, size, size, generator=g)
    h = size // 2
    for c in range(3):
        sel = y == c
        if c == 0:
            x[sel, :, :h, :h] += 1.0
        elif c == 1:
            x[sel, :, :h, h:] += 1.0
        else:
            x[sel, :, h:, :] += 1.0
    return x, y


def _image_positional(g, n):
    x, y = _image_task(g, n)
    return (x,), y


def llama(seed: int = 0) -> Case:
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return Case("llama", transformers.LlamaForCausalLM(config), _next_token_task, token_loss)


def t5(seed: int = 0, feed_forward_proj: str = "gated-gelu") -> Case:
    import transformers

    torch.manual_seed(seed)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                                   num_heads=2, feed_forward_proj=feed_forward_proj, decoder_start_token_id=0,
                                   pad_token_id=0, dropout_rate=0.0)

    def task(g, n):
        x = _tokens(g, n)
        return {"input_ids": x, "labels": (x + 3) % VOCAB}, (x + 3) % VOCAB

    return Case("t5", transformers.T5ForConditionalGeneration(config), task, token_loss)


def vit(seed: int = 0) -> Case:
    import transformers

    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=3)

    def task(g, n):
        x, y = _image_task(g, n)
        return {"pixel_values": x}, y

    return Case("vit", transformers.ViTForImageClassification(config), task, token_loss, lr=3e-3)


def distilbert(seed: int = 0) -> Case:
    import transformers

    torch.manual_seed(seed)
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=16, hidden_dim=32, n_layers=2, n_heads=2,
                                           max_position_embeddings=16, num_labels=2, dropout=0.0,
                                           attention_dropout=0.0, seq_classif_dropout=0.0)
    return Case("distilbert", transformers.DistilBertForSequenceClassification(config), _sequence_class_task,
                token_loss, lr=3e-3)


def roberta(seed: int = 0) -> Case:
    import transformers

    torch.manual_seed(seed)
    # positions start after the padding id (VOCAB + 1), so the table is longer than the sequences
    config = transformers.RobertaConfig(vocab_size=VOCAB + 4, hidden_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=40,
                                        num_labels=2, pad_token_id=VOCAB + 1, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)
    return Case("roberta", transformers.RobertaForSequenceClassification(config), _sequence_class_task, token_loss,
                lr=3e-3)


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual (Sandler et al. 2018): expand 1x1, depthwise 3x3, project 1x1."""

    def __init__(self, channels: int, expand: int, act: Callable[[], nn.Module]):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), act())
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.project(self.depthwise(self.expand(x)))


def mobilenet(seed: int = 0) -> Case:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()),
        InvertedResidual(8, 2, nn.ReLU6),
        InvertedResidual(8, 2, nn.SiLU),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    return Case("mobilenet", model, _image_positional, token_loss, lr=3e-2)


def norm_cnn(seed: int = 0) -> Case:
    """GroupNorm and LayerNorm (over channels, height, width) instead of batch norm, Mish and GELU(tanh)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Mish(),
        nn.Conv2d(8, 8, 3, padding=1), nn.LayerNorm([8, 8, 8]), nn.GELU(approximate="tanh"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    return Case("norm_cnn", model, _image_positional, token_loss, lr=3e-2)


class Seq2Seq(nn.Module):
    """``nn.Transformer`` (batch_first) between two embeddings, a causal mask on the target."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.src_emb, self.tgt_emb = nn.Embedding(VOCAB, d), nn.Embedding(VOCAB, d)
        self.transformer = nn.Transformer(d, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                          dim_feedforward=32, dropout=0.0, batch_first=True, activation=nn.GELU())
        self.head = nn.Linear(d, VOCAB)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.transformer(self.src_emb(src), self.tgt_emb(tgt), tgt_mask=mask, tgt_is_causal=True))


def seq2seq(seed: int = 0) -> Case:
    torch.manual_seed(seed)

    def task(g, n):
        src = _tokens(g, n)
        out = (src + 3) % VOCAB
        tgt = torch.cat([torch.zeros(n, 1, dtype=torch.long), out[:, :-1]], 1)  # teacher forcing
        return (src, tgt), out

    return Case("seq2seq", Seq2Seq(), task, token_loss, lr=3e-3)


CASES = {f.__name__: f for f in (llama, t5, vit, distilbert, roberta, mobilenet, norm_cnn, seq2seq)}
