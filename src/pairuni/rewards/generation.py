"""Image-text rewards for generated images: CLIP score and HPS v2.1.

Both use transformers' `CLIPModel` (no open_clip, no torchvision). HPS v2.1 is an open_clip
ViT-H-14 checkpoint; `open_clip_to_transformers` maps its state dict onto a `CLIPModel` (the
packed attention `in_proj` is split into q/k/v, the projections are transposed), and
`clip_config_from_open_clip` reads the architecture off the tensor shapes. Models load on the
first call, so building a reward set is cheap.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairuni.rewards.base import RewardError, register_reward

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPModel

# OpenAI CLIP normalisation, used by open_clip's ViT-H-14 and therefore by HPS v2.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HPS_DOWNLOAD = "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt"
HPS_TOKENIZER = "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _texts(prompts: list[str], columns: Mapping[str, Any], prompt_column: str | None) -> list[str]:
    if prompt_column is None:
        return list(prompts)
    if prompt_column not in columns:
        raise ValueError(
            f"prompt_column {prompt_column!r} is not a column of the batch; columns: "
            f"{sorted(columns) or 'none'}"
        )
    return [str(t) for t in columns[prompt_column]]


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _dtype(name: str) -> torch.dtype:
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (N, D) and (N, D) -> (N,), in float32."""
    a = a.float() / a.float().norm(dim=-1, keepdim=True)
    b = b.float() / b.float().norm(dim=-1, keepdim=True)
    return (a * b).sum(dim=-1)


