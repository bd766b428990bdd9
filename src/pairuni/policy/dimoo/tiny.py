"""A tiny random Lumina-DiMOO checkpoint in exactly the released layout, offline.

    pairuni tiny-model --backend dimoo /tmp/tiny-dimoo     # or: python -m pairuni.policy.dimoo.tiny

It has what the release has: a LLaDA `config.json` (the OLMo-style keys, `model_type: llada`
and an `auto_map` to remote code, which pairuni never executes), the backbone weights under
their released `model.transformer.*` names in two safetensors shards with
`model.safetensors.index.json`, a fast tokenizer (`tokenizer.json`, `tokenizer_config.json`) and
`vqvae/` with a diffusers `VQModel` (16x downsampling, 8,192 codes, `lookup_from_codebook`).

The backbone is tiny (d_model 32, 2 layers, 4 heads sharing 2 key/value heads) but keeps the
**real id layout**: 134,548 embedding rows, the mask token at 126336, the image codes at
126356 + c, the special tokens at their released ids (`DimooIds` defaults), so every id a
backend uses is exercised where the real model has it. The weights are stored in bfloat16 as
released (about 17 MB, nearly all of it the embedding and the untied head); they load in any
dtype.

The tokenizer is a byte-level BPE (256 bytes + a few merges, ids 0 .. ~500) whose model
vocabulary also holds the special tokens at their sparse real ids; they are declared as
special added tokens on those same ids (the `tokenizers` library keeps an added token's id
when the model vocabulary already has it, so sparse ids need no padding entries). Its strings
for the newline (126084) and answer-padding (126339) ids and the ids of the `<system>` /
`<user>` tags are of our choosing: pairuni reads those ids from `DimooIds`, not from strings.
Like LLaDA's tokenizer it prepends `<|startoftext|>` when `add_special_tokens` is set.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pairuni.policy.dimoo.ids import RELEASED, TOKEN_STRINGS
from pairuni.policy.dimoo.model import (
    CONFIG_NAME,
    TOKENIZER_FILE,
    VQ_FOLDER,
    DimooArch,
    write_weights,
)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# Token string -> id: DiMOO's released special ids (ids.RELEASED); the strings of the newline
# and answer-padding ids and the ids of the four tags are ours (see the module docstring).
SPECIAL_TOKENS = {
    BOS: 126080,
    EOS: RELEASED["eos"],
    "<|image_newline|>": RELEASED["newline"],
    TOKEN_STRINGS["mask"]: RELEASED["mask"],
    "<|answer_pad|>": RELEASED["answer_pad"],
    "<system>": 126340,
    "</system>": 126341,
    "<user>": 126342,
    "</user>": 126343,
    TOKEN_STRINGS["boi"]: RELEASED["boi"],
    TOKEN_STRINGS["eoi"]: RELEASED["eoi"],
    TOKEN_STRINGS["uncondition"]: RELEASED["uncondition"],
    TOKEN_STRINGS["answer_start"]: RELEASED["answer_start"],
    TOKEN_STRINGS["answer_end"]: RELEASED["answer_end"],
}
VOCAB_SIZE = RELEASED["image_offset"] + RELEASED["codebook_size"]  # 134,548
AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}

# Sentences for the BPE merges (DiMOO's system prompts and a few captions); the ids are what
# matter.
_CORPUS = [
    "Generate an image according to the text prompt.",
    "You are a multimodal model that can process both text and images. Answer the following "
    "question based on the provided images. Analyze each image and combine relevant details.",
    "Generate an image applying the following editing instruction based on the original image.",
    "a photo of a red square next to a blue circle",
    "what colour is the triangle? answer with the letter of the option",
    "how many objects are there in the picture",
]


def tiny_config(
    *,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    mlp_hidden_size: int = 64,
    vocab_size: int = VOCAB_SIZE,
    embedding_size: int | None = None,
    weight_tying: bool = False,
    rope_theta: float = 500000.0,
    max_sequence_length: int = 4096,
    init_std: float = 0.1,
) -> dict[str, Any]:
    """A config.json with the LLaDA keys of the release (values of DiMOO / LLaDA-8B where
    they are not sizes)."""
    return {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": AUTO_MAP,
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": d_model,
        "embedding_dropout": 0.0,
        "embedding_size": embedding_size or vocab_size,
        "eos_token_id": RELEASED["eos"],
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": init_std,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": RELEASED["mask"],
        "max_sequence_length": max_sequence_length,
        "mlp_hidden_size": mlp_hidden_size,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "n_layers": n_layers,
        "pad_token_id": RELEASED["eos"],
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": rope_theta,
        "scale_logits": False,
        "torch_dtype": "bfloat16",
        "use_cache": False,
        "vocab_size": vocab_size,
        "weight_tying": weight_tying,
    }


def random_weights(
    arch: DimooArch, generator: torch.Generator, init_std: float, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Released-name weights: N(0, init_std) matrices and embedding, norm weights 1 + N(0, 0.1)
    (so that swapped norms show)."""
    out = {}
    for name, shape in arch.released_shapes().items():
        if len(shape) == 1:
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            tensor = init_std * torch.randn(shape, generator=generator)
        out[name] = tensor.to(dtype)
    return out


