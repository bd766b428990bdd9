"""Janus / Janus-Pro as a `UnifiedPolicy`, on transformers' native `JanusForConditionalGeneration`.

Conventions shared by rollouts and teacher forcing (they must agree for the log-probs to match):
- prompts are left-padded; position ids are cumsum(attention_mask) - 1 (0 on padding);
- understanding log-probs are of softmax(lm_head(h) / T_text) before top-p (TRL's definition);
- image log-probs are of softmax((l_u + w (l_c - l_u)) / T_image) with `cfg_in_logprob`, else of
  softmax(l_c / T_image); the hidden state at <begin_of_image> predicts image token 0;
- the unconditional prompt replaces every token except BOS and <begin_of_image> by the pad token
  and keeps the attention mask (transformers' `generate(generation_mode="image")` convention).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pairuni.policy.base import (
    FsdpLayout,
    ImageRollout,
    TextRollout,
    cast_parameters,
    collective_forwards_setter,
)
from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.images import to_pil

if TYPE_CHECKING:
    from PIL import Image
    from transformers import JanusForConditionalGeneration, JanusProcessor

    from pairuni.policy.lora import AdaptersDisabled

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# Module name in `ModelConfig.trainable` -> attribute paths in JanusForConditionalGeneration.
TRAINABLE_MODULES = {
    "language_model": ("model.language_model", "lm_head"),
    "generation_head": ("model.generation_head",),
    "generation_embeddings": ("model.generation_embeddings",),
    "generation_aligner": ("model.generation_aligner",),
    "aligner": ("model.aligner",),
    "vision_model": ("model.vision_model",),
    "vqmodel": ("model.vqmodel",),
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message lists what is missing."""


class PromptTooLongError(ValueError):
    """A prompt plus what is to be generated does not fit in the model's context."""


# ----------------------------------------------------------------------------- checkpoint


