"""DeepSeek's original Janus / Janus-Pro release -> the Hugging Face layout `JanusPolicy` loads.

Most Janus-Pro users hold the checkpoints as DeepSeek published them (`deepseek-ai/Janus-Pro-1B`,
`-7B`): a `config.json` with `model_type: multi_modality` and six sub-configs (`language_config`,
`vision_config`, `aligner_config`, `gen_vision_config`, `gen_aligner_config`, `gen_head_config`),
PyTorch `.bin` weights under DeepSeek's module names (`pytorch_model.bin`, or shards listed in
`pytorch_model.bin.index.json`), the `preprocessor_config.json` / `processor_config.json` of
DeepSeek's own `VLChatProcessor`, and the tokenizer files. pairuni runs Janus on transformers'
native `JanusForConditionalGeneration`, which reads the layout of `deepseek-community/Janus-Pro-1B`.
`convert_original_janus` (the command `pairuni convert-janus SRC DST`) rewrites one into the
other, once, with no remote code:

- weights: every key through `KEY_MAP`, read with `torch.load(weights_only=True)`, written as
  safetensors (sharded above `max_shard_bytes`), dtypes kept. A tensor the map does not know, a
  key the model needs that no file holds, or a wrong shape is an error naming the file and key;
- `config.json`: a `JanusConfig` built from the sub-configs. What they leave to DeepSeek's code
  (the SigLIP tower's size, fixed by `vision_config.params.model_name`, and VQ-16's channel
  layout, fixed by the class) is read from the weight shapes, except the attention heads: from
  `SIGLIP_HEADS` by model name, or `vision_config.params.heads`;
- tokenizer: `tokenizer.json` as it is, with Janus's image tokens named; BOS is prepended as
  DeepSeek's Llama tokenizer class does, when `tokenizer.json` does not do it itself;
- processor: the image settings of `preprocessor_config.json`, `num_image_tokens` of
  `processor_config.json`, Janus-Pro's chat template (`JANUS_PRO_CHAT_TEMPLATE`, the format
  `VLChatProcessor` writes) and its default system prompt;
- `generation_config.json`: the special token ids, CFG 5 and temperature 1 (Janus-Pro's demo).

Key map, DeepSeek's name -> transformers' name (`KEY_MAP`; `{n}` an index, `{p}` weight or bias,
`{rest}` any tail; the first matching rule wins; T = `vision_model.vision_tower`,
L = `model.vision_model.encoder.layers.{n}`, VQ = `model.vqmodel`):

    language_model.lm_head.weight           -> lm_head.weight
    language_model.model.{rest}             -> model.language_model.{rest}
    T.patch_embed.proj.{p}                  -> model.vision_model.embeddings.patch_embedding.{p}
    T.pos_embed (1, N, D)                   -> model.vision_model.embeddings.position_embedding
                                               .weight (N, D)
    T.blocks.{n}.norm1|norm2.{p}            -> L.layer_norm1|layer_norm2.{p}
    T.blocks.{n}.attn.qkv.{p}               -> L.self_attn.q_proj|k_proj|v_proj.{p} (rows in 3)
    T.blocks.{n}.attn.proj.{p}              -> L.self_attn.projection_layer.{p}
    T.blocks.{n}.mlp.fc1|fc2.{p}            -> L.mlp.fc1|fc2.{p}
    T.norm.{p}                              -> model.vision_model.post_layernorm.{p}
    aligner.layers.0.{p}                    -> model.aligner.fc1.{p}
    aligner.layers.{2k+2}.{p}               -> model.aligner.hidden_layers.{k}.{p} (GELUs between)
    gen_aligner.layers.0|{2k+2}.{p}         -> model.generation_aligner.fc1|hidden_layers.{k}.{p}
    gen_embed.weight                        -> model.generation_embeddings.weight
    gen_head.output_mlp_projector.{p}       -> model.generation_head.proj_out.{p}
    gen_head.vision_head.{p}                -> model.generation_head.vision_head.{p}
    gen_vision_model.encoder.conv_blocks.{n}.res.{rest} -> VQ.encoder.down.{n}.block.{rest}
    gen_vision_model.encoder.conv_blocks.{n}.{rest}     -> VQ.encoder.down.{n}.{rest}
    gen_vision_model.decoder.conv_blocks.{n}.res.{rest} -> VQ.decoder.up.{n}.block.{rest}
    gen_vision_model.decoder.conv_blocks.{n}.{rest}     -> VQ.decoder.up.{n}.{rest}
    gen_vision_model.encoder|decoder.mid.0|1|2.{rest}   -> VQ.encoder|decoder.mid
                                                           .block_1|attn_1|block_2.{rest}
    gen_vision_model.{rest}                 -> VQ.{rest}

Dropped: `vision_model.vision_tower.attn_pool.*` (SigLIP's pooling head; Janus feeds the patch
features to the aligner and never runs it), `gen_vision_model.quantize.codebook_used` (a
training-time usage counter) and `*.rotary_emb.inv_freq` (recomputed from the config).
`lm_head.weight` is written (untied, `tie_word_embeddings: false`) unless it equals the input
embeddings. Janus-Pro's `language_model.model.*` is already transformers' Llama layout.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from pairuni.policy.janus import JANUS_PRO_CHAT_TEMPLATE, CheckpointError

ORIGINAL_MODEL_TYPE = "multi_modality"
SUB_CONFIGS = (
    "language_config",
    "vision_config",
    "aligner_config",
    "gen_vision_config",
    "gen_aligner_config",
    "gen_head_config",
)
# DeepSeek's siglip_vit fixes a tower's size by name; only the head count is not in the shapes.
SIGLIP_HEADS = {
    "siglip_large_patch16_384": 16,
    "siglip_so400m_patch14_384": 16,
    "siglip_so400m_patch14_224": 16,
}
# VLChatProcessor's defaults (processor_config.json may name others).
IMAGE_TAG = "<image_placeholder>"
IMAGE_START_TAG = "<begin_of_image>"
IMAGE_END_TAG = "<end_of_image>"
PAD_TAG = "<｜▁pad▁｜>"
WEIGHT_INDEXES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
DEFAULT_SHARD_BYTES = 5 * 1024**3

# ----------------------------------------------------------------------------- the key map

_PLACEHOLDERS = {
    "n": r"\d+",
    "p": r"weight|bias",
    "i": r"[12]",
    "fc": r"fc[12]",
    "coder": r"encoder|decoder",
    "rest": r".+",
}


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    """`a.{n}.{p}` -> a full-match regex with one named group per placeholder."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        f"(?P<{part}>{_PLACEHOLDERS[part]})" if odd else re.escape(part)
        for odd, part in ((i % 2 == 1, p) for i, p in enumerate(parts))
    )
    return re.compile(regex)


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """One row of the key map: DeepSeek's name template -> transformers' name template(s).

    `transform`: `copy`; `split` (a fused tensor whose rows are the `hf` names' tensors, in
    order: q, k, v); `squeeze` (DeepSeek keeps a leading batch axis of 1)."""

    original: str
    hf: tuple[str, ...]
    transform: str = "copy"

    def __post_init__(self) -> None:
        if self.transform not in ("copy", "split", "squeeze"):
            raise ValueError(f"unknown transform {self.transform!r}")
        if (self.transform == "split") != (len(self.hf) > 1):
            raise ValueError(f"{self.original}: only a split has several target names")

    def to_hf(self, key: str) -> list[str] | None:
        match = _pattern(self.original).fullmatch(key)
        return None if match is None else [name.format(**match.groupdict()) for name in self.hf]

    def to_original(self, hf_key: str) -> str | None:
        for name in self.hf:
            match = _pattern(name).fullmatch(hf_key)
            if match is not None:
                return self.original.format(**match.groupdict())
        return None


