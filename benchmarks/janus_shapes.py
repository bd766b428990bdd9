"""Random Janus models shaped like the released checkpoints, for benchmarks that must run at the
shape of real use (no weights can be downloaded here).

Shapes (transformers' `JanusConfig` defaults are Janus-Pro-1B's vision and VQ parts):
- language model: DeepSeek-LLM, Llama blocks, vocabulary 102,400, untied `lm_head`;
  1B = 24 layers x 2048 (MLP 5632, 16 heads), 7B = 30 layers x 4096 (MLP 11008, 32 heads);
- vision: SigLIP-L, 384 px, patch 16 -> 576 image tokens, 24 layers x 1024;
- VQ: codebook 16,384 x 8, channel multipliers (1, 1, 2, 2, 4), 384 px images from 24 x 24 codes.

The tokenizer is the tiny offline one (a few hundred tokens): the model's logits still span the
real vocabulary; ids beyond the tokenizer decode to nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.janus import JanusPolicy
from pairuni.policy.tiny import build_generation_config, build_processor, build_tokenizer

TEXT_SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24, "heads": 16},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30, "heads": 32},
}


def janus_pro_config(size: str, tokenizer: Any, dry_run: bool = False) -> Any:
    """A `JanusConfig` with Janus-Pro-`size`'s shapes (`dry_run`: every width and depth shrunk,
    still 576 image tokens at 384 px, to check a code path quickly on a CPU)."""
    from transformers import JanusConfig

    shape = TEXT_SHAPES[size]
    hidden = shape["hidden_size"]
    text = {
        "model_type": "llama",
        "vocab_size": 102400,
        "hidden_size": hidden,
        "intermediate_size": shape["intermediate_size"],
        "num_hidden_layers": shape["num_hidden_layers"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["heads"],
        "max_position_embeddings": 16384,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision: dict[str, Any] = {"image_size": 384, "patch_size": 16, "projection_dim": hidden}
    vq: dict[str, Any] = {"projection_dim": hidden, "image_token_embed_dim": hidden}
    if dry_run:
        text |= {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
        text |= {"num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 512}
        vision |= {"hidden_size": 32, "projection_dim": 64, "num_hidden_layers": 1}
        vision |= {"num_attention_heads": 2}
        vq |= {"projection_dim": 64, "image_token_embed_dim": 64, "base_channels": 32}
        vq |= {"channel_multiplier": [1, 1, 1, 1, 1], "latent_channels": 32, "num_res_blocks": 1}
    return JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=False,
    )


def janus_pro_like(
    size: str,
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    dry_run: bool = False,
    model_config: ModelConfig | None = None,
    rollout_config: RolloutConfig | None = None,
) -> JanusPolicy:
    """A random model with Janus-Pro-`size`'s shapes, built directly on `device` in `dtype`
    (no float32 copy on the way), with the tiny tokenizer and a 384 px processor."""
    from transformers import JanusForConditionalGeneration

    tokenizer = build_tokenizer()
    config = janus_pro_config(size, tokenizer, dry_run)
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = JanusForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.generation_config = build_generation_config(tokenizer)
    model.eval()
    processor = build_processor(tokenizer, 384, 576)
    where = device.type if device.index is None else str(device)
    model_config = (model_config or ModelConfig()).model_copy(
        update={"device": where, "dtype": "bfloat16" if dtype == torch.bfloat16 else "float32"}
    )
    return JanusPolicy(
        model, processor, model_config, rollout_config or RolloutConfig(system_prompt="")
    )


def parameter_counts(size: str) -> dict[str, int]:
    """Parameters of Janus-Pro-`size` by part, counted on the meta device (no memory)."""
    from transformers import JanusForConditionalGeneration

    config = janus_pro_config(size, build_tokenizer())
    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    parts = {
        "language_model": ("model.language_model", "lm_head"),
        "vision_model": ("model.vision_model",),
        "vqmodel": ("model.vqmodel",),
        "generation_head": ("model.generation_head",),
        "aligners_and_gen_embeddings": (
            "model.aligner",
            "model.generation_aligner",
            "model.generation_embeddings",
        ),
    }
    counts = {
        part: sum(p.numel() for path in paths for p in model.get_submodule(path).parameters())
        for part, paths in parts.items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
