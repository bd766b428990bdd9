"""The `model` and `rollout` sections: which checkpoint to load and how to sample from it."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pairuni.configbase import Section
from pairuni.policy.dimoo.config import DimooRolloutConfig

DType = Literal["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]
TrainableModule = Literal[
    "language_model",
    "generation_head",
    "generation_embeddings",
    "generation_aligner",
    "aligner",
    "vision_model",
    "vqmodel",
]
LoraModule = Literal[
    "language_model", "generation_head", "generation_aligner", "aligner", "vision_model"
]
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|(cuda|xpu|npu)(:\d+)?)$")
VALID_DEVICES = "auto, cpu, mps, cuda, cuda:N, xpu, xpu:N, npu, npu:N"


class LoraConfig(Section):
    """LoRA adapters through `peft` (docs/training.md, "LoRA"): only the adapters (and the modules
    of `model.trainable` not listed in `modules`, trained in full) change; the base weights stay
    frozen in `model.dtype`. Checkpoints hold the adapters; `pairuni merge-lora` writes a merged
    model in the usual HF format."""

    rank: int = Field(16, ge=1)
    """r: the rank of each adapter (A: r x in, B: out x r)."""

    alpha: float = Field(32.0, gt=0.0)
    """The adapter output is scaled by alpha / rank (peft's `lora_alpha`)."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input (peft's `lora_dropout`). It acts in the loss's forward pass
    only (rollouts, old and reference log-probs run without it), so with `> 0` the first
    update's importance ratio is not exactly 1."""

    modules: list[LoraModule] = Field(default_factory=lambda: ["language_model"])
    """The sub-models (each must be in `model.trainable`) whose linear layers get adapters. The
    other modules of `model.trainable` are trained in full (peft's `modules_to_save`: a trainable
    copy beside the frozen original, so disabling the adapters restores the initial model)."""

    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    """Names of the linear layers inside `modules` that get adapters (the last part of the
    module path, e.g. `q_proj`), or `[all-linear]` for every linear layer in them. The default is
    the language model's attention and MLP projections (every linear layer of a Llama block)."""

    @field_validator("modules", "target_modules")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("is empty, so no adapter would be made; list at least one name")
        return list(dict.fromkeys(value))


