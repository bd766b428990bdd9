"""The `pairuni eval` runner: generate with a policy, cache the outputs, score, write the tables.

A run writes into one output directory:

    OUT/run.json                         the settings the outputs were generated with
    OUT/<benchmark>/predictions.jsonl    understanding: {"id", "response"} per question;
                                         generation: {"id", "prompt", "images"} per prompt
    OUT/geneval/images/<prompt id>/      metadata.jsonl + samples/<k>.png (the official layout)
    OUT/wise/images/<prompt id>.png
    OUT/<benchmark>/judgements.jsonl     GenEval / WISE verdicts per image (resumable)
    OUT/<benchmark>/details.json         per-sample verdicts of the scorer
    OUT/results.json, OUT/results.md     every metric; the paper's tables and the settings

Outputs are append-only and flushed line by line, so a killed run resumes where it stopped.
Batches have a fixed composition (consecutive samples in loader order) and each batch samples with
its own generator, seeded from (seed, benchmark, id of the batch's first sample): a resumed run
writes exactly what an uninterrupted one would. `run.json` guards this: resuming with settings
that change the outputs is refused. `rescore=True` re-runs only the scoring, without the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from pairuni.data.io import JsonlAppender, atomic_output
from pairuni.data.schema import Record
from pairuni.eval.config import BENCHMARK_NAMES, EvalConfig
from pairuni.eval.layout import BenchmarkNotFoundError, ImageRef, load_predictions, open_image
from pairuni.eval.results import BenchmarkResult, Column

if TYPE_CHECKING:
    import torch

    from pairuni.eval.detectors import ColorClassifier, Detector
    from pairuni.eval.geneval import GenEvalPrompt
    from pairuni.eval.wise import WiseJudge, WisePrompt
    from pairuni.policy.base import UnifiedPolicy
    from pairuni.policy.config import ModelConfig, RolloutConfig

UNDERSTANDING = ("mmmu", "mmstar", "mme", "pope")
FAMILIES = (
    ("understanding", "Understanding (paper Table 1)", UNDERSTANDING),
    ("geneval", "GenEval (paper Table 3)", ("geneval",)),
    ("wise", "WISE (paper Table 2)", ("wise",)),
)
RESULTS_FORMAT = 1

# VLMEvalKit's prompts for Janus (vlmeval/vlm/janus.py), the harness behind most published
# Janus-Pro understanding numbers; MMMU keeps its official prompt (`MMMUSample.prompt`).
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
POPE_BUILT_IN_INSTRUCTION = " Please answer yes or no."

# Settings that change what the model writes: a run may only resume with the same values.
GENERATION_KEYS = {
    "model": "--model / model.path",
    "dtype": "model.dtype",
    "seed": "eval.seed",
    "und_batch_size": "eval.und_batch_size",
    "gen_batch_size": "eval.gen_batch_size",
    "greedy_understanding": "eval.greedy_understanding",
    "max_new_tokens": "eval.max_new_tokens",
    "text_temperature": "eval.text_temperature",
    "system_prompt": "eval.system_prompt",
    "cfg_scale": "eval.cfg_scale",
    "image_temperature": "eval.image_temperature",
    "geneval_images_per_prompt": "eval.geneval_images_per_prompt",
    "limit": "eval.limit / --limit",
}


class EvalSetupError(ValueError):
    """A run that cannot start or go on; the message names the option or config key to fix."""


# --------------------------------------------------------------------------- benchmark names


def parse_benchmarks(names: str | Sequence[str]) -> list[str]:
    """`"mmmu,mme"` or `["mmmu", "mme"]` -> the names in the given order, without repeats.

    An unknown name is an error that lists the valid ones.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    cleaned = [n.strip().lower() for n in items if n.strip()]
    unknown = [n for n in cleaned if n not in BENCHMARK_NAMES]
    if unknown or not cleaned:
        what = f"unknown benchmark {', '.join(map(repr, unknown))}" if unknown else "no benchmark"
        raise EvalSetupError(f"{what}; valid benchmarks: {', '.join(BENCHMARK_NAMES)}")
    return list(dict.fromkeys(cleaned))


# --------------------------------------------------------------------------- work items


@dataclasses.dataclass(frozen=True)
class UnderstandingItem:
    """One question to answer: its id, its image(s) and the full prompt text."""

    id: str
    images: tuple[ImageRef, ...]
    question: str


@dataclasses.dataclass(frozen=True)
class GenerationItem:
    """One prompt to draw."""

    id: str
    prompt: str


