"""Lumina-DiMOO's token layouts: the sequences its samplers and log-prob estimators read.

A layout is a batch of right-padded sequences (0/1 attention mask, padding never attended)
whose generated part is still masked, plus, per row, the positions of the generated tokens:

- text-to-image: `prompt <answer> <boi> H x (W masks, newline) <eoi> </answer>`, and its
  unconditional twin (the user text replaced by `<uncondition>`, the same image part);
- understanding: the prompt with the image block `<boi> rows+newline <eoi>` inserted before
  its last token, then `<answer>`, L masks, `</answer>`;
- editing: the source image block inside the prompt, the target block masked; two
  unconditional branches, one without the instruction (`<uncondition>`, source kept) and one
  without the source image (the instruction alone), for text and image guidance.

Generated image positions skip the newlines (they are fixed tokens, never sampled). The
guidance branches hold the same generated part in the same order, so generated token j of a
row sits at `cond.positions[b, j]` in the conditional sequence and at
`uncond_text.positions[b, j]` in the unconditional one (absolute offsets differ with the prompt
length; with rotary embeddings only relative offsets matter, as in DiMOO's own sampler).

Prompts are the plain tagged text `<system>S</system><user>U</user>` with DiMOO's fixed system
prompts below. The tokenizer is anything with `encode(text, add_special_tokens=...)`; DiMOO's
scripts call `tokenizer(text)` (special tokens added), so `add_special_tokens` defaults to True
and the image block goes before the last token of that encoding, exactly as in DiMOO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, Protocol

import torch

from pairuni.policy.dimoo.ids import DimooIds

# DiMOO's fixed system prompts (its utils/prompt_utils.py).
TEXT_TO_IMAGE_SYSTEM = "Generate an image according to the text prompt."
UNDERSTANDING_SYSTEM = (
    "You are a multimodal model that can process both text and images. Answer the following "
    "question based on the provided images. Analyze each image and combine relevant details to "
    "answer."
)
EDITING_SYSTEM = (
    "Generate an image applying the following editing instruction based on the original image."
)
UNCONDITION_TEXT = "<uncondition>"

Task = Literal["text_to_image", "understanding", "editing"]
Codes = torch.Tensor | Sequence[Sequence[int]]


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def prompt_text(system: str, user: str) -> str:
    """DiMOO's prompt string: `<system>S</system><user>U</user>`."""
    return f"<system>{system}</system><user>{user}</user>"


def encode_prompt(
    tokenizer: Tokenizer, system: str, user: str, *, add_special_tokens: bool = True
) -> list[int]:
    ids = list(tokenizer.encode(prompt_text(system, user), add_special_tokens=add_special_tokens))
    if not ids:
        raise ValueError("the tokenizer encoded the prompt to no tokens; check the tokenizer")
    return ids


def encode_unconditional_prompt(
    tokenizer: Tokenizer, system: str, ids: DimooIds, *, add_special_tokens: bool = True
) -> list[int]:
    """The prompt with the user text replaced by `<uncondition>`, which must encode to the single
    id `ids.uncondition` (an added token of the checkpoint's tokenizer)."""
    tokens = encode_prompt(
        tokenizer, system, UNCONDITION_TEXT, add_special_tokens=add_special_tokens
    )
    if ids.uncondition not in tokens:
        raise ValueError(
            f"the tokenizer did not encode {UNCONDITION_TEXT!r} as the single id "
            f"ids.uncondition={ids.uncondition}; the checkpoint's tokenizer must list it among "
            "its added tokens (tokenizer.json), or pass DimooIds(uncondition=<its id>)"
        )
    return tokens


def image_code_grid(codes: Codes, ids: DimooIds, *, what: str = "image codes") -> torch.Tensor:
    """(h, w) int64 codes in [0, codebook_size), checked."""
    grid = torch.as_tensor(codes, dtype=torch.long)
    if grid.dim() != 2 or grid.numel() == 0:
        raise ValueError(f"{what} must be a non-empty (h, w) grid, got shape {tuple(grid.shape)}")
    if int(grid.min()) < 0 or int(grid.max()) >= ids.codebook_size:
        raise ValueError(
            f"{what} must be VQ codes in [0, {ids.codebook_size}) (not token ids: subtract "
            f"ids.image_offset={ids.image_offset}), got range [{int(grid.min())}, "
            f"{int(grid.max())}]"
        )
    return grid


