"""`pairuni shapes pretrain --backend dimoo`: the ShapesWorld base model for the masked-diffusion
backend, a tiny Lumina-DiMOO in the released layout (docs/dimoo.md), built and scored the way
the Janus base model is (`pairuni.shapes.pretrain`), so the paper's two architectures can be
compared on the same world (issue 16, item 5).

Phases (timings, losses and scores go to `pretrain.json`, as for Janus):

1. data: the same rendered records (`ShapesSamples`, `data_seed`);
2. tokenizer: a byte-level BPE trained on the ShapesWorld texts and DiMOO's prompts, with
   DiMOO's special tokens at their released sparse ids (`policy.dimoo.tiny`'s construction);
3. VQ: a diffusers `VQModel` (DiMOO's image tokenizer class; `latent_side` codes per side, so
   4 px per code at 32 px like the Janus base) trained by `pretrain_vq.train_vq` on pixels in
   [0, 1] (DiMOO's range). `train_vq` quantises by cosine to an L2-normalised codebook; the
   codebook is stored normalised, so the `VQModel`'s own Euclidean nearest code is the same
   code and its codebook lookup feeds the decoder the unit vectors it was trained on;
4. checkpoint: LLaDA config, random backbone, tokenizer and `vqvae/` written as the release
   lays them out, with the checkpoint's own compact id layout (text, DiMOO's special tokens,
   then the image codes: ~1,300 rows instead of the release's 126K, which made the text head
   20x the cost of the rest of an SFT step on a CPU), declared in config.json by the keys
   `DimooIds` reads (`image_token_offset`, `image_codebook_size`, ...); loaded back through
   `DimooPolicy.load`;
5. SFT: DiMOO's own recipe through the policy (`target_text`, `target_images`,
   `supervised_logprobs`: cosine-ratio masking of the answer and of the image codes, mean
   cross-entropy over masked positions, `cfg_dropout` of prompts replaced by
   `<uncondition>`), AdamW with the Janus base model's schedule;
6. eval: MC accuracy (greedy and temperature 1) and the GenEval-style score through the
   policy's rollouts (`evaluate`), then save in the released layout.

The understanding image reaches DiMOO as VQ codes (it has no separate vision encoder), and an
answer is `<think>objects</think><answer>option text</answer>` inside DiMOO's answer block:
the same completion as the Janus base model's, its answer tags DiMOO's special tokens (what
`pairuni sft` trains from a PairUG file too), which the policy decodes back to the tags.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from pairuni.shapes.pretrain import PretrainConfig


class DimooPretrainConfig(PretrainConfig):
    """`PretrainConfig` for the masked-diffusion base model. The Janus-only keys
    (`vision_hidden_size`, `vision_layers`) are unused."""

    sft_learning_rate: float = Field(1e-3, gt=0)
    """Peak AdamW learning rate of SFT (linear warm-up, cosine decay to a tenth)."""

    answer_length: int = Field(32, ge=4)
    """Answer tokens of the understanding layout (`rollout.max_new_tokens`): DiMOO pads every
    answer to it with `answer_pad`, which is a target too."""

    text_steps: int = Field(8, ge=1)
    """Unmasking steps of an answer in the evaluation rollouts (`rollout.dimoo.text_steps`)."""

    image_steps: int = Field(16, ge=1)
    """MaskGIT steps of an image in the evaluation rollouts (`rollout.dimoo.image_steps`)."""

    def builder(self) -> Any:
        return build

    def settings_hash(self) -> str:
        """The cache key, with this build's own version beside the shared one (DIMOO_VERSION
        changes rebuild DiMOO base models only)."""
        payload = json.dumps([DIMOO_VERSION, super().settings_hash()])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


DIMOO_VERSION = 2
"""2: SFT answers keep `<answer>` before the option text (1 had none, and the `format` reward
could not score the replies)."""


# ----------------------------------------------------------------------------- the build


def build(work: Path, config: DimooPretrainConfig) -> dict[str, Any]:
    """Build the base model into `work` (the `.partial` folder `pretrain` renames into place)."""
    from tqdm import tqdm

    from pairuni.shapes.pretrain import (
        ShapesSamples,
        _Timer,
        evaluate,
        finish_report,
        new_report,
    )

    timer = _Timer()
    report = new_report(config, backend="dimoo")
    with timer.phase("data"):
        samples = ShapesSamples.render(config)
    with timer.phase("vq"):
        vq, report["vq"] = _vq_phase(work, config, samples, tqdm)
    initial = work / "initial"  # the random model SFT starts from (save writes elsewhere)
    with timer.phase("model"):
        write_checkpoint(initial, config, vq, samples.corpus("text"))
        policy = load_policy(initial, config)
    with timer.phase("sft"):
        report["sft"] = _sft_phase(policy, samples, config, tqdm)
    with timer.phase("eval"):
        report["eval"] = evaluate(policy, samples, config)
    policy.save(work)
    shutil.rmtree(initial)
    return finish_report(work, report, timer)


def vq_levels(config: PretrainConfig) -> int:
    """Down blocks of the VQ: 2 ** (levels - 1) = image_size / latent_side px per code."""
    patch = config.image_size // config.latent_side
    return patch.bit_length()  # patch is a power of 2 (PretrainConfig checks it)


def build_vq(config: PretrainConfig) -> Any:
    """A random diffusers `VQModel` (`amused_vq`, DiMOO's tokenizer class) with the Janus base
    model's VQ capacity: 32 channels per level, `codebook_dim`-dimensional codes."""
    import torch

    from pairuni.policy.dimoo.tiny import amused_vq

    with torch.random.fork_rng(devices=[]):  # module inits draw from the global generator
        torch.manual_seed(config.seed)
        return amused_vq(
            levels=vq_levels(config),
            channels=32,
            latent_channels=32,
            embed_dim=config.codebook_dim,
            sample_size=config.image_size,
            codebook_size=config.codebook_size,
            norm_groups=32,
        )


def unit_pixels(images: Any) -> Any:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1] (DiMOO's VQ input range)."""
    from pairuni.shapes.pretrain_vq import to_model_pixels

    return (to_model_pixels(images) + 1.0) / 2.0


def _vq_phase(
    work: Path, config: DimooPretrainConfig, samples: Any, tqdm: Any
) -> tuple[Any, dict[str, Any]]:
    """Train the VQ (or reload the finished phase of an interrupted run) and measure it."""
    import numpy as np

    from pairuni.policy.dimoo.model import DimooVQ
    from pairuni.shapes.pretrain import train_or_reload_vq, vq_report

    vq = build_vq(config)
    pixels = unit_pixels(samples.train_images())
    losses = train_or_reload_vq(work, config, vq, pixels, tqdm, finish=normalise_codebook)
    vq.eval().requires_grad_(False)
    records, images = samples.heldout_gen(config.n_eval_vq)
    wrapped = DimooVQ(vq)
    recon = np.stack(
        [_array(im) for im in wrapped.decode(wrapped.encode([_pil(im) for im in images]))]
    )
    return vq, vq_report(recon, images, records, losses)


def normalise_codebook(vq: Any) -> None:
    """Store the rows `train_vq` quantised against (L2-normalised): then the `VQModel`'s
    Euclidean nearest row is the cosine-nearest one and its lookup returns unit vectors."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        weight = vq.quantize.embedding.weight
        weight.copy_(F.normalize(weight, dim=1))


def _pil(array: Any) -> Any:
    from PIL import Image

    return Image.fromarray(array)


def _array(image: Any) -> Any:
    import numpy as np

    return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- the checkpoint


def tokenizer_corpus(texts: Any, config: PretrainConfig) -> list[str]:
    """What the BPE trains on: the world's texts (every word of the world becomes one token, as
    for Janus)."""
    return [config.und_prompt_template, *texts]


def boilerplate(config: PretrainConfig) -> list[str]:
    """Fixed strings that become single tokens (as the Janus base model's boilerplate): DiMOO's
    system prompts and the understanding template's parts around `{question}`."""
    from pairuni.policy.dimoo.sequence import TEXT_TO_IMAGE_SYSTEM, UNDERSTANDING_SYSTEM

    parts = [p for p in config.und_prompt_template.split("{question}") if p.strip()]
    system = [config.system_prompt or UNDERSTANDING_SYSTEM, TEXT_TO_IMAGE_SYSTEM]
    return list(dict.fromkeys([*system, *parts]))


def compact_ids(vocab: dict[str, int], codebook_size: int) -> dict[str, int]:
    """config.json keys of the checkpoint's own id layout (`DimooIds.from_values` reads them):
    the special tokens where the compact tokenizer put them, the image codes right after."""
    from pairuni.policy.dimoo.ids import CONFIG_KEYS, TOKEN_STRINGS
    from pairuni.policy.dimoo.tiny import EOS

    return {
        CONFIG_KEYS["mask"]: vocab[TOKEN_STRINGS["mask"]],
        CONFIG_KEYS["eos"]: vocab[EOS],
        "pad_token_id": vocab[EOS],
        CONFIG_KEYS["newline"]: vocab["<|image_newline|>"],
        CONFIG_KEYS["answer_pad"]: vocab["<|answer_pad|>"],
        CONFIG_KEYS["image_offset"]: max(vocab.values()) + 1,
        CONFIG_KEYS["codebook_size"]: codebook_size,
    }


def write_checkpoint(work: Path, config: DimooPretrainConfig, vq: Any, texts: Any) -> None:
    """A random DiMOO of the configured sizes with this tokenizer and VQ, in the released layout
    with a compact id layout (text, then the special tokens, then the image codes)."""
    import torch

    from pairuni.policy.dimoo.ids import CONFIG_KEYS
    from pairuni.policy.dimoo.model import CONFIG_NAME, TOKENIZER_FILE, VQ_FOLDER
    from pairuni.policy.dimoo.tiny import build_tokenizer_json, write_tiny_dimoo
    from pairuni.shapes.pretrain_lm import THINK_CLOSE, THINK_OPEN

    # the think tags as whole tokens that decode as text (the answer tags are DiMOO's specials)
    plain = [THINK_OPEN, THINK_CLOSE, *boilerplate(config)]
    spec = build_tokenizer_json(
        config.vocab_size - 256,
        corpus=tokenizer_corpus(texts, config),
        plain_tokens=plain,
        compact=True,
    )
    ids = compact_ids(json.loads(spec)["model"]["vocab"], config.codebook_size)
    write_tiny_dimoo(
        work,
        seed=config.seed,
        d_model=config.hidden_size,
        n_layers=config.num_layers,
        n_heads=config.num_heads,
        n_kv_heads=config.num_heads,
        mlp_hidden_size=2 * config.hidden_size,
        vocab_size=ids[CONFIG_KEYS["image_offset"]] + config.codebook_size,
        init_std=0.02,
        dtype=torch.float32,
        num_shards=1,
        vq_levels=vq_levels(config),
    )
    settings = json.loads((work / CONFIG_NAME).read_text(encoding="utf-8"))
    settings.update(ids)
    (work / CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    (work / TOKENIZER_FILE).write_text(spec, encoding="utf-8")
    vq.save_pretrained(str(work / VQ_FOLDER))


def rollout_config(config: DimooPretrainConfig) -> Any:
    from pairuni.policy.config import RolloutConfig
    from pairuni.policy.dimoo.config import DimooRolloutConfig

    return RolloutConfig(
        max_new_tokens=config.answer_length,
        und_prompt_template=config.und_prompt_template,
        system_prompt=config.system_prompt,
        dimoo=DimooRolloutConfig(
            image_size=config.image_size,
            text_steps=config.text_steps,
            image_steps=config.image_steps,
        ),
    )


def load_policy(path: Path, config: DimooPretrainConfig) -> Any:
    from pairuni.policy.config import ModelConfig
    from pairuni.policy.dimoo.policy import DimooPolicy

    model = ModelConfig(backend="dimoo", device="cpu", dtype="float32")
    return DimooPolicy.load(path, model, rollout_config(config), for_training=True)


# ----------------------------------------------------------------------------- SFT


def answer_text(record: dict[str, Any], config: PretrainConfig) -> str:
    """The SFT answer inside DiMOO's answer block: the Janus base model's completion. Its
    `<answer>` and `</answer>` encode to DiMOO's special tokens: the model learns to open the
    answer after its think, and `answer_targets` ends the reply with the `</answer>` there."""
    from pairuni.shapes.pretrain import _think_scene
    from pairuni.shapes.pretrain_lm import completion_text

    return completion_text(
        record["options"], record["answer"], _think_scene(record, config), config.answer_style
    )


def _sft_phase(policy: Any, samples: Any, config: DimooPretrainConfig, tqdm: Any) -> dict:
    import torch

    from pairuni.shapes.pretrain import sft_loss_summary, sft_settings
    from pairuni.shapes.pretrain_lm import sft_steps

    settings = sft_settings(config)
    backbone = policy.model.backbone
    params = [p for p in backbone.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(config.seed + 1)
    und = samples.und[: samples.n_und_train]
    gen = samples.gen[: samples.n_gen_train]
    answers = [answer_text(r, config) for r in und]

    def losses(u: list[int], g: list[int], drop: list[bool]) -> tuple[Any, Any]:
        und_loss = _und_loss(policy, samples, und, answers, u, generator)
        return und_loss, _gen_loss(policy, samples, gen, g, drop, generator)

    backbone.train()
    with tqdm(total=settings.steps, desc="SFT", unit="step") as bar:

        def on_step(step: int, und_loss: float, gen_loss: float) -> None:
            bar.update(1)
            if (step - 1) % 10 == 0:
                bar.set_postfix(und=f"{und_loss:.3f}", gen=f"{gen_loss:.3f}")

        history = sft_steps(params, settings, (len(und), len(gen)), generator, losses, on_step)
    backbone.eval()
    return sft_loss_summary(history)


def _und_loss(policy: Any, samples: Any, und: list, answers: list, rows: list, generator: Any):
    record = policy.target_text(
        [_pil(samples.und_images[i]) for i in rows],
        [und[i]["question"] for i in rows],
        [answers[i] for i in rows],
        [und[i]["options"] for i in rows],
    )
    terms = policy.supervised_logprobs("understanding", record, generator)
    return -terms.sum() / record.completion_mask.sum().clamp(min=1)


def _gen_loss(
    policy: Any, samples: Any, gen: list, rows: list, drop: list[bool], generator: Any
) -> Any:
    record = policy.target_images(
        [gen[i]["prompt"] for i in rows], [_pil(samples.gen_images[i]) for i in rows], drop
    )
    terms = policy.supervised_logprobs("generation", record, generator)
    return -terms.sum() / terms.numel()