def mmmu_item(sample: Any) -> UnderstandingItem:
    return UnderstandingItem(sample.id, tuple(sample.images), sample.prompt())


def mmstar_question(question: str, options: Mapping[str, str]) -> str:
    """VLMEvalKit's multiple-choice prompt: the stem, `A. text` lines, the letter instruction.

    MMStar embeds its options in the question (`Options: A: ..., B: ...`); they are parsed out and
    listed one per line, as VLMEvalKit does from its option columns.
    """
    if not options:
        return f"{question.strip()}\n{MC_INSTRUCTION}"
    stem = question.rpartition("Options:")[0].strip()
    lines = "".join(f"{letter}. {text}\n" for letter, text in sorted(options.items()))
    return f"{stem}\n{lines}\n{MC_INSTRUCTION}"


def mmstar_item(sample: Any) -> UnderstandingItem:
    return UnderstandingItem(
        sample.id, (sample.image,), mmstar_question(sample.question, sample.options)
    )


def mme_item(sample: Any) -> UnderstandingItem:
    # MME's questions end with "Please answer yes or no."; VLMEvalKit keeps it for MME.
    return UnderstandingItem(
        sample.id, (sample.image,), f"{sample.question}\n{SHORT_ANSWER_INSTRUCTION}"
    )


def pope_item(sample: Any) -> UnderstandingItem:
    question = sample.question.replace(POPE_BUILT_IN_INSTRUCTION, "")
    return UnderstandingItem(sample.id, (sample.image,), f"{question}\n{SHORT_ANSWER_INSTRUCTION}")


def compose_images(images: Sequence[Image.Image]) -> Image.Image:
    """One image for a question with several (MMMU): side by side at the tallest one's height,
    on white. The policy takes one image per question; the `<image k>` tags stay in the text."""
    if len(images) == 1:
        return images[0]
    height = max(im.height for im in images)
    scaled = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height), (255, 255, 255))
    left = 0
    for im in scaled:
        canvas.paste(im.convert("RGB"), (left, 0))
        left += im.width
    return canvas


# --------------------------------------------------------------------------- loading


@dataclasses.dataclass
class Benchmark:
    """A benchmark's samples (as its loader returns them, cut to `limit`) and the work items."""

    name: str
    samples: list[Any]
    items: list[UnderstandingItem] | list[GenerationItem]


def load_benchmark(name: str, cfg: EvalConfig) -> Benchmark:
    """Load one benchmark from its directory; loader errors propagate unchanged."""
    root = cfg.benchmark_dir(name)
    samples: list[Any]
    if name == "mmmu":
        from pairuni.eval.mmmu import load_mmmu

        samples = list(load_mmmu(root))
        make: Callable[[Any], Any] = mmmu_item
    elif name == "mmstar":
        from pairuni.eval.mmstar import load_mmstar

        samples, make = list(load_mmstar(root)), mmstar_item
    elif name == "mme":
        from pairuni.eval.mme import load_mme

        samples, make = list(load_mme(root)), mme_item
    elif name == "pope":
        from pairuni.eval.pope import load_pope

        samples, make = list(load_pope(root)), pope_item
    elif name == "geneval":
        from pairuni.eval.geneval import load_geneval

        samples = load_geneval(root)
        make = lambda p: GenerationItem(p.id, p.prompt)  # noqa: E731
    elif name == "wise":
        from pairuni.eval.wise import load_wise

        samples = load_wise(root)
        make = lambda p: GenerationItem(p.id, p.prompt)  # noqa: E731
    else:
        raise EvalSetupError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARK_NAMES)}")
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    return Benchmark(name, samples, [make(s) for s in samples])


def load_benchmarks(names: Sequence[str], cfg: EvalConfig) -> list[Benchmark]:
    """Every benchmark, or all their loader errors at once: one error is re-raised as it is, several
    are joined into one `EvalSetupError` (each message unchanged)."""
    loaded, errors = [], []
    for name in names:
        try:
            loaded.append(load_benchmark(name, cfg))
        except (BenchmarkNotFoundError, ValueError) as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise EvalSetupError("\n".join(str(e) for e in errors))
    return loaded


# --------------------------------------------------------------------------- output layout


class Prediction(Record):
    """One line of an understanding benchmark's predictions.jsonl."""

    id: str
    response: str