def image_block(codes: Codes, ids: DimooIds) -> list[int]:
    """`<boi>`, each row of code tokens followed by a newline, `<eoi>` (a known image)."""
    grid = image_code_grid(codes, ids) + ids.image_offset
    newline = torch.full((grid.shape[0], 1), ids.newline, dtype=torch.long)
    return [ids.boi, *torch.cat([grid, newline], dim=1).flatten().tolist(), ids.eoi]


def masked_image_answer(height: int, width: int, ids: DimooIds) -> tuple[list[int], list[int]]:
    """`<answer> <boi>` H rows of (W masks, newline) `<eoi> </answer>`, and the offsets of the
    mask tokens inside it (row-major, newlines skipped)."""
    _check_positive(height=height, width=width)
    row = [ids.mask] * width + [ids.newline]
    tokens = [ids.answer_start, ids.boi, *(row * height), ids.eoi, ids.answer_end]
    offsets = [2 + r * (width + 1) + c for r in range(height) for c in range(width)]
    return tokens, offsets


def masked_text_answer(length: int, ids: DimooIds) -> tuple[list[int], list[int]]:
    """`<answer>` L masks `</answer>`, and the offsets of the masks inside it."""
    _check_positive(answer_length=length)
    return [ids.answer_start, *([ids.mask] * length), ids.answer_end], list(range(1, length + 1))


def insert_before_last(prompt: Sequence[int], block: Sequence[int]) -> list[int]:
    """DiMOO's image placement: `prompt[:-1] + block + prompt[-1:]`."""
    return [*prompt[:-1], *block, *prompt[-1:]]


@dataclasses.dataclass(frozen=True)
class Branch:
    """One batch of sequences fed to the model (the conditional one or a guidance twin).

    Shapes: B rows, S tokens (right-padded), N generated tokens per row."""

    input_ids: torch.Tensor
    """(B, S) int64; generated positions hold the mask token, padding holds `ids.answer_pad`
    (never attended)."""
    attention_mask: torch.Tensor
    """(B, S) int64, 1 on real tokens, 0 on right padding."""
    positions: torch.Tensor
    """(B, N) int64, where generated token j of row b sits."""
    prompt_lengths: torch.Tensor
    """(B,) int64, tokens of the instruction (system, user text, source image) before
    `<answer>`: what the mean-field estimator may mask."""

    def with_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, S) ids with `tokens` (B, N) written at the generated positions."""
        return self.input_ids.scatter(1, self.positions, tokens.to(self.input_ids.dtype))

    def select(self, rows: torch.Tensor) -> Branch:
        return Branch(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True)
class Layout:
    """A batch of one task: the conditional branch and the guidance branches it has."""

    task: Task
    ids: DimooIds
    cond: Branch
    uncond_text: Branch | None = None
    """Text-to-image: `<uncondition>` for the user text. Editing: the instruction dropped
    (`<uncondition>`), the source image kept."""
    uncond_image: Branch | None = None
    """Editing only: the source image dropped, the instruction kept."""
    grid: tuple[int, int] | None = None
    """(H, W) codes of the generated image; None for understanding (text answers)."""

    @property
    def kind(self) -> Literal["image", "text"]:
        return "text" if self.task == "understanding" else "image"

    @property
    def batch_size(self) -> int:
        return int(self.cond.input_ids.shape[0])

    @property
    def num_generated(self) -> int:
        return int(self.cond.positions.shape[1])

    @property
    def device(self) -> torch.device:
        return self.cond.input_ids.device

    def branches(self) -> dict[str, Branch]:
        named = {"cond": self.cond, "uncond_text": self.uncond_text}
        named["uncond_image"] = self.uncond_image
        return {name: branch for name, branch in named.items() if branch is not None}

    def select(self, rows: torch.Tensor | Sequence[int]) -> Layout:
        """The layout of the rows `rows` (for micro-batches)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        picked = {name: branch.select(index) for name, branch in self.branches().items()}
        return dataclasses.replace(self, **picked)


