"""Generating what a run is missing: answers to the understanding questions, images for the
prompts, batch by batch, appended as they come (a killed run resumes where it stopped).

Batches have a fixed composition (consecutive samples in loader order) and each batch samples
with its own generator, seeded from (seed, benchmark, id of the batch's first sample): a resumed
run writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from PIL import Image

from pairuni.data.io import JsonlAppender
from pairuni.data.schema import Record
from pairuni.eval.benchmarks import UNDERSTANDING, Benchmark
from pairuni.eval.config import EvalConfig
from pairuni.eval.errors import EvalSetupError
from pairuni.eval.layout import open_image
from pairuni.eval.outputs import (
    GeneratedImages,
    Prediction,
    RunPaths,
    save_png_atomic,
    write_text_atomic,
)
from pairuni.eval.prompts import GenerationItem, UnderstandingItem, compose_images

if TYPE_CHECKING:
    import torch

    from pairuni.policy.base import UnifiedPolicy
    from pairuni.policy.config import ModelConfig, RolloutConfig


def rollout_config_for(cfg: EvalConfig) -> RolloutConfig:
    """The sampling settings of an evaluation: `eval.rollout`, with the training template as
    the user turn under `answer_format: rl`, and VLMEvalKit's answer length under its protocol
    (unless `eval.rollout.max_new_tokens` was given)."""
    from pairuni.eval.config import VLMEVALKIT_MAX_NEW_TOKENS

    updates: dict[str, Any] = {}
    if cfg.answer_format == "rl":
        updates["und_prompt_template"] = cfg.rl_prompt_template
    if cfg.protocol == "vlmevalkit" and "max_new_tokens" not in cfg.rollout.model_fields_set:
        updates["max_new_tokens"] = VLMEVALKIT_MAX_NEW_TOKENS
    return cfg.rollout.model_copy(update=updates) if updates else cfg.rollout


@contextmanager
def eval_sampling(policy: Any, cfg: EvalConfig) -> Iterator[None]:
    """A policy handed to the run (a training policy, a notebook's) samples with the run's
    settings (`eval.rollout`, recorded in run.json) for the run's duration, then gets its own
    back."""
    if policy is None or not hasattr(policy, "rollout_config"):
        yield
        return
    saved = policy.rollout_config
    policy.rollout_config = rollout_config_for(cfg)
    try:
        yield
    finally:
        policy.rollout_config = saved


def load_policy(model_path: str, model_config: ModelConfig, cfg: EvalConfig) -> UnifiedPolicy:
    """The policy of a checkpoint directory (or LoRA adapter folder), with its backend
    (`model.backend`), set up for evaluation."""
    from pairuni.policy.registry import load_policy as load

    return load(model_path, model_config, rollout_config_for(cfg))


class LazyPolicy:
    """Loads the policy on first use, so that a finished run (or --rescore) never loads it."""

    def __init__(self, factory: Callable[[], UnifiedPolicy]) -> None:
        self._factory = factory
        self._policy: UnifiedPolicy | None = None

    def get(self) -> UnifiedPolicy:
        if self._policy is None:
            self._policy = self._factory()
        return self._policy


def batch_seed(seed: int, benchmark: str, first_id: str) -> int:
    """A 63-bit seed for the batch that starts with sample `first_id` (stable across runs,
    machines and Python versions, unlike `hash`)."""
    digest = hashlib.sha256(f"{seed}\x00{benchmark}\x00{first_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def make_generator(seed: int, policy: Any) -> torch.Generator:
    """A generator on the policy's device (sampling draws there)."""
    import torch

    device = getattr(policy, "device", "cpu")
    return torch.Generator(device=device).manual_seed(seed)


def fixed_batches(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive batches of `size` items from the first one: the same batches on every run."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class BatchBudget:
    """Counts generation batches; with a limit, the run stops after that many (a test hook that
    stands in for a kill)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.used >= self.limit

    def spend(self) -> None:
        self.used += 1


MakeRecords = Callable[[list[Any], "UnifiedPolicy", set[str]], list[Record]]
"""(batch of items, policy, ids wanted) -> one record per wanted id, in batch order."""


def generate_missing(
    bench: Benchmark,
    paths: RunPaths,
    policy: LazyPolicy,
    budget: BatchBudget,
    *,
    record_type: type[Record],
    batch_size: int,
    make_records: MakeRecords,
) -> bool:
    """Generate every sample not yet in predictions.jsonl, batch by batch (the fixed batches of
    the whole benchmark; a batch with any sample missing is generated whole, and only its missing
    records are written). False when the budget stopped the run."""
    from tqdm import tqdm

    verb = "answering" if bench.name in UNDERSTANDING else "drawing"
    with JsonlAppender(paths.predictions(bench.name), record_type) as out:
        done = sum(item.id in out.done_ids for item in bench.items)
        with tqdm(total=len(bench.items), initial=done, desc=f"{bench.name}: {verb}") as bar:
            for batch in fixed_batches(bench.items, batch_size):
                wanted = {item.id for item in batch if item.id not in out.done_ids}
                if not wanted:
                    continue
                if budget.exhausted:
                    return False
                for record in make_records(batch, policy.get(), wanted):
                    out.append(record)
                    bar.update(1)
                budget.spend()
    return True


def generate(
    bench: Benchmark, paths: RunPaths, policy: LazyPolicy, cfg: EvalConfig, budget: BatchBudget
) -> bool:
    """Generate what the benchmark is missing. False when the budget stopped the run."""
    if bench.name in UNDERSTANDING:

        def answers(batch: list[Any], model: UnifiedPolicy, wanted: set[str]) -> list[Record]:
            texts = answer_batch(bench.name, batch, model, cfg)
            return [
                Prediction(id=item.id, response=text)
                for item, text in zip(batch, texts, strict=True)
                if item.id in wanted
            ]

        return generate_missing(
            bench, paths, policy, budget,
            record_type=Prediction, batch_size=cfg.und_batch_size, make_records=answers,
        )  # fmt: skip
    per_prompt = images_per_prompt(bench.name, cfg)
    metadata = {p.id: p.metadata() for p in bench.samples} if bench.name == "geneval" else {}

    def drawings(batch: list[Any], model: UnifiedPolicy, wanted: set[str]) -> list[Record]:
        images = draw_batch(bench.name, batch, per_prompt, model, cfg)
        return [
            save_prompt_images(
                bench.name, item, images[i * per_prompt : (i + 1) * per_prompt], paths,
                metadata.get(item.id),
            )
            for i, item in enumerate(batch)
            if item.id in wanted
        ]  # fmt: skip

    return generate_missing(
        bench, paths, policy, budget,
        record_type=GeneratedImages, batch_size=cfg.gen_batch_size, make_records=drawings,
    )  # fmt: skip


def answer_batch(
    benchmark: str, batch: Sequence[UnderstandingItem], policy: UnifiedPolicy, cfg: EvalConfig
) -> list[str]:
    """One batch of answers, sampled with the batch's own generator."""
    images = [compose_images([open_image(ref) for ref in item.images]) for item in batch]
    generator = make_generator(batch_seed(cfg.seed, benchmark, batch[0].id), policy)
    rollout = policy.rollout_text(
        images,
        [item.question for item in batch],
        1,
        greedy=cfg.greedy_understanding,
        generator=generator,
    )
    return list(rollout.texts)


def images_per_prompt(benchmark: str, cfg: EvalConfig) -> int:
    return cfg.geneval_images_per_prompt if benchmark == "geneval" else 1


def draw_batch(
    benchmark: str,
    batch: Sequence[GenerationItem],
    per_prompt: int,
    policy: UnifiedPolicy,
    cfg: EvalConfig,
) -> list[Image.Image]:
    """`per_prompt` images for each prompt of the batch, grouped by prompt (B = n x per_prompt)."""
    generator = make_generator(batch_seed(cfg.seed, benchmark, batch[0].id), policy)
    rollout = policy.rollout_image(
        [item.prompt for item in batch], per_prompt, generator=generator, decode=True
    )
    if len(rollout.images) != len(batch) * per_prompt:
        raise RuntimeError(
            f"the policy returned {len(rollout.images)} images for {len(batch)} prompts x "
            f"{per_prompt}; it must decode every image (decode=True)"
        )
    return list(rollout.images)


def save_prompt_images(
    benchmark: str,
    item: GenerationItem,
    images: Sequence[Image.Image],
    paths: RunPaths,
    metadata: Mapping[str, Any] | None,
) -> GeneratedImages:
    """Write one prompt's PNGs (and GenEval's metadata.jsonl beside them) before its record."""
    folder = paths.folder(benchmark)
    relative = paths.image_paths(benchmark, item.id, len(images))
    for image, rel in zip(images, relative, strict=True):
        save_png_atomic(image, folder / rel)
    if metadata is not None:
        meta_path = folder / "images" / item.id / "metadata.jsonl"
        write_text_atomic(meta_path, json.dumps(metadata) + "\n")
    return GeneratedImages(id=item.id, prompt=item.prompt, images=relative)


def policy_factory(
    policy: UnifiedPolicy | None, model_path: str | None, model_config: ModelConfig, cfg: EvalConfig
) -> Callable[[], UnifiedPolicy]:
    if policy is not None:
        return lambda: policy

    def load() -> UnifiedPolicy:
        if model_path is None:
            raise EvalSetupError("no checkpoint given: pass --model DIR (or set model.path)")
        return load_policy(model_path, model_config, cfg)

    return load


def device_name(model_config: ModelConfig) -> str:
    if model_config.device != "auto":
        return model_config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