class GeneratedImages(Record):
    """One line of a generation benchmark's predictions.jsonl: the images of one prompt, as paths
    relative to the benchmark's output folder."""

    id: str
    prompt: str
    images: list[str]


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where everything of a run lives."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    def folder(self, benchmark: str) -> Path:
        return self.root / benchmark

    def predictions(self, benchmark: str) -> Path:
        return self.folder(benchmark) / "predictions.jsonl"

    def judgements(self, benchmark: str) -> Path:
        return self.folder(benchmark) / "judgements.jsonl"

    def details(self, benchmark: str) -> Path:
        return self.folder(benchmark) / "details.json"

    def image_paths(self, benchmark: str, prompt_id: str, count: int) -> list[str]:
        """Relative paths of one prompt's images: GenEval's official folder layout
        (`images/<id>/samples/<k:04d>.png`, read by its evaluate_images.py), WISE's one file."""
        if benchmark == "geneval":
            return [f"images/{prompt_id}/samples/{k:04d}.png" for k in range(count)]
        return [f"images/{prompt_id}.png"]


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def save_png_atomic(image: Image.Image, path: Path) -> None:
    with atomic_output(path) as temp:
        image.save(temp, format="PNG")


# --------------------------------------------------------------------------- settings


def source_commit() -> str | None:
    """The git commit of the pairuni source tree (`+dirty` with uncommitted changes to tracked
    files), or None when pairuni is not run from a git checkout."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if status else head


def generation_settings(cfg: EvalConfig, model_path: str | None, dtype: str) -> dict[str, Any]:
    """The settings that determine the generated outputs (checked on resume)."""
    return {
        "model": str(Path(model_path).expanduser().resolve()) if model_path else None,
        "dtype": dtype,
        "seed": cfg.seed,
        "und_batch_size": cfg.und_batch_size,
        "gen_batch_size": cfg.gen_batch_size,
        "greedy_understanding": cfg.greedy_understanding,
        "max_new_tokens": cfg.max_new_tokens,
        "text_temperature": cfg.text_temperature,
        "system_prompt": cfg.system_prompt,
        "cfg_scale": cfg.cfg_scale,
        "image_temperature": cfg.image_temperature,
        "geneval_images_per_prompt": cfg.geneval_images_per_prompt,
        "limit": cfg.limit,
    }


def check_same_settings(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Refuse to add outputs made with other settings to a run (the files would mix them)."""
    differ = [k for k in GENERATION_KEYS if saved.get(k) != current.get(k)]
    if differ:
        lines = [
            f"  {GENERATION_KEYS[k]}: {saved.get(k)!r} in the run, {current.get(k)!r} now"
            for k in differ
        ]
        raise EvalSetupError(
            f"{path} was made with other settings, so its cached outputs would not match:\n"
            + "\n".join(lines)
            + "\npass the run's settings again, choose a new --out, or use --rescore to score the "
            "cached outputs without generating"
        )


def read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalSetupError(f"{path}: no {what} here") from None
    except json.JSONDecodeError as err:
        raise EvalSetupError(
            f"{path}: line {err.lineno}: not valid JSON ({err.msg}); restore or delete the file"
        ) from None


# --------------------------------------------------------------------------- the policy


def rollout_config_for(cfg: EvalConfig) -> RolloutConfig:
    """The sampling settings of an evaluation: the question text as it is (the benchmark prompt
    already says how to answer), the eval section's temperatures, CFG and answer length."""
    from pairuni.policy.config import RolloutConfig

    return RolloutConfig(
        max_new_tokens=cfg.max_new_tokens,
        text_temperature=cfg.text_temperature,
        top_p=1.0,
        und_prompt_template="{question}",
        system_prompt=cfg.system_prompt,
        cfg_scale=cfg.cfg_scale,
        image_temperature=cfg.image_temperature,
    )


def load_policy(model_path: str, model_config: ModelConfig, cfg: EvalConfig) -> UnifiedPolicy:
    """The Janus policy of a checkpoint directory, set up for evaluation."""
    from pairuni.policy.janus import JanusPolicy

    return JanusPolicy.load(model_path, model_config, rollout_config_for(cfg))


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


# --------------------------------------------------------------------------- generation


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


# --------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class Judges:
    """What scoring the generation benchmarks needs (built before any generation starts)."""

    detector: Detector | None = None
    color_classifier: ColorClassifier | None = None
    judge: WiseJudge | None = None