def pad_right(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) right-padded ids and their 0/1 attention mask."""
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[b, : len(row)] = 1
    return input_ids.to(device), attention_mask.to(device)


def build_branch(
    prefixes: Sequence[Sequence[int]],
    answer: Sequence[int],
    answer_offsets: Sequence[int],
    ids: DimooIds,
    device: torch.device | str | None = None,
) -> Branch:
    """Rows `prefix + answer`, right-padded; generated positions = len(prefix) + offsets."""
    input_ids, attention_mask = pad_right(
        [[*prefix, *answer] for prefix in prefixes], ids.answer_pad, device
    )
    starts = torch.as_tensor([len(prefix) for prefix in prefixes], dtype=torch.long)
    offsets = torch.as_tensor(list(answer_offsets), dtype=torch.long)
    return Branch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        positions=(starts[:, None] + offsets[None, :]).to(device),
        prompt_lengths=starts.to(device),
    )


def text_to_image_layout(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    height: int,
    width: int,
    ids: DimooIds,
    *,
    system: str = TEXT_TO_IMAGE_SYSTEM,
    add_special_tokens: bool = True,
    device: torch.device | str | None = None,
) -> Layout:
    """One row per prompt: an image of H x W codes (512 px -> 32 x 32) and its unconditional
    twin for guidance."""
    _check_batch(prompts=prompts)
    answer, offsets = masked_image_answer(height, width, ids)
    cond = [
        encode_prompt(tokenizer, system, p, add_special_tokens=add_special_tokens) for p in prompts
    ]
    uncond = encode_unconditional_prompt(
        tokenizer, system, ids, add_special_tokens=add_special_tokens
    )
    return Layout(
        task="text_to_image",
        ids=ids,
        cond=build_branch(cond, answer, offsets, ids, device),
        uncond_text=build_branch([uncond] * len(prompts), answer, offsets, ids, device),
        grid=(height, width),
    )


def understanding_layout(
    tokenizer: Tokenizer,
    questions: Sequence[str],
    images: Sequence[Codes],
    answer_length: int,
    ids: DimooIds,
    *,
    system: str = UNDERSTANDING_SYSTEM,
    add_special_tokens: bool = True,
    device: torch.device | str | None = None,
) -> Layout:
    """One row per (image codes (h, w), question): an answer of `answer_length` masks. Images
    of different sizes may share a batch."""
    _check_batch(questions=questions)
    _check_same_length(questions=questions, images=images)
    answer, offsets = masked_text_answer(answer_length, ids)
    prefixes = [
        insert_before_last(
            encode_prompt(tokenizer, system, q, add_special_tokens=add_special_tokens),
            image_block(image, ids),
        )
        for q, image in zip(questions, images, strict=True)
    ]
    return Layout(
        task="understanding", ids=ids, cond=build_branch(prefixes, answer, offsets, ids, device)
    )


def editing_layout(
    tokenizer: Tokenizer,
    instructions: Sequence[str],
    sources: Sequence[Codes],
    ids: DimooIds,
    *,
    grid: tuple[int, int] | None = None,
    system: str = EDITING_SYSTEM,
    add_special_tokens: bool = True,
    device: torch.device | str | None = None,
) -> Layout:
    """One row per (source image codes (h, w), instruction): a target image of `grid` (H, W)
    codes, by default the sources' common size. Branches (DiMOO's inference_i2i.py):
    cond = prompt with the source block before its last token; uncond_text = the
    `<uncondition>` prompt with the source block; uncond_image = the prompt alone."""
    _check_batch(instructions=instructions)
    _check_same_length(instructions=instructions, sources=sources)
    grids = [image_code_grid(s, ids, what=f"sources[{i}]") for i, s in enumerate(sources)]
    if grid is None:
        sizes = {tuple(g.shape) for g in grids}
        if len(sizes) != 1:
            raise ValueError(
                f"editing_layout: the sources have different sizes {sorted(sizes)}; pass "
                "grid=(H, W) for the target image"
            )
        grid = sizes.pop()
    answer, offsets = masked_image_answer(grid[0], grid[1], ids)
    prompts = [
        encode_prompt(tokenizer, system, text, add_special_tokens=add_special_tokens)
        for text in instructions
    ]
    uncond = encode_unconditional_prompt(
        tokenizer, system, ids, add_special_tokens=add_special_tokens
    )
    blocks = [image_block(g, ids) for g in grids]
    return Layout(
        task="editing",
        ids=ids,
        cond=build_branch(
            [insert_before_last(p, blk) for p, blk in zip(prompts, blocks, strict=True)],
            answer,
            offsets,
            ids,
            device,
        ),
        uncond_text=build_branch(
            [insert_before_last(uncond, blk) for blk in blocks], answer, offsets, ids, device
        ),
        uncond_image=build_branch(prompts, answer, offsets, ids, device),
        grid=(int(grid[0]), int(grid[1])),
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _check_batch(**named: Sequence[object]) -> None:
    for name, values in named.items():
        if isinstance(values, str) or len(values) == 0:
            raise ValueError(f"{name} must be a non-empty list (one entry per row)")


def _check_same_length(**named: Sequence[object]) -> None:
    lengths = {name: len(values) for name, values in named.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"one entry per row is needed in each of {lengths}")
