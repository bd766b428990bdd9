"""The protocol every policy backend implements, and the rollout records it returns.

A backend (Janus autoregressive today, masked discrete diffusion later) samples K answers per
(image, question) and K images per prompt, recording the log-prob of every sampled token; it then
recomputes those log-probs with gradient (teacher forcing) from the record alone, so the trainer
never touches model internals. Records are small dataclasses of tensors that slice into
micro-batches with `rollout[i:j]` or `rollout.split(size)`.

Shapes: B rows (= prompts x K samples), P prompt tokens (left-padded), L completion tokens,
N image tokens per image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image

R = TypeVar("R", bound="RolloutBatch")


@dataclasses.dataclass
class RolloutBatch:
    """Base of the rollout records: every field is a tensor or a list with one entry per row."""

    def __len__(self) -> int:
        return int(self.group.shape[0])  # type: ignore[attr-defined]

    def __getitem__(self: R, index: int | slice | Sequence[int] | torch.Tensor) -> R:
        """The rows `index` of every field (an int keeps the row dimension)."""
        import torch

        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        elif isinstance(index, torch.Tensor):
            rows = index.tolist()
        else:
            rows = list(index)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                values[field.name] = value[
                    torch.as_tensor(rows, dtype=torch.long, device=value.device)
                ]
            elif isinstance(value, list):
                # an empty list (e.g. images not decoded) stays empty
                values[field.name] = [value[r] for r in rows] if value else []
            else:  # a scalar setting shared by all rows
                values[field.name] = value
        return type(self)(**values)

    def split(self: R, size: int) -> Iterator[R]:
        """Consecutive micro-batches of at most `size` rows."""
        if size < 1:
            raise ValueError(f"micro-batch size must be >= 1, got {size}")
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def to(self: R, device: torch.device | str) -> R:
        """A copy with every tensor on `device`."""
        import torch

        values = {
            f.name: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }
        return type(self)(**values)


@dataclasses.dataclass
class TextRollout(RolloutBatch):
    """K sampled answers per (image, question): everything needed to recompute their log-probs."""

    prompt_ids: torch.Tensor
    """(B, P) int64, left-padded chat prompt holding the image placeholder tokens."""
    prompt_mask: torch.Tensor
    """(B, P) int64, 1 on real prompt tokens, 0 on left padding."""
    pixel_values: torch.Tensor
    """(B, 3, H, W) the processed image of each row."""
    completion_ids: torch.Tensor
    """(B, L) int64, sampled tokens; pad after the first EOS."""
    completion_mask: torch.Tensor
    """(B, L) int64, 1 up to and including the first EOS, 0 after it."""
    logprobs: torch.Tensor
    """(B, L) float32, log-prob of each sampled token under the sampling distribution
    (softmax(logits / T), before top-p); 0 where the mask is 0."""
    texts: list[str]
    """B decoded answers (special tokens removed)."""
    group: torch.Tensor
    """(B,) int64, index of the (image, question) each row answers; rows of a group share it."""


@dataclasses.dataclass
class ImageRollout(RolloutBatch):
    """K sampled images per prompt: everything needed to recompute their log-probs."""

    prompt_ids: torch.Tensor
    """(B, P) int64, left-padded chat prompt ending in <begin_of_image> (the conditional one)."""
    prompt_mask: torch.Tensor
    """(B, P) int64, 1 on real prompt tokens, 0 on left padding."""
    image_ids: torch.Tensor
    """(B, N) int64, sampled VQ codes in raster order."""
    logprobs: torch.Tensor
    """(B, N) float32, log-prob of each code under the distribution it was sampled from
    (CFG-combined, at the image temperature)."""
    images: list[Image.Image]
    """B decoded images (empty when the rollout was asked not to decode)."""
    group: torch.Tensor
    """(B,) int64, index of the prompt each row depicts."""


@runtime_checkable
class UnifiedPolicy(Protocol):
    """What the trainer, the evaluators and the commands need from a unified model."""

    def rollout_text(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        num_samples: int = 1,
        *,
        options: Sequence[Sequence[str] | None] | None = None,
        greedy: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> TextRollout:
        """`num_samples` answers to each (image, question); rows are grouped by pair."""
        ...

    def rollout_image(
        self,
        prompts: Sequence[str],
        num_samples: int = 1,
        *,
        greedy: bool = False,
        generator: torch.Generator | int | None = None,
        decode: bool = True,
    ) -> ImageRollout:
        """`num_samples` images for each prompt; rows are grouped by prompt."""
        ...

    def text_logprobs(self, rollout: TextRollout) -> torch.Tensor:
        """(B, L) teacher-forced log-probs of the completions, with gradient; 0 where masked."""
        ...

    def image_logprobs(self, rollout: ImageRollout) -> torch.Tensor:
        """(B, N) teacher-forced log-probs of the image codes, with gradient."""
        ...

    def decode_images(self, image_ids: torch.Tensor) -> list[Image.Image]:
        """(B, N) codes -> B RGB images."""
        ...

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters by module name (for per-module learning rates)."""
        ...

    def save(self, out_dir: str | Path) -> None:
        """Write a checkpoint that `load` (and the real-checkpoint loader) reads back."""
        ...


@runtime_checkable
class EditingPolicy(Protocol):
    """A backend that edits images (image + instruction -> image), for ImgEdit. Janus does not;
    the masked-diffusion backend does."""

    def edit_images(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[str],
        *,
        greedy: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> list[Image.Image]:
        """One edited image per (source image, instruction), in order."""
        ...
