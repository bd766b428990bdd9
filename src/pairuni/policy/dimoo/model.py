"""Lumina-DiMOO's checkpoint (the released layout) as transformers' Llama modules and a diffusers
`VQModel`, with no remote code (docs/dimoo.md, "Checkpoint and key map").

The released folder holds a LLaDA `config.json` (OLMo-style keys, `model_type: llada`, an
`auto_map` to remote code we never execute), safetensors weights named `model.transformer.*`
(one file or shards with `model.safetensors.index.json`), a fast tokenizer and the image
tokenizer in `vqvae/`. A LLaDA "llama" block is exactly a Llama decoder layer, so the backbone
is a `LlamaForCausalLM` given the key map below and a **bidirectional** attention mask: every
position attends to every non-padding position (right padding; its columns get the dtype's
minimum, so padding rows stay finite).

    model.transformer.wte.weight               -> model.embed_tokens.weight
    model.transformer.blocks.{i}.attn_norm     -> model.layers.{i}.input_layernorm
    model.transformer.blocks.{i}.q|k|v_proj    -> model.layers.{i}.self_attn.q|k|v_proj
    model.transformer.blocks.{i}.attn_out      -> model.layers.{i}.self_attn.o_proj
    model.transformer.blocks.{i}.ff_norm       -> model.layers.{i}.post_attention_layernorm
    model.transformer.blocks.{i}.ff_proj       -> model.layers.{i}.mlp.gate_proj
    model.transformer.blocks.{i}.up_proj       -> model.layers.{i}.mlp.up_proj
    model.transformer.blocks.{i}.ff_out        -> model.layers.{i}.mlp.down_proj
    model.transformer.ln_f.weight              -> model.norm.weight
    model.transformer.ff_out.weight            -> lm_head.weight   (absent when weight_tying)

How the mask is made non-causal in transformers 5.x: `LlamaModel.forward` hands the attention
mask to `masking_utils.create_causal_mask`, which returns a 4-D mask unchanged (its
`_preprocess_mask_arguments` exits early on `ndim == 4`); the sdpa and eager kernels then add
it to the scores, and sdpa's `is_causal` flag is only set when the mask is None. So `logits`
passes an additive float mask (B, 1, S, S) that is 0 on real key columns and the dtype's
minimum on padding columns. As a second guard the Llama config gets `is_causal=False` and every
attention module `is_causal = False`, so even a caller who passes a 2-D mask (or none) to
`backbone` directly gets bidirectional attention (masking_utils' bidirectional mask).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pairuni.policy.dimoo.ids import DimooIds

if TYPE_CHECKING:
    from PIL import Image
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
VQ_FOLDER = "vqvae"
TOKENIZER_FILE = "tokenizer.json"
PREFIX = "model.transformer."
# Files `save` writes itself; every other top-level file of the source folder is copied over
# (the remote code named in auto_map, generation_config.json ...), so DiMOO's own code loads
# a saved checkpoint too.
_WEIGHT_FILE = re.compile(r"^(model.*\.safetensors|model\.safetensors\.index\.json|.*\.bin)$")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

# Released name (without PREFIX) -> Llama name; {i} is the block index.
_BLOCK_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "q_proj.weight": "self_attn.q_proj.weight",
    "k_proj.weight": "self_attn.k_proj.weight",
    "v_proj.weight": "self_attn.v_proj.weight",
    "attn_out.weight": "self_attn.o_proj.weight",
    "ff_norm.weight": "post_attention_layernorm.weight",
    "ff_proj.weight": "mlp.gate_proj.weight",
    "up_proj.weight": "mlp.up_proj.weight",
    "ff_out.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {
    "wte.weight": "model.embed_tokens.weight",
    "ln_f.weight": "model.norm.weight",
    "ff_out.weight": "lm_head.weight",
}
_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LLAMA_BLOCK_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class DimooCheckpointError(ValueError):
    """A DiMOO checkpoint folder that cannot be loaded; the message names the file, the key and
    the fix."""


# ----------------------------------------------------------------------------- architecture


@dataclasses.dataclass(frozen=True)
class DimooArch:
    """The shape of a DiMOO backbone, read from config.json (LLaDA keys)."""

    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int
    weight_tying: bool
    rope_theta: float
    rms_norm_eps: float
    max_sequence_length: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: Path | str = CONFIG_NAME) -> DimooArch:
        """Validate the LLaDA keys of `config` (the contents of `where`) and read the shape.
        Anything Llama modules cannot compute (another block type, biases, ALiBi, ...) is a
        `DimooCheckpointError` naming the key."""
        _check_model_type(config, where)
        _check_supported(config, where)
        d_model = _int_key(config, "d_model", where)
        n_heads = _int_key(config, "n_heads", where)
        if d_model % n_heads:
            raise _config_error(where, "d_model", f"{d_model} is not a multiple of n_heads")
        n_kv_heads = _kv_heads(config, n_heads, where)
        vocab_size = _int_key(config, "vocab_size", where)
        embedding_size = config.get("embedding_size") or vocab_size
        if int(embedding_size) < vocab_size:
            raise _config_error(
                where, "embedding_size", f"{embedding_size} is below vocab_size {vocab_size}"
            )
        return cls(
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            n_layers=_int_key(config, "n_layers", where),
            mlp_hidden_size=_mlp_hidden_size(config, d_model, where),
            vocab_size=vocab_size,
            embedding_size=int(embedding_size),
            weight_tying=bool(config.get("weight_tying", True)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
            max_sequence_length=int(config.get("max_sequence_length", 4096)),
        )

    def released_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight of the released layout (full names) and its shape, in file order."""
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        hidden = self.mlp_hidden_size
        block = {
            "attn_norm.weight": (d,),
            "q_proj.weight": (d, d),
            "k_proj.weight": (kv, d),
            "v_proj.weight": (kv, d),
            "attn_out.weight": (d, d),
            "ff_norm.weight": (d,),
            "ff_proj.weight": (hidden, d),
            "up_proj.weight": (hidden, d),
            "ff_out.weight": (d, hidden),
        }
        shapes = {f"{PREFIX}wte.weight": (self.embedding_size, d)}
        for i in range(self.n_layers):
            shapes.update({f"{PREFIX}blocks.{i}.{k}": v for k, v in block.items()})
        shapes[f"{PREFIX}ln_f.weight"] = (d,)
        if not self.weight_tying:
            shapes[f"{PREFIX}ff_out.weight"] = (self.embedding_size, d)
        return shapes

    def shape_source(self, name: str) -> str:
        """The config.json keys a weight's shape comes from (for error messages)."""
        if name.endswith(("wte.weight", "transformer.ff_out.weight")):
            return "embedding_size (or vocab_size), d_model"
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            return "n_kv_heads, n_heads, d_model"
        if name.endswith(("ff_proj.weight", "up_proj.weight", "ff_out.weight")):
            return "mlp_hidden_size (or mlp_ratio), d_model"
        return "d_model, n_heads"

    def llama_config(self, ids: DimooIds, attn_implementation: str = "sdpa") -> LlamaConfig:
        """The `LlamaConfig` that computes the same function (non-causal)."""
        from transformers import LlamaConfig

        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation {attn_implementation!r} is not supported: DiMOO needs an "
                f"additive 4-D bidirectional mask; use one of {ATTN_IMPLEMENTATIONS}"
            )
        return LlamaConfig(
            vocab_size=self.embedding_size,
            hidden_size=self.d_model,
            intermediate_size=self.mlp_hidden_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            max_position_embeddings=self.max_sequence_length,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=self.weight_tying,
            attention_bias=False,
            mlp_bias=False,
            use_cache=False,
            bos_token_id=None,
            eos_token_id=ids.eos,
            pad_token_id=None,
            attn_implementation=attn_implementation,
            is_causal=False,
        )


