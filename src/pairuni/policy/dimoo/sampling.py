"""Batched samplers of Lumina-DiMOO: MaskGIT for images, LLaDA's semi-autoregressive blocks for
text, each recording per generated token the step it was committed at and its log-prob under
the distribution it was drawn from (what the RL ratio needs).

The model is any `logits_fn(input_ids (B, S), attention_mask (B, S)) -> (B, S, V)` whose
attention is bidirectional over the non-padding positions. Every row has its own seeded
`torch.Generator` (on the layout's device) and draws its noise in an order that depends on that
row alone, so a row sampled inside a batch equals the same row sampled alone with the same
seed, and a resumed run samples identically (CPU and CUDA generators give different streams).

Images (DiMOO's generators/image_generation_generator.py, batched): T steps; at step s every
still-masked image position gets logits restricted to the codebook, guided

    guided = cond + w (cond - uncond_text) + w_img (cond - uncond_image)

(text-to-image: w_img = 0, i.e. (1 + w) cond - w uncond, DiMOO's convention; it equals Janus's
`uncond + s (cond - uncond)` with s = 1 + w, so DiMOO's w = 4 is Janus's s = 5. Editing is
DiMOO's generators/image_to_image_generator.py formula, with its defaults w = 2.5, w_img = 4:
not InstructPix2Pix's nested form), and is sampled by Gumbel-max on guided / tau. Then
`masked_after_step` positions stay masked: those with the lowest log p(sample) + tau * g, with
p the untempered guided softmax (as DiMOO) and g a second, independent Gumbel noise; the others
are committed and never change. The recorded log-prob is log softmax(guided / tau)(sample).

Text (LLaDA's generate / DiMOO's text_understanding_generator.py, batched): the L-mask answer is
cut into blocks of `block_length`, each block gets steps / num_blocks steps, blocks left to
right; at each step every masked position of the block gets a candidate (Gumbel-max at tau,
argmax at tau = 0) from logits restricted to the text vocabulary (no image codes, no mask
token), and the `text_schedule` count of candidates with the highest untempered probability
are committed; the other candidates are discarded and resampled next step (LLaDA keeps only
committed tokens). Once a finished block holds a committed stop token, later blocks of that row
are not sampled (they stay uncommitted: `answer_pad`, commit step -1, out of the mask).
DiMOO's text sampler has no guidance here and none is implemented.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from pairuni.policy.dimoo.sequence import Branch, Layout

LogitsFn = Callable[..., torch.Tensor]
"""The model: (input_ids (B, S) int64, attention_mask (B, S) 0/1) -> logits (B, S, V). A
callable with the attribute `scores_positions = True` also takes `positions=` (B, n) and
`vocab=` (a slice of the vocabulary) and returns only those logits, (B, n, |vocab|)."""

NOT_COMMITTED = -1
"""`commit_step` of a position the sampler never committed (text after an early stop)."""


@dataclasses.dataclass(frozen=True)
class ImageSampling:
    """Settings of the MaskGIT image sampler (text-to-image and editing)."""

    steps: int = 35
    """T, the number of unmasking steps (DiMOO's default 64; PairUni's paper 35)."""
    guidance: float = 4.0
    """w, text guidance in DiMOO's convention: (1 + w) cond - w uncond (= Janus's s = 1 + w).
    0 skips the unconditional forward."""
    image_guidance: float = 0.0
    """w_img, editing's image guidance (cond - uncond_image); DiMOO's editing default is 4
    (with guidance 2.5). 0 skips the forward without the source image."""
    temperature: float = 1.0
    """tau: sampling from softmax(guided / tau) and tau * Gumbel in the remasking confidence;
    0 is greedy (then the recorded log-probs are those of softmax(guided))."""
    lockstep: bool = False
    """Run the forward of every scheduled step even when no row needs it (a stand-in forward
    of the first row, discarded; the log-prob replay does the same). Under FSDP every forward
    is a collective, so every process must run the same number whatever its data; the policy
    sets it then. Samples are unchanged."""

    def __post_init__(self) -> None:
        _check_steps(self.steps, "ImageSampling.steps")
        _check_temperature(self.temperature, "ImageSampling.temperature")


@dataclasses.dataclass(frozen=True)
class TextSampling:
    """Settings of the LLaDA block sampler (understanding answers)."""

    steps: int = 2
    """Total steps over all blocks; a multiple of the number of blocks (PairUni uses 2)."""
    block_length: int | None = None
    """Tokens per block; it must divide the answer length. None: one block (the whole answer)."""
    temperature: float = 0.8
    """tau of the candidates' Gumbel-max (dLLM-RL's 0.8); 0 is greedy (DiMOO's default)."""
    stop_ids: tuple[int, ...] | None = None
    """Tokens that end a completion (early stop, completion mask). None: (ids.eos,)."""
    lockstep: bool = False
    """As `ImageSampling.lockstep`: every scheduled step runs its forward (FSDP collectives)."""

    def __post_init__(self) -> None:
        _check_steps(self.steps, "TextSampling.steps")
        _check_temperature(self.temperature, "TextSampling.temperature")
        if self.block_length is not None and self.block_length < 1:
            raise ValueError(f"TextSampling.block_length must be >= 1, got {self.block_length}")

    def stops(self, eos: int) -> tuple[int, ...]:
        return (eos,) if self.stop_ids is None else tuple(self.stop_ids)


Settings = ImageSampling | TextSampling


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What a sampler returns. Shapes: B rows, S tokens, N generated tokens per row."""

    layout: Layout
    """The sequences with the generated part masked (every branch): what the estimators
    rebuild their states from."""
    settings: Settings
    seeds: tuple[int, ...]
    """(B,) the per-row seeds the sampler used."""
    tokens: torch.Tensor
    """(B, N) int64 token ids at the generated positions (images: image_offset + code; text:
    the sampled ids, `answer_pad` where never committed)."""
    commit_step: torch.Tensor
    """(B, N) int64, the step each token was committed at (0-based; text counts steps over
    all blocks), NOT_COMMITTED (-1) where never committed."""
    logprobs: torch.Tensor
    """(B, N) float32, log-prob of each committed token under the guided, tempered, restricted
    distribution it was drawn from; 0 where never committed (text tokens after the first stop
    keep theirs: `mask` says which count)."""
    mask: torch.Tensor
    """(B, N) int64, 1 on the tokens that count: every image token; text up to and including
    the first committed stop token."""
    input_ids: torch.Tensor
    """(B, S) int64, the conditional sequence with the tokens written in."""

    @property
    def kind(self) -> str:
        return self.layout.kind

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.layout.cond.attention_mask

    @property
    def positions(self) -> torch.Tensor:
        return self.layout.cond.positions

    @property
    def codes(self) -> torch.Tensor:
        """(B, N) image codes in [0, codebook_size), raster order (image rollouts only)."""
        if self.kind != "image":
            raise ValueError("Rollout.codes: this is a text rollout; read Rollout.tokens")
        return self.tokens - self.layout.ids.image_offset

    def select(self, rows: torch.Tensor | Sequence[int]) -> Rollout:
        """The rows `rows` (micro-batches); seeds follow their rows."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.tokens.device)
        tensors = {
            name: getattr(self, name)[index]
            for name in ("tokens", "commit_step", "logprobs", "mask", "input_ids")
        }
        return dataclasses.replace(
            self,
            layout=self.layout.select(index),
            seeds=tuple(self.seeds[i] for i in index.tolist()),
            **tensors,
        )


# --- schedules ---------------------------------------------------------------------------------


def masked_after_step(total: int, step: int, steps: int) -> int:
    """Image positions still masked after step `step` (0-based) of `steps`:
    floor(total cos(pi/2 (step + 1) / steps)), at least 1 before the last step, 0 at it."""
    if step >= steps - 1:
        return 0
    return max(1, math.floor(total * math.cos(0.5 * math.pi * (step + 1) / steps)))


def image_schedule(total: int, steps: int) -> list[int]:
    """Tokens committed at each step; they sum to `total` (the cosine is non-increasing, so the
    masked count never grows)."""
    masked, commits = total, []
    for step in range(steps):
        left = min(masked, masked_after_step(total, step, steps))
        commits.append(masked - left)
        masked = left
    return commits


def text_schedule(block_length: int, steps_per_block: int) -> list[int]:
    """Tokens committed at each step of a block: the block's masks split evenly, the first
    `block_length % steps_per_block` steps one more (LLaDA's get_num_transfer_tokens)."""
    base, extra = divmod(block_length, steps_per_block)
    return [base + (1 if i < extra else 0) for i in range(steps_per_block)]


def text_blocks(answer_length: int, settings: TextSampling) -> tuple[int, int]:
    """(block_length, steps_per_block), checked."""
    block = settings.block_length or answer_length
    if answer_length % block:
        raise ValueError(
            f"TextSampling.block_length={block} must divide the answer length {answer_length}"
        )
    blocks = answer_length // block
    if settings.steps % blocks:
        raise ValueError(
            f"TextSampling.steps={settings.steps} must be a multiple of the number of blocks "
            f"{blocks} (answer length {answer_length} / block_length {block})"
        )
    return block, settings.steps // blocks


# --- logits ------------------------------------------------------------------------------------


def guide(
    cond: torch.Tensor,
    uncond_text: torch.Tensor | None = None,
    uncond_image: torch.Tensor | None = None,
    *,
    guidance: float = 0.0,
    image_guidance: float = 0.0,
) -> torch.Tensor:
    """cond + w (cond - uncond_text) + w_img (cond - uncond_image); a branch whose scale is 0
    is not needed."""
    out = cond
    if guidance != 0.0:
        out = out + guidance * (cond - _need(uncond_text, "uncond_text", guidance))
    if image_guidance != 0.0:
        out = out + image_guidance * (cond - _need(uncond_image, "uncond_image", image_guidance))
    return out


def temper(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / tau; tau = 0 (greedy) leaves them as they are."""
    return logits / temperature if temperature > 0 else logits


def generation_logits(
    logits_fn: LogitsFn,
    layout: Layout,
    tokens: torch.Tensor,
    *,
    guidance: float = 0.0,
    image_guidance: float = 0.0,
    rows: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 logits at the generated positions of the state `tokens` (B, N) (ids.mask where
    masked), restricted to the codebook (images, guided; (R, n, codebook_size)) or to the text
    vocabulary (ids below image_offset, the mask token at -inf; (R, n, image_offset)), for the
    rows `rows` (default all) and generated columns `columns` (default all)."""
    ids = layout.ids
    if layout.kind == "image":
        vocab = slice(ids.image_offset, ids.image_end)
        forwards = {"cond": layout.cond}
        if guidance != 0.0:
            forwards["uncond_text"] = _need(layout.uncond_text, "uncond_text", guidance)
        if image_guidance != 0.0:
            forwards["uncond_image"] = _need(layout.uncond_image, "uncond_image", image_guidance)
        out = {
            name: _branch_logits(logits_fn, branch, tokens, rows, columns, vocab, ids.image_end)
            for name, branch in forwards.items()
        }
        return guide(**out, guidance=guidance, image_guidance=image_guidance)
    if guidance != 0.0 or image_guidance != 0.0:
        raise ValueError("text sampling has no guidance; pass guidance=0")
    logits = _branch_logits(
        logits_fn, layout.cond, tokens, rows, columns, slice(0, ids.image_offset), ids.image_end
    )
    banned = torch.zeros(ids.image_offset, dtype=torch.bool, device=logits.device)
    if ids.mask < ids.image_offset:
        banned[ids.mask] = True
    return logits.masked_fill(banned, float("-inf"))


def _branch_logits(
    logits_fn: LogitsFn,
    branch: Branch,
    tokens: torch.Tensor,
    rows: torch.Tensor | None,
    columns: torch.Tensor | None,
    vocab: slice,
    min_vocab: int,
) -> torch.Tensor:
    if rows is not None:
        branch, tokens = branch.select(rows), tokens[rows]
    positions = branch.positions if columns is None else branch.positions[:, columns]
    if getattr(logits_fn, "scores_positions", False):
        # the model computes its head only at `positions` and on the `vocab` rows: the same
        # values, without the (B, S, V) tensor (V = 134,548: most of a tiny model's time)
        picked = logits_fn(
            branch.with_tokens(tokens), branch.attention_mask, positions=positions, vocab=vocab
        )
        return picked.float()
    logits = logits_fn(branch.with_tokens(tokens), branch.attention_mask)
    expected = (*branch.input_ids.shape, "V")
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(branch.input_ids.shape):
        raise ValueError(f"logits_fn must return {expected}, got {tuple(logits.shape)}")
    if logits.shape[-1] < min_vocab:
        raise ValueError(
            f"logits_fn returned {logits.shape[-1]} vocabulary entries; DiMOO's ids need at least "
            f"image_offset + codebook_size = {min_vocab} (check the checkpoint's embedding_size)"
        )
    picked = logits[torch.arange(positions.shape[0], device=logits.device)[:, None], positions]
    return picked[..., vocab].float()


def _need(branch: object, name: str, scale: float) -> object:
    if branch is None:
        raise ValueError(
            f"guidance {scale} needs the layout's {name} branch, which this layout has not "
            "(set that guidance to 0, or build the layout of the right task)"
        )
    return branch


# --- noise -------------------------------------------------------------------------------------


def make_generators(seeds: Sequence[int], batch_size: int, device: torch.device) -> list:
    """One seeded generator per row, on `device`."""
    seeds = [int(s) for s in seeds]
    if len(seeds) != batch_size:
        raise ValueError(f"one seed per row is needed: {len(seeds)} seeds for {batch_size} rows")
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]


def gumbel(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Float64 Gumbel(0, 1) noise (float64 as LLaDA: low-precision Gumbel-max hurts quality)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))


