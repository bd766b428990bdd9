"""LoRA adapters through `peft` (`model.lora`, docs/policy.md "LoRA"), for every backend.

peft injects its LoRA layers into the model in place, so every sub-module the policy calls
directly (the language model, the generation head, ...) runs through them; the `PeftModel`
wrapper is kept beside it for what only it does: disabling the adapters (the KL reference),
saving and loading adapters, merging them into the weights.

A checkpoint is a folder with peft's `adapter_config.json` + `adapter_model.safetensors` (the
adapters and the fully trained `modules_to_save`) and the processor files; the base model is the
folder named by `base_model_name_or_path` (an absolute path).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from peft import PeftModel

    from pairuni.policy.config import LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# peft's prefix of the wrapped model's state-dict keys
PEFT_PREFIX = "base_model.model."


class LoraError(ValueError):
    """A LoRA setting or adapter folder that cannot be used; the message says the fix."""


def is_adapter_dir(path: str | Path) -> bool:
    """A folder holding a peft adapter rather than full weights."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> Path:
    """The base-model folder an adapter folder was trained on."""
    config_file = Path(path) / ADAPTER_CONFIG
    base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise LoraError(f"{config_file} names no base_model_name_or_path; set it to the base model")
    return Path(base)


def existing_adapter_base(path: str | Path, error: type[Exception] = LoraError) -> Path:
    """`adapter_base(path)` when that folder exists; otherwise `error` naming the adapter
    config that points at it and the fix (each backend raises its own checkpoint error)."""
    base = adapter_base(path)
    if not base.is_dir():
        raise error(
            f"{path} is a LoRA adapter whose base model {base} (base_model_name_or_path in "
            f"{Path(path) / ADAPTER_CONFIG}) does not exist; put the base checkpoint there "
            "or edit that path"
        )
    return base


def target_pattern(
    model: torch.nn.Module, lora: LoraConfig, prefixes: dict[str, Sequence[str]]
) -> str:
    """peft's `target_modules` as one regex over full module names: the linear layers named in
    `lora.target_modules` (or all of them) inside the sub-models of `lora.modules`. Fails,
    naming the sub-model and its linear layers, when one of them would get no adapter."""
    every = "all-linear" in lora.target_modules
    chosen: list[str] = []
    for module in lora.modules:
        paths = [p for p in prefixes[module] if p != "lm_head"]  # the text head stays frozen
        linear = [
            name
            for name, sub in model.named_modules()
            if isinstance(sub, torch.nn.Linear) and any(name.startswith(p + ".") for p in paths)
        ]
        picked = [n for n in linear if every or n.rsplit(".", 1)[-1] in lora.target_modules]
        if not picked:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise LoraError(
                f"model.lora.target_modules {lora.target_modules} matches no linear layer of "
                f"{module} (its linear layers: {', '.join(leaves) or 'none'}); name some of "
                "them or use [all-linear]"
            )
        chosen += picked
    return "^(" + "|".join(re.escape(n) for n in chosen) + ")$"


def apply_lora(
    model: torch.nn.Module,
    lora: LoraConfig,
    trainable: Sequence[str],
    prefixes: dict[str, Sequence[str]],
    base_path: str | Path | None,
) -> PeftModel:
    """Inject fresh adapters (peft's default init: B = 0, so the model is unchanged) into
    `model`; modules of `trainable` not in `lora.modules` become `modules_to_save`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    full = [m for m in trainable if m not in lora.modules]
    if "language_model" in full:
        raise LoraError(
            "model.trainable has language_model but model.lora.modules does not: training the "
            "whole language model beside adapters would copy it; add language_model to "
            "lora.modules or drop model.lora"
        )
    if "vqmodel" in full:
        raise LoraError("vqmodel cannot be trained with LoRA; remove it from model.trainable")
    # full paths: peft matches them as suffixes, and "aligner" alone would also match
    # "generation_aligner"
    to_save = [path for m in full for path in prefixes[m]]
    config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_pattern(model, lora, prefixes),
        modules_to_save=to_save or None,
    )
    peft_model = get_peft_model(model, config)  # type: ignore[arg-type]
    if base_path is not None:
        peft_model.peft_config["default"].base_model_name_or_path = str(Path(base_path).resolve())
    return peft_model


def load_adapter(model: torch.nn.Module, path: str | Path, trainable: bool) -> PeftModel:
    """Put the adapter saved in `path` on `model` (trainable for resuming, frozen otherwise)."""
    from peft import PeftModel

    root = Path(path)
    if not any((root / name).is_file() for name in ADAPTER_WEIGHTS):
        raise LoraError(
            f"adapter folder {root} has {ADAPTER_CONFIG} but no {' or '.join(ADAPTER_WEIGHTS)}; "
            "copy the whole checkpoint folder"
        )
    return PeftModel.from_pretrained(model, root, is_trainable=trainable)  # type: ignore[arg-type]


def trainable_groups(peft_model: PeftModel, full_paths: dict[str, Sequence[str]]) -> dict[str, Any]:
    """{"lora": the adapters, <module>: its trainable copy} of the parameters that train."""
    model = peft_model.base_model.model
    groups: dict[str, list[torch.nn.Parameter]] = {"lora": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = next(
            (m for m, paths in full_paths.items() if any(name.startswith(p + ".") for p in paths)),
            None,
        )
        groups.setdefault(owner or "lora", []).append(param)
    return {k: v for k, v in groups.items() if v}


def save_adapter(
    peft_model: PeftModel, out: Path, state_dict: dict[str, torch.Tensor] | None
) -> None:
    """Write the adapters (and modules_to_save). `state_dict`: the full state of the wrapped
    model gathered from FSDP shards (keys without peft's prefix), else the model's own."""
    if state_dict is not None:
        state_dict = {PEFT_PREFIX + key: value for key, value in state_dict.items()}
    peft_model.save_pretrained(out, state_dict=state_dict)


@contextlib.contextmanager
def adapters_disabled(peft_model: PeftModel | None) -> Iterator[None]:
    """The base model: LoRA layers skip their adapters and modules_to_save use the original."""
    if peft_model is None:
        yield
        return
    with peft_model.disable_adapter():
        yield


class AdaptersDisabled:
    """pi_ref of a LoRA policy (any backend whose policy holds its `PeftModel` as `peft`): the
    policy's text and image log-probs with the adapters disabled, i.e. the initial model,
    sharing every weight with the policy (no second copy)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def text_logprobs(self, rollout: Any) -> torch.Tensor:
        with adapters_disabled(self.policy.peft):
            return self.policy.text_logprobs(rollout)

    def image_logprobs(self, rollout: Any) -> torch.Tensor:
        with adapters_disabled(self.policy.peft):
            return self.policy.image_logprobs(rollout)
