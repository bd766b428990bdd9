"""`DimooPolicy`: Lumina-DiMOO behind the same protocol as Janus (`policy.base.UnifiedPolicy`).

Understanding: the image is tokenised by the VQ (the model has no separate vision encoder), the
answer is `rollout.max_new_tokens` masks unmasked by LLaDA's block sampler. Generation: MaskGIT
over `image_size / 16` squared codes with text guidance. Every rollout records the step each
token was committed at, its sampling log-prob and the per-row seed; the log-prob estimator of
the ratio (`rollout.dimoo.logprob`) rebuilds its states from the record alone.

`target_text` / `target_images` / `supervised_logprobs` give `pairuni sft` its targets and
DiMOO's masked-token loss (`pairuni.policy.dimoo.sft`, docs/sft.md).

The rollout records keep every tensor flat and right-padded (no prompt field is left-padded),
so that they slice into micro-batches and concatenate like Janus's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pairuni.policy.base import (
    FsdpLayout,
    RolloutBatch,
    Task,
    UnsupportedSettingError,
    cast_parameters,
    collective_forwards_setter,
)
from pairuni.policy.dimoo.config import DimooRolloutConfig
from pairuni.policy.dimoo.sampling import ImageSampling, Rollout, TextSampling
from pairuni.policy.prompts import format_question

if TYPE_CHECKING:
    from PIL import Image

    from pairuni.policy.config import ModelConfig, RolloutConfig
    from pairuni.policy.dimoo.model import DimooModel
    from pairuni.policy.dimoo.sequence import Branch, Layout
    from pairuni.policy.lora import AdaptersDisabled

TRAINABLE = ("language_model",)
LORA_PREFIXES = {"language_model": ("model", "lm_head")}
"""Where `model.lora.modules` puts adapters in the backbone (`LlamaForCausalLM`): the linear
layers of the decoder stack; the output head stays frozen, as for Janus."""


@dataclasses.dataclass
class DimooTextRollout(RolloutBatch):
    """K answers per (image, question), with what the estimators need to replay them.
    Shapes: B rows, S sequence tokens (right-padded), L answer tokens."""

    seq_ids: torch.Tensor
    """(B, S) int64, the understanding sequence with the answer masked."""
    seq_mask: torch.Tensor
    """(B, S) int64, 1 on real tokens."""
    seq_positions: torch.Tensor
    """(B, L) int64, where answer token j of each row sits."""
    seq_instruction_len: torch.Tensor
    """(B,) int64, tokens before `<answer>` (what `mean_field` may mask)."""
    completion_ids: torch.Tensor
    """(B, L) int64, the answer tokens (`answer_pad` where never committed)."""
    completion_mask: torch.Tensor
    """(B, L) int64, 1 up to and including the first end-of-sequence token."""
    commit_step: torch.Tensor
    """(B, L) int64, the step each token was committed at (-1: never)."""
    logprobs: torch.Tensor
    """(B, L) float32, sampling log-prob of each token; 0 where the mask is 0."""
    seeds: torch.Tensor
    """(B,) int64, the row's sampler seed (also seeds the estimators' random masks)."""
    texts: list[str]
    group: torch.Tensor


@dataclasses.dataclass
class DimooImageRollout(RolloutBatch):
    """K images per prompt: the conditional and unconditional sequences and the record."""

    seq_ids: torch.Tensor
    seq_mask: torch.Tensor
    seq_positions: torch.Tensor
    seq_instruction_len: torch.Tensor
    uncond_ids: torch.Tensor
    """(B, S') int64, the `<uncondition>` twin (its image part masked)."""
    uncond_mask: torch.Tensor
    uncond_positions: torch.Tensor
    uncond_instruction_len: torch.Tensor
    image_ids: torch.Tensor
    """(B, N) int64, the VQ codes in raster order."""
    commit_step: torch.Tensor
    logprobs: torch.Tensor
    seeds: torch.Tensor
    images: list[Image.Image]
    group: torch.Tensor


def _branch_fields(branch: Branch, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}_ids": branch.input_ids,
        f"{prefix}_mask": branch.attention_mask,
        f"{prefix}_positions": branch.positions,
        f"{prefix}_instruction_len": branch.prompt_lengths,
    }