def _config_error(where: Path | str, key: str, problem: str, fix: str = "") -> DimooCheckpointError:
    fix = fix or "fix that key or re-download the checkpoint"
    return DimooCheckpointError(f"{where}: key {key!r}: {problem}; {fix}")


def _int_key(config: Mapping[str, Any], key: str, where: Path | str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _config_error(where, key, f"must be a positive integer, got {value!r}")
    return value


def _kv_heads(config: Mapping[str, Any], n_heads: int, where: Path | str) -> int:
    if config.get("multi_query_attention"):
        return 1
    value = config.get("n_kv_heads")
    n_kv = n_heads if value is None else _int_key(config, "n_kv_heads", where)
    if n_heads % n_kv:
        raise _config_error(where, "n_kv_heads", f"{n_kv} does not divide n_heads {n_heads}")
    return n_kv


def _mlp_hidden_size(config: Mapping[str, Any], d_model: int, where: Path | str) -> int:
    if config.get("mlp_hidden_size") is not None:
        return _int_key(config, "mlp_hidden_size", where)
    if config.get("mlp_ratio") is not None:
        return int(config["mlp_ratio"] * d_model)
    raise _config_error(where, "mlp_hidden_size", "missing (and no mlp_ratio)")


def _check_model_type(config: Mapping[str, Any], where: Path | str) -> None:
    model_type = config.get("model_type")
    if model_type in ("janus", "multi_modality"):
        raise DimooCheckpointError(
            f"{where}: model_type {model_type!r} is a Janus checkpoint, not Lumina-DiMOO; use "
            "the Janus backend (`JanusPolicy.load`, `pairuni generate --model ...`)"
        )
    if model_type != "llada":
        raise _config_error(
            where,
            "model_type",
            f"{model_type!r} is not 'llada' (Lumina-DiMOO's released config)",
            "point to a Lumina-DiMOO download (Alpha-VLLM/Lumina-DiMOO) or write a tiny one "
            "with `pairuni tiny-model --backend dimoo DIR`",
        )


# key -> (value(s) Llama modules compute, what the key would need). A missing key takes
# LLaDA's default; the defaults that Llama cannot compute (block_type, activation) are checked
# through the weight shapes instead.
_SUPPORTED = {
    "block_type": (("llama",), "only the 'llama' block is a Llama decoder layer"),
    "include_bias": ((False, None), "biases are not supported (Llama layers have none here)"),
    "include_qkv_bias": ((False, None), "q/k/v biases are not supported"),
    "bias_for_layer_norm": ((False, None), "layer-norm biases are not supported"),
    "layer_norm_type": (("rms",), "only RMSNorm ('rms') is a Llama norm"),
    "layer_norm_with_affine": ((True, None), "norms without weights are not supported"),
    "activation_type": (("silu", None), "the llama block's MLP is silu(gate) * up"),
    "rope": ((True, None), "DiMOO uses rotary embeddings"),
    "alibi": ((False, None), "ALiBi is not supported"),
    "attention_layer_norm": ((False, None), "q/k layer norms are not supported"),
    "clip_qkv": ((None,), "q/k/v clipping is not supported"),
    "input_emb_norm": ((False, None), "scaled input embeddings are not supported"),
    "scale_logits": ((False, None), "logit scaling is not supported"),
    "block_group_size": ((1, None), "grouped blocks (other weight names) are not supported"),
}


def _check_supported(config: Mapping[str, Any], where: Path | str) -> None:
    for key, (allowed, why) in _SUPPORTED.items():
        if key in config and config[key] not in allowed:
            raise _config_error(
                where,
                key,
                f"{config[key]!r} is not supported ({why})",
                f"pairuni's DiMOO backend reads checkpoints with {key} in "
                f"{[a for a in allowed if a is not None]}",
            )
    dropouts = {k: config.get(k) for k in ("residual_dropout", "embedding_dropout")}
    if any(v for v in dropouts.values()):
        warnings.warn(
            f"{where}: {dropouts} are not reproduced by the Llama modules (no residual or "
            "embedding dropout); inference is unaffected",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- key map


def released_to_llama(name: str) -> str:
    """`model.transformer.blocks.3.ff_proj.weight` -> `model.layers.3.mlp.gate_proj.weight`."""
    if not name.startswith(PREFIX):
        raise KeyError(name)
    rest = name[len(PREFIX) :]
    if rest in _TOP_MAP:
        return _TOP_MAP[rest]
    match = _BLOCK_NAME.match(rest)
    if match is None or match.group(2) not in _BLOCK_MAP:
        raise KeyError(name)
    return f"model.layers.{match.group(1)}.{_BLOCK_MAP[match.group(2)]}"


_REVERSE_BLOCK = {v: k for k, v in _BLOCK_MAP.items()}
_REVERSE_TOP = {v: k for k, v in _TOP_MAP.items()}


def llama_to_released(name: str) -> str:
    """The inverse of `released_to_llama`."""
    if name in _REVERSE_TOP:
        return PREFIX + _REVERSE_TOP[name]
    match = _LLAMA_BLOCK_NAME.match(name)
    if match is None or match.group(2) not in _REVERSE_BLOCK:
        raise KeyError(name)
    return f"{PREFIX}blocks.{match.group(1)}.{_REVERSE_BLOCK[match.group(2)]}"


# ----------------------------------------------------------------------------- weight files


def weight_files(root: Path) -> dict[str, str]:
    """Released weight name -> the file (relative to `root`) that holds it: from the shard
    index when there is one, else from the single `model.safetensors`."""
    from safetensors import safe_open

    index = root / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise DimooCheckpointError(
                f"{index}: no 'weight_map' object ({err}); re-download the index"
            ) from err
        missing = sorted({f for f in weight_map.values() if not (root / f).is_file()})
        if missing:
            raise DimooCheckpointError(
                f"{index} lists shards that are missing: {missing}; download them into {root}"
            )
        return dict(weight_map)
    single = root / WEIGHTS_NAME
    if not single.is_file():
        raise DimooCheckpointError(
            f"{root} has no weights: neither {WEIGHTS_NAME} nor {INDEX_NAME} (with its shards); "
            "download the whole Alpha-VLLM/Lumina-DiMOO repository into it"
        )
    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), WEIGHTS_NAME)