def _aligner_rules(original: str, hf: str, max_depth: int = 8) -> list[KeyRule]:
    # MlpProjector is Sequential(Linear, GELU, Linear, GELU, ...): the linears sit at 0, 2, 4...
    rules = [KeyRule(f"{original}.layers.0.{{p}}", (f"{hf}.fc1.{{p}}",))]
    rules += [
        KeyRule(f"{original}.layers.{2 * k + 2}.{{p}}", (f"{hf}.hidden_layers.{k}.{{p}}",))
        for k in range(max_depth - 1)
    ]
    return rules


_TOWER = "vision_model.vision_tower"
_LAYERS = "model.vision_model.encoder.layers.{n}"
_VQ = "gen_vision_model"

KEY_MAP: tuple[KeyRule, ...] = (
    KeyRule("language_model.lm_head.weight", ("lm_head.weight",)),
    KeyRule("language_model.model.{rest}", ("model.language_model.{rest}",)),
    KeyRule(
        f"{_TOWER}.patch_embed.proj.{{p}}", ("model.vision_model.embeddings.patch_embedding.{p}",)
    ),
    KeyRule(
        f"{_TOWER}.pos_embed",
        ("model.vision_model.embeddings.position_embedding.weight",),
        "squeeze",
    ),
    KeyRule(f"{_TOWER}.blocks.{{n}}.norm{{i}}.{{p}}", (f"{_LAYERS}.layer_norm{{i}}.{{p}}",)),
    KeyRule(
        f"{_TOWER}.blocks.{{n}}.attn.qkv.{{p}}",
        tuple(f"{_LAYERS}.self_attn.{proj}_proj.{{p}}" for proj in "qkv"),
        "split",
    ),
    KeyRule(
        f"{_TOWER}.blocks.{{n}}.attn.proj.{{p}}", (f"{_LAYERS}.self_attn.projection_layer.{{p}}",)
    ),
    KeyRule(f"{_TOWER}.blocks.{{n}}.mlp.{{fc}}.{{p}}", (f"{_LAYERS}.mlp.{{fc}}.{{p}}",)),
    KeyRule(f"{_TOWER}.norm.{{p}}", ("model.vision_model.post_layernorm.{p}",)),
    *_aligner_rules("aligner", "model.aligner"),
    *_aligner_rules("gen_aligner", "model.generation_aligner"),
    KeyRule("gen_embed.weight", ("model.generation_embeddings.weight",)),
    KeyRule("gen_head.output_mlp_projector.{p}", ("model.generation_head.proj_out.{p}",)),
    KeyRule("gen_head.vision_head.{p}", ("model.generation_head.vision_head.{p}",)),
    KeyRule(
        f"{_VQ}.encoder.conv_blocks.{{n}}.res.{{rest}}",
        ("model.vqmodel.encoder.down.{n}.block.{rest}",),
    ),
    KeyRule(
        f"{_VQ}.encoder.conv_blocks.{{n}}.{{rest}}", ("model.vqmodel.encoder.down.{n}.{rest}",)
    ),
    KeyRule(
        f"{_VQ}.decoder.conv_blocks.{{n}}.res.{{rest}}",
        ("model.vqmodel.decoder.up.{n}.block.{rest}",),
    ),
    KeyRule(f"{_VQ}.decoder.conv_blocks.{{n}}.{{rest}}", ("model.vqmodel.decoder.up.{n}.{rest}",)),
    KeyRule(f"{_VQ}.{{coder}}.mid.0.{{rest}}", ("model.vqmodel.{coder}.mid.block_1.{rest}",)),
    KeyRule(f"{_VQ}.{{coder}}.mid.1.{{rest}}", ("model.vqmodel.{coder}.mid.attn_1.{rest}",)),
    KeyRule(f"{_VQ}.{{coder}}.mid.2.{{rest}}", ("model.vqmodel.{coder}.mid.block_2.{rest}",)),
    KeyRule(f"{_VQ}.{{rest}}", ("model.vqmodel.{rest}",)),
)
"""DeepSeek's weight names -> transformers' `JanusForConditionalGeneration` names."""