def score_understanding(bench: Benchmark, paths: RunPaths, cfg: EvalConfig) -> BenchmarkResult:
    predictions = load_predictions(paths.predictions(bench.name))
    if bench.name == "mmmu":
        from pairuni.eval.mmmu import score_mmmu

        return score_mmmu(bench.samples, predictions, seed=cfg.mmmu_seed)
    if bench.name == "mmstar":
        from pairuni.eval.mmstar import score_mmstar

        return score_mmstar(bench.samples, predictions)
    if bench.name == "mme":
        from pairuni.eval.mme import score_mme

        return score_mme(bench.samples, predictions)
    from pairuni.eval.pope import score_pope

    return score_pope(bench.samples, predictions)


def generated_files(bench: Benchmark, paths: RunPaths, cfg: EvalConfig) -> dict[str, list[Path]]:
    """prompt id -> its image files, for every prompt of the benchmark; an error names what is
    missing."""
    pred_path = paths.predictions(bench.name)
    if not pred_path.is_file():
        raise EvalSetupError(f"{pred_path}: no generated images yet; run without --rescore first")
    records = read_generated(pred_path)
    missing = [item.id for item in bench.items if item.id not in records]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise EvalSetupError(
            f"{pred_path}: {len(missing)} of {len(bench.items)} prompts have no images (e.g. "
            f"{shown}); run without --rescore to generate them"
        )
    expected = images_per_prompt(bench.name, cfg)
    files: dict[str, list[Path]] = {}
    for item in bench.items:
        paths_of = [paths.folder(bench.name) / rel for rel in records[item.id].images]
        absent = [p for p in paths_of if not p.is_file()]
        if absent or len(paths_of) != expected:
            problem = f"{absent[0]} is missing" if absent else f"has {len(paths_of)} images"
            raise EvalSetupError(
                f"{pred_path}: prompt {item.id}: {problem} (expected {expected}); delete its line "
                "from predictions.jsonl and run again to redraw it"
            )
        files[item.id] = paths_of
    return files


def read_generated(path: Path) -> dict[str, GeneratedImages]:
    """prompt id -> its record in a generation predictions.jsonl (a torn last line, left by a
    kill mid-write, is ignored; any other bad line is an error naming it)."""
    from pydantic import ValidationError

    records: dict[str, GeneratedImages] = {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines[:-1] if not text.endswith("\n") else lines, start=1):
        if not line.strip():
            continue
        try:
            record = GeneratedImages.model_validate_json(line)
        except ValidationError as err:
            raise EvalSetupError(
                f"{path}: line {number}: not a generated-images record ({err.errors()[0]['msg']}); "
                "delete the line and run again to redraw that prompt"
            ) from None
        records[record.id] = record
    return records


def score_geneval_run(
    bench: Benchmark, paths: RunPaths, cfg: EvalConfig, judges: Judges, rescore: bool
) -> BenchmarkResult:
    """Detect and judge every image (resuming judgements.jsonl; --rescore redoes them all)."""
    from pairuni.eval.geneval import evaluate_images, read_judgements, score_geneval

    files = generated_files(bench, paths, cfg)
    out = paths.judgements(bench.name)
    if rescore:
        out.unlink(missing_ok=True)
    done = {(j.prompt_id, index) for index, j in read_judgements(out)}
    prompts: list[GenEvalPrompt] = bench.samples
    todo = [p for p in prompts if any((p.id, k) not in done for k in range(len(files[p.id])))]
    if judges.detector is None:
        raise EvalSetupError("GenEval needs a detector (eval.detector)")
    chunk = 64  # prompts whose images are decoded at a time (bounds memory)
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        images = {p.id: [open_image(f) for f in files[p.id]] for p in part}
        evaluate_images(part, images, judges.detector, out, cfg.geneval, judges.color_classifier)
    verdicts = {(j.prompt_id, index): j for index, j in read_judgements(out)}
    wanted = [(p.id, k) for p in prompts for k in range(len(files[p.id]))]
    return score_geneval(verdicts[key] for key in wanted)