def build_tokenizer_json(
    num_merges: int = 192,
    *,
    corpus: Sequence[str] | None = None,
    plain_tokens: Sequence[str] = (),
    compact: bool = False,
) -> str:
    """tokenizer.json: byte-level BPE trained on `corpus` (default: a few DiMOO prompts) plus
    DiMOO's special tokens at their sparse released ids (`compact`: at the ids right after the
    others, for a checkpoint with its own small id layout); `plain_tokens` are added tokens
    that decode as text (the ShapesWorld base model's `<think>` tags and fixed prompts), at the
    ids after the BPE's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + num_merges,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS if corpus is None else corpus, trainer=trainer)
    spec = json.loads(backend.to_str())
    vocab = spec["model"]["vocab"]
    first = max(vocab.values()) + 1
    plain = {token: first + i for i, token in enumerate(dict.fromkeys(plain_tokens))}
    first += len(plain)
    specials = (
        {token: first + i for i, token in enumerate(SPECIAL_TOKENS)} if compact else SPECIAL_TOKENS
    )
    vocab.update(plain)
    vocab.update(specials)
    spec["added_tokens"] = [
        _added_token(token, token_id, special=False) for token, token_id in plain.items()
    ] + [_added_token(token, token_id, special=True) for token, token_id in specials.items()]
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": BOS, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": BOS, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {BOS: {"id": BOS, "ids": [specials[BOS]], "tokens": [BOS]}},
    }
    Tokenizer.from_str(json.dumps(spec))  # fail here, not at load time, if the spec is invalid
    return json.dumps(spec, ensure_ascii=False, indent=1)


def _added_token(token: str, token_id: int, *, special: bool) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": token,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "mask_token": TOKEN_STRINGS["mask"],
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
    }


def amused_vq(
    *,
    levels: int,
    channels: int,
    latent_channels: int,
    embed_dim: int,
    sample_size: int,
    codebook_size: int,
    norm_groups: int,
) -> Any:
    """A random diffusers `VQModel` shaped like aMUSEd's, DiMOO's image tokenizer (DownEncoder /
    UpDecoder blocks, one layer each, no mid-block attention, `lookup_from_codebook`):
    `levels` blocks of `channels` channels, 2 ** (levels - 1) pixels per code. Its init draws
    from torch's global generator: seed it (under `fork_rng`) around the call."""
    from diffusers import VQModel

    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(channels,) * levels,
        layers_per_block=1,
        act_fn="silu",
        latent_channels=latent_channels,
        vq_embed_dim=embed_dim,
        sample_size=sample_size,
        num_vq_embeddings=codebook_size,
        norm_num_groups=norm_groups,
        mid_block_add_attention=False,
        lookup_from_codebook=True,
        force_upcast=True,
    )


def build_tiny_vq(
    seed: int, levels: int = 5, codebook_size: int = RELEASED["codebook_size"]
) -> Any:
    """`amused_vq` with 8 channels per level and 4-dimensional codes at 32 px. The codebook is
    N(0, 1) rather than diffusers' U(+-1/n) so that encodings vary."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = amused_vq(
            levels=levels,
            channels=8,
            latent_channels=4,
            embed_dim=4,
            sample_size=32,
            codebook_size=codebook_size,
            norm_groups=4,
        )
        with torch.no_grad():
            model.quantize.embedding.weight.normal_()
    return model


def write_tiny_dimoo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    mlp_hidden_size: int = 64,
    vocab_size: int = VOCAB_SIZE,
    embedding_size: int | None = None,
    weight_tying: bool = False,
    rope_theta: float = 500000.0,
    init_std: float = 0.1,
    dtype: torch.dtype = torch.bfloat16,
    num_shards: int = 2,
    vq_levels: int = 5,
) -> Path:
    """Write a seeded random DiMOO checkpoint in the released layout to `out_dir` and return
    it. Defaults: 134,548 embedding rows of width 32, 2 layers, GQA 4/2 heads, an untied head,
    bfloat16 weights in 2 shards, a 16x VQ (`vq_levels` 5); about 17 MB."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_config(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        mlp_hidden_size=mlp_hidden_size,
        vocab_size=vocab_size,
        embedding_size=embedding_size,
        weight_tying=weight_tying,
        rope_theta=rope_theta,
        init_std=init_std,
    )
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    arch = DimooArch.from_config(config, out / CONFIG_NAME)
    generator = torch.Generator().manual_seed(seed)
    for stale in out.glob("model*.safetensors*"):
        stale.unlink()
    write_weights(random_weights(arch, generator, init_std, dtype), out, num_shards)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / TOKENIZER_FILE).write_text(build_tokenizer_json(), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), indent=2) + "\n", encoding="utf-8"
    )
    build_tiny_vq(seed, vq_levels).save_pretrained(str(out / VQ_FOLDER))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_dimoo(args.out_dir, seed=args.seed)
    print(f"wrote a tiny random Lumina-DiMOO checkpoint to {path}")


__all__ = ["SPECIAL_TOKENS", "VOCAB_SIZE", "build_tiny_vq", "write_tiny_dimoo"]

if __name__ == "__main__":
    main()