def check_weights(root: Path, arch: DimooArch, files: Mapping[str, str]) -> None:
    """Every expected weight present with its config.json shape, no extra one; biases get
    their own message. Reads only the safetensors headers."""
    from safetensors import safe_open

    expected = arch.released_shapes()
    biases = sorted(n for n in files if n.endswith(".bias"))
    if biases:
        raise DimooCheckpointError(
            f"{root / files[biases[0]]}: key {biases[0]!r} is a bias ({len(biases)} bias "
            "tensors in all); DiMOO's llama blocks have none and pairuni's Llama modules cannot "
            "hold them: use a checkpoint with include_bias false"
        )
    missing = [n for n in expected if n not in files]
    if missing:
        source = INDEX_NAME if (root / INDEX_NAME).is_file() else WEIGHTS_NAME
        hint = (
            "the output head is absent: set weight_tying true in config.json if it is tied"
            if missing[0] == f"{PREFIX}ff_out.weight"
            else "re-download the weights, or fix n_layers in config.json"
        )
        raise DimooCheckpointError(
            f"{root / source}: key {missing[0]!r} is missing ({len(missing)} missing in all) "
            f"though {root / CONFIG_NAME} implies it; {hint}"
        )
    extra = [n for n in files if n not in expected]
    if extra:
        hint = (
            "set weight_tying false in config.json"
            if extra[0] == f"{PREFIX}ff_out.weight"
            else "the weights do not match config.json (n_layers?) or are not DiMOO's"
        )
        raise DimooCheckpointError(
            f"{root / files[extra[0]]}: unexpected key {extra[0]!r} ({len(extra)} unexpected "
            f"in all); {hint}"
        )
    by_file: dict[str, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(str(root / file), framework="pt") as handle:
            held = set(handle.keys())
            for name in names:
                if name not in held:
                    raise DimooCheckpointError(
                        f"{root / INDEX_NAME} puts key {name!r} in {root / file}, which does not "
                        "hold it; re-download that shard and the index"
                    )
                shape = tuple(handle.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise DimooCheckpointError(
                        f"{root / file}: key {name!r} has shape {shape} but {root / CONFIG_NAME} "
                        f"({arch.shape_source(name)}) implies {expected[name]}; fix config.json "
                        "or the weights"
                    )


def read_weights(
    root: Path, files: Mapping[str, str], dtype: torch.dtype, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Released name -> tensor in `dtype` on `device`, shard by shard."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    out: dict[str, torch.Tensor] = {}
    for file, names in sorted(by_file.items()):
        with safe_open(str(root / file), framework="pt") as handle:
            for name in names:
                out[name] = handle.get_tensor(name).to(device=device, dtype=dtype)
    return out


def write_weights(
    state: Mapping[str, torch.Tensor], out_dir: Path, num_shards: int = 1
) -> list[str]:
    """Write released-name tensors as safetensors: one `model.safetensors`, or `num_shards`
    contiguous shards of about equal size (in the given key order) plus the index, as
    transformers names them. Returns the files written."""
    from safetensors.torch import save_file

    names = list(state)
    if num_shards <= 1:
        save_file(_contiguous(state, names), str(out_dir / WEIGHTS_NAME), {"format": "pt"})
        return [WEIGHTS_NAME]
    groups = _balanced_groups(names, [_nbytes(state[n]) for n in names], num_shards)
    weight_map: dict[str, str] = {}
    files = []
    for i, group in enumerate(groups, start=1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(_contiguous(state, group), str(out_dir / file), {"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
        files.append(file)
    index = {
        "metadata": {"total_size": sum(_nbytes(t) for t in state.values())},
        "weight_map": weight_map,
    }
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [*files, INDEX_NAME]


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _contiguous(state: Mapping[str, torch.Tensor], names: Iterable[str]) -> dict[str, torch.Tensor]:
    return {n: state[n].detach().to("cpu").contiguous() for n in names}


def _balanced_groups(names: Sequence[str], sizes: Sequence[int], count: int) -> list[list[str]]:
    """Cut `names` (in order) into at most `count` non-empty runs, each closing once the bytes
    so far reach its share of the total."""
    count = max(1, min(count, len(names)))
    total = sum(sizes)
    groups: list[list[str]] = [[]]
    running = 0
    for name, size in zip(names, sizes, strict=True):
        if groups[-1] and len(groups) < count and running >= total * len(groups) / count:
            groups.append([])
        groups[-1].append(name)
        running += size
    return groups


# ----------------------------------------------------------------------------- image tokenizer


@dataclasses.dataclass
class DimooVQ:
    """DiMOO's image tokenizer: a diffusers `VQModel` (aMUSEd's VQ-GAN) with 16x downsampling
    and an 8,192-entry codebook. Pixels are in [0, 1] both ways (DiMOO's `VaeImageProcessor`
    has `do_normalize=False`)."""

    model: Any
    """The `diffusers.VQModel`."""

    @property
    def downsample(self) -> int:
        """Pixels per code along a side: 2 ** (number of blocks - 1)."""
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.num_vq_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images of one size (sides multiples of `downsample`) -> (B, 3, H, W) in [0, 1]."""
        import numpy as np

        if not images:
            raise ValueError("encode: no images given")
        sizes = {image.size for image in images}
        if len(sizes) != 1:
            raise ValueError(
                f"encode: the images have different sizes {sorted(sizes)}; encode them "
                "separately or crop them to one size (preprocess_image)"
            )
        width, height = sizes.pop()
        if width % self.downsample or height % self.downsample:
            raise ValueError(
                f"encode: image size {width} x {height} is not a multiple of the VQ "
                f"downsampling {self.downsample}; crop it first (preprocess_image)"
            )
        arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
        pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2) / 255.0
        return pixels.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> (B, h, w) int64 codes in [0, codebook_size): the quantizer's indices of
        `encode(x).latents`, h = H / downsample."""
        latents = self.model.encode(self.pixels(images)).latents
        batch, _, height, width = latents.shape
        indices = self.model.quantize(latents)[2][2]
        return indices.reshape(batch, height, width).to(torch.long)

    @torch.no_grad()
    def decode_pixels(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, h * downsample, w * downsample) float in [0, 1]."""
        if codes.ndim != 3:
            raise ValueError(f"decode: codes must be (B, h, w), got shape {tuple(codes.shape)}")
        if codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < self.codebook_size:
            raise ValueError(
                f"decode: codes must lie in [0, {self.codebook_size}); got "
                f"[{int(codes.min())}, {int(codes.max())}] (image tokens? subtract "
                "ids.image_offset)"
            )
        batch, height, width = codes.shape
        embed_dim = self.model.config.vq_embed_dim or self.model.config.latent_channels
        shape = (batch, height, width, int(embed_dim))
        sample = self.model.decode(
            codes.to(device=self.device, dtype=torch.long), force_not_quantize=True, shape=shape
        ).sample
        return sample.float().clamp(0.0, 1.0)

    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        """(B, h, w) codes -> B RGB images of (w * downsample) x (h * downsample) px."""
        from PIL import Image

        pixels = self.decode_pixels(codes)
        data = (pixels * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(row, mode="RGB") for row in data]


def check_vq_folder(folder: Path) -> None:
    """The image tokenizer folder and its config.json exist."""
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise DimooCheckpointError(
            f"{folder}: the image tokenizer folder (a diffusers VQModel with config.json) is "
            "missing; download the vqvae/ subfolder of Alpha-VLLM/Lumina-DiMOO into it"
        )


def load_vq(folder: Path, device: torch.device | str = "cpu") -> DimooVQ:
    """The `VQModel` of `folder` (float32; the release asks for `force_upcast`)."""
    check_vq_folder(folder)
    config = folder / "config.json"
    try:
        from diffusers import VQModel
    except ImportError as err:  # pragma: no cover - diffusers is a dependency
        raise DimooCheckpointError(
            "diffusers is not installed; `pip install diffusers` (DiMOO's image tokenizer is a "
            "diffusers VQModel)"
        ) from err
    settings = json.loads(config.read_text(encoding="utf-8"))
    if not settings.get("lookup_from_codebook", False):
        raise DimooCheckpointError(
            f"{config}: key 'lookup_from_codebook' must be true: DiMOO decodes code indices "
            "through the codebook (aMUSEd's VQ-GAN has it set)"
        )
    try:
        model = VQModel.from_pretrained(str(folder), torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as err:
        raise DimooCheckpointError(
            f"{folder}: cannot load the VQModel ({err}); re-download vqvae/"
        ) from err
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return DimooVQ(model)


# ----------------------------------------------------------------------------- image preprocessing


def crop_sizes(target_size: int = 512, multiple: int = 32, max_ratio: float = 4.0) -> list[tuple]:
    """DiMOO's candidate (width, height) crops: every w x h grid of `multiple`-px patches with
    w * h <= (target_size / multiple) ** 2 patches and aspect ratio <= max_ratio, scanned from
    the widest (its utils `generate_crop_size_list`)."""
    budget = (target_size // multiple) ** 2
    sizes = []
    wide, high = budget, 1
    while wide > 0:
        if max(wide, high) / min(wide, high) <= max_ratio:
            sizes.append((wide * multiple, high * multiple))
        if (high + 1) * wide <= budget:
            high += 1
        else:
            wide -= 1
    return sizes


def choose_crop(width: int, height: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The candidate whose aspect ratio is closest to the image's (min/max of the two scale
    factors, DiMOO's `var_center_crop` with top-1); the first on ties."""

    def kept(size: tuple[int, int]) -> float:
        sx, sy = size[0] / width, size[1] / height
        return min(sx, sy) / max(sx, sy)

    best = max(kept(s) for s in sizes)
    return next(s for s in sizes if kept(s) == best)


def resize_center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Halve (box filter) while both sides are at least twice the target, resize (bicubic) so
    the image covers `size`, then crop the centre (DiMOO crops at a random offset in
    training; we crop the centre so the codes of an image are deterministic)."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = size
    while image.size[0] >= 2 * width and image.size[1] >= 2 * height:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = max(width / image.size[0], height / image.size[1])
    new_size = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
    image = image.resize(new_size, resample=Image.BICUBIC)
    left = (image.size[0] - width) // 2
    top = (image.size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def preprocess_image(image: Image.Image, target_size: int = 512, multiple: int = 32) -> Image.Image:
    """DiMOO's input preprocessing: an RGB image cropped to the candidate size (sides
    multiples of `multiple` = 32 px, i.e. 2x the VQ's 16x downsampling; area at most
    target_size ** 2) closest to its aspect ratio. 512 -> at most 32 x 32 codes."""
    if target_size < multiple:
        raise ValueError(f"target_size {target_size} is below the crop multiple {multiple}")
    size = choose_crop(*image.size, crop_sizes(target_size, multiple))
    return resize_center_crop(image, size)


# ----------------------------------------------------------------------------- the model


def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 mask -> (B, 1, S, S) additive float mask: 0 where the key is a real token,
    the dtype's minimum on padding columns (bidirectional; rows of padding stay finite)."""
    if attention_mask.ndim != 2:
        raise ValueError(
            "attention_mask must be (B, S) with 1 on real tokens, got "
            f"{tuple(attention_mask.shape)}"
        )
    keep = attention_mask.to(torch.bool)[:, None, None, :]
    bias = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    bias = bias.masked_fill(~keep, torch.finfo(dtype).min)
    return bias.expand(-1, 1, attention_mask.shape[1], -1)


class DimooModel:
    """A loaded Lumina-DiMOO checkpoint: the bidirectional backbone (`LlamaForCausalLM`), the
    image tokenizer, the text tokenizer and the special ids.

    `logits(input_ids, attention_mask)` is the whole model as the samplers see it; `backbone`
    is the `nn.Module` that trains (its parameters, `train()`/`eval()`,
    `activation_checkpointing_enable`); `save` writes the released layout back."""

    def __init__(
        self,
        backbone: LlamaForCausalLM,
        vq: DimooVQ,
        tokenizer: PreTrainedTokenizerBase,
        ids: DimooIds,
        config: dict[str, Any],
        arch: DimooArch,
        source: Path | None = None,
    ) -> None:
        self.backbone = backbone
        self.vq = vq
        self.tokenizer = tokenizer
        self.ids = ids
        self.config = config
        """The raw config.json (LLaDA keys), written back by `save`."""
        self.arch = arch
        self.source = source
        """The folder it was loaded from (its other files are copied by `save`)."""

    @property
    def device(self) -> torch.device:
        return self.backbone.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.model.embed_tokens.weight.dtype

    @property
    def vocab_size(self) -> int:
        """Columns of `logits`: embedding_size (rows past vocab_size are never real tokens)."""
        return self.arch.embedding_size

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, S) ids, (B, S) 0/1 mask (right padding) -> (B, S, d_model) final-norm states in
        the model dtype."""
        if input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must have the same (B, S) shape"
            )
        input_ids = input_ids.to(self.device)
        bias = attention_bias(attention_mask.to(self.device), self.dtype)
        positions = torch.arange(input_ids.shape[1], device=self.device).expand_as(input_ids)
        out = self.backbone.model(
            input_ids=input_ids, attention_mask=bias, position_ids=positions, use_cache=False
        )
        return out.last_hidden_state

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        vocab: slice | None = None,
    ) -> torch.Tensor:
        """(B, S) ids, (B, S) 0/1 attention mask (1 on real tokens, right padding) -> (B, S, V)
        float32 logits, V = embedding_size (computed in the model dtype). Bidirectional: every
        position sees every real token. `positions` (B, N) int64: only the head rows of those
        positions -> (B, N, V) (the same values, far less memory for long sequences)."""
        hidden = self.hidden_states(input_ids, attention_mask)
        if positions is not None:
            index = positions.to(self.device, torch.long)[..., None].expand(
                -1, -1, hidden.shape[-1]
            )
            hidden = hidden.gather(1, index)
        # `vocab`: only those head rows, e.g. the 8,192 image codes (VocabSliceHead)
        return self.backbone.lm_head(hidden, vocab).float()

    __call__ = logits
    scores_positions = True
    """`logits` takes `positions=` and `vocab=` (the samplers' fast path)."""

    def preprocess_image(self, image: Image.Image, target_size: int = 512) -> Image.Image:
        """`preprocess_image` with this VQ's downsampling (crops of 2x it, 32 px for DiMOO)."""
        return preprocess_image(image, target_size, multiple=2 * self.vq.downsample)

    def released_state_dict(
        self, state: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The backbone's weights (or `state`, the backbone's state dict gathered from FSDP
        shards) under their released names, in file order (the head left out when tied)."""
        state = self.backbone.state_dict() if state is None else state
        out = {}
        for name in self.arch.released_shapes():
            out[name] = state[released_to_llama(name)]
        return out

    def save(
        self,
        out_dir: str | Path,
        *,
        num_shards: int | None = None,
        state: Mapping[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write the released layout to `out_dir`: config.json (the loaded one), the weights
        under `model.transformer.*` names in the model dtype (`num_shards` safetensors with an
        index when > 1; default: as many as the loaded checkpoint had), the tokenizer, `vqvae/`,
        and every other top-level file of the source folder (remote code, generation config),
        so this loader and DiMOO's own code both read it. `state`: the weights to write instead
        of the backbone's own (the full state gathered from FSDP shards by the trainer)."""
        out = Path(out_dir)
        if self.source is not None and out.resolve() == self.source.resolve():
            raise ValueError(
                f"save: {out} is the folder the model was loaded from; write to another folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("model*.safetensors*"):
            stale.unlink()
        self._copy_source_files(out)
        (out / CONFIG_NAME).write_text(json.dumps(self.config, indent=2) + "\n", encoding="utf-8")
        shards = num_shards if num_shards is not None else self._source_shards()
        write_weights(self.released_state_dict(state), out, shards)
        self.tokenizer.save_pretrained(str(out))
        self.vq.model.save_pretrained(str(out / VQ_FOLDER))
        return out

    def _source_shards(self) -> int:
        if self.source is None or not (self.source / INDEX_NAME).is_file():
            return 1
        weight_map = json.loads((self.source / INDEX_NAME).read_text(encoding="utf-8"))
        return len(set(weight_map["weight_map"].values()))

    def _copy_source_files(self, out: Path) -> None:
        if self.source is None:
            return
        for path in self.source.iterdir():
            if path.is_file() and not _WEIGHT_FILE.match(path.name) and path.name != CONFIG_NAME:
                shutil.copy2(path, out / path.name)


def _read_config(root: Path) -> dict[str, Any]:
    path = root / CONFIG_NAME
    if not path.is_file():
        raise DimooCheckpointError(
            f"{root} has no {CONFIG_NAME}; download the whole Alpha-VLLM/Lumina-DiMOO repository "
            "into it, or write a tiny one with `pairuni tiny-model --backend dimoo DIR`"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DimooCheckpointError(f"{path} is not valid JSON ({err}); re-download it") from err
    if not isinstance(config, dict):
        raise DimooCheckpointError(f"{path} is not a JSON object; re-download it")
    return config


def load_tokenizer(root: Path) -> PreTrainedTokenizerBase:
    """The fast tokenizer of `root` (tokenizer.json; no remote tokenizer class is imported)."""
    from transformers import PreTrainedTokenizerFast

    check_tokenizer_file(root)
    return PreTrainedTokenizerFast.from_pretrained(str(root))


def check_tokenizer_file(root: Path) -> None:
    if not (root / TOKENIZER_FILE).is_file():
        raise DimooCheckpointError(
            f"{root} has no {TOKENIZER_FILE} (the fast tokenizer); download it with the rest of "
            "Alpha-VLLM/Lumina-DiMOO"
        )


def check_ids(ids: DimooIds, arch: DimooArch, vq: DimooVQ, root: Path) -> None:
    """The image codes fit the embedding and match the VQ codebook."""
    if vq.codebook_size != ids.codebook_size:
        raise DimooCheckpointError(
            f"{root / VQ_FOLDER / 'config.json'}: key 'num_vq_embeddings' is {vq.codebook_size} "
            f"but DiMOO's image tokens are {ids.codebook_size} codes at offset "
            f"{ids.image_offset}; use DiMOO's vqvae/"
        )
    if ids.image_end > arch.embedding_size:
        raise DimooCheckpointError(
            f"{root / CONFIG_NAME}: key 'embedding_size' is {arch.embedding_size} but the image "
            f"codes need rows up to {ids.image_end} (offset {ids.image_offset} + "
            f"{ids.codebook_size}); fix embedding_size / vocab_size"
        )


class VocabSliceHead(torch.nn.Linear):
    """The output head, able to compute only the rows `vocab` of the vocabulary (the samplers'
    fast path: image steps need the 8,192 code rows of a ~126K vocabulary). The slice is taken
    inside the head's own forward because FSDP gathers a unit's sharded weight only there:
    indexing `lm_head.weight` from outside would read one process's shard."""

    def forward(self, hidden: torch.Tensor, vocab: slice | None = None) -> torch.Tensor:
        if vocab is None:
            return super().forward(hidden)
        bias = None if self.bias is None else self.bias[vocab]
        return torch.nn.functional.linear(hidden, self.weight[vocab], bias)


def build_backbone(
    arch: DimooArch,
    released: Mapping[str, torch.Tensor],
    ids: DimooIds,
    device: torch.device | str,
    attn_implementation: str = "sdpa",
) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` (built on the meta device, so no random init) holding `released`
    (released names), made non-causal."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = arch.llama_config(ids, attn_implementation)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = {released_to_llama(name): tensor for name, tensor in released.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if arch.weight_tying else set()
    if set(result.missing_keys) - allowed_missing or result.unexpected_keys:
        raise RuntimeError(  # the key map and released_shapes disagree: a bug, not bad input
            f"key map mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    if arch.weight_tying:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Same parameters, a forward that can compute only some vocabulary rows (no new state).
    model.lm_head.__class__ = VocabSliceHead
    # The rotary buffers are not weights: compute them on the target device.
    with torch.device(device):
        model.model.rotary_emb = LlamaRotaryEmbedding(config)
    for layer in model.model.layers:
        layer.self_attn.is_causal = False
    model.eval()
    return model


def check_checkpoint_dir(path: str | Path) -> Path:
    """The checks of `load_dimoo` that read no weights (config.json, the weight names and
    shapes from the safetensors headers, the tokenizer file, `vqvae/`), for commands that
    check a checkpoint before a long run; a LoRA adapter folder is checked through its base."""
    from pairuni.policy.lora import existing_adapter_base, is_adapter_dir

    root = Path(path)
    if is_adapter_dir(root):
        check_checkpoint_dir(existing_adapter_base(root, DimooCheckpointError))
        return root
    if not root.is_dir():
        raise DimooCheckpointError(f"checkpoint directory {root} does not exist")
    arch = DimooArch.from_config(_read_config(root), root / CONFIG_NAME)
    check_weights(root, arch, weight_files(root))
    check_tokenizer_file(root)
    check_vq_folder(root / VQ_FOLDER)
    return root


def load_dimoo(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_implementation: str = "sdpa",
) -> DimooModel:
    """Load a Lumina-DiMOO checkpoint folder in the released layout (config.json with LLaDA
    keys, `model.transformer.*` safetensors, tokenizer.json, vqvae/) without remote code.
    The backbone is in `dtype` on `device`; the VQ model in float32 on `device`."""
    root = Path(path)
    if not root.is_dir():
        raise DimooCheckpointError(f"checkpoint directory {root} does not exist")
    config = _read_config(root)
    arch = DimooArch.from_config(config, root / CONFIG_NAME)
    files = weight_files(root)
    check_weights(root, arch, files)
    tokenizer = load_tokenizer(root)
    vq = load_vq(root / VQ_FOLDER, device)
    ids = DimooIds.from_values(config, tokenizer.get_vocab())
    _check_mask_id(config, tokenizer, ids, root)
    check_ids(ids, arch, vq, root)
    released = read_weights(root, files, dtype, device)
    backbone = build_backbone(arch, released, ids, device, attn_implementation)
    return DimooModel(backbone, vq, tokenizer, ids, config, arch, source=root)


def _check_mask_id(
    config: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, ids: DimooIds, root: Path
) -> None:
    """config.json's mask_token_id and the tokenizer's `<|mdm_mask|>` must agree."""
    from pairuni.policy.dimoo.ids import TOKEN_STRINGS

    token_id = tokenizer.get_vocab().get(TOKEN_STRINGS["mask"])
    if token_id is not None and config.get("mask_token_id") is not None and token_id != ids.mask:
        raise DimooCheckpointError(
            f"{root / CONFIG_NAME}: key 'mask_token_id' is {ids.mask} but {root / TOKENIZER_FILE} "
            f"has {TOKEN_STRINGS['mask']} at id {token_id}; make them agree"
        )


def backend_of(path: str | Path) -> str | None:
    """'dimoo' for a LLaDA config.json, 'janus' for a Janus one (HF or original layout), else
    None: lets a command pick the backend or say which one to use."""
    config = Path(path) / CONFIG_NAME
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return {"llada": "dimoo", "janus": "janus", "multi_modality": "janus"}.get(model_type)


def num_parameters(model: DimooModel) -> int:
    """Distinct backbone parameters (the tied head counted once)."""
    return sum(p.numel() for p in model.backbone.parameters())


__all__ = [
    "DimooArch",
    "DimooCheckpointError",
    "DimooModel",
    "DimooVQ",
    "attention_bias",
    "backend_of",
    "check_checkpoint_dir",
    "llama_to_released",
    "load_dimoo",
    "preprocess_image",
    "released_to_llama",
    "write_weights",
]