class PngFiles(Mapping[str, bytes]):
    """prompt id -> PNG bytes, read when asked for (so images never all sit in memory)."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)

    def __getitem__(self, key: str) -> bytes:
        return self.files[key].read_bytes()

    def __contains__(self, key: object) -> bool:
        return key in self.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def score_wise_run(
    bench: Benchmark, paths: RunPaths, cfg: EvalConfig, judges: Judges
) -> BenchmarkResult:
    """Ask the judge about every image not yet judged (failed ones again), then WiScore."""
    from pairuni.eval.wise import judge_images, score_wise

    files = generated_files(bench, paths, cfg)
    if judges.judge is None:
        raise EvalSetupError("WISE needs a judge (eval.judge)")
    prompts: list[WisePrompt] = bench.samples
    verdicts = judge_images(
        prompts,
        PngFiles({k: v[0] for k, v in files.items()}),
        judges.judge,
        paths.judgements(bench.name),
    )
    return score_wise(verdicts)


def score_benchmark(
    bench: Benchmark, paths: RunPaths, cfg: EvalConfig, judges: Judges, rescore: bool
) -> BenchmarkResult:
    if bench.name in UNDERSTANDING:
        return score_understanding(bench, paths, cfg)
    if bench.name == "geneval":
        return score_geneval_run(bench, paths, cfg, judges, rescore)
    return score_wise_run(bench, paths, cfg, judges)


# --------------------------------------------------------------------------- judges (preflight)


def needs_colors(prompts: Sequence[GenEvalPrompt]) -> bool:
    return any("color" in clause for p in prompts for clause in p.include)


def build_judges(
    benchmarks: Sequence[Benchmark],
    cfg: EvalConfig,
    device: str,
    detector: Detector | None = None,
    judge: WiseJudge | None = None,
) -> Judges:
    """The GenEval detector (and colour classifier) and the WISE judge the benchmarks need, or an
    error naming the missing config key. Runs before any generation."""
    names = {b.name for b in benchmarks}
    judges = Judges(detector=detector, judge=judge)
    if "geneval" in names and judges.detector is None:
        judges.detector = build_detector(cfg, device)
        geneval = next(b for b in benchmarks if b.name == "geneval")
        if cfg.detector == "owlv2" and needs_colors(geneval.samples):
            judges.color_classifier = build_color_classifier(cfg, device)
    if "wise" in names and judges.judge is None:
        judges.judge = build_judge(cfg)
    return judges


def build_detector(cfg: EvalConfig, device: str) -> Detector:
    if cfg.detector == "shapes":
        from pairuni.eval.shapes_adapter import ShapesDetector

        return ShapesDetector()
    if cfg.detector_dir is None:
        raise EvalSetupError(
            "GenEval needs an object detector but eval.detector_dir is not set: save OWLv2 (e.g. "
            "google/owlv2-base-patch16-ensemble) with save_pretrained and set "
            "eval.detector_dir=DIR, or set eval.detector=shapes for ShapesWorld images, or drop "
            "geneval from --benchmarks"
        )
    from pairuni.eval.detectors import Owlv2Detector

    return Owlv2Detector(cfg.detector_dir, device=device)


def build_color_classifier(cfg: EvalConfig, device: str) -> ColorClassifier:
    if cfg.color_classifier_dir is None:
        raise EvalSetupError(
            "GenEval has colour prompts and the OWLv2 detector does not name colours, but "
            "eval.color_classifier_dir is not set: save a CLIP model (the official evaluation "
            "uses ViT-L/14) with save_pretrained and set eval.color_classifier_dir=DIR"
        )
    from pairuni.eval.detectors import ClipColorClassifier

    return ClipColorClassifier(cfg.color_classifier_dir, device=device)


def build_judge(cfg: EvalConfig) -> WiseJudge:
    from pairuni.eval.wise import WiseJudge

    variable = cfg.judge.api_key_env
    if not os.environ.get(variable):
        raise EvalSetupError(
            f"WISE needs its judge's API key in the environment variable {variable} "
            f"(eval.judge.api_key_env), which is not set: export it, or set "
            "eval.judge.api_key_env to the variable that holds it (and eval.judge.base_url / "
            "eval.judge.model for another OpenAI-compatible server), or drop wise from "
            "--benchmarks"
        )
    return WiseJudge(cfg.judge)


# --------------------------------------------------------------------------- results


def result_entry(name: str, result: BenchmarkResult, count: int) -> dict[str, Any]:
    """A benchmark's entry in results.json (the per-sample details go to details.json)."""
    family = next(f for f, _, members in FAMILIES if name in members)
    return {
        "benchmark": result.benchmark,
        "family": family,
        "num_samples": count,
        "metrics": dict(result.metrics),
        "columns": [dataclasses.asdict(c) for c in result.columns],
    }


def columns_of(entry: Mapping[str, Any]) -> list[Column]:
    return [Column(**c) for c in entry["columns"]]


