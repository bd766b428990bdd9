"""A tiny random Janus checkpoint (< 1 M parameters) that needs no network.

It is written to a directory in the same Hugging Face format as `deepseek-community/Janus-Pro-1B`
(config, safetensors weights, generation config, tokenizer, image processor, chat template) and
is loaded back through exactly the same code path as a real checkpoint. Every test uses it, and
users can try the commands offline:

    python -m pairuni.policy.tiny /tmp/tiny-janus      # or: pairuni tiny-model /tmp/tiny-janus
    pairuni generate --model /tmp/tiny-janus --prompt "a red square" -n 4 --out grid.png

The special tokens sit at the END of the vocabulary, at ids no real checkpoint uses, so a test
that passes with this model cannot rely on a hard-coded token id.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, BOI, EOI]

# Janus-Pro's conversation format ("<|User|>: ...\n\n<|Assistant|>:"), for the message layout
# `pairuni` sends (role + list of {"type": "image"} / {"type": "text", "text": ...} parts).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set role = message['role'] | lower %}"
    "{% if role == 'user' %}{{ '<|User|>: ' }}"
    "{% elif role == 'assistant' %}{{ '<|Assistant|>: ' }}"
    "{% else %}{{ message['role'] | capitalize }}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}{{ '<image_placeholder>' }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% else %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}"
    "{% if role == 'user' %}{{ '\\n\\n' }}{% elif not loop.last %}{{ '" + EOS + "' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|Assistant|>:' }}{% endif %}"
)

# A few sentences so that the byte-level BPE learns some merges; the ids are what matter.
_CORPUS = [
    "a photo of a red square next to a blue circle",
    "what colour is the triangle? answer with the letter of the option",
    "<think> the shape on the left is green </think> <answer> B </answer>",
    "You are a helpful language and vision assistant.",
    "<|User|>: <|Assistant|>: describe the image in one sentence",
    "how many objects are there in the picture",
]


def build_tokenizer(
    num_merges: int = 64, corpus: Iterable[str] | None = None, boilerplate: Sequence[str] = ()
) -> Any:
    """A byte-level BPE tokenizer: 256 bytes + `num_merges` merges learned on `corpus` (a few
    built-in sentences by default), then the `boilerplate` strings as single added tokens, then
    the special tokens last."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + num_merges,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS if corpus is None else corpus, trainer=trainer)
    if boilerplate:
        backend.add_tokens([AddedToken(text, normalized=False) for text in boilerplate])
    backend.add_special_tokens(SPECIAL_TOKENS)  # appended after the learned vocabulary
    # Like the Janus-Pro (Llama) tokenizer, prepend BOS to every encoded text.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, backend.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=4096,
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )


def build_tiny_janus(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    codebook_size: int = 256,
    vq_levels: int = 3,
    max_position_embeddings: int = 2048,
    init_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write a random Janus checkpoint (model, generation config and processor) to `out_dir`.

    The generated image has `(image_size // patch_size) ** 2` tokens and decodes to
    `image_size // patch_size * 2 ** (vq_levels - 1)` pixels a side. The defaults give 16 image
    tokens, 16 x 16 px images and about 0.5 M parameters.
    """
    import torch
    from transformers import JanusConfig, JanusForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    num_image_tokens = (image_size // patch_size) ** 2
    text = {
        "model_type": "llama",
        "vocab_size": len(tok),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "max_position_embeddings": max_position_embeddings,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        # 5x the usual init spread (0.02): peaked, varied logits give greedy and CFG tests teeth
        "initializer_range": init_range,
    }
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
        "mlp_ratio": 2.0,
        "projection_dim": hidden_size,
        "depth": 2,
        "num_image_tokens": num_image_tokens,
    }
    vq = {
        "embed_dim": 8,
        "num_embeddings": codebook_size,
        "latent_channels": 32,
        "base_channels": 32,  # GroupNorm(32) needs multiples of 32
        "channel_multiplier": [1] * vq_levels,
        "num_res_blocks": 1,
        "projection_dim": hidden_size,
        "image_token_embed_dim": hidden_size,
        "num_hidden_layers": 2,
        "initializer_range": init_range,
    }
    config = JanusConfig(
        text_config=text, vision_config=vision, vq_config=vq, image_token_id=ids[IMAGE]
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    model.generation_config = build_generation_config(tok)
    model.save_pretrained(out)
    build_processor(tok, image_size, num_image_tokens).save_pretrained(out)
    return out


def build_generation_config(tokenizer: Any) -> Any:
    """Janus's generation config (CFG 5, temperature 1) with the tokenizer's special ids."""
    from transformers import GenerationConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    return GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        temperature=1.0,
        guidance_scale=5.0,
        generation_kwargs={"boi_token_id": ids[BOI]},
    )


def build_processor(tokenizer: Any, image_size: int, num_image_tokens: int) -> Any:
    """A `JanusProcessor` (PIL image processor, Janus-Pro chat format, default system prompt)."""
    from transformers import JanusImageProcessorPil, JanusProcessor

    return JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        chat_template=TINY_CHAT_TEMPLATE,
        use_default_system_prompt=True,
        num_image_tokens=num_image_tokens,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the checkpoint to")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    args = parser.parse_args(argv)
    path = build_tiny_janus(args.out_dir, image_size=args.image_size, patch_size=args.patch_size)
    print(f"wrote a tiny random Janus checkpoint to {path}")


if __name__ == "__main__":
    main()
