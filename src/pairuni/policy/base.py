"""The protocol every policy backend implements, and the rollout records it returns.

A backend (Janus autoregressive today, masked discrete diffusion later) samples K answers per
(image, question) and K images per prompt, recording the log-prob of every sampled token; it then
recomputes those log-probs with gradient (teacher forcing) from the record alone, so the trainer
never touches model internals. Records are small dataclasses of tensors that slice into
micro-batches with `rollout[i:j]` or `rollout.split(size)`.

Shapes: B rows (= prompts x K samples), P prompt tokens (left-padded), L completion tokens,
N image tokens per image.

Two protocols: `UnifiedPolicy` is what the evaluators and commands sample through;
`TrainablePolicy` adds what the trainer needs (device, pad id, train/eval mode, the reference
model, master-weight casting, the module and its FSDP units), so that the trainer drives every
backend through the same members and never reads a backend's attributes. A backend's records may
be its own `RolloutBatch` subclasses; the trainer reads only these fields of them:

    every record   group (B,), logprobs (B, T) float32: the sampling log-probs
    text records   completion_mask (B, L): 1 on the tokens of the answer (through its end token),
                   texts: B decoded answers
    image records  images: B decoded images (T = N: every image token is in the loss)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image

R = TypeVar("R", bound="RolloutBatch")

Task = Literal["understanding", "generation"]
"""The two tasks, as the rewards and the policies name them."""


def pad_cat(tensors: Sequence[torch.Tensor], value: float, left: bool) -> torch.Tensor:
    """Concatenate (B_i, T_i) tensors along dim 0, padding dim 1 to the longest on one side."""
    import torch

    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = width - t.shape[1]
        if pad:
            filler = t.new_full((t.shape[0], pad), value)
            t = torch.cat([filler, t] if left else [t, filler], dim=1)
        padded.append(t)
    return torch.cat(padded)


class UnsupportedSettingError(ValueError):
    """A setting the backend does not support (e.g. LoRA or FSDP on a backend without them);
    the message names the setting and what to use instead."""


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

    @classmethod
    def pad_rule(cls, name: str, pad_id: int) -> tuple[float, bool]:
        """(fill value, pad on the left?) of the 2-D field `name` when records of different
        widths are concatenated. Prompts (`prompt_*`) are left-padded (ids with `pad_id`, masks
        with 0); everything else is right-padded, `completion_ids` / `image_ids` with `pad_id`,
        the rest with 0 (masks, log-probs). A backend whose fields need other fills overrides
        this."""
        if name.startswith("prompt"):
            return (pad_id if name == "prompt_ids" else 0), True
        return (pad_id if name in ("completion_ids", "image_ids") else 0), False

    @classmethod
    def concat(cls: type[R], parts: Sequence[R], pad_id: int) -> R:
        """One record from several rollout calls: 2-D fields padded to the widest (`pad_rule`),
        lists joined, `group` offset so that the calls' groups stay distinct."""
        import torch

        if len(parts) == 1:
            return parts[0]
        values: dict[str, Any] = {}
        groups, offset = [], 0
        for part in parts:
            groups.append(part.group + offset)  # type: ignore[attr-defined]
            offset += int(part.group.max()) + 1  # type: ignore[attr-defined]
        for field in dataclasses.fields(parts[0]):
            name = field.name
            items = [getattr(p, name) for p in parts]
            if name == "group":
                values[name] = torch.cat(groups)
            elif isinstance(items[0], list):
                values[name] = [x for item in items for x in item]
            elif items[0].dim() == 2:
                value, left = cls.pad_rule(name, pad_id)
                values[name] = pad_cat(items, value, left=left)
            else:
                values[name] = torch.cat(items)
        return cls(**values)


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

    def save(self, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write a checkpoint that the backend's loader (`policy.registry`) reads back.
        `state_dict`: weights to write instead of the policy's own, keyed like
        `TrainablePolicy.module.state_dict()` (the trainer passes the full state gathered from
        FSDP shards)."""
        ...


class LogProbScorer(Protocol):
    """Teacher-forced log-probs of rollout records: a policy, or its reference model."""

    def text_logprobs(self, rollout: Any) -> torch.Tensor:
        """(B, L) log-probs of the completions; 0 where masked."""
        ...

    def image_logprobs(self, rollout: Any) -> torch.Tensor:
        """(B, N) log-probs of the image tokens."""
        ...


@runtime_checkable
class StagedLogProbScorer(LogProbScorer, Protocol):
    """A scorer whose log-probs of one record come from several forwards, each scoring its own
    tokens (DiMOO's `trajectory` replays one forward per sampler step). The trainer can then
    run the backward stage by stage, holding one stage's graph at a time instead of all of
    them; the summed gradient is the same (each token's log-prob depends on its own stage's
    forward only)."""

    def logprob_stages(self, task: Task, rollout: Any) -> int:
        """How many stages the loss's backward of `rollout` (a task's record) is split into;
        1: one backward of `text_logprobs` / `image_logprobs` as for any scorer."""
        ...

    def stage_logprobs(
        self, task: Task, rollout: Any, stage: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logprobs, mask) of stage `stage` in [0, logprob_stages): (B, T) log-probs with
        gradient, equal to `text_logprobs` / `image_logprobs` where `mask` (B, T) bool is set
        (the stage's tokens, disjoint across stages, together all of them) and 0 elsewhere."""
        ...


@dataclasses.dataclass
class FsdpLayout:
    """How FSDP2 shards a policy's `module` (`TrainablePolicy.fsdp_layout`).

    FSDP gathers a unit's parameters only in that unit's own forward, and a policy calls
    sub-modules directly rather than one `forward`, so every module the policy calls must be a
    unit (or inside one); the whole `module` becomes the root last.
    """

    units: list[torch.nn.Module | list[torch.nn.Module]]
    """The units in the order they are wrapped; a list is several modules sharing one unit
    (e.g. an embedding tied to the output head: one parameter lives in one unit only)."""
    replicated: list[torch.nn.Module]
    """Modules the root leaves unsharded (frozen ones, or ones called outside a forward)."""
    collective_forwards: Callable[[bool], None] | None = None
    """Told True once the module is sharded (every forward of a unit is then a collective:
    all processes must run the same number of forwards and backwards, whatever their data)
    and False while a rollout holds the weights gathered (`train.fsdp_gather_for_rollout`). A
    policy whose forward count depends on its data (early stop at end of sequence, a step
    with nothing to do) runs data-independent counts while it is True."""


def collective_forwards_setter(policy: object) -> Callable[[bool], None]:
    """An `FsdpLayout.collective_forwards` that stores the flag in `policy.collective_forwards`
    (where both backends' samplers read it)."""

    def tell(collective: bool) -> None:
        policy.collective_forwards = collective  # type: ignore[attr-defined]

    return tell


@runtime_checkable
class TrainablePolicy(UnifiedPolicy, Protocol):
    """What the trainer needs beyond sampling and log-probs; backends loaded through
    `policy.registry` for training implement it."""

    @property
    def device(self) -> torch.device:
        """Where the policy computes: its records' tensors and the rollout generators live
        there, and the trainer's autocast runs on its type."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights that produce the logits (the language model's)."""
        ...

    @property
    def pad_id(self) -> int:
        """The token id that pads id fields when records are concatenated
        (`RolloutBatch.concat`)."""
        ...

    @property
    def module(self) -> torch.nn.Module:
        """The policy's whole trainable model as one module: what FSDP wraps as its root and
        whose `state_dict()` keys the `state_dict` passed to `save`."""
        ...

    def train(self, mode: bool = True) -> None:
        """Put the model in training mode (`mode=False`: eval mode). The trainer does so only
        for the loss's forward passes, and only when dropout or gradient checkpointing needs
        it; rollouts, old and reference log-probs run in eval mode."""
        ...

    def eval(self) -> None:
        """Put the model in eval mode (the state it is loaded in)."""
        ...

    def cast_trainable(self, dtype: torch.dtype) -> int:
        """Hold the trainable parameters (those of `parameter_groups`) in `dtype`, in place
        (the same Parameter objects: ties survive); frozen ones keep theirs. Returns the number
        of elements whose dtype changed."""
        ...

    def reference(self, dtype: str | None = None) -> LogProbScorer:
        """pi_ref of the KL term (`algo.beta > 0`): the INITIAL model, frozen, in eval mode.
        Either a view sharing this policy's weights (a LoRA policy with its adapters disabled)
        or a frozen copy of the initial checkpoint (`model.path`, also when resuming) on this
        policy's device, held in `dtype` (a `model.dtype` name; None: `model.dtype`)."""
        ...

    def recorded_logprobs_are_exact(self, task: Task) -> bool:
        """Whether the rollout records' `logprobs` for `task` are, in float32, exactly what
        `text_logprobs` / `image_logprobs` compute for them (same distribution, same
        estimator). If not, the trainer recomputes pi_old with those functions before the
        first update of a step (`algo.num_iterations > 1`)."""
        ...

    def fsdp_layout(self, trainable: Sequence[str]) -> FsdpLayout:
        """The FSDP units of `module` when `trainable` (`model.trainable`) trains, for
        `train.sharding: fsdp`. A backend that cannot be sharded raises NotImplementedError
        with the reason."""
        ...


def cast_parameters(groups: dict[str, list[torch.nn.Parameter]], dtype: torch.dtype) -> int:
    """`TrainablePolicy.cast_trainable` for a backend's `parameter_groups()`: each parameter
    held in `dtype` in place (the same Parameter object: ties survive); returns the number of
    elements whose dtype changed."""
    changed = 0
    for params in groups.values():
        for param in params:
            if param.dtype != dtype:
                param.data = param.data.to(dtype)
                changed += param.numel()
    return changed


def missing_members(policy: object, protocol: type = TrainablePolicy) -> list[str]:
    """The public members of `protocol` (and its base protocols) that `policy` lacks."""
    names = {
        name
        for klass in protocol.__mro__
        if getattr(klass, "_is_protocol", False) and klass is not Protocol
        for name in vars(klass)
        if not name.startswith("_")
    }
    return sorted(name for name in names if not hasattr(policy, name))


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
