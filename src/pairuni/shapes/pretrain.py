"""`pairuni shapes pretrain`: build the ShapesWorld base model, a tiny Janus that RL can improve.

Phases (each with a progress bar; timings, losses and scores go to `pretrain.json`):

1. data: render the understanding and generation samples of `data_seed` (build.py records);
   the first `n_*_train` train, the next `n_eval_*` are held out for evaluation;
2. VQ: train the `JanusVQVAE` on the training images (pretrain_vq.py) and measure the rate at
   which the detector reads held-out scenes back from their reconstructions;
3. SFT: tokenise the samples with the checkpoint's own processor (JanusPolicy's prompts),
   encode the generation images to VQ codes and fine-tune everything but the VQ on both tasks
   (pretrain_lm.py) for a fixed number of steps, few enough to leave the model middling;
4. eval: multiple-choice accuracy (greedy and temperature 1) and the GenEval-style score (CFG 5,
   temperature 1), per category, through `JanusPolicy`: the same rollouts RL uses;
5. save: HF format (model, generation config, processor) into a temporary folder, renamed into
   place when complete, so a half-written model is never mistaken for a finished one.

Determinism: every random draw comes from generators seeded by `seed` / `data_seed`, and torch
runs with deterministic algorithms, so one seed gives bitwise-identical weights on one machine
(same torch, same thread count). Caching: a folder that holds a finished model whose
`pretrain.json` has the same settings hash is returned at once; a finished VQ phase is kept in
`<out>.partial/` and reused when the run is restarted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pairuni.configbase import Section
from pairuni.policy.config import DEFAULT_UND_TEMPLATE

FORMAT_VERSION = 2
"""Bumped when the pipeline changes what it builds, so cached models are rebuilt."""
REPORT_FILE = "pretrain.json"


class PretrainConfig(Section):
    """The ShapesWorld base model (`pairuni shapes pretrain`): sizes, training lengths and
    evaluation sizes. The defaults take about 10 minutes on an idle 2-core CPU (estimated from
    CPU time; 23 minutes were measured on a busy one, see docs/shapes.md)."""

    seed: int = 0
    """Seed of the weights, batch draws and evaluation samples."""

    data_seed: int = 1009
    """Seed of the ShapesWorld records the base model trains and is evaluated on. It differs
    from the `pairuni shapes data` default (0) so that RL data is not the SFT data."""

    image_size: int = Field(32, ge=16, le=256)
    """Image side in pixels, for both understanding inputs and generated images."""

    latent_side: int = Field(8, ge=2)
    """Image tokens per side: images are latent_side**2 tokens for both tasks. 8 (64 tokens,
    4 x 4 px each) is the smallest grid whose reconstructions the detector reads reliably at
    32 px; 4 (16 tokens) blurs small shapes beyond recognition."""

    codebook_size: int = Field(512, ge=2)
    """Number of VQ codes (the image vocabulary of the generation head)."""

    codebook_dim: int = Field(8, ge=1)
    """Dimension of a VQ code vector (L2-normalised, as `JanusVQVAE.decode` reads them)."""

    vq_steps: int = Field(3000, ge=1)
    """VQ training steps (Adam, batches drawn with replacement from the training images)."""

    vq_batch_size: int = Field(16, ge=1)
    """Images per VQ step. The decoder's full-resolution convolutions dominate the cost."""

    vq_learning_rate: float = Field(2e-3, gt=0)
    """Adam learning rate of the VQ."""

    vq_foreground_weight: float = Field(4.0, ge=0)
    """Extra weight of shape pixels in the reconstruction loss (1 + this on shapes, 1 on the
    background), so that the small shapes are not traded for a perfect grey."""

    vocab_size: int = Field(512, ge=300)
    """Byte-level BPE vocabulary (256 bytes + merges) before the chat boilerplate and special
    tokens are added."""

    hidden_size: int = Field(128, ge=16)
    """Width of the language model (also the aligners' and generation embeddings' output)."""

    num_layers: int = Field(3, ge=1)
    """Transformer layers of the language model."""

    num_heads: int = Field(4, ge=1)
    """Attention heads of the language model (must divide hidden_size)."""

    vision_hidden_size: int = Field(128, ge=8)
    """Width of the understanding vision encoder (a SigLIP-style ViT)."""

    vision_layers: int = Field(2, ge=1)
    """Layers of the understanding vision encoder."""

    n_und_train: int = Field(20000, ge=1)
    """Understanding samples for SFT (their images also train the VQ). Rendering is cheap
    (~0.1 ms a sample); with 2,000 the model memorised answers without learning to read the
    image."""

    n_gen_train: int = Field(20000, ge=1)
    """Generation samples for SFT (their images also train the VQ)."""

    sft_steps: int = Field(2000, ge=1)
    """SFT steps. Set by the ~10-minute budget and the aim of a base model that is middling on
    both tasks, so that RL has room (measured in docs/shapes.md)."""

    sft_batch_size: int = Field(16, ge=1)
    """Understanding samples and generation samples per SFT step (each)."""

    sft_learning_rate: float = Field(3e-3, gt=0)
    """Peak AdamW learning rate of SFT (linear warm-up, cosine decay to a tenth)."""

    sft_warmup_steps: int = Field(30, ge=0)
    """Warm-up steps of the SFT learning rate."""

    cfg_dropout: float = Field(0.1, ge=0, le=1)
    """Share of generation samples trained on the unconditional prompt, so that classifier-free
    guidance has an unconditional distribution to contrast with."""

    gen_loss_weight: float = Field(1.0, ge=0)
    """Weight of the image-code loss against the answer loss."""

    n_eval_und: int = Field(200, ge=1)
    """Held-out understanding samples for the MC accuracy."""

    n_eval_gen: int = Field(120, ge=1)
    """Held-out generation prompts for the GenEval-style score (a multiple of 6 balances the
    six categories)."""

    n_eval_vq: int = Field(200, ge=1)
    """Held-out images whose VQ reconstructions the detector reads (the VQ recovery rate)."""

    think: Literal["scene", "option"] = "scene"
    """What the SFT answers put inside <think></think>: `scene` lists the objects left to right
    ("small red circle, large blue square", up to ~20 tokens), `option` only the chosen option's
    text (~6 tokens in all, but the vision path then learns from one token per sample)."""

    answer_style: Literal["letter", "text"] = "text"
    """How SFT answers end: `text` with the chosen option's text (`<answer>blue</answer>`),
    `letter` with its letter (`<answer>B</answer>`). The `mc_accuracy` reward scores both. With
    `letter` the tiny model stayed at chance (it must map the answer back to the option list);
    with `text` it reads the image (docs/shapes.md)."""

    eval_max_new_tokens: int = Field(32, ge=1)
    """Longest answer in the understanding evaluation (answers are 6-25 tokens)."""

    und_prompt_template: str = DEFAULT_UND_TEMPLATE
    """The understanding user turn SFT trains on; use the same `rollout.und_prompt_template`
    when training with RL (the default is RolloutConfig's)."""

    system_prompt: str | None = None
    """System prompt SFT trains on; null keeps Janus-Pro's default, like `rollout.system_prompt`."""

    @model_validator(mode="after")
    def _check_shapes(self) -> PretrainConfig:
        patch = self.image_size // self.latent_side
        if patch * self.latent_side != self.image_size or patch & (patch - 1):
            raise ValueError(
                f"image_size {self.image_size} / latent_side {self.latent_side} must be a power "
                "of 2 (e.g. 32 / 8 = 4); change latent_side"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads {self.num_heads} does not divide hidden_size {self.hidden_size}"
            )
        if "{question}" not in self.und_prompt_template:
            raise ValueError("und_prompt_template has no `{question}` placeholder; add it")
        return self

    @classmethod
    def quick(cls, **overrides: Any) -> PretrainConfig:
        """The `--quick` settings: the same code path in well under a minute, low quality."""
        values: dict[str, Any] = {
            "codebook_size": 64,
            "vq_steps": 30,
            "vq_batch_size": 8,
            "vocab_size": 400,
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "vision_layers": 1,
            "vision_hidden_size": 32,
            "n_und_train": 60,
            "n_gen_train": 60,
            "sft_steps": 8,
            "sft_batch_size": 4,
            "sft_warmup_steps": 2,
            "n_eval_und": 10,
            "n_eval_gen": 6,
            "n_eval_vq": 10,
        }
        return cls(**{**values, **overrides})

    @classmethod
    def from_overrides(
        cls, overrides: Sequence[str] = (), *, quick: bool = False, **fixed: Any
    ) -> PretrainConfig:
        """The defaults (`quick()`'s with `quick`) and `fixed`, then "key=value" items in the
        `--set` syntax (keys of this section, YAML values: `sft_steps=4000`). A bad key or value
        raises `ConfigError` naming it and the fix."""
        from pydantic import ValidationError

        from pairuni.config import ConfigError, format_validation_error, parse_override

        base = cls.quick(**fixed) if quick else cls(**fixed)
        raw = base.model_dump(mode="json")
        keys: set[str] = set()
        for item in overrides:
            key, value = parse_override(item)
            if "." in key:
                raise ConfigError(
                    f"--set {item!r}: the base model's keys have no sections (e.g. "
                    "sft_steps=4000); the fields are PretrainConfig's (docs/shapes.md)"
                )
            raw[key] = value
            keys.add(key)
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, cls, "the defaults", keys)) from None

    def builder(self) -> Any:
        """What builds the model into a work folder: `(work, config) -> report`."""
        return _build

    def settings_hash(self) -> str:
        """A short hash of every setting and the pipeline version (the cache key)."""
        payload = json.dumps([FORMAT_VERSION, self.model_dump(mode="json")], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- entry point


def cached_report(out_dir: str | Path, config: PretrainConfig) -> dict[str, Any] | None:
    """The report of a finished model in `out_dir` built with these settings, else None."""
    report_path = Path(out_dir) / REPORT_FILE
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if report.get("settings_hash") != config.settings_hash() or not report.get("complete"):
        return None
    return report


def pretrain(
    out_dir: str | Path, config: PretrainConfig | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Build the base model into `out_dir` (or return the cached one); returns the report.

    The report holds the settings and their hash, wall time per phase, the VQ recovery rate,
    the SFT losses and the evaluation scores; it is also written to `out_dir/pretrain.json`.
    """

    config = config or PretrainConfig()
    out = Path(out_dir)
    if not force and (report := cached_report(out, config)) is not None:
        report["cached"] = True
        return report
    _check_replaceable(out)
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    with _deterministic():
        report = config.builder()(partial, config)
    if out.exists():
        shutil.rmtree(out)
    for leftover in ("vq_phase.pt",):
        (partial / leftover).unlink(missing_ok=True)
    partial.rename(out)
    report["cached"] = False
    return report


def _check_replaceable(out: Path) -> None:
    """Refuse to overwrite a folder that is neither empty nor an earlier base model."""
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / REPORT_FILE).is_file())
    ):
        raise FileExistsError(
            f"{out} exists and does not hold a base model (no {REPORT_FILE}); the build would "
            "replace it. Pass an empty or new directory as --out"
        )


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    import torch

    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


class _Timer:
    """Wall time per phase, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 2)


def _build(work: Path, config: PretrainConfig) -> dict[str, Any]:
    from tqdm import tqdm

    from pairuni.shapes import pretrain_lm as lm
    from pairuni.shapes import pretrain_vq as vqt

    timer = _Timer()
    report = new_report(config)
    with timer.phase("data"):
        samples = ShapesSamples.render(config)
    with timer.phase("model"):
        tokenizer = lm.build_shapes_tokenizer(
            samples.corpus(config.answer_style), config.vocab_size, _boilerplate(config)
        )
        model = lm.build_model(_architecture(config), tokenizer, config.seed)
        processor = lm.build_processor(tokenizer, config.image_size, config.latent_side**2)
    vq = model.model.vqmodel
    with timer.phase("vq"):
        report["vq"] = _vq_phase(work, config, vq, samples, vqt, tqdm)
    policy = _policy(model, processor, config)
    with timer.phase("sft_data"):
        data = _sft_data(policy, samples, vq, config)
    with timer.phase("sft"):
        report["sft"] = _sft_phase(model, data, policy.ids.pad, config, lm, tqdm)
    with timer.phase("eval"):
        report["eval"] = evaluate(policy, samples, config)
    policy.save(work)
    return finish_report(work, report, timer)


def new_report(config: PretrainConfig, **extra: Any) -> dict[str, Any]:
    """The report a build fills in: the settings and their hash (the cache key)."""
    return {
        **extra,
        "settings": config.model_dump(mode="json"),
        "settings_hash": config.settings_hash(),
        "complete": False,
    }


def finish_report(work: Path, report: dict[str, Any], timer: _Timer) -> dict[str, Any]:
    """Mark the report complete with its timings and write it beside the model."""
    import torch

    report["seconds"] = {**timer.seconds, "total": timer.total()}
    report["threads"] = torch.get_num_threads()
    report["complete"] = True
    (work / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _boilerplate(config: PretrainConfig) -> list[str]:
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    from pairuni.shapes.pretrain_lm import boilerplate_tokens

    system = DEFAULT_SYSTEM_PROMPT if config.system_prompt is None else config.system_prompt
    return boilerplate_tokens(config.und_prompt_template, system)


def _architecture(config: PretrainConfig) -> Any:
    from pairuni.shapes.pretrain_lm import Architecture

    return Architecture(
        image_size=config.image_size,
        latent_side=config.latent_side,
        codebook_size=config.codebook_size,
        codebook_dim=config.codebook_dim,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        vision_hidden_size=config.vision_hidden_size,
        vision_layers=config.vision_layers,
    )


def _policy(model: Any, processor: Any, config: PretrainConfig) -> Any:
    from pairuni.policy.config import ModelConfig, RolloutConfig
    from pairuni.policy.janus import JanusPolicy

    rollout = RolloutConfig(
        max_new_tokens=config.eval_max_new_tokens,
        und_prompt_template=config.und_prompt_template,
        system_prompt=config.system_prompt,
    )
    return JanusPolicy(model, processor, ModelConfig(device="cpu"), rollout)


# ----------------------------------------------------------------------------- data


class ShapesSamples:
    """Rendered training and held-out records of `config.data_seed`."""

    def __init__(
        self,
        und: list[dict[str, Any]],
        gen: list[dict[str, Any]],
        und_images: Any,
        gen_images: Any,
        n_und_train: int,
        n_gen_train: int,
    ) -> None:
        self.und, self.gen = und, gen
        self.und_images, self.gen_images = und_images, gen_images
        self.n_und_train, self.n_gen_train = n_und_train, n_gen_train

    @classmethod
    def render(cls, config: PretrainConfig) -> ShapesSamples:
        import numpy as np
        from tqdm import tqdm

        from pairuni.shapes.build import generation_record, understanding_record
        from pairuni.shapes.render import render_scene
        from pairuni.shapes.scene import Scene

        n_und = config.n_und_train + config.n_eval_und
        n_gen = config.n_gen_train + max(config.n_eval_gen, config.n_eval_vq)
        und = [understanding_record(i, config.data_seed) for i in range(n_und)]
        gen = [generation_record(i, config.data_seed) for i in range(n_gen)]
        images = [
            render_scene(Scene.from_dict(r["scene"]), config.image_size)
            for r in tqdm(und + gen, desc="render", unit="img", leave=False)
        ]
        return cls(
            und,
            gen,
            np.stack(images[:n_und]),
            np.stack(images[n_und:]),
            config.n_und_train,
            config.n_gen_train,
        )

    def train_images(self) -> Any:
        """(M, H, W, 3) uint8: the images of every training sample (VQ training set)."""
        import numpy as np

        return np.concatenate(
            [self.und_images[: self.n_und_train], self.gen_images[: self.n_gen_train]]
        )

    def heldout_gen(self, n: int) -> tuple[list[dict[str, Any]], Any]:
        start = self.n_gen_train
        return self.gen[start : start + n], self.gen_images[start : start + n]

    def heldout_und(self) -> tuple[list[dict[str, Any]], Any]:
        return self.und[self.n_und_train :], self.und_images[self.n_und_train :]

    def corpus(self, answer_style: str = "letter") -> Iterator[str]:
        """Every text the model reads or writes (the tokenizer's training corpus)."""
        from pairuni.shapes.pretrain_lm import completion_text
        from pairuni.shapes.scene import Scene

        letters = "ABCD"
        for r in self.und:
            yield r["question"]
            for letter, option in zip(letters, r["options"], strict=False):
                yield f"{letter}. {option}"
            yield completion_text(
                r["options"], r["answer"], Scene.from_dict(r["scene"]), answer_style
            )
        for r in self.gen:
            yield r["prompt"]


def _vq_phase(
    work: Path, config: PretrainConfig, vq: Any, samples: ShapesSamples, vqt: Any, tqdm: Any
) -> dict[str, Any]:
    """Train the VQ (or reload the finished phase of an interrupted run) and measure it."""
    losses = train_or_reload_vq(work, config, vq, vqt.to_model_pixels(samples.train_images()), tqdm)
    vq.eval()
    records, images = samples.heldout_gen(config.n_eval_vq)
    return vq_report(vqt.reconstruct(vq, vqt.to_model_pixels(images)), images, records, losses)


def train_or_reload_vq(
    work: Path,
    config: PretrainConfig,
    vq: Any,
    pixels: Any,
    tqdm: Any,
    finish: Callable[[Any], None] | None = None,
) -> list[float]:
    """Train `vq` on `pixels` with `pretrain_vq.train_vq` and keep the result in
    `work/vq_phase.pt` (`finish(vq)` runs before it is kept), or reload it from there when an
    interrupted build of the same settings left it; returns the reconstruction losses."""
    import torch

    from pairuni.shapes import pretrain_vq as vqt

    saved = work / "vq_phase.pt"
    state = torch.load(saved, weights_only=True) if saved.is_file() else None
    if state is not None and state.get("hash") == config.settings_hash():
        vq.load_state_dict(state["weights"])
        return state["losses"]
    settings = vqt.VQTrainSettings(
        steps=config.vq_steps,
        batch_size=config.vq_batch_size,
        learning_rate=config.vq_learning_rate,
        foreground_weight=config.vq_foreground_weight,
    )
    generator = torch.Generator().manual_seed(config.seed)
    with tqdm(total=settings.steps, desc="VQ", unit="step") as bar:

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(recon=f"{loss:.4f}")

        losses = vqt.train_vq(vq, pixels, settings, generator, on_step)
    if finish is not None:
        finish(vq)
    state = {"hash": config.settings_hash(), "weights": vq.state_dict(), "losses": losses}
    torch.save(state, saved)
    return losses


def vq_report(
    reconstructions: Any, images: Any, records: Sequence[dict[str, Any]], losses: Sequence[float]
) -> dict[str, Any]:
    """The VQ's share of held-out scenes the detector reads back from their reconstructions
    (and from the originals, the detector's own ceiling) and its loss curve."""
    from pairuni.shapes import pretrain_vq as vqt
    from pairuni.shapes.scene import Scene

    scenes = [Scene.from_dict(r["scene"]) for r in records]
    return {
        "recovery_rate_heldout": vqt.recovery_rate(reconstructions, scenes),
        "recovery_rate_originals": vqt.recovery_rate(images, scenes),
        "n_heldout": len(records),
        "recon_loss_first_10": _mean(losses[:10]),
        "recon_loss_last_10": _mean(losses[-10:]),
        "recon_loss_every_10": [round(x, 5) for x in losses[::10]],
    }


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / max(1, len(values)), 5)


def _sft_data(policy: Any, samples: ShapesSamples, vq: Any, config: PretrainConfig) -> Any:
    """Tokenise the training samples with the policy's own prompt builders; encode image codes."""
    import torch
    from PIL import Image

    from pairuni.shapes import pretrain_lm as lm
    from pairuni.shapes import pretrain_vq as vqt

    und = samples.und[: samples.n_und_train]
    und_images = samples.und_images[: samples.n_und_train]
    prompts, pixels = [], []
    for start in range(0, len(und), 256):
        chunk = und[start : start + 256]
        batch = policy.encode_understanding(
            [Image.fromarray(im) for im in und_images[start : start + 256]],
            [r["question"] for r in chunk],
            [r["options"] for r in chunk],
        )
        prompts += lm.unpad(batch["input_ids"], batch["attention_mask"])
        pixels.append(batch["pixel_values"])
    tok = policy.processor.tokenizer
    completions = [
        torch.tensor(
            tok(
                lm.completion_text(
                    r["options"], r["answer"], _think_scene(r, config), config.answer_style
                )
                + tok.eos_token,
                add_special_tokens=False,
            )["input_ids"]
        )
        for r in und
    ]
    gen = samples.gen[: samples.n_gen_train]
    batch = policy.encode_generation([r["prompt"] for r in gen])
    uncond = policy.unconditional_ids(batch["input_ids"])
    codes = vqt.encode_codes(vq, vqt.to_model_pixels(samples.gen_images[: samples.n_gen_train]))
    return lm.SFTData(
        und_prompts=prompts,
        und_pixels=torch.cat(pixels).float(),
        und_completions=completions,
        gen_prompts=lm.unpad(batch["input_ids"], batch["attention_mask"]),
        gen_uncond=lm.unpad(uncond, batch["attention_mask"]),
        gen_codes=codes,
    )


def _think_scene(record: dict[str, Any], config: PretrainConfig) -> Any:
    from pairuni.shapes.scene import Scene

    return Scene.from_dict(record["scene"]) if config.think == "scene" else None


def _sft_phase(
    model: Any, data: Any, pad_id: int, config: PretrainConfig, lm: Any, tqdm: Any
) -> dict[str, Any]:
    import torch

    settings = sft_settings(config)
    generator = torch.Generator().manual_seed(config.seed + 1)
    with tqdm(total=settings.steps, desc="SFT", unit="step") as bar:

        def on_step(step: int, und: float, gen: float) -> None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(und=f"{und:.3f}", gen=f"{gen:.3f}")

        history = lm.train_sft(model, data, settings, pad_id, generator, on_step)
    return {
        **sft_loss_summary(history),
        "und_prompt_tokens_mean": _mean([len(p) for p in data.und_prompts]),
        "gen_prompt_tokens_mean": _mean([len(p) for p in data.gen_prompts]),
    }


def sft_settings(config: PretrainConfig) -> Any:
    """`pretrain_lm.SFTSettings` from the config (both base models' SFT reads them)."""
    from pairuni.shapes.pretrain_lm import SFTSettings

    return SFTSettings(
        steps=config.sft_steps,
        batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate,
        warmup_steps=config.sft_warmup_steps,
        cfg_dropout=config.cfg_dropout,
        gen_weight=config.gen_loss_weight,
    )


def sft_loss_summary(history: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Mean understanding and generation loss of the first and last 10 SFT steps."""
    und_losses = [u for u, _ in history]
    gen_losses = [g for _, g in history]
    return {
        "und_loss_first_10": _mean(und_losses[:10]),
        "und_loss_last_10": _mean(und_losses[-10:]),
        "gen_loss_first_10": _mean(gen_losses[:10]),
        "gen_loss_last_10": _mean(gen_losses[-10:]),
    }


# ----------------------------------------------------------------------------- evaluation


def evaluate(policy: Any, samples: ShapesSamples, config: PretrainConfig) -> dict[str, Any]:
    """MC accuracy (greedy and temperature 1) and GenEval-style score (CFG 5, temperature 1) on
    the held-out samples, overall and per category, through JanusPolicy's rollouts."""
    und_records, und_images = samples.heldout_und()
    gen_records, _ = samples.heldout_gen(config.n_eval_gen)
    return {
        "understanding_greedy": evaluate_understanding(
            policy, und_records, und_images, greedy=True, seed=config.seed
        ),
        "understanding_t1": evaluate_understanding(
            policy, und_records, und_images, greedy=False, seed=config.seed
        ),
        "generation_cfg": evaluate_generation(policy, gen_records, seed=config.seed),
    }


def evaluate_understanding(
    policy: Any,
    records: Sequence[dict[str, Any]],
    images: Any,
    *,
    greedy: bool,
    seed: int,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Share of correct answers (the `mc_accuracy` reward) and of well-formed answers (the
    `format` reward), overall and per question category."""
    import torch
    from PIL import Image

    from pairuni.rewards.understanding import format_reward, mc_accuracy

    generator = torch.Generator().manual_seed(seed)
    texts: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        rollout = policy.rollout_text(
            [Image.fromarray(im) for im in images[start : start + batch_size]],
            [r["question"] for r in chunk],
            options=[r["options"] for r in chunk],
            greedy=greedy,
            generator=generator,
        )
        texts += rollout.texts
    prompts = [r["question"] for r in records]
    correct = mc_accuracy(
        prompts,
        texts,
        und_options=[r["options"] for r in records],
        und_answer=[r["answer"] for r in records],
    )
    formatted = format_reward(prompts, texts)
    return {
        "accuracy": _mean([float(c or 0.0) for c in correct]),
        "format": _mean([float(f or 0.0) for f in formatted]),
        "per_category": _per_category([r["category"] for r in records], correct),
        "examples": texts[:5],
        # each question's score, in record order: what the ablation's bootstrap resamples
        "items": [float(c or 0.0) for c in correct],
    }


def evaluate_generation(
    policy: Any, records: Sequence[dict[str, Any]], *, seed: int, batch_size: int = 32
) -> dict[str, Any]:
    """One image per prompt at the policy's CFG scale; GenEval-style `overall` (mean of the
    tags' accuracies) and per-tag accuracy, as `geneval.summarize` reports them."""
    import numpy as np
    import torch

    from pairuni.shapes.geneval import score_image, summarize

    generator = torch.Generator().manual_seed(seed)
    verdicts = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        rollout = policy.rollout_image([r["prompt"] for r in chunk], generator=generator)
        for record, image in zip(chunk, rollout.images, strict=True):
            verdict = score_image(np.asarray(image.convert("RGB")), record["geneval"])
            verdicts.append((record["category"], verdict.correct))
    return {
        "cfg_scale": policy.rollout_config.cfg_scale,
        **summarize(verdicts),
        # each prompt's verdict and tag, in record order (the ablation's bootstrap)
        "items": [float(correct) for _, correct in verdicts],
        "item_tags": [tag for tag, _ in verdicts],
    }


def _per_category(categories: Sequence[str], scores: Sequence[float | None]) -> dict[str, float]:
    grouped: dict[str, list[float]] = defaultdict(list)
    for category, score in zip(categories, scores, strict=True):
        grouped[category].append(float(score or 0.0))
    return {name: _mean(values) for name, values in sorted(grouped.items())}
