"""Log-prob estimators of DiMOO rollouts for the policy ratio, with gradient.

The likelihood of a sample under a masked-diffusion sampler is intractable; each estimator
scores the generated tokens from some partially masked state (docs/dimoo-sampling.md):

| estimator | the state a token is scored from | forwards (x branches) |
|---|---|---|
| `trajectory` | the sampler's state before the step (group) of its commit | ceil(T / shrink) |
| `mean_field` | all generated masked (prompt tokens w.p. p_mask_prompt) | 1 |
| `random_mask` | m copies, each token masked w.p. t ~ U[t_lo, t_hi] | m |

"x branches": image rollouts with guidance forward each guidance branch too (1 + [w != 0] +
[w_img != 0]), and all estimators score with the rollout's guidance and temperature, so
`trajectory` with shrink 1 reproduces the sampler's recorded log-probs exactly.

None of them accounts for *which* positions the sampler committed at each step (the remasking
choice, driven by confidence and the second Gumbel noise): the probability of that order is
not part of any of these log-probs, so the ratio treats the unmasking order as given.

Every function returns `TokenLogProbs(logprobs, mask)`: logprobs (B, N') float32 with
gradient, 0 where mask is 0; mask (B, N') int64, 1 on the tokens that count (the rollout's
mask, intersected with the tokens the estimator scored). N' = N except `random_mask`:
m * N, copy-major (copy c is columns c N .. (c + 1) N - 1), so a per-row mean over the mask
averages over copies. Randomness comes from one CPU generator per row seeded by `seeds`, so
old, new and reference log-probs use the same masks when given the same seeds, whatever the
micro-batch split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from pairuni.policy.dimoo.sampling import (
    NOT_COMMITTED,
    ImageSampling,
    LogitsFn,
    Rollout,
    Settings,
    generation_logits,
    temper,
)
from pairuni.policy.dimoo.sequence import Layout


class TokenLogProbs(NamedTuple):
    logprobs: torch.Tensor
    """(B, N') float32, with gradient; 0 where mask is 0."""
    mask: torch.Tensor
    """(B, N') int64, 1 on the tokens that count."""


def score_tokens(
    logits_fn: LogitsFn,
    layout: Layout,
    state: torch.Tensor,
    tokens: torch.Tensor,
    settings: Settings,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """(R, N) log-probs of `tokens` (B, N) at every generated position, from the state `state`
    (B, N) (ids.mask where masked), under the rollout's guided, tempered, restricted
    distribution: the same computation as the sampler's, with gradient."""
    guidance = settings.guidance if isinstance(settings, ImageSampling) else 0.0
    image_guidance = settings.image_guidance if isinstance(settings, ImageSampling) else 0.0
    logits = generation_logits(
        logits_fn, layout, state, guidance=guidance, image_guidance=image_guidance, rows=rows
    )
    targets = tokens if rows is None else tokens[rows]
    if layout.kind == "image":
        targets = targets - layout.ids.image_offset
    logp = temper(logits, settings.temperature).log_softmax(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def num_groups(steps: int, shrink: int) -> int:
    """Forwards (per branch) of `trajectory`: ceil(steps / shrink)."""
    return math.ceil(steps / shrink)


def trajectory(
    logits_fn: LogitsFn,
    rollout: Rollout,
    settings: Settings | None = None,
    *,
    shrink: int = 1,
    groups: Sequence[int] | None = None,
) -> TokenLogProbs:
    """TraceRL's trajectory estimator: replay the recorded unmasking. Group g covers steps
    [g shrink, (g + 1) shrink); its state has the tokens committed before the group present and
    the rest masked, and it scores the tokens committed within the group. With shrink 1 and the
    rollout's settings (the default) it equals the sampler's recorded log-probs.

    Cost: one forward per group with tokens to score (ceil(T / shrink) at most; text rows that
    stopped early are left out of later groups), times the guidance branches. `groups` scores
    only those groups (their tokens in the mask), so a trainer can backward group by group:
    the groups' tokens are disjoint, their losses add up."""
    settings = rollout.settings if settings is None else settings
    if shrink < 1:
        raise ValueError(f"trajectory: shrink must be >= 1, got {shrink}")
    total = num_groups(settings.steps, shrink)
    chosen = range(total) if groups is None else [int(g) for g in groups]
    if any(not 0 <= g < total for g in chosen):
        raise ValueError(f"trajectory: groups must lie in [0, {total}), got {list(chosen)}")
    layout, ids = rollout.layout, rollout.layout.ids
    committed = rollout.commit_step != NOT_COMMITTED
    out = torch.zeros(rollout.tokens.shape, dtype=torch.float32, device=rollout.tokens.device)
    scored_any = torch.zeros_like(committed)
    for group in chosen:
        start, end = group * shrink, (group + 1) * shrink
        scored = committed & (rollout.commit_step >= start) & (rollout.commit_step < end)
        rows = scored.any(1).nonzero().squeeze(1)
        present = committed & (rollout.commit_step < start)
        state = torch.where(present, rollout.tokens, ids.mask)
        if rows.numel() == 0:
            if settings.lockstep:  # nothing to score here, maybe something on other processes
                out = out + _stand_in(logits_fn, layout, state, rollout.tokens, settings)
            continue
        logp = score_tokens(logits_fn, layout, state, rollout.tokens, settings, rows)
        contribution = torch.where(scored[rows], logp, 0.0)
        out = out + torch.zeros_like(out).index_copy(0, rows, contribution)
        scored_any |= scored
    return _finish(out, rollout.mask.bool() & scored_any)


def _stand_in(
    logits_fn: LogitsFn, layout: Layout, state: torch.Tensor, tokens: torch.Tensor,
    settings: Settings,
) -> torch.Tensor:  # fmt: skip
    """A forward of the first row that adds 0 (with a zero gradient) to the scores: under
    `lockstep` every process runs the same forwards and backwards."""
    logp = score_tokens(logits_fn, layout, state, tokens, settings, state.new_zeros(1))
    return logp.masked_fill(torch.ones_like(logp, dtype=torch.bool), 0.0).sum()


def mean_field(
    logits_fn: LogitsFn,
    rollout: Rollout,
    settings: Settings | None = None,
    *,
    p_mask_prompt: float = 0.0,
    seeds: Sequence[int] | None = None,
) -> TokenLogProbs:
    """d1 / diffu-GRPO's one-step estimator: one forward with every generated position masked,
    log p of each token. With p_mask_prompt > 0 each instruction token of the conditional
    branch (text and source-image codes; not `<boi>`, `<eoi>`, newlines) is masked
    independently with that probability (d1 uses 0.3 with a fresh seed per inner iteration and
    the same seed for old and reference); the guidance branches keep their prompts. Cost: one
    forward per branch."""
    settings = rollout.settings if settings is None else settings
    if not 0.0 <= p_mask_prompt <= 1.0:
        raise ValueError(f"mean_field: p_mask_prompt must lie in [0, 1], got {p_mask_prompt}")
    layout, ids = rollout.layout, rollout.layout.ids
    if p_mask_prompt > 0:
        generators = _cpu_generators(seeds, layout.batch_size, "mean_field")
        layout = _mask_prompt(layout, p_mask_prompt, generators)
    state = torch.full_like(rollout.tokens, ids.mask)
    logp = score_tokens(logits_fn, layout, state, rollout.tokens, settings)
    return _finish(logp, rollout.mask.bool())


def random_mask(
    logits_fn: LogitsFn,
    rollout: Rollout,
    settings: Settings | None = None,
    *,
    seeds: Sequence[int],
    copies: int = 2,
    coupled: bool = False,
    ratio_range: tuple[float, float] = (0.1, 0.9),
) -> TokenLogProbs:
    """MMaDA UniGRPO / dLLM-RL's random masking: `copies` noisy copies of each row; in a copy
    a ratio t ~ U[ratio_range] is drawn and each generated token is masked with probability t;
    the masked tokens are scored. `coupled`: copies come in pairs, the second masking exactly
    what the first left visible, so every token is scored exactly once per pair (copies must
    be even). Tokens outside the rollout's mask (text after the stop) are always masked, as
    DiMOO's fine-tuning always masks answer padding. Output (B, copies * N), copy-major.
    Cost: `copies` forwards per branch."""
    settings = rollout.settings if settings is None else settings
    low, high = ratio_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(
            f"random_mask: ratio_range must satisfy 0 <= lo <= hi <= 1, got {ratio_range}"
        )
    if copies < 1 or (coupled and copies % 2):
        raise ValueError(f"random_mask: copies must be >= 1 (and even when coupled), got {copies}")
    ids = rollout.layout.ids
    generators = _cpu_generators(seeds, rollout.layout.batch_size, "random_mask")
    masks = _copy_masks(generators, copies, rollout.tokens.shape[1], low, high, coupled)
    counts = rollout.mask.bool()
    logps, scored = [], []
    for masked in masks.to(rollout.tokens.device).unbind(1):
        state = torch.where(masked | ~counts, ids.mask, rollout.tokens)
        logps.append(score_tokens(logits_fn, rollout.layout, state, rollout.tokens, settings))
        scored.append(masked & counts)
    return _finish(torch.cat(logps, dim=1), torch.cat(scored, dim=1))


def _copy_masks(
    generators: Sequence[torch.Generator],
    copies: int,
    length: int,
    low: float,
    high: float,
    coupled: bool,
) -> torch.Tensor:
    """(B, copies, N) bool masks; row b draws (t, u_1..u_N) per independent copy from its own
    generator; a coupled copy is the complement of the one before it and draws nothing."""
    rows = []
    for gen in generators:
        row: list[torch.Tensor] = []
        for copy in range(copies):
            if coupled and copy % 2:
                row.append(~row[-1])
                continue
            ratio = low + (high - low) * torch.rand((), generator=gen, dtype=torch.float64)
            row.append(torch.rand(length, generator=gen, dtype=torch.float64) < ratio)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _mask_prompt(
    layout: Layout, probability: float, generators: Sequence[torch.Generator]
) -> Layout:
    """The layout with each maskable instruction token of the conditional branch masked with
    `probability`; row b draws prompt_lengths[b] uniforms from its generator."""
    ids, cond = layout.ids, layout.cond
    masked = torch.zeros(cond.input_ids.shape, dtype=torch.bool)
    for b, (gen, length) in enumerate(zip(generators, cond.prompt_lengths.tolist(), strict=True)):
        masked[b, :length] = torch.rand(length, generator=gen, dtype=torch.float64) < probability
    structural = torch.as_tensor([ids.boi, ids.eoi, ids.newline], device=cond.input_ids.device)
    masked = masked.to(cond.input_ids.device) & ~torch.isin(cond.input_ids, structural)
    input_ids = cond.input_ids.masked_fill(masked, ids.mask)
    return dataclasses.replace(layout, cond=dataclasses.replace(cond, input_ids=input_ids))


def _cpu_generators(seeds: Sequence[int] | None, batch_size: int, who: str) -> list:
    if seeds is None or len(seeds) != batch_size:
        got = "none" if seeds is None else str(len(seeds))
        raise ValueError(f"{who}: one seed per row is needed ({batch_size} rows, {got} seeds)")
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def _finish(logprobs: torch.Tensor, mask: torch.Tensor) -> TokenLogProbs:
    return TokenLogProbs(torch.where(mask, logprobs, 0.0), mask.long())
