"""The language side of the ShapesWorld base model: tokenizer, Janus config and supervised
fine-tuning (SFT) on understanding answers and image codes.

Tokenizer. A byte-level BPE trained on the ShapesWorld texts (questions, options, prompts,
answers) so every word of the world is one token, plus the chat boilerplate as whole added
tokens: Janus-Pro's default system prompt, the fixed parts of the understanding template,
"<|User|>: ", "\\n\\n<|Assistant|>:" and the <think>/<answer> tags. An understanding prompt in
the default format then costs about 40 tokens (16 of them image tokens at 16 px patches) instead
of the ~300 of a generic byte tokenizer, which makes SFT and RL rollouts several times cheaper.
The special tokens (BOS, EOS, pad, image, BOI, EOI) and the chat template are `policy.tiny`'s.

SFT. One step = one batch of understanding samples and one batch of generation samples:

    und: prompt (chat, image placeholders) + "<think>{option}</think><answer>{letter}</answer>" EOS
         cross-entropy of lm_head on the completion tokens only;
    gen: prompt ending in <begin_of_image> (the unconditional prompt of JanusPolicy for a
         `cfg_dropout` share of rows, so that CFG has an unconditional branch to contrast)
         + codes 0..N-2, cross-entropy of generation_head on the N codes;
    loss = und + gen_weight * gen.

Both follow `JanusPolicy`'s conventions exactly (left padding, positions = cumsum(mask) - 1, the
hidden state at <begin_of_image> predicts code 0), so what SFT teaches is what rollouts sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pairuni.policy.tiny import (
    BOI,
    BOS,
    EOS,
    IMAGE,
    PAD,
    SPECIAL_TOKENS,
    TINY_CHAT_TEMPLATE,
    build_tokenizer,
)
from pairuni.shapes.scene import Scene

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
CHAT_PIECES = ("<|User|>: ", "\n\n<|Assistant|>:", "<|Assistant|>:")


def scene_description(scene: Scene) -> str:
    """The objects left to right as "size colour shape", comma-separated:
    "small red circle, large blue square"."""
    ordered = sorted(scene.objects, key=lambda o: (o.x, o.y))
    return ", ".join(obj.describe() for obj in ordered)


def completion_text(
    options: Sequence[str],
    answer: str,
    scene: Scene | None = None,
    answer_style: str = "letter",
) -> str:
    """The SFT target of an understanding sample: a short think, then the answer.

    With a scene the think lists what is in the image ("small red circle, large blue square"):
    every one of its tokens is grounded in the picture, a much denser signal for the vision path
    than one answer letter, and what RL then samples is a short look-then-answer. Without a
    scene the think is the chosen option's text.

    `answer_style` `letter` answers with the option letter ("B"), `text` with the option's text
    ("blue"); the `mc_accuracy` reward scores both (an answer equal to exactly one option's text
    is that option). `text` spares a small model the hop from the answer to its letter, which a
    2-3 layer model does not learn within the pretraining budget (docs/shapes.md).
    """
    letter = answer.strip().upper()
    index = "ABCDEFGHIJ".index(letter)
    think = scene_description(scene) if scene is not None else options[index]
    if answer_style not in ("letter", "text"):
        raise ValueError(f"answer_style must be 'letter' or 'text', not {answer_style!r}")
    said = letter if answer_style == "letter" else options[index]
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{said}{ANSWER_CLOSE}"


def boilerplate_tokens(und_template: str, system_prompt: str) -> list[str]:
    """Fixed strings that become single tokens: the system prompt, the template's parts around
    `{question}`, the chat role markers and the answer tags (longest match wins when encoding)."""
    parts = [p for p in und_template.split("{question}") if p.strip()]
    pieces = [system_prompt, *parts, *CHAT_PIECES, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN]
    pieces += [ANSWER_CLOSE, f"{THINK_CLOSE}{ANSWER_OPEN}"]
    # a template part followed by the assistant marker is one token too (the common case)
    pieces += [p + "\n\n<|Assistant|>:" for p in parts]
    return list(dict.fromkeys(p for p in pieces if p))


def build_shapes_tokenizer(
    corpus: Iterable[str], vocab_size: int, boilerplate: Sequence[str]
) -> Any:
    """A `PreTrainedTokenizerFast`: byte-level BPE of `vocab_size` (bytes + merges) trained on
    `corpus`, then the `boilerplate` strings as added tokens, then the special tokens last (the
    tiny Janus tokenizer, with a corpus and boilerplate of ShapesWorld)."""
    return build_tokenizer(vocab_size - 256, corpus=corpus, boilerplate=boilerplate)


@dataclass(frozen=True)
class Architecture:
    """Sizes of the base model (filled from `PretrainConfig`)."""

    image_size: int
    latent_side: int
    codebook_size: int
    codebook_dim: int
    hidden_size: int
    num_layers: int
    num_heads: int
    vision_hidden_size: int
    vision_layers: int
    max_positions: int = 512


def build_model(arch: Architecture, tokenizer: Any, seed: int) -> Any:
    """A random `JanusForConditionalGeneration` of these sizes, with its generation config.

    Image tokens: latent_side ** 2 for both tasks (the understanding encoder's patch is
    image_size / latent_side); the VQ has log2(patch) + 1 levels of 32 channels, so it decodes
    to latent_side * patch = image_size pixels.
    """
    from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration

    patch = arch.image_size // arch.latent_side
    levels = int(math.log2(patch)) + 1
    if arch.latent_side * patch != arch.image_size or 2 ** (levels - 1) != patch:
        raise ValueError(
            f"image_size {arch.image_size} / latent_side {arch.latent_side} must be a power of 2"
        )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": arch.hidden_size,
        "intermediate_size": 2 * arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_heads,
        "max_position_embeddings": arch.max_positions,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
    }
    vision = {
        "hidden_size": arch.vision_hidden_size,
        "num_hidden_layers": arch.vision_layers,
        "num_attention_heads": 2,
        "image_size": arch.image_size,
        "patch_size": patch,
        "mlp_ratio": 2.0,
        "projection_dim": arch.hidden_size,
        "depth": 2,
        "num_image_tokens": arch.latent_side**2,
    }
    vq = {
        "embed_dim": arch.codebook_dim,
        "num_embeddings": arch.codebook_size,
        "latent_channels": 32,
        "base_channels": 32,  # GroupNorm(32) needs multiples of 32
        "channel_multiplier": [1] * levels,
        "num_res_blocks": 0,  # the decoder still has one residual block per level
        "projection_dim": arch.hidden_size,
        "image_token_embed_dim": arch.hidden_size,
        "num_hidden_layers": 2,
    }
    config = JanusConfig(
        text_config=text, vision_config=vision, vq_config=vq, image_token_id=ids[IMAGE]
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        temperature=1.0,
        guidance_scale=5.0,
        generation_kwargs={"boi_token_id": ids[BOI]},
    )
    return model


def build_processor(tokenizer: Any, image_size: int, num_image_tokens: int) -> Any:
    """The `JanusProcessor` saved beside the model (PIL image processor, tiny chat template)."""
    from transformers import JanusImageProcessorPil, JanusProcessor

    return JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        chat_template=TINY_CHAT_TEMPLATE,
        use_default_system_prompt=True,
        num_image_tokens=num_image_tokens,
    )


# ----------------------------------------------------------------------------- SFT data


@dataclass
class SFTData:
    """Pre-tokenised SFT samples, each a 1-D tensor (no padding)."""

    und_prompts: list[torch.Tensor]
    """Understanding prompt ids (with the image placeholders)."""
    und_pixels: torch.Tensor
    """(U, 3, H, W) processed images of the understanding samples."""
    und_completions: list[torch.Tensor]
    """Completion ids, ending with EOS."""
    gen_prompts: list[torch.Tensor]
    """Generation prompt ids, ending with <begin_of_image>."""
    gen_uncond: list[torch.Tensor]
    """The same prompts made unconditional (JanusPolicy.unconditional_ids)."""
    gen_codes: torch.Tensor
    """(G, N) VQ codes of the generation samples' images."""