def format_value(value: float | None, column: Column) -> str:
    return "–" if value is None else f"{value * column.scale:.{column.digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    top = "| " + " | ".join(headers) + " |"
    rule = "|" + "|".join("---" for _ in headers) + "|"
    return "\n".join([top, rule, *("| " + " | ".join(r) + " |" for r in rows)])


def family_table(results: Mapping[str, Any], members: Sequence[str], model: str) -> str | None:
    """One row for `model`: understanding benchmarks give their headline column (the paper's
    Table 1 has one per benchmark), GenEval and WISE all of theirs."""
    entries = [(b, results["benchmarks"][b]) for b in members if b in results["benchmarks"]]
    if not entries:
        return None
    headers, cells = ["Model"], [model]
    for name, entry in entries:
        columns = columns_of(entry)
        shown = columns[:1] if name in UNDERSTANDING else columns
        for column in shown:
            headers.append(column.header)
            cells.append(format_value(entry["metrics"].get(column.key), column))
    return markdown_table(headers, [cells])


SETTING_LABELS = (
    ("model", "Model checkpoint"),
    ("dtype", "dtype"),
    ("seed", "Seed"),
    ("greedy_understanding", "Greedy understanding decoding"),
    ("text_temperature", "Understanding temperature (if sampled)"),
    ("max_new_tokens", "Max new tokens"),
    ("system_prompt", "System prompt"),
    ("cfg_scale", "CFG"),
    ("image_temperature", "Image temperature"),
    ("geneval_images_per_prompt", "Images per GenEval prompt"),
    ("und_batch_size", "Understanding batch"),
    ("gen_batch_size", "Generation batch (prompts)"),
    ("limit", "Samples per benchmark (limit)"),
    ("detector", "GenEval detector"),
    ("judge_model", "WISE judge"),
    ("pairuni_version", "pairuni"),
    ("commit", "Commit"),
)


OFFICIAL_WISE_JUDGE = "gpt-4o-2024-05-13"


def family_note(family: str, settings: Mapping[str, Any]) -> list[str]:
    """A warning under a table whose numbers are not comparable with published ones."""
    if family == "geneval":
        return [
            f"Detector: `{settings.get('detector')}`. Published GenEval scores use the official "
            "Mask2Former detector; other detectors give numbers that are not comparable with "
            "them (docs/eval.md).",
            "",
        ]
    if family == "wise" and settings.get("judge_model") != OFFICIAL_WISE_JUDGE:
        return [
            f"Judge: `{settings.get('judge_model')}`. Published WISE scores use "
            f"{OFFICIAL_WISE_JUDGE}; another judge gives numbers that are not comparable.",
            "",
        ]
    return []