def _gumbel_argmax(
    tempered: torch.Tensor, temperature: float, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """(R, n) samples of softmax(tempered) by Gumbel-max, row r with generators[r]; argmax at
    tau = 0 (no noise drawn). Row by row, so the noise lives one row at a time."""
    if temperature == 0:
        return tempered.argmax(-1)
    return torch.stack(
        [
            (row.double() + gumbel(tuple(row.shape), gen, row.device)).argmax(-1)
            for row, gen in zip(tempered, generators, strict=True)
        ]
    )


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)


# --- samplers ----------------------------------------------------------------------------------


@torch.no_grad()
def sample_images(
    logits_fn: LogitsFn, layout: Layout, settings: ImageSampling, seeds: Sequence[int]
) -> Rollout:
    """Text-to-image or editing rollouts of a layout (`text_to_image_layout`,
    `editing_layout`); `seeds` (B,) one per row. Forwards: at most T x (1 + [w != 0] +
    [w_img != 0]) (a step that would commit nothing, when T > N, is skipped)."""
    _check_layout(layout, "image", settings, ImageSampling)
    ids, device = layout.ids, layout.device
    batch, total = layout.batch_size, layout.num_generated
    generators = make_generators(seeds, batch, device)
    tau = settings.temperature
    tokens = torch.full((batch, total), ids.mask, dtype=torch.long, device=device)
    commit_step = torch.full_like(tokens, NOT_COMMITTED)
    logprobs = torch.zeros((batch, total), dtype=torch.float32, device=device)
    for step, count in enumerate(image_schedule(total, settings.steps)):
        if count == 0:  # more steps than tokens: this step would commit nothing
            continue
        masked = commit_step == NOT_COMMITTED
        guided = generation_logits(
            logits_fn,
            layout,
            tokens,
            guidance=settings.guidance,
            image_guidance=settings.image_guidance,
        )
        tempered = temper(guided, tau)
        sample = _gumbel_argmax(tempered, tau, generators)
        confidence = _gather(guided.log_softmax(-1), sample).double()
        if tau > 0:
            noise = torch.stack([gumbel((total,), gen, device) for gen in generators])
            confidence = confidence + tau * noise
        stay = _lowest(confidence.masked_fill(~masked, math.inf), int(masked[0].sum()) - count)
        commit = masked & ~stay
        tokens = torch.where(commit, sample + ids.image_offset, tokens)
        commit_step = torch.where(commit, step, commit_step)
        logprobs = torch.where(commit, _gather(tempered.log_softmax(-1), sample), logprobs)
    return Rollout(
        layout=layout,
        settings=settings,
        seeds=tuple(int(s) for s in seeds),
        tokens=tokens,
        commit_step=commit_step,
        logprobs=logprobs,
        mask=torch.ones_like(tokens),
        input_ids=layout.cond.with_tokens(tokens),
    )