def unpad(ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """(B, P) left-padded ids and mask -> B tensors of the real tokens."""
    return [row[m.bool()] for row, m in zip(ids, mask, strict=True)]


def left_pad(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D tensors -> (B, L) left-padded ids and their 0/1 mask."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> cumsum - 1 positions, 0 on padding (JanusPolicy's convention)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def understanding_loss(
    model: Any,
    prompts: Sequence[torch.Tensor],
    completions: Sequence[torch.Tensor],
    pixels: torch.Tensor,
    pad_id: int,
) -> torch.Tensor:
    """Mean cross-entropy of the completion tokens given image + prompt.

    Rows are [left pad | prompt | completion]; the hidden state at position t predicts t + 1.
    """
    rows = [torch.cat([p, c]) for p, c in zip(prompts, completions, strict=True)]
    ids, mask = left_pad(rows, pad_id)
    is_target = torch.zeros_like(mask, dtype=torch.bool)
    for i, completion in enumerate(completions):
        is_target[i, ids.shape[1] - len(completion) :] = True
    out = model.model(
        input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=positions(mask)
    )
    predictors = out.last_hidden_state[:, :-1][is_target[:, 1:]]
    logits = model.lm_head(predictors).float()
    return F.cross_entropy(logits, ids[:, 1:][is_target[:, 1:]])


def generation_loss(
    model: Any, prompts: Sequence[torch.Tensor], codes: torch.Tensor, pad_id: int
) -> torch.Tensor:
    """Mean cross-entropy of the N image codes (B, N) given the prompts (ending in BOI)."""
    ids, prompt_mask = left_pad(prompts, pad_id)
    num = codes.shape[1]
    embeds = torch.cat(
        [
            model.get_input_embeddings()(ids),
            model.prepare_embeddings_for_image_generation(codes[:, :-1]),
        ],
        dim=1,
    )
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(len(prompts), num - 1)], dim=1)
    out = model.model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask)
    )
    hidden = out.last_hidden_state[:, ids.shape[1] - 1 :]
    logits = model.model.generation_head(hidden).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