def render_markdown(results: Mapping[str, Any]) -> str:
    """results.md: the paper's tables for this run, every column per benchmark, the settings."""
    settings = results["settings"]
    model = settings.get("name") or "model"
    out = [f"# Evaluation: {model}", ""]
    if settings.get("limit") is not None:
        out += [
            f"**Subset:** only the first {settings['limit']} samples of each benchmark; these "
            "numbers are not comparable with the paper's.",
            "",
        ]
    for family, title, members in FAMILIES:
        table = family_table(results, members, model)
        if table is not None:
            out += [f"## {title}", "", table, ""]
            out += family_note(family, settings)
    wide = [
        e for b, e in results["benchmarks"].items() if b in UNDERSTANDING and len(e["columns"]) > 1
    ]
    for entry in wide:
        columns = columns_of(entry)
        cells = [model, *(format_value(entry["metrics"].get(c.key), c) for c in columns)]
        out += [f"### {entry['benchmark']}: all columns", ""]
        out += [markdown_table(["Model", *(c.header for c in columns)], [cells]), ""]
    rows = [
        [label, f"`{json.dumps(settings[key])}`"]
        for key, label in SETTING_LABELS
        if key in settings
    ]
    out += ["## Settings", "", markdown_table(["Setting", "Value"], rows), ""]
    out += ["All metrics: results.json; per-sample verdicts: <benchmark>/details.json.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass
class EvalOutcome:
    """What a run did: the results (as in results.json), whether it stopped early, and how many
    generation batches it ran."""

    results: dict[str, Any]
    stopped: bool
    batches: int
    paths: RunPaths


def default_out_dir(cfg: EvalConfig, model_path: str | None) -> Path:
    if cfg.out_dir is not None:
        return Path(cfg.out_dir)
    if model_path is None:
        raise EvalSetupError("no output directory: pass --out (or set eval.out_dir)")
    return Path("runs/eval") / Path(model_path).expanduser().resolve().name


def run_eval(
    cfg: EvalConfig,
    *,
    model_path: str | Path | None,
    model_config: ModelConfig | None = None,
    out_dir: str | Path | None = None,
    benchmarks: str | Sequence[str] | None = None,
    rescore: bool = False,
    name: str | None = None,
    policy: UnifiedPolicy | None = None,
    detector: Detector | None = None,
    judge: WiseJudge | None = None,
    max_batches: int | None = None,
) -> EvalOutcome:
    """Generate what is missing, score, and write results.json / results.md.

    Every check that can fail (benchmark names and directories, GenEval detector, WISE judge key,
    checkpoint, settings of an existing run) runs before the first generation. `policy`,
    `detector` and `judge` replace the ones built from the config (tests, notebooks);
    `max_batches` stops after that many generation batches, as a kill would.
    """
    from pairuni.policy.config import ModelConfig

    model_config = model_config or ModelConfig()
    path_text = str(model_path) if model_path is not None else model_config.path
    root = Path(out_dir) if out_dir is not None else default_out_dir(cfg, path_text)
    paths = RunPaths(root)
    if rescore:
        settings = read_json_file(paths.manifest, "run to rescore (run.json is missing)")
        # what was generated decides what is scored
        kept = ("limit", "geneval_images_per_prompt")
        cfg = cfg.model_copy(update={k: settings[k] for k in kept if k in settings})
        chosen = parse_benchmarks(benchmarks) if benchmarks else present_benchmarks(paths)
    else:
        settings = generation_settings(cfg, path_text, model_config.dtype)
        chosen = parse_benchmarks(benchmarks if benchmarks else cfg.benchmarks)
    loaded = load_benchmarks(chosen, cfg)
    judges = build_judges(loaded, cfg, device_name(model_config), detector, judge)
    lazy = LazyPolicy(policy_factory(policy, path_text, model_config, cfg))
    if not rescore:
        start_run(paths, settings, path_text, policy is not None)
    budget = BatchBudget(max_batches)
    results = read_results(paths, settings)
    finish_settings(results, paths, cfg, name)
    for bench in loaded:
        if not rescore and not generate(bench, paths, lazy, cfg, budget):
            return EvalOutcome(results, True, budget.used, paths)
        record_result(bench, paths, cfg, judges, rescore, results)
        write_results(paths, results)
    return EvalOutcome(results, False, budget.used, paths)


def record_result(
    bench: Benchmark,
    paths: RunPaths,
    cfg: EvalConfig,
    judges: Judges,
    rescore: bool,
    results: dict[str, Any],
) -> None:
    result = score_benchmark(bench, paths, cfg, judges, rescore)
    write_json_atomic(paths.details(bench.name), result.details)
    results["benchmarks"][bench.name] = result_entry(bench.name, result, len(bench.items))
    # keep the paper's order whatever order benchmarks were run in
    ordered = sorted(results["benchmarks"].items(), key=lambda kv: BENCHMARK_NAMES.index(kv[0]))
    results["benchmarks"] = dict(ordered)


def present_benchmarks(paths: RunPaths) -> list[str]:
    found = [b for b in BENCHMARK_NAMES if paths.predictions(b).is_file()]
    if not found:
        raise EvalSetupError(f"{paths.root}: no <benchmark>/predictions.jsonl to rescore")
    return found


def device_name(model_config: ModelConfig) -> str:
    if model_config.device != "auto":
        return model_config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def start_run(
    paths: RunPaths, settings: dict[str, Any], model_path: str | None, injected: bool
) -> None:
    """Check the checkpoint and the settings of an existing run, then write run.json."""
    if not injected:
        if model_path is None:
            raise EvalSetupError("no checkpoint given: pass --model DIR (or set model.path)")
        from pairuni.policy.janus import check_checkpoint_dir

        check_checkpoint_dir(model_path)
    if paths.manifest.is_file():
        saved = read_json_file(paths.manifest, "run.json")
        check_same_settings(saved, settings, paths.manifest)
        return
    from pairuni import __version__

    manifest = {**settings, "pairuni_version": __version__, "commit": source_commit()}
    paths.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.manifest, manifest)