@torch.no_grad()
def sample_text(
    logits_fn: LogitsFn, layout: Layout, settings: TextSampling, seeds: Sequence[int]
) -> Rollout:
    """Understanding rollouts of an `understanding_layout`; `seeds` (B,) one per row.
    Forwards: at most `steps` (a step that commits nothing is skipped), each over the rows not
    yet stopped; exactly the scheduled steps under `settings.lockstep`."""
    _check_layout(layout, "text", settings, TextSampling)
    ids, device = layout.ids, layout.device
    batch, length = layout.batch_size, layout.num_generated
    block, steps_per_block = text_blocks(length, settings)
    generators = make_generators(seeds, batch, device)
    stops = torch.as_tensor(settings.stops(ids.eos), dtype=torch.long, device=device)
    tau = settings.temperature
    tokens = torch.full((batch, length), ids.mask, dtype=torch.long, device=device)
    commit_step = torch.full_like(tokens, NOT_COMMITTED)
    logprobs = torch.zeros((batch, length), dtype=torch.float32, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    for k in range(length // block):
        columns = torch.arange(k * block, (k + 1) * block, device=device)
        for i, count in enumerate(text_schedule(block, steps_per_block)):
            rows = (~stopped).nonzero().squeeze(1)
            if count == 0:
                continue
            if rows.numel() == 0:
                if settings.lockstep:  # every row stopped here, not necessarily on the others
                    generation_logits(logits_fn, layout, tokens, rows=rows.new_zeros(1),
                                      columns=columns)  # fmt: skip
                continue
            logits = generation_logits(logits_fn, layout, tokens, rows=rows, columns=columns)
            tempered = temper(logits, tau)
            candidate = _gumbel_argmax(tempered, tau, [generators[r] for r in rows.tolist()])
            where = (rows[:, None], columns[None, :])
            masked = commit_step[where] == NOT_COMMITTED
            confidence = _gather(logits.log_softmax(-1), candidate).masked_fill(~masked, -math.inf)
            commit = torch.zeros_like(masked).scatter(
                1, confidence.topk(count, dim=1).indices, True
            )
            commit &= masked
            tokens[where] = torch.where(commit, candidate, tokens[where])
            commit_step[where] = torch.where(commit, k * steps_per_block + i, commit_step[where])
            step_logprobs = _gather(tempered.log_softmax(-1), candidate)
            logprobs[where] = torch.where(commit, step_logprobs, logprobs[where])
        committed = commit_step != NOT_COMMITTED
        stopped |= (torch.isin(tokens, stops) & committed).any(1)
    committed = commit_step != NOT_COMMITTED
    tokens = torch.where(committed, tokens, ids.answer_pad)
    return Rollout(
        layout=layout,
        settings=settings,
        seeds=tuple(int(s) for s in seeds),
        tokens=tokens,
        commit_step=commit_step,
        logprobs=logprobs,
        mask=completion_mask(tokens, committed, stops),
        input_ids=layout.cond.with_tokens(tokens),
    )


def completion_mask(
    tokens: torch.Tensor, committed: torch.Tensor, stops: torch.Tensor
) -> torch.Tensor:
    """(B, L) int64: 1 on committed tokens up to and including the first stop token."""
    is_stop = torch.isin(tokens, stops) & committed
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (committed & (stops_before == 0)).long()


def _lowest(confidence: torch.Tensor, count: int) -> torch.Tensor:
    """(B, n) bool, True on the `count` lowest entries of each row."""
    chosen = torch.zeros(confidence.shape, dtype=torch.bool, device=confidence.device)
    if count <= 0:
        return chosen
    return chosen.scatter(1, confidence.topk(count, dim=1, largest=False).indices, True)


def _check_layout(layout: Layout, kind: str, settings: object, expected: type) -> None:
    if layout.kind != kind:
        raise ValueError(
            f"this sampler takes {kind} layouts, got a {layout.task} layout "
            "(sample_images: text_to_image/editing; sample_text: understanding)"
        )
    if not isinstance(settings, expected):
        raise TypeError(f"settings must be {expected.__name__}, got {type(settings).__name__}")


def _check_steps(steps: int, name: str) -> None:
    if int(steps) < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")


def _check_temperature(temperature: float, name: str) -> None:
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{name} must be >= 0 (0 = greedy), got {temperature}")