@dataclass(frozen=True)
class SFTSettings:
    """What `train_sft` needs (filled from `PretrainConfig`)."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    cfg_dropout: float
    gen_weight: float


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    """Everything but the VQ tokenizer (trained before, frozen here)."""
    model.requires_grad_(True)
    model.model.vqmodel.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def learning_rate_at(step: int, settings: SFTSettings) -> float:
    """Linear warm-up to the peak, then cosine decay to 10 % of it at the last step."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = (step - settings.warmup_steps) / span
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_sft(
    model: Any,
    data: SFTData,
    settings: SFTSettings,
    pad_id: int,
    generator: torch.Generator,
    on_step: Callable[[int, float, float], None] | None = None,
) -> list[tuple[float, float]]:
    """Supervised fine-tuning in place; returns (understanding loss, generation loss) per step.

    Batches are drawn with replacement from `generator`; a `cfg_dropout` share of generation
    rows (drawn from the same generator) use the unconditional prompt.
    """

    def losses(u: list[int], g: list[int], drop: list[bool]) -> tuple[Any, Any]:
        und = understanding_loss(
            model,
            [data.und_prompts[i] for i in u],
            [data.und_completions[i] for i in u],
            data.und_pixels[u],
            pad_id,
        )
        gen_prompts = [
            data.gen_uncond[i] if d else data.gen_prompts[i] for i, d in zip(g, drop, strict=True)
        ]
        return und, generation_loss(model, gen_prompts, data.gen_codes[g], pad_id)

    model.train()
    sizes = (len(data.und_prompts), len(data.gen_prompts))
    history = sft_steps(trainable_parameters(model), settings, sizes, generator, losses, on_step)
    model.eval()
    return history


SFTLosses = Callable[[list[int], list[int], list[bool]], tuple[torch.Tensor, torch.Tensor]]
"""(understanding rows, generation rows, unconditional flags) -> the two losses of a batch."""


def sft_steps(
    params: list[torch.nn.Parameter],
    settings: SFTSettings,
    sizes: tuple[int, int],
    generator: torch.Generator,
    losses: SFTLosses,
    on_step: Callable[[int, float, float], None] | None = None,
) -> list[tuple[float, float]]:
    """The SFT loop both base models share: per step the scheduled learning rate, rows of the
    `sizes` understanding / generation samples drawn with replacement and the CFG-dropout
    flags (in that order, from `generator`), `losses` of them, their sum with `gen_weight`,
    clipping at 1 and an AdamW step. Returns (understanding, generation) loss per step."""
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    history = []
    n_und, n_gen = sizes
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, settings)
        u = torch.randint(0, n_und, (settings.batch_size,), generator=generator).tolist()
        g = torch.randint(0, n_gen, (settings.batch_size,), generator=generator).tolist()
        drop = torch.rand(settings.batch_size, generator=generator) < settings.cfg_dropout
        und, gen = losses(u, g, drop.tolist())
        loss = und + settings.gen_weight * gen
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append((und.item(), gen.item()))
        if on_step is not None:
            on_step(step + 1, *history[-1])
    return history