def check_checkpoint_dir(path: str | Path) -> Path:
    """Fail with the list of missing files unless `path` looks like an HF Janus checkpoint (or a
    LoRA adapter folder whose base model does)."""
    from pairuni.policy.lora import existing_adapter_base, is_adapter_dir

    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    if is_adapter_dir(root):
        check_checkpoint_dir(existing_adapter_base(root, CheckpointError))
        return root
    _check_model_type(root)
    missing = []
    if not (root / "config.json").is_file():
        missing.append("config.json")
    weights = [name for name in WEIGHT_FILES if (root / name).is_file()]
    if not weights:
        missing.append("model weights (" + " or ".join(WEIGHT_FILES) + ")")
    for index in (w for w in weights if w.endswith(".index.json")):
        shards = set(json.loads((root / index).read_text(encoding="utf-8"))["weight_map"].values())
        missing += sorted(f"{s} (listed in {index})" for s in shards if not (root / s).is_file())
    if not any((root / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        missing.append("tokenizer.json (or tokenizer.model)")
    if not (root / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json")
    if not any((root / n).is_file() for n in ("processor_config.json", "preprocessor_config.json")):
        missing.append("preprocessor_config.json (or processor_config.json)")
    if missing:
        raise CheckpointError(
            f"checkpoint directory {root} is missing: {'; '.join(missing)}. Download the whole "
            "Hugging Face repository (e.g. `hf download deepseek-community/Janus-Pro-1B "
            f"--local-dir {root}`) or write a tiny one with `pairuni tiny-model {root}`"
        )
    return root


def _check_model_type(root: Path) -> None:
    """DeepSeek's original release (`model_type: multi_modality`) gets the command that converts
    it; another model type is not a Janus checkpoint in the Hugging Face layout (none at all is
    left to transformers)."""
    config = root / "config.json"
    if not config.is_file():
        return  # reported with the other missing files
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{config} is not a JSON object ({err}); fix or re-download it"
        ) from err
    if model_type == "multi_modality":
        from pairuni.policy.janus_original import original_release_message

        raise CheckpointError(original_release_message(root))
    if model_type == "llada":
        raise CheckpointError(
            f"{config} says model_type='llada': a Lumina-DiMOO checkpoint, not Janus; load it "
            "with the DiMOO backend (model.backend: dimoo, or auto to follow config.json)"
        )
    if model_type is not None and model_type != "janus":
        raise CheckpointError(
            f"{config} says model_type={model_type!r}; pairuni's Janus backend reads the Hugging "
            "Face layout (model_type 'janus', e.g. deepseek-community/Janus-Pro-1B)"
        )


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first CUDA GPU if any, else the CPU; anything else as torch spells it."""
    from pairuni.policy.config import DEVICE_PATTERN, VALID_DEVICES

    if not DEVICE_PATTERN.match(name):
        raise ValueError(f"unknown device {name!r}; valid devices: {VALID_DEVICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid dtypes: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class JanusTokenIds:
    """Special token ids, read from the checkpoint (the 1B and 7B pad ids differ)."""

    bos: int
    eos: tuple[int, ...]
    pad: int
    boi: int
    image: int

    @classmethod
    def from_checkpoint(cls, model: Any, processor: Any) -> JanusTokenIds:
        tok = processor.tokenizer
        gen = model.generation_config
        text = model.config.text_config
        boi_from_tokenizer = tok.convert_tokens_to_ids(processor.image_start_token)
        boi_from_config = (gen.generation_kwargs or {}).get("boi_token_id")
        if boi_from_config is not None and boi_from_config != boi_from_tokenizer:
            raise CheckpointError(
                f"generation_config.json says boi_token_id={boi_from_config} but the tokenizer "
                f"maps {processor.image_start_token!r} to {boi_from_tokenizer}; fix one of them"
            )
        eos = gen.eos_token_id if gen.eos_token_id is not None else tok.eos_token_id
        values = {
            "bos": _first_set(tok.bos_token_id, gen.bos_token_id, text.bos_token_id),
            "eos": eos,
            "pad": _first_set(gen.pad_token_id, tok.pad_token_id, text.pad_token_id),
            "boi": boi_from_tokenizer,
            "image": model.config.image_token_id,
        }
        unset = [name for name, value in values.items() if value is None]
        if unset:
            raise CheckpointError(
                f"the checkpoint defines no {', '.join(unset)} token id (looked in the tokenizer, "
                "generation_config.json and config.json); add them there"
            )
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        return cls(values["bos"], eos_ids, values["pad"], values["boi"], values["image"])


def _check_batch(num_inputs: int, num_samples: int, what: str) -> None:
    if num_inputs == 0:
        raise ValueError(f"no {what} given: pass at least one")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")


def _first_set(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


# ----------------------------------------------------------------------------- chat format

# Janus-Pro's conversation format, as DeepSeek's VLChatProcessor writes it (its "deepseek" SFT
# format; the system prompt, when there is one, comes first and is added by the policy):
#
#     <|User|>: <image_placeholder>\n{question}\n\n<|Assistant|>:{answer}<｜end▁of▁sentence｜>
#
# `janus_pro_chat_text` (for processors without a chat template) and `JANUS_PRO_CHAT_TEMPLATE`
# (written by `pairuni convert-janus`) produce the same text; tests hold them to each other, to
# the tiny checkpoint's template and to a hand-written example.
USER_TAG = "<|User|>"
ASSISTANT_TAG = "<|Assistant|>"
USER_END = "\n\n"

JANUS_PRO_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set role = message['role'] | lower -%}"
    "{%- if role == 'user' -%}{%- set tag = '" + USER_TAG + "' -%}"
    "{%- elif role == 'assistant' -%}{%- set tag = '" + ASSISTANT_TAG + "' -%}"
    "{%- else -%}{%- set tag = message['role'] | capitalize -%}{%- endif -%}"
    "{%- set ns = namespace(body='') -%}"
    "{%- if message['content'] is string -%}{%- set ns.body = message['content'] | trim -%}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{%- if not loop.first -%}{%- set ns.body = ns.body + '\\n' -%}{%- endif -%}"
    "{%- set ns.body = ns.body + '<image_placeholder>' -%}"
    "{%- if not loop.last -%}{%- set ns.body = ns.body + '\\n' -%}{%- endif -%}"
    "{%- else -%}{%- set text = part['text'] -%}"
    "{%- if loop.first -%}{%- set text = text.lstrip() -%}{%- endif -%}"
    "{%- if loop.last -%}{%- set text = text.rstrip() -%}{%- endif -%}"
    "{%- if not loop.first and message['content'][loop.index0 - 1]['type'] != 'image' -%}"
    "{%- set text = ' ' + text -%}{%- endif -%}"
    "{%- set ns.body = ns.body + text -%}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- if ns.body -%}{{ tag + ': ' + ns.body }}"
    "{%- if role != 'user' -%}{{ eos_token }}"
    "{%- elif not loop.last or add_generation_prompt -%}{{ '" + "\\n\\n" + "' }}{%- endif -%}"
    "{%- else -%}{{ tag + ':' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + ASSISTANT_TAG + ":' }}{%- endif -%}"
)
"""The same format as a Jinja chat template (`eos_token` is the tokenizer's)."""


def has_chat_template(processor: Any) -> bool:
    """Whether `processor.apply_chat_template` can run without naming a template."""
    template = getattr(processor, "chat_template", None)
    if isinstance(template, dict):
        return "default" in template
    return bool(template)


def janus_pro_chat_text(
    messages: Sequence[dict[str, Any]],
    *,
    end_of_turn: str,
    image_token: str = "<image_placeholder>",
    add_generation_prompt: bool = True,
) -> str:
    """Messages (`role` + a string or a list of `{"type": "image"}` / `{"type": "text", "text"}`
    parts) -> Janus-Pro's chat text, without system prompt.

    A turn is `<|User|>: body` or `<|Assistant|>: body` (another role: `Role: body`). The body
    joins the parts: an image is `image_token` on its own line, adjacent text parts are joined
    by a space, leading space of the first part and trailing space of the last are stripped (a
    string body is stripped). A user turn ends with a blank line, any other with `end_of_turn`
    (EOS); an empty turn is the bare `<|Assistant|>:` cue. `add_generation_prompt` appends that
    cue for the model to answer after."""
    turns = []
    for index, message in enumerate(messages):
        role = str(message["role"])
        tag = {"user": USER_TAG, "assistant": ASSISTANT_TAG}.get(role.lower(), role.capitalize())
        body = _turn_body(message["content"], image_token)
        if not body:
            turns.append(f"{tag}:")
            continue
        last = index == len(messages) - 1
        if role.lower() != "user":
            end = end_of_turn
        else:
            end = USER_END if (not last or add_generation_prompt) else ""
        turns.append(f"{tag}: {body}{end}")
    if add_generation_prompt:
        turns.append(f"{ASSISTANT_TAG}:")
    return "".join(turns)


def _turn_body(content: str | Sequence[dict[str, Any]], image_token: str) -> str:
    if isinstance(content, str):
        return content.strip()
    body = ""
    for i, part in enumerate(content):
        first, last = i == 0, i == len(content) - 1
        if part["type"] == "image":
            body += ("" if first else "\n") + image_token + ("" if last else "\n")
            continue
        text = str(part["text"])
        text = text.lstrip() if first else text
        text = text.rstrip() if last else text
        # two text parts in a row are one sentence; after an image the newline separates them
        body += (" " if not first and content[i - 1]["type"] != "image" else "") + text
    return body


# ----------------------------------------------------------------------------- sampling


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) 0/1 attention mask -> (B, S) positions cumsum - 1, 0 on left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) probabilities -> the smallest set of most likely tokens holding `top_p` of the
    mass (always at least one), renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def sample_from_logits(
    logits: torch.Tensor,
    temperature: float,
    *,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> (tokens (B,), log-probs (B,) float32 under softmax(logits / T)).

    The log-prob is of the temperature-scaled distribution before top-p truncation (TRL's
    definition); greedy picks the argmax and reports its log-prob under the same distribution.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if greedy:
        tokens = logp.argmax(-1)
    else:
        probs = top_p_filter(logp.exp(), top_p)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, T, V) logits, (B, T) tokens -> (B, T) float32 log softmax(logits / T)[token], one row
    at a time so that a 100k-token vocabulary never needs a (B, T, V) float32 copy."""
    rows = [
        torch.log_softmax(row.float() / temperature, dim=-1).gather(-1, tok[:, None]).squeeze(-1)
        for row, tok in zip(logits, tokens, strict=True)
    ]
    return torch.stack(rows)


# ----------------------------------------------------------------------------- the policy


class JanusPolicy:
    """Janus / Janus-Pro: understanding and image rollouts with their log-probs, teacher-forced
    log-probs with gradient, VQ decoding, trainable parameter groups, save and load."""

    def __init__(
        self,
        model: JanusForConditionalGeneration,
        processor: JanusProcessor,
        model_config: ModelConfig | None = None,
        rollout_config: RolloutConfig | None = None,
        peft_model: Any = None,
    ) -> None:
        """`peft_model`: the `PeftModel` wrapping `model` when it carries LoRA adapters already
        (loaded from an adapter folder); with `model_config.lora` and none, fresh adapters are
        made."""
        self.model = model
        self.processor = processor
        self.model_config = model_config or ModelConfig()
        self.rollout_config = rollout_config or RolloutConfig()
        self.ids = JanusTokenIds.from_checkpoint(model, processor)
        self.collective_forwards = False
        """Set under `train.sharding: fsdp` (`FsdpLayout.collective_forwards`): answers are
        then sampled to `max_new_tokens` on every process (no early stop)."""
        self._banned_text_ids = self._image_marker_ids()
        self.num_image_tokens = int(model.config.vision_config.num_image_tokens)
        self.max_positions = int(model.config.text_config.max_position_embeddings)
        self.peft = peft_model
        if self.model_config.lora is not None and self.peft is None:
            from pairuni.policy.lora import apply_lora

            self.peft = apply_lora(
                model,
                self.model_config.lora,
                self.model_config.trainable,
                TRAINABLE_MODULES,
                getattr(model.config, "_name_or_path", None) or self.model_config.path,
            )
        if self.peft is None:
            self._set_trainable(self.model_config.trainable)
        if self.model_config.gradient_checkpointing:
            model.model.language_model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        model_config: ModelConfig | None = None,
        rollout_config: RolloutConfig | None = None,
        *,
        for_training: bool = False,
    ) -> JanusPolicy:
        """Load a local HF-format checkpoint (`path`, else `model_config.path`), or a LoRA
        adapter folder on its base model. `for_training`: apply `model_config.lora` (fresh
        adapters on a full checkpoint, trainable ones from an adapter folder); otherwise an
        adapter folder is loaded frozen and `model.lora` is ignored (inference)."""
        from transformers import JanusForConditionalGeneration, JanusProcessor

        model_config = model_config or ModelConfig()
        if not for_training and model_config.lora is not None:
            model_config = model_config.model_copy(update={"lora": None})
        path = path if path is not None else model_config.path
        if path is None:
            raise CheckpointError("no checkpoint given: pass a directory (model.path)")
        from pairuni.policy.lora import adapter_base, is_adapter_dir, load_adapter

        root = check_checkpoint_dir(path)
        adapter = is_adapter_dir(root)
        base = adapter_base(root) if adapter else root
        dtype = resolve_dtype(model_config.dtype)
        device = resolve_device(model_config.device)
        processor = JanusProcessor.from_pretrained(root)
        model = JanusForConditionalGeneration.from_pretrained(base, dtype=dtype)
        peft_model = None
        if adapter:  # trainable when training (model.lora set), frozen for inference
            peft_model = load_adapter(model, root, trainable=model_config.lora is not None)
        model.to(device)
        model.eval()  # dropout off; the trainer calls .train() only for its loss passes
        return cls(model, processor, model_config, rollout_config, peft_model)

    def save(self, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write model, generation config and processor in the same HF format `load` reads.

        `state_dict`: the weights to write instead of the model's own (the full state gathered
        from FSDP shards by the trainer: the sharded model's parameters are DTensors).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.peft is not None:  # the adapters only; the base model stays where it is
            from pairuni.policy.lora import save_adapter

            save_adapter(self.peft, out, state_dict)
        else:
            self.model.save_pretrained(out, state_dict=state_dict)
        self.processor.save_pretrained(out)

    def merged(self) -> JanusPolicy:
        """The policy with its LoRA adapters (and trained modules_to_save) merged into plain
        weights: an ordinary Janus model that `save` writes in the HF format. Consumes this
        policy's adapters. Without adapters, the policy itself."""
        if self.peft is None:
            return self
        model = self.peft.merge_and_unload()
        config = self.model_config.model_copy(update={"lora": None})
        return JanusPolicy(model, self.processor, config, self.rollout_config)

    def reference(self, dtype: str | None = None) -> AdaptersDisabled | JanusPolicy:
        """pi_ref for the KL term (`TrainablePolicy.reference`): with LoRA adapters the same
        weights with the adapters disabled (no second copy); otherwise a frozen copy of the
        initial checkpoint `model_config.path` in `dtype` (default `model_config.dtype`), on
        this policy's configured device, in eval mode."""
        if self.peft is not None:
            from pairuni.policy.lora import AdaptersDisabled

            return AdaptersDisabled(self)
        config = self.model_config.model_copy(update={"dtype": dtype or self.model_config.dtype})
        ref = JanusPolicy.load(config.path, config, self.rollout_config, for_training=True)
        ref.model.requires_grad_(False)
        return ref

    # ------------------------------------------------------------------ parameters

    def _set_trainable(self, names: Sequence[str]) -> None:
        self.model.requires_grad_(False)
        for name in names:
            for module in self._modules_of(name):
                module.requires_grad_(True)

    def _modules_of(self, name: str) -> list[torch.nn.Module]:
        if name not in TRAINABLE_MODULES:
            raise ValueError(
                f"unknown trainable module {name!r}; valid: {', '.join(TRAINABLE_MODULES)}"
            )
        return [self.model.get_submodule(p) for p in TRAINABLE_MODULES[name]]

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters by `ModelConfig.trainable` name; a tied parameter (lm_head and
        the input embeddings) appears once. With LoRA: `lora` (the adapters) and the modules
        trained in full."""
        if self.peft is not None:
            from pairuni.policy.lora import trainable_groups

            lora = self.model_config.lora
            full = [m for m in self.model_config.trainable if lora is None or m not in lora.modules]
            return trainable_groups(self.peft, {m: TRAINABLE_MODULES[m] for m in full})
        seen: set[int] = set()
        groups: dict[str, list[torch.nn.Parameter]] = {}
        for name in self.model_config.trainable:
            params = []
            for module in self._modules_of(name):
                for param in module.parameters():
                    if id(param) not in seen:
                        seen.add(id(param))
                        params.append(param)
            groups[name] = params
        return groups

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    @property
    def pad_id(self) -> int:
        return self.ids.pad

    @property
    def module(self) -> torch.nn.Module:
        """The whole `JanusForConditionalGeneration` (with LoRA: the model the adapters are
        injected in, whose state dict `save` hands to peft)."""
        return self.model

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def eval(self) -> None:
        self.model.eval()

    def recorded_logprobs_are_exact(self, task: str) -> bool:
        """Text: always (the same softmax(logits / T)). Images: only with `cfg_in_logprob`
        (otherwise the loss scores the conditional branch, not the CFG mix sampled from)."""
        return task == "understanding" or self.rollout_config.cfg_in_logprob

    def fsdp_layout(self, trainable: Sequence[str]) -> FsdpLayout:
        """Each decoder layer, the input embeddings (with `lm_head` when tied), `lm_head`, the
        language model (its final norm), then each optional module the policy calls directly
        if it trains; frozen ones and the VQ model (called through `decode_image_tokens`, not a
        forward) stay replicated."""
        lm = self.model.get_submodule("model.language_model")
        embed, head = lm.get_submodule("embed_tokens"), self.model.get_submodule("lm_head")
        units: list[Any] = list(lm.get_submodule("layers"))
        units += [[embed, head]] if head.weight is embed.weight else [embed, head]
        units.append(lm)
        replicated = [self.model.get_submodule("model.vqmodel")]
        for name, paths in TRAINABLE_MODULES.items():
            if name in ("language_model", "vqmodel"):
                continue
            module = self.model.get_submodule(paths[0])
            (units if name in trainable else replicated).append(module)
        return FsdpLayout(units, replicated, collective_forwards=collective_forwards_setter(self))

    @property
    def vision_dtype(self) -> torch.dtype:
        """The understanding encoder's dtype (pixels are cast to it; it may differ from the
        language model's when only the latter trains in float32)."""
        return next(self.model.model.vision_model.parameters()).dtype

    def cast_trainable(self, dtype: torch.dtype) -> int:
        """Hold the trainable parameters in `dtype` (the trainer's master weights), in place;
        frozen modules keep theirs. Returns the number of elements whose dtype changed."""
        return cast_parameters(self.parameter_groups(), dtype)

    # ------------------------------------------------------------------ prompts

    def understanding_prompt(self, question: str, options: Sequence[str] | None = None) -> str:
        """The chat text of one understanding turn (image placeholder, instruction, question)."""
        from pairuni.policy.prompts import format_question

        user = format_question(question, options, self.rollout_config.und_prompt_template)
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}
        ]
        return self.system_prompt() + self.chat_text(messages)

    def generation_prompt(self, prompt: str) -> str:
        """The chat text of one image-generation turn (the processor appends <begin_of_image>)."""
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        return self.chat_text(messages)

    def chat_text(self, messages: Sequence[dict[str, Any]]) -> str:
        """`messages` in the checkpoint's chat template, ending with the assistant's cue.

        A processor without a chat template (some converted checkpoints ship none) gets
        Janus-Pro's own format from `janus_pro_chat_text`, the same text the template writes."""
        if has_chat_template(self.processor):
            return self.processor.apply_chat_template(list(messages), add_generation_prompt=True)
        return janus_pro_chat_text(
            messages,
            end_of_turn=self.processor.tokenizer.eos_token,
            image_token=self.processor.image_token,
        )

    def encode_understanding(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        options: Sequence[Sequence[str] | None] | None = None,
    ) -> Any:
        """Processor batch (left-padded `input_ids`, `attention_mask`, `pixel_values`) of the
        understanding prompts; images of any size are resized by the checkpoint's processor."""
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images for {len(questions)} questions")
        opts = options if options is not None else [None] * len(questions)
        texts = [self.understanding_prompt(q, o) for q, o in zip(questions, opts, strict=True)]
        texts = self._with_bos(texts)
        with self._processor_system_prompt_off():
            return self.processor(
                text=texts, images=[im.convert("RGB") for im in images], padding=True
            )

    def encode_generation(self, prompts: Sequence[str]) -> Any:
        """Processor batch (left-padded `input_ids` ending in <begin_of_image>, `attention_mask`)
        of the image-generation prompts."""
        texts = self._with_bos([self.generation_prompt(p) for p in prompts])
        return self.processor(text=texts, generation_mode="image", padding=True)

    def _with_bos(self, texts: list[str]) -> list[str]:
        """Prefix BOS when the tokenizer does not add it itself (CFG keeps BOS, so it matters)."""
        tok = self.processor.tokenizer
        if tok("x")["input_ids"][:1] == [self.ids.bos]:
            return texts
        return [f"{tok.bos_token}{text}" for text in texts]

    def system_prompt(self) -> str:
        """The understanding system prompt: `rollout.system_prompt`, or (when that is null) the
        checkpoint processor's default, which the processor itself would put first."""
        configured = self.rollout_config.system_prompt
        if configured is not None:
            return f"{configured.strip()}\n\n" if configured.strip() else ""
        if self.processor.use_default_system_prompt:
            from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

            return DEFAULT_SYSTEM_PROMPT
        return ""

    @contextlib.contextmanager
    def _processor_system_prompt_off(self) -> Iterator[None]:
        # we put the system prompt in the text ourselves, after BOS when it must be added
        keep = self.processor.use_default_system_prompt
        self.processor.use_default_system_prompt = False
        try:
            yield
        finally:
            self.processor.use_default_system_prompt = keep

    def _check_context(self, prompt_len: int, new_tokens: int, what: str, fix: str) -> None:
        total = prompt_len + new_tokens
        if total > self.max_positions:
            raise PromptTooLongError(
                f"the {what} prompt has {prompt_len} tokens and {new_tokens} more are to be "
                f"generated: {total} positions, {total - self.max_positions} more than the "
                f"model's context (max_position_embeddings={self.max_positions}); {fix}"
            )

    def _ensure_bos(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        # CFG keeps BOS in the unconditional prompt; a tokenizer that forgot it would silently
        # change both branches, so insist on it.
        first = ids.gather(1, (mask == 0).sum(1, keepdim=True)).squeeze(1)
        if (first != self.ids.bos).any():
            raise CheckpointError(
                f"the tokenizer did not start the prompt with BOS (id {self.ids.bos}); set "
                "`add_bos_token` in tokenizer_config.json"
            )

    # ------------------------------------------------------------------ understanding

    def _image_marker_ids(self) -> torch.Tensor:
        """<image_placeholder>, <begin_of_image> and <end_of_image>: tokens an answer must never
        contain (a sampled placeholder would make teacher forcing expect image features)."""
        banned = {self.ids.image, self.ids.boi}
        eoi = getattr(self.processor.tokenizer, "eoi_token_id", None)
        if isinstance(eoi, int):
            banned.add(eoi)
        return torch.tensor(sorted(banned), dtype=torch.long)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states -> (..., V) text logits, image-marker tokens at -inf.

        Sampling and teacher forcing both go through here, so they share one distribution.
        """
        logits = self.model.lm_head(hidden)
        banned = self._banned_text_ids.to(logits.device)
        return logits.index_fill(-1, banned, float("-inf"))

    @torch.no_grad()
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
    ) -> TextRollout:
        """`num_samples` answers to each (image, question), rows grouped by pair (B = n x K).

        Images of any size are resized by the checkpoint's image processor.
        """
        _check_batch(len(questions), num_samples, "questions")
        max_new = max_new_tokens or self.rollout_config.max_new_tokens
        batch = self.encode_understanding(images, questions, options)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self._ensure_bos(ids, mask)
        self._check_context(
            ids.shape[1], max_new, "understanding", "shorten the question or lower max_new_tokens"
        )
        group = torch.arange(len(questions)).repeat_interleave(num_samples)
        ids, mask = ids[group].to(self.device), mask[group].to(self.device)
        pixels = batch["pixel_values"][group].to(self.device, self.vision_dtype)
        gen = self._generator(generator)
        with self._eval_mode():
            completion, completion_mask, logprobs = self._sample_text(
                ids, mask, pixels, max_new, greedy, gen
            )
        decoded = self.processor.tokenizer.batch_decode(
            completion.masked_fill(completion_mask == 0, self.ids.pad), skip_special_tokens=True
        )
        return TextRollout(ids, mask, pixels, completion, completion_mask, logprobs, decoded, group)

    def _sample_text(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pixels: torch.Tensor,
        max_new: int,
        greedy: bool,
        gen: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """KV-cached sampling until every row emitted EOS or `max_new` tokens.

        Returns completion ids (B, L), completion mask (B, L) and sampling log-probs (B, L).
        """
        from transformers import DynamicCache

        cfg = self.rollout_config
        cache = DynamicCache(config=self.model.config.text_config)
        positions = position_ids_from_mask(mask)
        out = self.model.model(
            input_ids=ids,
            pixel_values=pixels,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[:, -1]
        next_pos = positions[:, -1:] + 1
        eos = torch.tensor(self.ids.eos, device=ids.device)
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        tokens, logps, valid = [], [], []
        for step in range(max_new):
            tok, logp = sample_from_logits(
                self.text_logits(hidden),
                cfg.text_temperature,
                top_p=cfg.top_p,
                greedy=greedy,
                generator=gen,
            )
            tokens.append(tok.masked_fill(finished, self.ids.pad))
            logps.append(logp.masked_fill(finished, 0.0))
            valid.append(~finished)
            finished = finished | torch.isin(tok, eos)
            # (under FSDP's collective forwards every process runs the same number of steps)
            if (finished.all() and not self.collective_forwards) or step == max_new - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = self.model.model(
                input_ids=tokens[-1][:, None],
                attention_mask=mask,
                position_ids=next_pos,
                cache=cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state[:, -1]
            next_pos = next_pos + 1
        return torch.stack(tokens, 1), torch.stack(valid, 1).long(), torch.stack(logps, 1)

    def text_logprobs(self, rollout: TextRollout) -> torch.Tensor:
        """(B, L) teacher-forced log-probs of the completions, with gradient; 0 where masked."""
        rollout = rollout.to(self.device)
        prompt_len = rollout.prompt_ids.shape[1]
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
        mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
        out = self.model.model(
            input_ids=ids,
            pixel_values=rollout.pixel_values.to(self.vision_dtype),
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=False,
        )
        # The hidden state at position t predicts token t + 1: completion token j sits at
        # prompt_len + j and is predicted from prompt_len + j - 1.
        length = rollout.completion_ids.shape[1]
        hidden = out.last_hidden_state[:, prompt_len - 1 : prompt_len - 1 + length]
        logits = self.text_logits(hidden)
        logprobs = gather_logprobs(
            logits, rollout.completion_ids, self.rollout_config.text_temperature
        )
        return logprobs * rollout.completion_mask

    # ------------------------------------------------------------------ image generation

    def unconditional_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, P) prompt ids -> the CFG unconditional prompt: every token that is not BOS or
        <begin_of_image> becomes the pad token (the attention mask is kept as it is)."""
        keep = (ids == self.ids.bos) | (ids == self.ids.boi)
        return ids.masked_fill(~keep, self.ids.pad)

    @torch.no_grad()
    def rollout_image(
        self,
        prompts: Sequence[str],
        num_samples: int = 1,
        *,
        greedy: bool = False,
        generator: torch.Generator | int | None = None,
        decode: bool = True,
    ) -> ImageRollout:
        """`num_samples` images per prompt with CFG and a KV cache, rows grouped by prompt."""
        _check_batch(len(prompts), num_samples, "prompts")
        batch = self.encode_generation(prompts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self._ensure_bos(ids, mask)
        self._check_context(
            ids.shape[1], self.num_image_tokens, "image-generation", "shorten the prompt"
        )
        group = torch.arange(len(prompts)).repeat_interleave(num_samples)
        ids, mask = ids[group].to(self.device), mask[group].to(self.device)
        with self._eval_mode():
            image_ids, logprobs = self._sample_image(ids, mask, greedy, self._generator(generator))
        images = self.decode_images(image_ids) if decode else []
        return ImageRollout(ids, mask, image_ids, logprobs, images, group)

    def _cfg_batch(
        self, ids: torch.Tensor, mask: torch.Tensor, use_cfg: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[cond; uncond] stacked along the batch (or cond alone without CFG)."""
        if not use_cfg:
            return ids, mask
        return torch.cat([ids, self.unconditional_ids(ids)]), torch.cat([mask, mask])

    def _guided(self, logits: torch.Tensor, use_cfg: bool) -> torch.Tensor:
        """[cond; uncond] head logits -> l_u + w (l_c - l_u), in float32."""
        logits = logits.float()
        if not use_cfg:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + self.rollout_config.cfg_scale * (cond - uncond)

    def _sample_image(
        self, ids: torch.Tensor, mask: torch.Tensor, greedy: bool, gen: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) prompts -> image codes (B, N) and their sampling log-probs (B, N)."""
        from transformers import DynamicCache

        cfg = self.rollout_config
        use_cfg = cfg.cfg_scale != 1.0
        lm = self.model.model.language_model
        both_ids, both_mask = self._cfg_batch(ids, mask, use_cfg)
        positions = position_ids_from_mask(both_mask)
        cache = DynamicCache(config=self.model.config.text_config)
        out = lm(
            inputs_embeds=self.model.get_input_embeddings()(both_ids),
            attention_mask=both_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[:, -1]
        next_pos = positions[:, -1:] + 1
        tokens, logps = [], []
        for step in range(self.num_image_tokens):
            logits = self._guided(self.model.model.generation_head(hidden), use_cfg)
            tok, logp = sample_from_logits(
                logits, cfg.image_temperature, greedy=greedy, generator=gen
            )
            tokens.append(tok)
            logps.append(logp)
            if step == self.num_image_tokens - 1:
                break
            step_tok = torch.cat([tok, tok]) if use_cfg else tok
            both_mask = torch.cat([both_mask, both_mask.new_ones(both_mask.shape[0], 1)], dim=1)
            out = lm(
                inputs_embeds=self.model.prepare_embeddings_for_image_generation(step_tok[:, None]),
                attention_mask=both_mask,
                position_ids=next_pos,
                cache=cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state[:, -1]
            next_pos = next_pos + 1
        return torch.stack(tokens, 1), torch.stack(logps, 1)

    def image_logprobs(
        self, rollout: ImageRollout, cfg_in_logprob: bool | None = None
    ) -> torch.Tensor:
        """(B, N) teacher-forced log-probs of the image codes, with gradient.

        One forward over [prompt ; codes 0..N-2] per branch: the hidden state at <begin_of_image>
        (position P - 1) predicts code 0, the one at code j predicts code j + 1.
        `cfg_in_logprob` (default: the rollout config's) combines both branches as the sampler did.
        """
        rollout = rollout.to(self.device)
        use_cfg = self.rollout_config.cfg_scale != 1.0 and (
            self.rollout_config.cfg_in_logprob if cfg_in_logprob is None else cfg_in_logprob
        )
        ids, prompt_mask = self._cfg_batch(rollout.prompt_ids, rollout.prompt_mask, use_cfg)
        codes = rollout.image_ids.repeat(2 if use_cfg else 1, 1)
        num = codes.shape[1]
        embeds = torch.cat(
            [
                self.model.get_input_embeddings()(ids),
                self.model.prepare_embeddings_for_image_generation(codes[:, :-1]),
            ],
            dim=1,
        )
        mask = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], num - 1)], dim=1)
        out = self.model.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=False,
        )
        prompt_len = ids.shape[1]
        hidden = out.last_hidden_state[:, prompt_len - 1 : prompt_len - 1 + num]
        logits = self._guided(self.model.model.generation_head(hidden), use_cfg)
        return gather_logprobs(logits, rollout.image_ids, self.rollout_config.image_temperature)

    # ------------------------------------------------------------------ supervised targets

    def target_text(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        answers: Sequence[str],
        options: Sequence[Sequence[str] | None] | None = None,
    ) -> TextRollout:
        """A record whose completions ARE `answers` (each + EOS), for supervised fine-tuning:
        `text_logprobs` of it are the answers' teacher-forced log-probs, in the very prompt
        format rollouts use. `logprobs` is zeros (nothing was sampled)."""
        _check_batch(len(questions), 1, "questions")
        batch = self.encode_understanding(images, questions, options)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self._ensure_bos(ids, mask)
        tokenizer = self.processor.tokenizer
        rows = [
            [*tokenizer(answer, add_special_tokens=False).input_ids, self.ids.eos[0]]
            for answer in answers
        ]
        length = max(len(row) for row in rows)
        self._check_context(ids.shape[1], length, "understanding", "shorten the question or answer")
        completion = torch.full((len(rows), length), self.ids.pad, dtype=torch.long)
        completion_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            completion[i, : len(row)] = torch.tensor(row)
            completion_mask[i, : len(row)] = 1
        pixels = batch["pixel_values"].to(self.vision_dtype)
        zeros = torch.zeros(completion.shape, dtype=torch.float32)
        group = torch.arange(len(rows))
        return TextRollout(
            ids, mask, pixels, completion, completion_mask, zeros, list(answers), group
        )

    def target_images(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        unconditional: Sequence[bool] | None = None,
    ) -> ImageRollout:
        """A record whose image codes are the VQ codes of `images` (`image_codes`), for
        supervised fine-tuning; rows flagged `unconditional` get the CFG unconditional prompt
        (so guidance keeps an unconditional branch to contrast)."""
        _check_batch(len(prompts), 1, "prompts")
        batch = self.encode_generation(prompts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self._ensure_bos(ids, mask)
        if unconditional is not None:
            flags = torch.tensor(list(unconditional), dtype=torch.bool)[:, None]
            ids = torch.where(flags, self.unconditional_ids(ids), ids)
        codes = self.image_codes(images).cpu()
        zeros = torch.zeros(codes.shape, dtype=torch.float32)
        return ImageRollout(ids, mask, codes, zeros, [], torch.arange(len(prompts)))

    @property
    def generation_image_size(self) -> int:
        """The side of the images the VQ tokenizer encodes to `num_image_tokens` codes (384 for
        Janus-Pro: 24 x 24 codes, 16x downsampling)."""
        levels = len(self.model.config.vq_config.channel_multiplier)
        return math.isqrt(self.num_image_tokens) * 2 ** (levels - 1)

    @torch.no_grad()
    def image_codes(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, N) VQ codes of `images` in raster order: centre-cropped to a square, resized to
        `generation_image_size` (bicubic), scaled to [-1, 1], encoded and quantised to the
        nearest code by COSINE similarity. Janus's VQ (LlamaGen's, `codebook_l2_norm`) normalises
        latents and codebook; transformers' `JanusVQVAE.decode` does too, but its `encode`
        quantises by Euclidean distance to the raw codebook, which picks other codes."""
        import numpy as np
        import torch.nn.functional as F
        from PIL import Image

        side = self.generation_image_size
        pixels = torch.stack(
            [
                torch.from_numpy(np.array(_square(image).resize((side, side), Image.BICUBIC)))
                for image in images
            ]
        )
        vq = self.model.model.vqmodel
        dtype = next(vq.parameters()).dtype
        pixels = pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        latents = vq.quant_conv(vq.encoder(pixels.to(self.device, dtype)))
        unit = F.normalize(latents.float(), dim=1).permute(0, 2, 3, 1).flatten(1, 2)
        codebook = F.normalize(vq.quantize.embedding.weight.float(), dim=1)
        return (unit @ codebook.T).argmax(dim=-1)

    @torch.no_grad()
    def decode_images(self, image_ids: torch.Tensor) -> list[Image.Image]:
        """(B, N) codes -> B RGB images, `decode_batch_size` at a time."""
        images: list[Image.Image] = []
        size = self.rollout_config.decode_batch_size
        for start in range(0, image_ids.shape[0], size):
            chunk = image_ids[start : start + size].to(self.device)
            images += to_pil(self.model.decode_image_tokens(chunk))
        return images

    # ------------------------------------------------------------------ helpers

    def _generator(self, generator: torch.Generator | int | None) -> torch.Generator | None:
        if generator is None or isinstance(generator, torch.Generator):
            return generator
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(generator))
        return gen

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        # Gradient checkpointing turns the KV cache off in training mode; rollouts need it.
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)


def _square(image: Image.Image) -> Image.Image:  # PIL is imported by the caller
    """The centred square crop of an RGB version of `image`."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))