def _branch(record: RolloutBatch, prefix: str) -> Branch:
    from pairuni.policy.dimoo.sequence import Branch

    return Branch(
        input_ids=getattr(record, f"{prefix}_ids"),
        attention_mask=getattr(record, f"{prefix}_mask"),
        positions=getattr(record, f"{prefix}_positions"),
        prompt_lengths=getattr(record, f"{prefix}_instruction_len"),
    )


class DimooPolicy:
    """Lumina-DiMOO: understanding and image rollouts, their log-probs with gradient (the
    configured estimator), VQ decoding, editing, trainable parameters, save and load."""

    backend = "dimoo"

    def __init__(
        self,
        model: DimooModel,
        model_config: ModelConfig | None = None,
        rollout_config: RolloutConfig | None = None,
        peft_model: Any = None,
    ) -> None:
        """`peft_model`: the `PeftModel` wrapping `model.backbone` when it carries adapters
        already (an adapter folder); with `model_config.lora` and none, fresh adapters (peft's
        init: B = 0, so the model is unchanged) go on the decoder's linear layers."""
        from pairuni.policy.config import ModelConfig, RolloutConfig

        self.model = model
        self.model_config = model_config or ModelConfig()
        self.rollout_config = rollout_config or RolloutConfig()
        self.settings: DimooRolloutConfig = self.rollout_config.dimoo
        self.ids = model.ids
        self.collective_forwards = False
        """Set by `train.sharding: fsdp`: the samplers and the replay then run data-independent
        forward counts (`lockstep`)."""
        unknown = [m for m in self.model_config.trainable if m not in TRAINABLE]
        if unknown:
            raise UnsupportedSettingError(
                f"model.trainable lists {', '.join(unknown)}, which the dimoo backend does not "
                f"have; it trains {', '.join(TRAINABLE)} (the transformer, its embeddings and "
                "head); the VQ image tokenizer stays frozen"
            )
        model.vq.model.requires_grad_(False)
        self.peft = peft_model
        if self.model_config.lora is not None and self.peft is None:
            self.peft = self._fresh_adapters()
        if self.peft is None:
            model.backbone.requires_grad_(True)
        if self.model_config.gradient_checkpointing:
            model.backbone.gradient_checkpointing_enable({"use_reentrant": False})
        model.backbone.eval()

    def _fresh_adapters(self) -> Any:
        from pairuni.policy.lora import apply_lora

        lora = self.model_config.lora
        assert lora is not None
        other = [m for m in lora.modules if m not in TRAINABLE]
        if other:
            raise UnsupportedSettingError(
                f"model.lora.modules lists {', '.join(other)}, which the dimoo backend does "
                "not have; it puts adapters on language_model (the transformer) only"
            )
        return apply_lora(self.model.backbone, lora, TRAINABLE, LORA_PREFIXES, self.model.source)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        model_config: ModelConfig | None = None,
        rollout_config: RolloutConfig | None = None,
        *,
        for_training: bool = False,
    ) -> DimooPolicy:
        """Load a local folder in the released Lumina-DiMOO layout (docs/dimoo.md)."""
        from pairuni.policy.config import ModelConfig
        from pairuni.policy.dimoo.model import load_dimoo
        from pairuni.policy.janus import resolve_device, resolve_dtype
        from pairuni.policy.lora import existing_adapter_base, is_adapter_dir, load_adapter

        model_config = model_config or ModelConfig()
        if not for_training and model_config.lora is not None:
            model_config = model_config.model_copy(update={"lora": None})
        path = path if path is not None else model_config.path
        if path is None:
            raise ValueError("no checkpoint given: pass a directory (model.path)")
        adapter = is_adapter_dir(path)
        base = existing_adapter_base(path) if adapter else Path(path)
        model = load_dimoo(
            base,
            dtype=resolve_dtype(model_config.dtype),
            device=resolve_device(model_config.device),
        )
        peft_model = None
        if adapter:  # trainable when training (model.lora set), frozen for inference
            trainable = model_config.lora is not None
            peft_model = load_adapter(model.backbone, path, trainable=trainable)
            model.backbone.eval()
        return cls(model, model_config, rollout_config, peft_model)

    def save(self, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the released layout (`load_dimoo` and DiMOO's own code read it back); with
        LoRA, the adapters only (peft's files, naming the base folder): `pairuni merge-lora`
        writes the released layout from them."""
        if self.peft is not None:
            from pairuni.policy.lora import save_adapter

            save_adapter(self.peft, Path(out_dir), state_dict)
            return
        self.model.save(out_dir, state=state_dict)

    def merged(self) -> DimooPolicy:
        """The policy with its adapters merged into plain weights (consumes them), which `save`
        writes in the released layout; without adapters, the policy itself."""
        if self.peft is None:
            return self
        self.model.backbone = self.peft.merge_and_unload()
        config = self.model_config.model_copy(update={"lora": None})
        return DimooPolicy(self.model, config, self.rollout_config)

    # ------------------------------------------------------------------ protocol members

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def pad_id(self) -> int:
        return int(self.ids.answer_pad)

    @property
    def module(self) -> torch.nn.Module:
        """The module that trains (what sharding wraps and checkpoints save)."""
        return self.model.backbone

    def train(self, mode: bool = True) -> None:
        self.model.backbone.train(mode)

    def eval(self) -> None:
        self.model.backbone.eval()

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """`language_model` (the transformer, trained in full), or with LoRA `lora` (its
        adapters)."""
        params = [p for p in self.model.backbone.parameters() if p.requires_grad]
        return {"lora" if self.peft is not None else "language_model": params}

    def cast_trainable(self, dtype: torch.dtype) -> int:
        """Hold the trainable parameters in `dtype` (the trainer's master weights), in place."""
        return cast_parameters(self.parameter_groups(), dtype)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was = self.model.backbone.training
        self.model.backbone.eval()
        try:
            yield
        finally:
            self.model.backbone.train(was)

    @property
    def _logits(self) -> DimooModel:
        """The samplers' and estimators' logits function (the model, with its fast path)."""
        return self.model

    # ------------------------------------------------------------------ settings

    @property
    def grid(self) -> tuple[int, int]:
        side = self.settings.image_size // self.model.vq.downsample
        return side, side

    def image_sampling(self, greedy: bool = False) -> ImageSampling:
        return ImageSampling(
            steps=self.settings.image_steps,
            guidance=self.rollout_config.cfg_scale - 1.0,  # Janus's s = DiMOO's 1 + w
            temperature=0.0 if greedy else self.rollout_config.image_temperature,
            lockstep=self.collective_forwards,
        )

    def text_sampling(self, greedy: bool = False) -> TextSampling:
        return TextSampling(
            steps=self.settings.text_steps,
            block_length=self.settings.text_block_length,
            temperature=0.0 if greedy else self.rollout_config.text_temperature,
            stop_ids=(self.ids.eos, self.ids.answer_end, self.ids.answer_pad),
            lockstep=self.collective_forwards,
        )

    def _seeds(self, generator: torch.Generator | int | None, count: int) -> list[int]:
        """Per-row sampler seeds drawn from `generator` (an int seeds a fresh one)."""
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        # drawn on the generator's own device, so that its state advances as for any draw
        device = generator.device if generator is not None else None
        draw = torch.randint(0, 2**62, (count,), generator=generator, device=device)
        return [int(s) for s in draw.tolist()]

    # ------------------------------------------------------------------ understanding

    def _image_codes(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        size = self.settings.image_size
        return [
            self.model.vq.encode([self.model.preprocess_image(im.convert("RGB"), size)])[0]
            for im in images
        ]

    def rollout_text(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        num_samples: int = 1,
        *,
        options: Sequence[Sequence[str] | None] | None = None,
        greedy: bool = False,
        generator: torch.Generator | int | None = None,
        max_new_tokens: int | None = None,
    ) -> DimooTextRollout:
        """`num_samples` answers to each (image, question), rows grouped by pair (B = n x K)."""
        from pairuni.policy.dimoo.sampling import sample_text
        from pairuni.policy.dimoo.sequence import understanding_layout

        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images for {len(questions)} questions")
        opts = options if options is not None else [None] * len(questions)
        template = self.rollout_config.und_prompt_template
        users = [format_question(q, o, template) for q, o in zip(questions, opts, strict=True)]
        group = torch.arange(len(questions)).repeat_interleave(num_samples)
        codes = self._image_codes(images)
        layout = understanding_layout(
            self.model.tokenizer,
            [users[g] for g in group.tolist()],
            [codes[g] for g in group.tolist()],
            max_new_tokens or self.rollout_config.max_new_tokens,
            self.ids,
            device=self.device,
            **self._system("understanding"),
        )
        seeds = self._seeds(generator, len(group))
        with self._eval_mode():
            rollout = sample_text(self._logits, layout, self.text_sampling(greedy), seeds)
        return self._text_record(rollout, group)

    def _system(self, task: str) -> dict[str, str]:
        system = self.rollout_config.system_prompt
        return {} if system is None or task != "understanding" else {"system": system}

    def _text_record(self, rollout: Rollout, group: torch.Tensor) -> DimooTextRollout:
        mask = rollout.mask
        logprobs = rollout.logprobs * mask
        texts = self._decode_answers(rollout.tokens, mask)
        return DimooTextRollout(
            **_branch_fields(rollout.layout.cond, "seq"),
            completion_ids=rollout.tokens,
            completion_mask=mask,
            commit_step=rollout.commit_step,
            logprobs=logprobs,
            seeds=torch.tensor(rollout.seeds, dtype=torch.long),
            texts=texts,
            group=group,
        )

    def _decode_answers(self, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """The replies as text. A stop (EOS, `</answer>`, answer padding) ends a reply and is
        not text. An `<answer>` the model writes inside its reply (after its think) is a
        special token of DiMOO's tokenizer, which decoding would drop; it is kept as the tag
        and the reply's end closes it, so the rewards read `<think>..</think><answer>..</answer>`
        as they read Janus's replies (the `format` reward scored 0 on every DiMOO reply
        before)."""
        stops = {self.ids.eos, self.ids.answer_end, self.ids.answer_pad}
        rows = [
            [int(t) for t, m in zip(row, keep, strict=True) if m and int(t) not in stops]
            for row, keep in zip(tokens.tolist(), mask.tolist(), strict=True)
        ]
        return [self._tagged_reply(row) for row in rows]

    def _tagged_reply(self, row: list[int]) -> str:
        tokenizer, opening = self.model.tokenizer, self.ids.answer_start
        parts: list[list[int]] = [[]]
        for token in row:
            if token == opening:
                parts.append([])
            else:
                parts[-1].append(token)
        texts = tokenizer.batch_decode(parts, skip_special_tokens=True)
        if len(texts) == 1:
            return texts[0]
        open_tag, close_tag = tokenizer.convert_ids_to_tokens([opening, self.ids.answer_end])
        return texts[0] + "".join(open_tag + text for text in texts[1:]) + close_tag

    # ------------------------------------------------------------------ generation

    def rollout_image(
        self,
        prompts: Sequence[str],
        num_samples: int = 1,
        *,
        greedy: bool = False,
        generator: torch.Generator | int | None = None,
        decode: bool = True,
    ) -> DimooImageRollout:
        """`num_samples` images for each prompt; rows are grouped by prompt."""
        from pairuni.policy.dimoo.sampling import sample_images
        from pairuni.policy.dimoo.sequence import text_to_image_layout

        group = torch.arange(len(prompts)).repeat_interleave(num_samples)
        height, width = self.grid
        layout = text_to_image_layout(
            self.model.tokenizer,
            [prompts[g] for g in group.tolist()],
            height,
            width,
            self.ids,
            device=self.device,
        )
        seeds = self._seeds(generator, len(group))
        with self._eval_mode():
            rollout = sample_images(self._logits, layout, self.image_sampling(greedy), seeds)
        codes = rollout.codes
        images = self.decode_images(codes) if decode else []
        assert layout.uncond_text is not None
        return DimooImageRollout(
            **_branch_fields(layout.cond, "seq"),
            **_branch_fields(layout.uncond_text, "uncond"),
            image_ids=codes,
            commit_step=rollout.commit_step,
            logprobs=rollout.logprobs,
            seeds=torch.tensor(rollout.seeds, dtype=torch.long),
            images=images,
            group=group,
        )

    def decode_images(self, image_ids: torch.Tensor) -> list[Image.Image]:
        """(B, N) codes in raster order -> B RGB images."""
        height, width = self.grid
        if image_ids.shape[1] != height * width:
            raise ValueError(
                f"decode_images: {image_ids.shape[1]} codes per image, but rollout.dimoo."
                f"image_size {self.settings.image_size} gives {height} x {width}"
            )
        codes = image_ids.reshape(-1, height, width)
        batch = self.rollout_config.decode_batch_size
        out: list[Image.Image] = []
        with torch.no_grad():
            for start in range(0, codes.shape[0], batch):
                out += self.model.vq.decode(codes[start : start + batch])
        return out

    # ------------------------------------------------------------------ editing (ImgEdit)

    def edit_images(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[str],
        *,
        greedy: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> list[Image.Image]:
        """One edited image per (source, instruction), each source resized to `image_size`."""
        from pairuni.policy.dimoo.sampling import sample_images
        from pairuni.policy.dimoo.sequence import editing_layout

        layout = editing_layout(
            self.model.tokenizer,
            list(instructions),
            self._image_codes(images),
            self.ids,
            grid=self.grid,
            device=self.device,
        )
        settings = ImageSampling(
            steps=self.settings.image_steps,
            guidance=self.settings.edit_text_guidance,
            image_guidance=self.settings.edit_image_guidance,
            temperature=0.0 if greedy else self.rollout_config.image_temperature,
            lockstep=self.collective_forwards,
        )
        with self._eval_mode():
            rollout = sample_images(
                self._logits, layout, settings, self._seeds(generator, len(images))
            )
        return self.decode_images(rollout.codes)

    # ------------------------------------------------------------------ supervised targets

    def target_text(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        answers: Sequence[str],
        options: Sequence[Sequence[str] | None] | None = None,
    ) -> DimooTextRollout:
        """A record whose completions ARE `answers`, for supervised fine-tuning: the rollouts'
        understanding layout (`<answer>`, L = `rollout.max_new_tokens` masks, `</answer>`), the
        targets each answer's tokens without a leading `<answer>`, then `</answer>`, then
        `answer_pad` up to L (DiMOO's recipe: the padding is a target too, so `completion_mask`
        is 1 on all L). `logprobs`, `commit_step` and `seeds` are zeros (nothing was sampled;
        commit step 0 makes the `trajectory` estimator score it as one fully masked step)."""
        from pairuni.policy.dimoo.sequence import understanding_layout
        from pairuni.policy.dimoo.sft import answer_targets

        if not len(images) == len(questions) == len(answers):
            raise ValueError(
                f"got {len(images)} images, {len(questions)} questions, {len(answers)} answers"
            )
        opts = options if options is not None else [None] * len(questions)
        template = self.rollout_config.und_prompt_template
        users = [format_question(q, o, template) for q, o in zip(questions, opts, strict=True)]
        length = self.rollout_config.max_new_tokens
        layout = understanding_layout(
            self.model.tokenizer,
            users,
            self._image_codes(images),
            length,
            self.ids,
            device=self.device,
            **self._system("understanding"),
        )
        ids, tokenizer = self.ids, self.model.tokenizer
        rows = [
            answer_targets(
                tokenizer.encode(answer, add_special_tokens=False),
                length,
                answer_start=ids.answer_start,
                answer_end=ids.answer_end,
                pad_id=ids.answer_pad,
            )
            for answer in answers
        ]
        targets = torch.tensor(rows, dtype=torch.long, device=self.device)
        zeros = torch.zeros(targets.shape, dtype=torch.long, device=self.device)
        return DimooTextRollout(
            **_branch_fields(layout.cond, "seq"),
            completion_ids=targets,
            completion_mask=torch.ones_like(targets),
            commit_step=zeros,
            logprobs=zeros.float(),
            seeds=torch.zeros(len(rows), dtype=torch.long),
            texts=list(answers),
            group=torch.arange(len(rows)),
        )

    def target_images(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        unconditional: Sequence[bool] | None = None,
    ) -> DimooImageRollout:
        """A record whose image codes are the VQ codes of `images` (`square_codes`), for
        supervised fine-tuning; rows flagged `unconditional` get DiMOO's unconditional prompt
        (`<user><uncondition></user>`, as its train.py builds it) in place of theirs. The
        `uncond_*` branch is the unconditional twin, as in rollouts."""
        from pairuni.policy.dimoo.sequence import UNCONDITION_TEXT, text_to_image_layout

        if len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
        flags = list(unconditional) if unconditional is not None else [False] * len(prompts)
        if len(flags) != len(prompts):
            raise ValueError(f"got {len(flags)} unconditional flags for {len(prompts)} prompts")
        users = [UNCONDITION_TEXT if flag else p for p, flag in zip(prompts, flags, strict=True)]
        layout = text_to_image_layout(
            self.model.tokenizer, users, *self.grid, self.ids, device=self.device
        )
        assert layout.uncond_text is not None
        codes = self.square_codes(images)
        zeros = torch.zeros(codes.shape, dtype=torch.long, device=codes.device)
        return DimooImageRollout(
            **_branch_fields(layout.cond, "seq"),
            **_branch_fields(layout.uncond_text, "uncond"),
            image_ids=codes,
            commit_step=zeros,
            logprobs=zeros.float(),
            seeds=torch.zeros(len(prompts), dtype=torch.long),
            images=[],
            group=torch.arange(len(prompts)),
        )

    def square_codes(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, N) VQ codes in raster order of images centre-cropped to a square and resized to
        the generation grid (`rollout.dimoo.image_size`): the images rollouts would produce."""
        from pairuni.policy.dimoo.model import resize_center_crop

        height, width = self.grid
        down = self.model.vq.downsample
        pixels = [resize_center_crop(im, (width * down, height * down)) for im in images]
        return self.model.vq.encode(pixels).flatten(1).to(self.device)

    def supervised_logprobs(
        self, task: str, record: RolloutBatch, generator: torch.Generator
    ) -> torch.Tensor:
        """(n, T) terms of DiMOO's SFT loss, with gradient (`pairuni.policy.dimoo.sft`): the
        targets masked at random (cosine ratio; answer and padding apart; newlines are not
        targets), one forward of the conditional branch, log p of each masked target at
        temperature 1 under the rollouts' restricted vocabulary, scaled by n_row / k_row so that
        a row sums to n_row times its mean over masked positions; 0 elsewhere."""
        from pairuni.policy.dimoo import sft

        if task == "understanding":
            tokens = record.completion_ids  # type: ignore[attr-defined]
            targets = record.completion_mask.bool()  # type: ignore[attr-defined]
            segments = sft.answer_segments(tokens, targets, self.ids.answer_pad)
        elif task == "generation":
            tokens = record.image_ids + self.ids.image_offset  # type: ignore[attr-defined]
            targets = torch.ones_like(tokens, dtype=torch.bool)
            segments = torch.full_like(tokens, sft.CONTENT)
        else:
            raise ValueError(f"task must be 'understanding' or 'generation', got {task!r}")
        masked = sft.draw_masks(segments, generator).to(tokens.device)
        logp = self._masked_logprobs(task, record, tokens, masked)
        return sft.masked_mean_terms(logp, masked, targets)

    def _masked_logprobs(
        self, task: str, record: RolloutBatch, tokens: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        """(B, N) log p of `tokens` from the state with `masked` positions masked, at tau = 1,
        on the record's own branch alone (no guidance): an unconditional row's branch is the
        `<uncondition>` prompt, which is how SFT keeps guidance's second branch trained."""
        from pairuni.policy.dimoo.logprobs import score_tokens
        from pairuni.policy.dimoo.sequence import Layout

        state = torch.where(masked, self.ids.mask, tokens)
        if task == "understanding":
            layout = Layout(task="understanding", ids=self.ids, cond=_branch(record, "seq"))
            settings: ImageSampling | TextSampling = TextSampling(temperature=1.0)
        else:
            cond = _branch(record, "seq")
            layout = Layout(task="text_to_image", ids=self.ids, cond=cond, grid=self.grid)
            settings = ImageSampling(steps=1, guidance=0.0, temperature=1.0)
        return score_tokens(self._logits, layout, state, tokens, settings)

    # ------------------------------------------------------------------ log-probs

    def text_logprobs(self, rollout: DimooTextRollout) -> torch.Tensor:
        """(B, L) log-probs of the answers under the configured estimator, with gradient."""
        return self._estimate(*self._scored_record("understanding", rollout))

    def image_logprobs(self, rollout: DimooImageRollout) -> torch.Tensor:
        """(B, N) log-probs of the image codes under the configured estimator, with gradient."""
        return self._estimate(*self._scored_record("generation", rollout))

    def _scored_record(self, task: Task, rollout: Any) -> tuple[Rollout, torch.Tensor]:
        """The sampler's record of a task's rollout record, and the mask of its tokens."""
        from pairuni.policy.dimoo.sequence import Layout

        if task == "understanding":
            layout = Layout(task="understanding", ids=self.ids, cond=_branch(rollout, "seq"))
            record = self._sampler_record(layout, rollout, rollout.completion_ids, "text")
            return record, rollout.completion_mask
        layout = Layout(
            task="text_to_image",
            ids=self.ids,
            cond=_branch(rollout, "seq"),
            uncond_text=_branch(rollout, "uncond") if self.image_sampling().guidance else None,
            grid=self.grid,
        )
        tokens = rollout.image_ids + self.ids.image_offset
        record = self._sampler_record(layout, rollout, tokens, "image")
        return record, torch.ones_like(rollout.image_ids)

    def _backward_stages(self, task: Task) -> list[range]:
        """The replay groups of each backward stage of `task`: `trajectory_backward_groups`
        consecutive groups per stage (docs/dimoo.md, "Memory"); one stage of every group
        when it is null or the estimator is not `trajectory`."""
        from pairuni.policy.dimoo.logprobs import num_groups

        steps = (self.text_sampling() if task == "understanding" else self.image_sampling()).steps
        total = num_groups(steps, self.settings.trajectory_shrink)
        per_backward = self.settings.trajectory_backward_groups
        if self.settings.logprob != "trajectory" or per_backward is None:
            return [range(total)]
        return [range(g, min(g + per_backward, total)) for g in range(0, total, per_backward)]

    def logprob_stages(self, task: Task, rollout: Any) -> int:
        """How many backward stages the loss of `task`'s records is split into."""
        return len(self._backward_stages(task))

    def stage_logprobs(
        self, task: Task, rollout: Any, stage: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The trajectory groups of backward stage `stage`: their tokens' log-probs with
        gradient (0 elsewhere) and the mask of those tokens."""
        from pairuni.policy.dimoo.logprobs import trajectory

        record, mask = self._scored_record(task, rollout)
        groups = self._backward_stages(task)[stage]
        shrink = self.settings.trajectory_shrink
        out = trajectory(self._logits, record, shrink=shrink, groups=groups)
        return out.logprobs * mask, out.mask.bool() & mask.bool()

    def _sampler_record(
        self, layout: Layout, rollout: Any, tokens: torch.Tensor, kind: str
    ) -> Rollout:
        settings = self.text_sampling() if kind == "text" else self.image_sampling()
        mask = rollout.completion_mask if kind == "text" else torch.ones_like(tokens)
        return Rollout(
            layout=layout,
            settings=settings,
            seeds=tuple(int(s) for s in rollout.seeds.tolist()),
            tokens=tokens,
            commit_step=rollout.commit_step,
            logprobs=rollout.logprobs,
            mask=mask,
            input_ids=layout.cond.with_tokens(tokens),
        )

    def _estimate(self, record: Rollout, mask: torch.Tensor) -> torch.Tensor:
        from pairuni.policy.dimoo import logprobs as estimators

        name = self.settings.logprob
        if name == "trajectory":
            out = estimators.trajectory(
                self._logits, record, shrink=self.settings.trajectory_shrink
            )
            return out.logprobs * mask
        if name == "mean_field":
            out = estimators.mean_field(self._logits, record, seeds=list(record.seeds))
            return out.logprobs * mask
        copies = self.settings.random_mask_copies
        out = estimators.random_mask(
            self._logits, record, seeds=list(record.seeds), copies=copies, coupled=True
        )
        # copy-major (B, copies * N); coupled: every token is scored once per pair of copies
        per_copy = out.logprobs.reshape(out.logprobs.shape[0], copies, -1)
        return per_copy.sum(1) / (copies // 2) * mask

    def recorded_logprobs_are_exact(self, task: str = "generation") -> bool:
        """Whether the sampler's recorded log-probs equal what the estimator computes (only the
        unshrunk trajectory replay, for both tasks): otherwise the trainer recomputes pi_old."""
        del task
        return self.settings.logprob == "trajectory" and self.settings.trajectory_shrink == 1

    def reference(self, dtype: str | None = None) -> DimooPolicy | AdaptersDisabled:
        """pi_ref for the KL term: with LoRA the same weights with the adapters disabled (no
        second copy); otherwise a frozen copy of the initial checkpoint `model.path`."""
        if self.peft is not None:
            from pairuni.policy.lora import AdaptersDisabled

            return AdaptersDisabled(self)
        config = self.model_config.model_copy(update={"dtype": dtype or self.model_config.dtype})
        ref = DimooPolicy.load(config.path, config, self.rollout_config)
        ref.model.backbone.requires_grad_(False)
        return ref

    def fsdp_layout(self, trainable: Sequence[str]) -> FsdpLayout:
        """Each decoder layer, the input embeddings (with the head when tied), the head, then
        the decoder (its final norm); the root is the backbone. The VQ tokenizer is not part
        of `module` (frozen, replicated on every process). With LoRA the adapters live inside
        the decoder layers' units."""
        del trainable  # the backbone is the only trainable module (TRAINABLE)
        backbone = self.model.backbone
        decoder = backbone.get_submodule("model")
        embed, head = decoder.get_submodule("embed_tokens"), backbone.get_submodule("lm_head")
        units: list[Any] = list(decoder.get_submodule("layers"))
        units += [[embed, head]] if head.weight is embed.weight else [embed, head]
        units.append(decoder)
        return FsdpLayout(units, [], collective_forwards=collective_forwards_setter(self))
