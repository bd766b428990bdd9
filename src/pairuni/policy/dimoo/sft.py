"""Lumina-DiMOO's supervised fine-tuning recipe (its released `train/train.py`), as the masks and
per-token terms `DimooPolicy.supervised_logprobs` hands to `pairuni sft` (docs/sft.md, "Masked
diffusion (Lumina-DiMOO)").

Every target row is cut into segments that are masked independently, as DiMOO's `mask_codes`
is called once per segment:

- the answer (its text tokens and `</answer>`) or the image's codes: ratio r = cos(pi/2 u),
  u ~ U(0, 1), k = max(1, floor(n r)) positions drawn uniformly without replacement; a segment of
  at most `FULL_MASK_MAX` tokens is masked entirely (DiMOO's short-sequence rule);
- the answer padding (`answer_pad` up to the fixed answer length): its own ratio drawn the same
  way, at least one token, no short-sequence rule (DiMOO calls it with `mask=True`).

Newlines and every other fixed token of the layouts are not targets, so they are never masked.
The loss of a row is the plain mean cross-entropy over its masked positions (no 1/t weight);
`masked_mean_terms` spreads it so that the row's terms sum to n_row times that mean, which is
what the trainer's token-normalised sum needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FULL_MASK_MAX = 5
"""A content segment of at most this many tokens is masked entirely (DiMOO's
`if len(codes) <= 5 and mask == False: mask_ratio = 1.0`)."""

NOT_TARGET, CONTENT, PADDING = 0, 1, 2
"""Segment labels of a target position: not in the loss, answer / image content, padding."""


def cosine_ratio(u: float) -> float:
    """MaskGIT's cosine schedule: the masked share at noise level u in [0, 1)."""
    return math.cos(0.5 * math.pi * u)


def mask_count(length: int, u: float, *, short_rule: bool) -> int:
    """Positions of a `length`-token segment to mask at noise level u: max(1, floor(n r))
    (0 for an empty segment); all of them for a short content segment."""
    if length == 0:
        return 0
    if short_rule and length <= FULL_MASK_MAX:
        return length
    return max(1, int(length * cosine_ratio(u)))


def segment_mask(length: int, generator: torch.Generator, *, short_rule: bool) -> torch.Tensor:
    """(length,) bool: draw u, then the first k entries of a random permutation (uniform
    k-subsets, DiMOO's `random.sample`). Draws u and the permutation even when the short rule
    masks everything, so that a row's stream does not depend on which rule applied."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    order = torch.randperm(length, generator=generator)
    masked = torch.zeros(length, dtype=torch.bool)
    masked[order[: mask_count(length, u, short_rule=short_rule)]] = True
    return masked


def row_seeds(generator: torch.Generator, rows: int) -> list[int]:
    """One seed per row, drawn in a single call so that the generator's state, and hence every
    row's seed, does not depend on the other rows' contents."""
    draw = torch.randint(0, 2**62, (rows,), generator=generator, device=generator.device)
    return [int(s) for s in draw.tolist()]


def draw_masks(segments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, T) segment labels (`CONTENT`, `PADDING`, `NOT_TARGET`) -> (B, T) bool masks. Row b
    draws from its own CPU generator seeded by `row_seeds(generator)[b]`: content first, then
    padding, each over its positions in order."""
    labels = segments.cpu()
    out = torch.zeros(labels.shape, dtype=torch.bool)
    for b, seed in enumerate(row_seeds(generator, labels.shape[0])):
        gen = torch.Generator().manual_seed(seed)
        for label, short_rule in ((CONTENT, True), (PADDING, False)):
            where = (labels[b] == label).nonzero().squeeze(1)
            out[b, where] = segment_mask(int(where.numel()), gen, short_rule=short_rule)
    return out.to(segments.device)


def answer_segments(tokens: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, L) labels of answer targets: `PADDING` where the target is `pad_id`, `CONTENT` on
    the other targets, `NOT_TARGET` outside `targets`."""
    labels = torch.where(tokens == pad_id, PADDING, CONTENT)
    return torch.where(targets.bool(), labels, NOT_TARGET)


def masked_mean_terms(
    logprobs: torch.Tensor, masked: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """(B, T) terms: log p x n_row / k_row at masked targets, 0 elsewhere, so that a row's
    terms sum to n_row times its mean log p over masked positions (n_row targets, k_row of them
    masked). Divided by the step's target count, as the trainer does, this is DiMOO's plain
    masked mean per row, rows weighted by their length."""
    scored = masked & targets.bool()
    count = targets.bool().sum(1, keepdim=True).to(logprobs.dtype)
    drawn = scored.sum(1, keepdim=True).clamp_min(1).to(logprobs.dtype)
    return torch.where(scored, logprobs * (count / drawn), 0.0)


def answer_targets(
    tokens: Sequence[int], length: int, *, answer_start: int, answer_end: int, pad_id: int
) -> list[int]:
    """The L target ids of an answer: its tokens without a leading `<answer>` (the layout has
    it already), ending in `</answer>` (DiMOO's `answer_text + "</answer>"`), then `pad_id` up to
    `length` (DiMOO pads to its sequence length with 126339)."""
    row = list(tokens)
    if row[:1] == [answer_start]:
        row = row[1:]
    if row[-1:] != [answer_end]:
        row.append(answer_end)
    if len(row) > length:
        raise ValueError(
            f"an SFT answer is {len(row)} tokens with </answer>, longer than the answer length "
            f"rollout.max_new_tokens={length}; raise rollout.max_new_tokens or shorten it"
        )
    return row + [pad_id] * (length - len(row))