def read_results(paths: RunPaths, settings: Mapping[str, Any]) -> dict[str, Any]:
    """results.json of the run so far (benchmarks scored earlier stay), else a new one."""
    if paths.results_json.is_file():
        results = read_json_file(paths.results_json, "results.json")
        return {
            "format": RESULTS_FORMAT,
            "settings": results.get("settings", {}),
            "benchmarks": results.get("benchmarks", {}),
        }
    return {"format": RESULTS_FORMAT, "settings": dict(settings), "benchmarks": {}}


def finish_settings(
    results: dict[str, Any], paths: RunPaths, cfg: EvalConfig, name: str | None
) -> None:
    """The settings block of results.json: run.json plus what scoring used."""
    manifest = read_json_file(paths.manifest, "run.json") if paths.manifest.is_file() else {}
    settings = {**results.get("settings", {}), **manifest}
    model = settings.get("model")
    settings["name"] = name or settings.get("name") or (Path(model).name if model else "model")
    settings["detector"] = cfg.detector
    settings["judge_model"] = cfg.judge.model
    settings["mmmu_seed"] = cfg.mmmu_seed
    results["settings"] = settings


def write_results(paths: RunPaths, results: dict[str, Any]) -> None:
    write_json_atomic(paths.results_json, results)
    write_text_atomic(paths.results_md, render_markdown(results))


# --------------------------------------------------------------------------- compare


@dataclasses.dataclass(frozen=True)
class ComparedMetric:
    """One metric of two runs: the values as the table prints them, and B - A."""

    benchmark: str
    metric: str
    a: float | None
    b: float | None
    digits: int
    headline: bool = True
    """A column of the paper's tables (higher is better), not one of the other metrics."""

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    def cells(self) -> list[str]:
        def fmt(value: float | None, sign: bool = False) -> str:
            if value is None:
                return "–"
            if round(value, self.digits) == 0:
                value = 0.0  # no "-0.0"
            return f"{value:+.{self.digits}f}" if sign else f"{value:.{self.digits}f}"

        return [self.benchmark, self.metric, fmt(self.a), fmt(self.b), fmt(self.delta, True)]


def load_results(path: str | Path) -> dict[str, Any]:
    """results.json of a run directory (or the file itself)."""
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
    results = read_json_file(file, "results.json (run `pairuni eval` first)")
    if not isinstance(results, dict) or "benchmarks" not in results:
        raise EvalSetupError(f"{file}: not a pairuni results.json (no `benchmarks` key)")
    return results


def compare_results(
    a: Mapping[str, Any], b: Mapping[str, Any], all_metrics: bool = False
) -> list[ComparedMetric]:
    """The metrics of both runs, benchmark by benchmark in the paper's order: the table columns
    (scaled as printed), then with `all_metrics` every other metric (as stored)."""
    rows: list[ComparedMetric] = []
    names = [n for n in BENCHMARK_NAMES if n in a["benchmarks"] or n in b["benchmarks"]]
    for name in names:
        entry_a, entry_b = a["benchmarks"].get(name), b["benchmarks"].get(name)
        metrics_a = entry_a["metrics"] if entry_a else {}
        metrics_b = entry_b["metrics"] if entry_b else {}
        label = (entry_a or entry_b)["benchmark"]
        columns = columns_of(entry_a or entry_b)
        for column in columns:
            va, vb = metrics_a.get(column.key), metrics_b.get(column.key)
            rows.append(
                ComparedMetric(
                    label,
                    column.header,
                    None if va is None else va * column.scale,
                    None if vb is None else vb * column.scale,
                    column.digits,
                )
            )
        if all_metrics:
            shown = {c.key for c in columns}
            keys = [k for k in dict.fromkeys([*metrics_a, *metrics_b]) if k not in shown]
            rows += [
                ComparedMetric(label, key, metrics_a.get(key), metrics_b.get(key), 4, False)
                for key in keys
            ]
    return rows


def settings_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """`key: A -> B` for each generation or scoring setting the two runs do not share."""
    keys = [*GENERATION_KEYS, "detector", "judge_model", "mmmu_seed"]
    sa, sb = a.get("settings", {}), b.get("settings", {})
    return [f"{k}: {sa.get(k)!r} -> {sb.get(k)!r}" for k in keys if sa.get(k) != sb.get(k)]


def compare_markdown(rows: Sequence[ComparedMetric], name_a: str, name_b: str) -> str:
    headers = ["Benchmark", "Metric", f"A: {name_a}", f"B: {name_b}", "B − A"]
    return markdown_table(headers, [r.cells() for r in rows])