DROPPED: tuple[str, ...] = (
    f"{_TOWER}.attn_pool.{{rest}}",
    f"{_VQ}.quantize.codebook_used",
    "{rest}.rotary_emb.inv_freq",
)
"""DeepSeek's tensors that Janus never uses, or that transformers recomputes."""


def map_key(key: str) -> tuple[KeyRule, list[str]] | None:
    """DeepSeek's weight name -> (its rule, transformers' names); None for an unknown name."""
    for rule in KEY_MAP:
        names = rule.to_hf(key)
        if names is not None:
            return rule, names
    return None


def original_name(hf_key: str) -> str | None:
    """transformers' weight name -> the DeepSeek name it comes from (None if no rule makes it)."""
    return next((name for rule in KEY_MAP if (name := rule.to_original(hf_key))), None)


def is_dropped(key: str) -> bool:
    return any(_pattern(template).fullmatch(key) for template in DROPPED)


def convert_state_dict(
    tensors: dict[str, torch.Tensor], origin: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """DeepSeek's state dict -> transformers' (tensors shared, fused ones split).

    `origin` names the file each key was read from; the result's `origin` maps every new key to
    `file: original key`, for error messages. An unknown key is an error naming its file."""
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unknown = []
    for key, tensor in tensors.items():
        if is_dropped(key):
            continue
        found = map_key(key)
        if found is None:
            unknown.append(f"{origin.get(key, '?')}: {key}")
            continue
        rule, names = found
        where = f"{origin.get(key, '?')}: {key}"
        for name, part in zip(names, _transform(rule, tensor, where), strict=True):
            converted[name] = part
            sources[name] = where
    if unknown:
        shown = "; ".join(unknown[:5]) + (
            f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        )
        raise CheckpointError(
            f"{len(unknown)} weights that Janus / Janus-Pro do not have: {shown}. pairuni's key "
            "map (pairuni.policy.janus_original.KEY_MAP) covers DeepSeek's Janus and Janus-Pro "
            "releases; JanusFlow and other variants are not supported"
        )
    return converted, sources


def _transform(rule: KeyRule, tensor: torch.Tensor, where: str) -> list[torch.Tensor]:
    if rule.transform == "squeeze":
        if tensor.dim() < 2 or tensor.shape[0] != 1:
            raise CheckpointError(f"{where} has shape {tuple(tensor.shape)}, expected (1, N, D)")
        return [tensor[0]]
    if rule.transform == "split":
        parts = len(rule.hf)
        if tensor.shape[0] % parts:
            raise CheckpointError(
                f"{where} has shape {tuple(tensor.shape)}: {tensor.shape[0]} rows do not split "
                f"into {parts} equal parts (q, k, v)"
            )
        # clones: the parts are written as separate tensors, safetensors refuses shared storage
        return [part.clone() for part in tensor.chunk(parts, dim=0)]
    return [tensor]


# ----------------------------------------------------------------------------- reading SRC


def is_original_release(path: str | Path) -> bool:
    """Whether `path/config.json` says `model_type: multi_modality` (DeepSeek's layout)."""
    config = Path(path) / "config.json"
    try:
        return (
            json.loads(config.read_text(encoding="utf-8")).get("model_type") == ORIGINAL_MODEL_TYPE
        )
    except (OSError, ValueError, AttributeError):
        return False


def original_release_message(path: str | Path) -> str:
    """What `JanusPolicy.load` says when it meets DeepSeek's original layout."""
    root = Path(path)
    target = root.parent / f"{root.name}-hf"
    return (
        f"{root} holds DeepSeek's original Janus release ({root / 'config.json'} says model_type "
        f"'{ORIGINAL_MODEL_TYPE}', the weights use DeepSeek's module names); pairuni loads the "
        "Hugging Face layout of deepseek-community/Janus-Pro-1B. Convert it once, offline: "
        f"`pairuni convert-janus {root} {target}`, then pass {target} (--model or model.path)"
    )


def _read_json(path: Path, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path} is missing; copy the whole original release")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def read_original_config(src: Path) -> dict[str, Any]:
    """`config.json` of the original release, checked for the six sub-configs."""
    config = _read_json(src / "config.json")
    if config.get("model_type") != ORIGINAL_MODEL_TYPE:
        raise CheckpointError(
            f"{src / 'config.json'} says model_type={config.get('model_type')!r}, not "
            f"'{ORIGINAL_MODEL_TYPE}': not DeepSeek's original Janus release"
        )
    missing = [name for name in SUB_CONFIGS if not isinstance(config.get(name), dict)]
    if missing:
        raise CheckpointError(f"{src / 'config.json'} lacks {', '.join(missing)}")
    return config


def _param(config: dict[str, Any], section: str, name: str, default: Any = ...) -> Any:
    params = config[section].get("params", {})
    if name in params:
        return params[name]
    if default is ...:
        raise CheckpointError(f"config.json lacks {section}.params.{name}")
    return default


def load_original_weights(src: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of `src` (one file, or the shards of its index) and the file of each key.

    `.bin` files are read with `torch.load(weights_only=True)` (memory-mapped when their format
    allows), safetensors with `safetensors.torch.load_file`."""
    index = next((src / name for name in WEIGHT_INDEXES if (src / name).is_file()), None)
    if index is not None:
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = sorted(set(weight_map.values()))
        absent = [name for name in files if not (src / name).is_file()]
        if absent:
            raise CheckpointError(f"{index} lists {', '.join(absent)}, missing from {src}")
    else:
        files = [name for name in WEIGHT_FILES if (src / name).is_file()][:1]
        if not files:
            raise CheckpointError(
                f"{src} has no weights: pytorch_model.bin or pytorch_model.bin.index.json "
                "with its shards"
            )
        weight_map = None
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for name in files:
        for key, tensor in _load_file(src / name).items():
            tensors[key] = tensor
            origin[key] = name
    if weight_map is not None:
        lost = [f"{file}: {key}" for key, file in weight_map.items() if origin.get(key) != file]
        if lost:
            raise CheckpointError(
                f"{index} lists {len(lost)} weights their shard does not hold, e.g. {lost[0]}"
            )
    return tensors, origin


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a file it cannot unpickle safely
        raise CheckpointError(f"{path} cannot be read as PyTorch weights ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat {{name: tensor}} state dict")
    return state


# ----------------------------------------------------------------------------- the HF config


def _needed(tensors: dict[str, torch.Tensor], hf_key: str) -> torch.Tensor:
    if hf_key not in tensors:
        raise CheckpointError(
            f"the weights lack {original_name(hf_key) or hf_key} (transformers' {hf_key}), "
            "which fixes the model's size"
        )
    return tensors[hf_key]


def _count(tensors: Iterable[str], prefix: str) -> int:
    """How many `prefix{i}.` indices the keys have; a gap in 0..count-1 is an error."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.+)")
    found = {int(m.group(1)): m.group(2) for k in tensors if (m := pattern.match(k))}
    gaps = sorted(set(range(max(found, default=-1) + 1)) - set(found))
    if gaps:
        probe = f"{prefix}{gaps[0]}.{next(iter(found.values()))}"
        raise CheckpointError(
            f"the weights lack {original_name(probe) or probe} and the rest of its block "
            f"(index {gaps[0]} of {prefix}*, in transformers' names)"
        )
    return len(found)


def _mlp_projector(config: dict[str, Any], section: str) -> tuple[int, int, int]:
    """(input_dim, n_embed, depth) of an `MlpProjector` sub-config, which must be mlp_gelu."""
    kind = _param(config, section, "projector_type", "mlp_gelu")
    if kind != "mlp_gelu":
        raise CheckpointError(
            f"config.json {section}.params.projector_type is {kind!r}; transformers' Janus has the "
            "mlp_gelu projector only"
        )
    depth = int(_param(config, section, "depth", 1))
    return int(_param(config, section, "input_dim")), int(_param(config, section, "n_embed")), depth


def vision_config(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """JanusVisionConfig fields: the tower's sizes from the weights, the rest from config.json."""
    name = str(_param(config, "vision_config", "model_name", ""))
    if not name.startswith("siglip"):
        raise CheckpointError(
            f"config.json vision_config.params.model_name is {name!r}; Janus's understanding "
            "encoder is a SigLIP tower (siglip_large_patch16_384)"
        )
    heads = _param(config, "vision_config", "heads", SIGLIP_HEADS.get(name))
    if heads is None:
        raise CheckpointError(
            f"config.json vision_config.params.model_name {name!r} is not a tower pairuni knows "
            f"({', '.join(SIGLIP_HEADS)}); add vision_config.params.heads (its attention heads)"
        )
    patch = _needed(tensors, "model.vision_model.embeddings.patch_embedding.weight")
    hidden = int(patch.shape[0])
    fc1 = int(_needed(tensors, "model.vision_model.encoder.layers.0.mlp.fc1.weight").shape[0])
    image_size = int(_param(config, "vision_config", "image_size"))
    _, projection, depth = _mlp_projector(config, "aligner_config")
    return {
        "hidden_size": hidden,
        "num_hidden_layers": _count(tensors, "model.vision_model.encoder.layers."),
        "num_attention_heads": int(heads),
        "num_channels": int(patch.shape[1]),
        "image_size": image_size,
        "patch_size": int(patch.shape[-1]),
        "mlp_ratio": _ratio(fc1, hidden),
        "projection_dim": projection,
        "depth": depth,
        "num_image_tokens": (image_size // int(patch.shape[-1])) ** 2,
    }


def _ratio(width: int, hidden: int) -> float:
    """mlp_ratio such that int(hidden * ratio) == width, as the tower sizes its MLP."""
    ratio = width / hidden
    return ratio if int(hidden * ratio) == width else (width + 0.5) / hidden


def vq_config(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """JanusVQVAEConfig fields: VQ-16's channel layout from the weights (DeepSeek's class fixes
    it), codebook and heads from config.json."""
    conv_in = _needed(tensors, "model.vqmodel.encoder.conv_in.weight")
    base = int(conv_in.shape[0])
    levels = _count(tensors, "model.vqmodel.encoder.down.")
    widths = [
        int(_needed(tensors, f"model.vqmodel.encoder.down.{i}.block.0.conv1.weight").shape[0])
        for i in range(levels)
    ]
    latent = int(_needed(tensors, "model.vqmodel.decoder.conv_in.weight").shape[1])
    encoder_out = int(_needed(tensors, "model.vqmodel.encoder.conv_out.weight").shape[0])
    gen_in, gen_embed, gen_depth = _mlp_projector(config, "gen_aligner_config")
    head_in = int(_param(config, "gen_head_config", "n_embed"))
    head_mid = int(_param(config, "gen_head_config", "image_token_embed"))
    codebook = int(_param(config, "gen_vision_config", "image_token_size"))
    embed_dim = int(_param(config, "gen_vision_config", "n_embed"))
    _same(
        "gen_head_config.params.image_token_embed",
        head_mid,
        "gen_aligner_config.params.n_embed",
        gen_embed,
    )
    _same(
        "gen_head_config.params.image_token_size",
        int(_param(config, "gen_head_config", "image_token_size")),
        "gen_vision_config.params.image_token_size",
        codebook,
    )
    _same(
        "gen_aligner_config.params.input_dim", gen_in, "gen_vision_config.params.n_embed", embed_dim
    )
    return {
        "embed_dim": embed_dim,
        "num_embeddings": codebook,
        "double_latent": encoder_out == 2 * latent,
        "latent_channels": latent,
        "in_channels": int(conv_in.shape[1]),
        "base_channels": base,
        "channel_multiplier": [width // base for width in widths],
        "num_res_blocks": _count(tensors, "model.vqmodel.encoder.down.0.block."),
        "out_channels": int(_needed(tensors, "model.vqmodel.decoder.conv_out.weight").shape[0]),
        "projection_dim": gen_embed,
        "num_hidden_layers": gen_depth,
        "image_token_embed_dim": head_in,
    }


def _same(name_a: str, a: int, name_b: str, b: int) -> None:
    # transformers' Janus uses one size where DeepSeek's config has two fields
    if a != b:
        raise CheckpointError(f"config.json {name_a}={a} but {name_b}={b}; they must agree")


def text_config(config: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    """`language_config` as a Llama config, with the tokenizer's special ids."""
    meta = {"torch_dtype", "dtype", "architectures", "_name_or_path", "transformers_version"}
    text = {k: v for k, v in config["language_config"].items() if k not in meta}
    if text.setdefault("model_type", "llama") != "llama":
        raise CheckpointError(
            f"config.json language_config.model_type is {text['model_type']!r}; Janus's language "
            "model is a Llama"
        )
    text.update(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    text["tie_word_embeddings"] = False
    return text


# ----------------------------------------------------------------------------- tokenizer, processor


def _special(name: str, *sources: dict[str, Any]) -> str | None:
    for source in sources:
        value = source.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


def build_tokenizer(src: Path, processor_config: dict[str, Any]) -> Any:
    """`tokenizer.json` as it is, with BOS / EOS / pad and Janus's image tokens named."""
    from transformers import PreTrainedTokenizerFast

    tokenizer_file = src / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{tokenizer_file} is missing; copy the whole original release")
    settings = _read_json(src / "tokenizer_config.json", required=False)
    special = _read_json(src / "special_tokens_map.json", required=False)
    tokens = {
        "bos_token": _special("bos_token", special, settings),
        "eos_token": _special("eos_token", special, settings),
        "pad_token": _special("pad_token", special, settings)
        or processor_config.get("pad_tag", PAD_TAG),
    }
    images = {
        "image_token": processor_config.get("image_tag", IMAGE_TAG),
        "boi_token": IMAGE_START_TAG,
        "eoi_token": IMAGE_END_TAG,
    }
    for field in ("bos_token", "eos_token"):
        if tokens[field] is None:
            raise CheckpointError(
                f"neither {src / 'special_tokens_map.json'} nor {src / 'tokenizer_config.json'} "
                f"names the {field}"
            )
    vocab = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    known = set(vocab.get("model", {}).get("vocab", {})) | {
        t["content"] for t in vocab.get("added_tokens", [])
    }
    absent = [t for t in [*tokens.values(), *images.values()] if t not in known]
    if absent:
        raise CheckpointError(f"{tokenizer_file} has no token {', '.join(map(repr, absent))}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        padding_side="left",
        model_max_length=int(settings.get("model_max_length", 16384)),
        extra_special_tokens=images,
        **tokens,
    )
    if settings.get("add_bos_token", True):
        _prepend_bos(tokenizer)
    return tokenizer


def _prepend_bos(tokenizer: Any) -> None:
    """DeepSeek's Llama tokenizer class prepends BOS; keep that when tokenizer.json does not."""
    from tokenizers import processors

    if tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        return
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tokenizer.bos_token_id)],
    )


def build_processor(
    src: Path, tokenizer: Any, vision: dict[str, Any], processor_config: dict[str, Any]
) -> Any:
    """A `JanusProcessor`: VLMImageProcessor's settings, Janus-Pro's chat template and default
    system prompt, `num_image_tokens` checked against the tower."""
    from transformers import JanusImageProcessorPil, JanusProcessor

    settings = _read_json(src / "preprocessor_config.json")
    size = settings.get("image_size", vision["image_size"])
    if size != vision["image_size"]:
        raise CheckpointError(
            f"{src / 'preprocessor_config.json'} image_size={size} but config.json "
            f"vision_config.params.image_size={vision['image_size']}; they must agree"
        )
    tokens = processor_config.get("num_image_tokens", vision["num_image_tokens"])
    if tokens != vision["num_image_tokens"]:
        raise CheckpointError(
            f"{src / 'processor_config.json'} num_image_tokens={tokens} but the tower makes "
            f"(image_size / patch_size)^2 = {vision['num_image_tokens']} image features"
        )
    kept = ("image_mean", "image_std", "min_size", "rescale_factor", "do_normalize")
    image_processor = JanusImageProcessorPil(
        size={"height": size, "width": size}, **{k: settings[k] for k in kept if k in settings}
    )
    template = JANUS_PRO_CHAT_TEMPLATE.replace(IMAGE_TAG, tokenizer.image_token)
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        use_default_system_prompt=True,
        num_image_tokens=tokens,
    )


def build_generation_config(ids: dict[str, int]) -> Any:
    """Janus-Pro's sampling defaults (CFG 5, temperature 1) with the checkpoint's ids."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        temperature=1.0,
        guidance_scale=5.0,
        generation_kwargs={"boi_token_id": ids["boi"]},
    )


def token_ids(tokenizer: Any) -> dict[str, int]:
    return {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "boi": tokenizer.convert_tokens_to_ids(tokenizer.boi_token),
        "image": tokenizer.convert_tokens_to_ids(tokenizer.image_token),
    }


# ----------------------------------------------------------------------------- checking, writing


def check_against_model(
    config: Any,
    tensors: dict[str, torch.Tensor],
    sources: dict[str, str],
    weight_files: Iterable[str] = (),
) -> None:
    """Every tensor the model needs is there with its shape, and nothing else: an error names the
    file and DeepSeek's key."""
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        names = [f"{original_name(k) or '?'} (for {k})" for k in missing[:5]]
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        files = ", ".join(weight_files) or "the weight files"
        raise CheckpointError(
            f"{files}: no file holds {len(missing)} tensors the model needs: "
            f"{'; '.join(names)}{more}"
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{sources[unexpected[0]]} does not fit the model that config.json describes "
            f"({len(unexpected)} such tensors; transformers' name {unexpected[0]})"
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(
                f"{sources[key]} has shape {tuple(tensors[key].shape)}, but the model that "
                f"config.json describes expects {shape} (for transformers' {key})"
            )


def write_safetensors(
    tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES
) -> list[str]:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` shards with their index when
    the tensors exceed `max_shard_bytes`. Returns the file names."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key].contiguous()
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        save_file(_unshared(shard), out / name, metadata={"format": "pt"})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {k: n for n, shard in zip(names, shards, strict=True) for k in shard},
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def _unshared(shard: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (a .bin may store tied weights once)
    seen: set[int] = set()
    out = {}
    for key, tensor in shard.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


@dataclasses.dataclass(frozen=True)
class ConvertedCheckpoint:
    """What `convert_original_janus` wrote."""

    path: Path
    num_tensors: int
    num_parameters: int
    dtype: str
    tied_embeddings: bool
    weight_files: tuple[str, ...]


def convert_original_janus(
    src: str | Path,
    dst: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[str], None] | None = None,
) -> ConvertedCheckpoint:
    """Write DeepSeek's original Janus / Janus-Pro release `src` to `dst` in the Hugging Face
    layout `JanusPolicy.load` reads. Everything is checked before anything is written; `dst`
    must not hold a checkpoint already. `progress` receives one line per stage."""
    from transformers import JanusConfig

    say = progress or (lambda _line: None)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a directory")
    if dst.resolve() == src.resolve():
        raise CheckpointError("the destination must be another folder than the source")
    if (dst / "config.json").exists():
        raise CheckpointError(f"{dst} already holds a checkpoint (config.json); pick a new folder")
    original = read_original_config(src)
    processor_config = _read_json(src / "processor_config.json", required=False)
    say(f"reading the weights of {src}")
    tensors, origin = load_original_weights(src)
    hf, sources = convert_state_dict(tensors, origin)
    tokenizer = build_tokenizer(src, processor_config)
    ids = token_ids(tokenizer)
    tied = _tied(hf)
    if tied:
        hf.pop("lm_head.weight", None)
    vision = vision_config(original, hf)
    dtype = str(_needed(hf, "model.language_model.embed_tokens.weight").dtype).removeprefix(
        "torch."
    )
    config = JanusConfig(
        text_config=text_config(original, ids),
        vision_config=vision,
        vq_config=vq_config(original, hf),
        image_token_id=ids["image"],
        tie_word_embeddings=tied,
        dtype=dtype,
    )
    config.architectures = ["JanusForConditionalGeneration"]
    check_against_model(config, hf, sources, sorted(set(origin.values())))
    processor = build_processor(src, tokenizer, vision, processor_config)
    say(f"writing {len(hf)} tensors to {dst}")
    dst.mkdir(parents=True, exist_ok=True)
    files = write_safetensors(hf, dst, max_shard_bytes)
    config.save_pretrained(dst)
    build_generation_config(ids).save_pretrained(dst)
    processor.save_pretrained(dst)
    return ConvertedCheckpoint(
        path=dst,
        num_tensors=len(hf),
        num_parameters=sum(t.numel() for t in hf.values()),
        dtype=dtype,
        tied_embeddings=tied,
        weight_files=tuple(files),
    )


def _tied(hf: dict[str, torch.Tensor]) -> bool:
    """Whether the output head equals the input embeddings (then it is stored once, tied)."""
    head, embed = hf.get("lm_head.weight"), hf.get("model.language_model.embed_tokens.weight")
    if head is None or embed is None:
        return head is None  # no head at all: a checkpoint that ties them
    return head.shape == embed.shape and bool(torch.equal(head, embed))