@register_reward("clip_score", task="generation")
class ClipScore:
    """CLIP score: scale * cosine(image embedding, prompt embedding) from a local `CLIPModel`.

    With the defaults (scale 100, negatives clamped to 0) it is torchmetrics' CLIPScore; set
    `scale: 1` and `clamp_negative: false` for the raw cosine.
    """

    def __init__(
        self,
        model_dir: str = "",
        device: str = "cpu",
        batch_size: int = 32,
        scale: float = 100.0,
        clamp_negative: bool = True,
        dtype: str = "float32",
        prompt_column: str | None = None,
    ) -> None:
        if not model_dir:
            raise ValueError(
                "kwargs.model_dir is not set: point it to a local directory holding a "
                "transformers CLIP model, its tokenizer and preprocessor_config.json (e.g. a "
                "download of openai/clip-vit-large-patch14)"
            )
        if not Path(model_dir).is_dir():
            raise ValueError(f"kwargs.model_dir {model_dir} is not a directory")
        if batch_size < 1:
            raise ValueError("kwargs.batch_size must be >= 1")
        _dtype(dtype)
        self.model_dir = model_dir
        self.device = device
        self.batch_size = batch_size
        self.scale = scale
        self.clamp_negative = clamp_negative
        self.dtype = dtype
        self.prompt_column = prompt_column
        self._loaded: tuple[Any, Any, Any] | None = None

    def load(self) -> tuple[Any, Any, Any]:
        """(model, tokenizer, image processor), loaded once."""
        if self._loaded is None:
            from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

            device = _resolve_device(self.device)
            model = CLIPModel.from_pretrained(self.model_dir, dtype=_dtype(self.dtype))
            model = model.to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            processor = CLIPImageProcessorPil.from_pretrained(self.model_dir)
            self._loaded = (model, tokenizer, processor)
        return self._loaded

    def __call__(
        self, prompts: list[str], completions: list[Image.Image], **columns: Any
    ) -> list[float | None]:
        import torch

        model, tokenizer, processor = self.load()
        texts = _texts(prompts, columns, self.prompt_column)
        device = next(model.parameters()).device
        max_length = model.config.text_config.max_position_embeddings
        scores: list[float | None] = []
        for part in _batches(len(texts), self.batch_size):
            tokens = tokenizer(
                texts[part],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            images = [im.convert("RGB") for im in completions[part]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                text_emb = model.get_text_features(**tokens).pooler_output
                image_emb = model.get_image_features(
                    pixel_values=pixels.to(device, model.dtype)
                ).pooler_output
            cos = cosine_rows(image_emb, text_emb)
            if self.clamp_negative:
                cos = cos.clamp(min=0.0)
            scores.extend((self.scale * cos).tolist())
        return scores


# ----------------------------------------------------------------------------- open_clip -> HF

_BLOCK_NAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP_NAMES = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
# open_clip stores projections as (width, embed) matrices used as x @ proj; HF uses Linear.
_TRANSPOSED = {
    "visual.proj": "visual_projection.weight",
    "text_projection": "text_projection.weight",
}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
# Non-persistent buffers some open_clip versions saved; they carry no weights.
_IGNORED = {"attn_mask", "visual.attn_mask"}


def open_clip_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split / transpose) an open_clip CLIP state dict into `CLIPModel` keys.

    Raises RewardError listing every key it does not know (e.g. a ViT with layer scale or
    attention pooling, which HPS v2.1 does not have).
    """
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in _IGNORED:
            continue
        if key in _TOP_NAMES:
            mapped[_TOP_NAMES[key]] = value
        elif key in _TRANSPOSED:
            mapped[_TRANSPOSED[key]] = value.t().contiguous()
        elif (match := _BLOCK.match(key)) is not None:
            tower = "vision_model" if match.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{match.group(2)}"
            if not _map_block_key(match.group(3), value, prefix, mapped):
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise RewardError(
            f"{len(unknown)} open_clip key(s) have no CLIPModel counterpart: {sorted(unknown)}; "
            "this is not an open_clip ViT CLIP checkpoint of the supported layout (ViT-H-14)"
        )
    return mapped


def _map_block_key(
    rest: str, value: torch.Tensor, prefix: str, mapped: dict[str, torch.Tensor]
) -> bool:
    """Map one residual-block tensor; False when the name is unknown."""
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
            mapped[f"{prefix}.self_attn.{name}.{kind}"] = part.contiguous()
        return True
    module, _, kind = rest.rpartition(".")
    if module in _BLOCK_NAMES and kind in ("weight", "bias"):
        mapped[f"{prefix}.{_BLOCK_NAMES[module]}.{kind}"] = value
        return True
    return False


def _count_blocks(state_dict: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    if indices != set(range(len(indices))):
        raise RewardError(f"{prefix or 'text '}transformer blocks are not numbered 0..n-1")
    return len(indices)


def clip_config_from_open_clip(
    state_dict: Mapping[str, torch.Tensor], vision_heads: int = 16, text_heads: int = 16
) -> CLIPConfig:
    """The `CLIPConfig` of an open_clip ViT state dict, read from its tensor shapes.

    Head counts are not visible in shapes: ViT-H-14 has 16 in both towers (head width 80 for
    vision, 64 for text). Activation is exact GELU and LayerNorm eps 1e-5, as in open_clip.
    The text EOS is the last vocabulary id (open_clip pools at argmax(token id) = EOT).
    """
    from transformers import CLIPConfig

    required = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj")
    required += ("token_embedding.weight", "positional_embedding", "text_projection")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise RewardError(f"not an open_clip CLIP state dict: missing keys {missing}")
    conv = state_dict["visual.conv1.weight"]  # (width, 3, patch, patch)
    vision_width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vocab, text_width = state_dict["token_embedding.weight"].shape
    embed_dim = state_dict["text_projection"].shape[1]
    if state_dict["visual.proj"].shape[1] != embed_dim:
        raise RewardError("visual.proj and text_projection project to different sizes")
    common = {"hidden_act": "gelu", "layer_norm_eps": 1e-5}
    vision = {
        "hidden_size": vision_width,
        "intermediate_size": state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _count_blocks(state_dict, "visual."),
        "num_attention_heads": vision_heads,
        "image_size": grid * patch,
        "patch_size": patch,
        "projection_dim": embed_dim,
        **common,
    }
    text = {
        "hidden_size": text_width,
        "intermediate_size": state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _count_blocks(state_dict, ""),
        "num_attention_heads": text_heads,
        "vocab_size": vocab,
        "max_position_embeddings": state_dict["positional_embedding"].shape[0],
        "eos_token_id": vocab - 1,
        "bos_token_id": vocab - 2,
        "pad_token_id": vocab - 1,
        "projection_dim": embed_dim,
        **common,
    }
    for name, width, heads in (
        ("vision", vision_width, vision_heads),
        ("text", text_width, text_heads),
    ):
        if width % heads:
            raise RewardError(f"{name} width {width} is not divisible by {heads} heads")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def clip_from_open_clip(
    state_dict: Mapping[str, torch.Tensor],
    vision_heads: int = 16,
    text_heads: int = 16,
    dtype: torch.dtype | None = None,
) -> CLIPModel:
    """A transformers `CLIPModel` holding the weights of an open_clip state dict.

    The model is built on the meta device (no random init of ~1 B parameters) and the mapped
    tensors are assigned; missing or unexpected keys raise RewardError listing them.
    """
    import torch
    from transformers import CLIPModel

    config = clip_config_from_open_clip(state_dict, vision_heads, text_heads)
    mapped = open_clip_to_transformers(state_dict)
    if dtype is not None:
        mapped = {k: v.to(dtype) for k, v in mapped.items()}
    with torch.device("meta"):
        model = CLIPModel(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(mapped)), sorted(set(mapped) - expected)
    if missing or unexpected:
        raise RewardError(
            f"open_clip -> CLIPModel mapping: missing CLIPModel keys {missing}, unexpected "
            f"keys {unexpected}"
        )
    try:
        model.load_state_dict(mapped, strict=True, assign=True)
    except RuntimeError as err:
        raise RewardError(f"open_clip -> CLIPModel: tensor shapes do not fit: {err}") from err
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:  # position_ids, non-persistent: rebuild them on the CPU
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            setattr(owner, attr, torch.arange(buffer.shape[-1]).expand(buffer.shape))
    return model.eval()


def read_open_clip_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an HPS / open_clip checkpoint file: `{"state_dict": ...}` or a bare state
    dict, with DataParallel's `module.` prefix removed. Loaded with weights_only=True."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RewardError(f"checkpoint {path} does not exist; download it from {HPS_DOWNLOAD}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RewardError(f"cannot read checkpoint {path} as a torch state dict: {err}") from err
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise RewardError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def hps_pixels(images: list[Image.Image], size: int = 224) -> torch.Tensor:
    """HPS v2's evaluation preprocessing -> (N, 3, size, size) float32.

    The longest side is resized to `size` (bicubic), the image is padded with black to a
    centred square, then scaled to [0, 1] and normalised with the CLIP mean / std. For square
    images this is a plain bicubic resize (what Janus generates).
    """
    import numpy as np
    import torch
    from PIL import Image

    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    arrays = []
    for image in images:
        image = image.convert("RGB")
        scale = size / max(image.size)
        new_w, new_h = (round(side * scale) for side in image.size)
        resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
        pixels = np.asarray(canvas, dtype=np.float32) / 255.0
        arrays.append(((pixels - mean) / std).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays))


@register_reward("hps_v21", task="generation")
class HpsV21:
    """HPS v2.1 (human preference score): cosine of the image and prompt embeddings of the HPS
    v2.1 fine-tuned open_clip ViT-H-14, as HPSv2's `score` reports it (no logit scale; typical
    values 0.2-0.35). The paper's generation reward.
    """

    def __init__(
        self,
        checkpoint: str = "",
        tokenizer_dir: str = "",
        device: str = "cpu",
        batch_size: int = 16,
        dtype: str = "float32",
        vision_heads: int = 16,
        text_heads: int = 16,
        prompt_column: str | None = None,
    ) -> None:
        if not checkpoint:
            raise ValueError(
                "kwargs.checkpoint is not set: download HPS_v2.1_compressed.pt from "
                f"{HPS_DOWNLOAD} and set rewards.generation[i].kwargs.checkpoint to its path"
            )
        if not Path(checkpoint).is_file():
            raise ValueError(
                f"kwargs.checkpoint {checkpoint} does not exist; download it from {HPS_DOWNLOAD}"
            )
        if not tokenizer_dir or not Path(tokenizer_dir).is_dir():
            raise ValueError(
                f"kwargs.tokenizer_dir {tokenizer_dir!r} is not a directory: point it to a CLIP "
                "tokenizer (vocab.json, merges.txt, tokenizer_config.json), e.g. from "
                f"{HPS_TOKENIZER}"
            )
        if batch_size < 1:
            raise ValueError("kwargs.batch_size must be >= 1")
        _dtype(dtype)
        self.checkpoint = checkpoint
        self.tokenizer_dir = tokenizer_dir
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        self.heads = (vision_heads, text_heads)
        self.prompt_column = prompt_column
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once from the checkpoint and tokenizer directory."""
        if self._loaded is None:
            from transformers import AutoTokenizer

            state = read_open_clip_checkpoint(self.checkpoint)
            model = clip_from_open_clip(state, *self.heads, dtype=_dtype(self.dtype))
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
            eos = model.config.text_config.eos_token_id
            if tokenizer.eos_token_id != eos:
                raise RewardError(
                    f"tokenizer in {self.tokenizer_dir} has EOS id {tokenizer.eos_token_id}, but "
                    f"the checkpoint expects {eos}; use the CLIP tokenizer of ViT-H-14"
                )
            self._loaded = (model.to(_resolve_device(self.device)), tokenizer)
        return self._loaded

    def __call__(
        self, prompts: list[str], completions: list[Image.Image], **columns: Any
    ) -> list[float | None]:
        import torch

        model, tokenizer = self.load()
        texts = _texts(prompts, columns, self.prompt_column)
        device = next(model.parameters()).device
        context = model.config.text_config.max_position_embeddings
        image_size = model.config.vision_config.image_size
        scores: list[float | None] = []
        for part in _batches(len(texts), self.batch_size):
            tokens = tokenizer(
                texts[part], padding=True, truncation=True, max_length=context, return_tensors="pt"
            ).to(device)
            pixels = hps_pixels(list(completions[part]), image_size).to(device, model.dtype)
            with torch.inference_mode():
                text_emb = model.get_text_features(**tokens).pooler_output
                image_emb = model.get_image_features(pixel_values=pixels).pooler_output
            scores.extend(cosine_rows(image_emb, text_emb).tolist())
        return scores
