"""A tiny bidirectional model over DiMOO's real vocabulary and a fake tokenizer, for the
sampler and log-prob estimator tests (deterministic, fast, no checkpoint)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pairuni.policy.dimoo.ids import DimooIds

IDS = DimooIds()
VOCAB = IDS.image_end  # 134,548
BOS = 1

# Tag strings the fake tokenizer treats as added tokens (ids of our choosing, below the mask).
TAGS = {"<system>": 200, "</system>": 201, "<user>": 202, "</user>": 203}


class FakeTokenizer:
    """Characters -> ids 1000 + ord(c); DiMOO's tags and `<uncondition>` are single added
    tokens, split out first as a real tokenizer does; `add_special_tokens` prepends BOS."""

    def __init__(self, ids: DimooIds = IDS) -> None:
        self.added = {**TAGS, "<uncondition>": ids.uncondition}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        out = [BOS] if add_special_tokens else []
        i = 0
        while i < len(text):
            for token, token_id in self.added.items():
                if text.startswith(token, i):
                    out.append(token_id)
                    i += len(token)
                    break
            else:
                out.append(1000 + ord(text[i]) % 20000)
                i += 1
        return out


class TinyBidirectional(nn.Module):
    """Embedding (VOCAB x dim) + sinusoidal positions + one bidirectional attention layer
    (padding keys masked) + a linear head; `logits(ids, mask) -> (B, S, VOCAB)` float32."""

    def __init__(self, dim: int = 16, seed: int = 0, scale: float = 3.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.dim, self.scale = dim, scale
        self.embed = nn.Parameter(torch.randn(VOCAB, dim, generator=gen))
        self.qkv = nn.Parameter(torch.randn(dim, 3 * dim, generator=gen) / math.sqrt(dim))
        self.head = nn.Parameter(torch.randn(dim, VOCAB, generator=gen) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(VOCAB))

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], dtype=torch.float32)
        freqs = torch.exp(-torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim * 4)
        angles = positions[:, None] * freqs[None, :]
        pos = torch.cat([angles.sin(), angles.cos()], dim=-1)
        x = self.embed[input_ids] + pos[None]
        q, k, v = (x @ self.qkv).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.dim)
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, float("-inf"))
        h = x + scores.softmax(-1) @ v
        # one fused pass over the (B, S, V) output: the head dominates the cost
        return torch.addmm(self.bias, h.flatten(0, 1), self.head, alpha=self.scale).view(
            *input_ids.shape, -1
        )


class Counting:
    """Wraps a logits function, counting calls and rows (forwards)."""

    def __init__(self, fn) -> None:
        self.fn, self.calls, self.rows = fn, 0, 0
        self.inputs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += int(input_ids.shape[0])
        self.inputs.append(input_ids.clone())
        return self.fn(input_ids, attention_mask)


def with_eos_bias(fn, marker: int, bias: float = 40.0, eos: int = IDS.eos):
    """A logits function that pushes EOS up in every row whose sequence holds `marker`: rows
    of one batch then stop at different blocks."""

    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = fn(input_ids, attention_mask)
        rows = (input_ids == marker).any(1)
        boost = torch.zeros_like(out)
        boost[rows, :, eos] = bias
        return out + boost

    return logits


def codes_grid(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randint(
        0, IDS.codebook_size, (height, width), generator=torch.Generator().manual_seed(seed)
    )