class ModelConfig(Section):
    """The policy checkpoint: for `backend: janus` a local directory in the Hugging Face format
    of `deepseek-community/Janus-Pro-1B` / `-7B` (loaded with transformers' native
    `JanusForConditionalGeneration`, never `trust_remote_code`)."""

    backend: Literal["auto", "janus", "dimoo"] = "auto"
    """The model family, i.e. the policy backend that loads `path` (`pairuni.policy.registry`):
    `janus` (autoregressive Janus / Janus-Pro), `dimoo` (Lumina-DiMOO, masked discrete
    diffusion, docs/dimoo.md) or `auto` (from the checkpoint's config.json: `model_type: janus`
    or `llada`; a LoRA adapter folder is Janus's)."""

    path: str | None = None
    """Checkpoint directory (config.json, safetensors weights, tokenizer, processor config).
    `pairuni tiny-model DIR` writes a tiny random one for offline tries."""

    dtype: DType = "float32"
    """Parameter dtype: `float32` (`fp32`), `bfloat16` (`bf16`, what the paper's GPU runs use) or
    `float16` (`fp16`). Log-probs are always computed in float32 from the logits."""

    device: str = "auto"
    """Where the model runs: `auto` (the first CUDA GPU if there is one, else the CPU), `cpu`,
    `cuda`, `cuda:N`, `mps`, `xpu`, `npu`."""

    trainable: list[TrainableModule] = Field(default_factory=lambda: ["language_model"])
    """Modules whose parameters train; all others are frozen. `language_model` is the LLM with its
    text head (what T2I-R1 and CoRL train); `generation_head`, `generation_embeddings` and
    `generation_aligner` are the image-token head, input embeddings and projector; `aligner` and
    `vision_model` are the understanding encoder path; `vqmodel` the VQ image tokenizer."""

    lora: LoraConfig | None = None
    """LoRA / PEFT fine-tuning instead of full fine-tuning: `null` (the default) trains the
    modules of `trainable` in full; a mapping (e.g. `lora: {rank: 16}`) trains adapters on
    `lora.modules`. With `algo.beta > 0` the reference model is the same weights with the
    adapters disabled (no second copy)."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of the language model (less memory, ~30 % more
    compute). Rollouts are unaffected: they run without gradient and with a KV cache."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError(f"unknown device {value!r}; valid devices: {VALID_DEVICES}")
        return value

    @model_validator(mode="after")
    def _check_lora_modules(self) -> ModelConfig:
        if self.lora is not None:
            missing = [m for m in self.lora.modules if m not in self.trainable]
            if missing:
                raise ValueError(
                    f"lora.modules lists {', '.join(missing)}, which model.trainable does not; "
                    f"add {', '.join(missing)} to model.trainable (it lists what trains, LoRA "
                    "or in full) or remove it from lora.modules"
                )
        return self

    @field_validator("trainable")
    @classmethod
    def _check_trainable(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(
                "trainable is empty, so nothing would train; list at least one module, "
                "e.g. [language_model]"
            )
        return list(dict.fromkeys(value))


DEFAULT_UND_TEMPLATE = (
    "{question}\n"
    "First think about the question step by step inside <think> </think>, then give only the "
    "final answer (the option's letter for a multiple-choice question) inside "
    "<answer> </answer>."
)


class RolloutConfig(Section):
    """Sampling for both tasks: K answers per (image, question) and K images per prompt. The
    defaults are the paper's (temperature 1, CFG 5, all image tokens)."""

    max_new_tokens: int = Field(512, ge=1)
    """Longest understanding answer, in tokens; generation stops earlier when every answer has
    emitted EOS. Tokens after the first EOS are masked out of the loss."""

    text_temperature: float = Field(1.0, gt=0.0)
    """Temperature of understanding sampling. Sampling and teacher-forced log-probs are both of
    softmax(logits / temperature)."""

    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling for understanding answers (1 = off). As in TRL, the recorded log-probs are
    of the temperature-scaled distribution before top-p truncation, so that teacher-forced
    log-probs (which cannot know the nucleus) use the same definition."""

    und_prompt_template: str = DEFAULT_UND_TEMPLATE
    """The user turn of an understanding rollout; `{question}` is replaced by the question (with
    its options, one per line, when the data has them). The default asks for the
    `<think>...</think><answer>X</answer>` format of the paper's Fig. 9."""

    system_prompt: str | None = None
    """System prompt of understanding rollouts. `null` keeps the checkpoint processor's default
    (Janus-Pro's "You are a helpful language and vision assistant..."); `""` uses none."""

    cfg_scale: float = Field(5.0, ge=1.0)
    """Classifier-free guidance weight w for image rollouts: logits = l_u + w (l_c - l_u), the
    unconditional prompt keeping only BOS and <begin_of_image> (as transformers does). 1 turns CFG
    off (conditional branch only, half the compute)."""

    image_temperature: float = Field(1.0, gt=0.0)
    """Temperature of image-token sampling, applied after the CFG combination."""

    cfg_in_logprob: bool = True
    """Image-token log-probs for the loss. `true`: of the CFG-combined distribution, exactly the
    one sampled from (on-policy importance ratios; twice the forward compute, and the gradient also
    flows through the unconditional branch). `false`: of the conditional branch only, as T2I-R1
    and CoRL do (cheaper, but then the rollout's sampling log-probs are not the "old" log-probs:
    recompute them with the same function before the update)."""

    decode_batch_size: int = Field(16, ge=1)
    """Images decoded by the VQ decoder at a time (bounds decoder memory)."""

    dimoo: DimooRolloutConfig = Field(default_factory=DimooRolloutConfig)
    """Settings of the masked-diffusion backend only (`model.backend: dimoo`): steps, image
    size, the log-prob estimator; ignored by Janus."""

    @field_validator("und_prompt_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError(
                "und_prompt_template has no `{question}` placeholder, so the question would be "
                "dropped; add `{question}` where it belongs"
            )
        return value
