"""ImgEdit Basic bench: the loader, editing through the policy, judging (`imgedit_judge`: the
per-type prompts over an OpenAI-compatible API) and the official scores.

Follows PKU-YuanGroup/ImgEdit as of its snapshot 547185d; `Benchmark/Basic/` is unchanged since
b3eb8e7 (2025-06-16). Each rule names the file it reproduces:

- Items (`Benchmark/Basic/basic_edit.json`): a JSON object `{key: {"id", "prompt",
  "edit_type"}}`, 737 items in 9 edit types (extract 117, style 100, add 95, adjust 94,
  background 94, replace 92, remove 86, action 36, compose 23). `id` is the source image's path
  under the image folder (`Benchmark/singleturn/` of the release's `Benchmark.tar`), `prompt`
  the edit instruction. The first release (c14480a) named the `adjust` type `alter`; it is read
  as `adjust`.
- Outputs: one edited image per key, saved as `<key>.png` in one folder (the readme's layout).
- The judge (`basic_bench.py`): one user message holding the edit type's prompt with
  `<edit_prompt>` replaced by the instruction, then the source image, then the edited image, as
  data URLs; no system message. The prompts are `prompts.json` (edit type -> text): pass that
  file as `--judge-prompts` to use them; by default pairuni's own wording of the same criteria
  (`imgedit_prompts`) is used, which makes numbers that are not comparable with published ones.
  Published numbers use GPT-4o (`model="gpt-4o"`) with the official prompts.
- Per image (`step1_get_avgscore.py`): the mean of the scores the reply gives, rounded to 2
  decimals. Per type (`step2_typescore.py`): the mean of its images' scores. Overall: the mean
  over all judged images (no official script computes it; the image-weighted mean is how the
  benchmark's Overall is described), with `type_mean`, the plain mean of the nine types,
  reported beside it for papers that average the types.

Departures (each where the official code gives no rule, or would crash):
- Replies: the official reading (`Label: <digits>` lines, split at ": ") comes first and is
  kept whenever it finds exactly three scores of 1-5. Otherwise the reply is read leniently
  (markdown bold, a full-width colon, `4/5`, a trailing full stop; the type's three labels by
  name when the reply has more score lines). The official script averages however many score
  lines it finds (one, or four) and keeps any number; here a verdict needs three scores of 1-5.
- A reply without them is asked again (`max_retries`), then recorded as failed and listed in
  `rejects.json`; the run fails unless at most `eval.imgedit.max_failed` images failed (failed
  images are left out of the means, as step1 leaves out replies without scores). The official
  script asks once.
- The source image goes with its own MIME type (the official script labels JPEG bytes as PNG).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pairuni.eval.errors import EvalSetupError
from pairuni.eval.imgedit_judge import DOWNLOAD, EditVerdict, judge_edits
from pairuni.eval.imgedit_prompts import CRITERIA, EDIT_TYPES, TYPE_ALIASES
from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError, data_error
from pairuni.eval.results import BenchmarkResult, Column

if TYPE_CHECKING:
    from PIL import Image

    from pairuni.eval.benchmarks import Benchmark
    from pairuni.eval.config import EvalConfig
    from pairuni.eval.generation import BatchBudget, LazyPolicy
    from pairuni.eval.outputs import RunPaths
    from pairuni.eval.scoring import ScoringRun

logger = logging.getLogger(__name__)

TYPE_HEADERS = {
    "add": "Add",
    "adjust": "Adjust",
    "extract": "Extract",
    "replace": "Replace",
    "remove": "Remove",
    "background": "Background",
    "style": "Style",
    "compose": "Hybrid",
    "action": "Action",
}
"""Column headers as the leaderboard prints them (it calls `compose` Hybrid)."""

PUBLISHED_COUNTS = {
    "extract": 117,
    "style": 100,
    "add": 95,
    "adjust": 94,
    "background": 94,
    "replace": 92,
    "remove": 86,
    "action": 36,
    "compose": 23,
}
"""Items per type in the published basic_edit.json (737 in all)."""

JSON_NAMES = ("basic_edit.json", "Benchmark/Basic/basic_edit.json", "Basic/basic_edit.json")
IMAGE_FOLDERS = ("singleturn", "Benchmark/singleturn", "original_images", ".")
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --------------------------------------------------------------------------- the loader


@dataclass(frozen=True)
class ImgEditSample:
    """One Basic-bench item. `id` is its key in basic_edit.json (the edited image is saved as
    `<id>.png`); `source` is the record's own `id` field, the source image's path under the
    image folder, and `image` that file."""

    id: str
    source: str
    image: Path
    prompt: str
    edit_type: str


def load_imgedit(root: str | Path) -> list[ImgEditSample]:
    """The Basic-bench items under `root`, sorted by key (numerically when keys are numbers).

    `root` holds basic_edit.json (or a clone of the ImgEdit repository:
    Benchmark/Basic/basic_edit.json) and the source images, the release's Benchmark.tar
    extracted there (`singleturn/<category>/<file>.jpg` or `Benchmark/singleturn/...`; also
    `original_images/` or the folder itself). A bad record is an error naming the file, the key
    and the field; every source image must exist.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise imgedit_not_found(base, "the ImgEdit directory does not exist")
    path = find_json(base)
    records = read_records(path)
    parsed = [parse_record(key, value, path) for key, value in records]
    images = find_image_folder(base, parsed, path)
    samples = [
        ImgEditSample(key, source, images / source, prompt, edit_type)
        for key, source, prompt, edit_type in parsed
    ]
    check_images(samples, path, images)
    warn_if_not_published(samples, path)
    return sorted(samples, key=key_order)


def key_order(sample: ImgEditSample) -> tuple[bool, int, str]:
    """Numeric keys first, by value (the release's keys are numbers), then the others."""
    numeric = sample.id.isdigit()
    return (not numeric, int(sample.id) if numeric else 0, sample.id)


def find_json(base: Path) -> Path:
    for name in JSON_NAMES:
        if (base / name).is_file():
            return base / name
    raise imgedit_not_found(base, f"no basic_edit.json (looked for {', '.join(JSON_NAMES)})")


class Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs, so that a repeated key can be seen."""


def read_records(path: Path) -> list[tuple[str, Any]]:
    """The (key, record) pairs of basic_edit.json in file order; a repeated key is an error
    (JSON readers silently keep the last one)."""
    try:
        top = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=Pairs)
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(
            f"{path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); "
            "re-download the file"
        ) from None
    if not isinstance(top, Pairs):
        raise BenchmarkDataError(
            f"{path}: the top level is not a JSON object of {{key: record}}; use the release's "
            "basic_edit.json"
        )
    seen: set[str] = set()
    for key, _ in top:
        if key in seen:
            raise data_error(path, f"key {key!r}", "key", "repeats", "keep one record per key")
        seen.add(key)
    return top


def parse_record(key: str, record: Any, path: Path) -> tuple[str, str, str, str]:
    """(key, source path, instruction, edit type) of one record, or an error naming the field."""
    where = f"key {key!r}"
    if not KEY_PATTERN.fullmatch(key):
        raise data_error(
            path,
            where,
            "key",
            "is not a plain file name (the edit is saved as <key>.png)",
            "use letters, digits, '_', '-' or '.' (the release's keys are numbers)",
        )
    if isinstance(record, Pairs):  # how `read_records` hands over objects
        record = dict(record)
    if not isinstance(record, dict):
        raise data_error(
            path,
            where,
            "id",
            "is missing (the record is not an object)",
            'each record is {"id", "prompt", "edit_type"}',
        )
    source = text_field(record, "id", path, where)
    parts = PurePosixPath(source).parts
    if source.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", source):
        raise data_error(
            path,
            where,
            "id",
            f"is {source!r}",
            "give the source image's path relative to the image folder",
        )
    prompt = text_field(record, "prompt", path, where)
    edit_type = text_field(record, "edit_type", path, where)
    edit_type = TYPE_ALIASES.get(edit_type, edit_type)
    if edit_type not in EDIT_TYPES:
        raise data_error(
            path, where, "edit_type", f"is {edit_type!r}", f"use one of {', '.join(EDIT_TYPES)}"
        )
    return key, source, prompt, edit_type


def text_field(record: Mapping[str, Any], field: str, path: Path, where: str) -> str:
    value = record.get(field)
    if value is None:
        raise data_error(path, where, field, "is missing", "use the release's basic_edit.json")
    if not isinstance(value, str) or not value.strip():
        raise data_error(
            path, where, field, f"must be a non-empty string, got {value!r}", "fix the record"
        )
    return value


def find_image_folder(base: Path, parsed: Sequence[tuple[str, str, str, str]], path: Path) -> Path:
    """The first of `IMAGE_FOLDERS` that holds the first record's source image."""
    folders = [base / name if name != "." else base for name in IMAGE_FOLDERS]
    if not parsed:
        raise BenchmarkDataError(f"{path}: holds no records; use the release's basic_edit.json")
    key, source = parsed[0][0], parsed[0][1]
    for folder in folders:
        if (folder / source).is_file():
            return folder
    raise imgedit_not_found(
        base,
        f"no source images: key {key!r} of {path} names {source!r}, found under none of "
        f"{', '.join(str(f) for f in folders)}; extract the release's Benchmark.tar there",
    )


def check_images(samples: Sequence[ImgEditSample], path: Path, folder: Path) -> None:
    missing = [s for s in samples if not s.image.is_file()]
    if missing:
        shown = ", ".join(f"key {s.id!r} ({s.source})" for s in missing[:5])
        more = " ..." if len(missing) > 5 else ""
        raise BenchmarkDataError(
            f"{path}: field 'id' of {len(missing)} of {len(samples)} records names a file "
            f"missing from {folder}: {shown}{more}; extract the whole Benchmark.tar"
        )


def warn_if_not_published(samples: Sequence[ImgEditSample], path: Path) -> None:
    counts = Counter(s.edit_type for s in samples)
    if dict(counts) != PUBLISHED_COUNTS:
        logger.warning(
            "ImgEdit: %s holds %d items (%s), not the published 737; the scores describe this "
            "file only",
            path,
            len(samples),
            ", ".join(f"{t} {counts[t]}" for t in EDIT_TYPES if counts[t]),
        )


def imgedit_not_found(root: Path, problem: str) -> BenchmarkNotFoundError:
    return BenchmarkNotFoundError(
        f"ImgEdit: {problem} (looked in {root}). Benchmark data does not ship with pairuni: "
        f"take Benchmark/Basic/basic_edit.json from {DOWNLOAD} and the source images from "
        "https://huggingface.co/datasets/sysuyy/ImgEdit (Benchmark.tar), and set "
        "eval.imgedit_dir to a folder holding basic_edit.json and the extracted singleturn/ "
        "(or Benchmark/singleturn/). See docs/eval.md."
    )


# --------------------------------------------------------------------------- scoring


def score_imgedit(
    samples: Sequence[ImgEditSample], verdicts: Mapping[str, EditVerdict]
) -> BenchmarkResult:
    """Per-type means of the image scores, Overall (the mean over all judged images), the plain
    mean of the types, and the mean of each criterion per type. Failed or missing verdicts are
    left out, as step1_get_avgscore.py leaves out replies without scores."""
    judged = [verdicts[s.id] for s in samples if s.id in verdicts and not verdicts[s.id].failed]
    by_type: dict[str, list[EditVerdict]] = defaultdict(list)
    for verdict in judged:
        by_type[verdict.edit_type].append(verdict)
    metrics: dict[str, float] = {}
    for edit_type in EDIT_TYPES:
        group = by_type.get(edit_type)
        if not group:
            continue
        metrics[edit_type] = mean(v.score for v in group)  # type: ignore[misc]
        for index in range(3):
            values = (v.scores[index] for v in group if v.scores is not None)
            metrics[f"{edit_type}/criterion{index + 1}"] = mean(values)
    if judged:
        metrics["overall"] = mean(v.score for v in judged)  # type: ignore[misc]
        metrics["type_mean"] = mean(metrics[t] for t in EDIT_TYPES if t in metrics)
    columns = [Column(TYPE_HEADERS[t], t, digits=2) for t in EDIT_TYPES]
    return BenchmarkResult(
        "ImgEdit",
        metrics,
        [*columns, Column("Overall", "overall", digits=2)],
        score_details(samples, verdicts, judged),
    )


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items)


def score_details(
    samples: Sequence[ImgEditSample],
    verdicts: Mapping[str, EditVerdict],
    judged: Sequence[EditVerdict],
) -> dict[str, Any]:
    per_type = Counter(v.edit_type for v in judged)
    complete = dict(per_type) == PUBLISHED_COUNTS
    return {
        "num_images": len(samples),
        "judged": len(judged),
        "failed": sorted(k for k, v in verdicts.items() if v.failed),
        "per_type": {t: per_type[t] for t in EDIT_TYPES},
        "official_overall": complete,
        "image_scores": {v.key: v.score for v in judged},
        "criteria": {t: list(CRITERIA[t]) for t in EDIT_TYPES},
    }


# --------------------------------------------------------------------------- the run


NO_EDITING = "benchmark imgedit needs a backend that edits images: model.backend dimoo"


def check_editing_policy(bench: Benchmark, paths: RunPaths, policy: LazyPolicy) -> None:
    """Before anything is generated: when edits are missing, the policy must edit images."""
    from pairuni.eval.outputs import read_generated
    from pairuni.policy.base import EditingPolicy

    pred = paths.predictions(bench.name)
    done = read_generated(pred) if pred.is_file() else {}
    if all(item.id in done for item in bench.items):
        return
    model = policy.get()
    if not isinstance(model, EditingPolicy):
        raise EvalSetupError(
            f"{NO_EDITING} ({type(model).__name__} has no edit_images); or drop imgedit from "
            "--benchmarks"
        )


def generate_edits(
    bench: Benchmark, paths: RunPaths, policy: LazyPolicy, cfg: EvalConfig, budget: BatchBudget
) -> bool:
    """Edit every source image not yet in predictions.jsonl, `eval.gen_batch_size` at a time,
    saving `images/<key>.png` before its line. Batches have a fixed composition and each is
    seeded from (eval.seed, imgedit, its first key), so a resumed run writes what an
    uninterrupted one would. False when the budget stopped the run."""
    from pairuni.eval.generation import batch_seed, generate_missing, make_generator
    from pairuni.eval.layout import open_image
    from pairuni.eval.outputs import GeneratedImages

    samples = {s.id: s for s in bench.samples}

    def edits(batch: list[Any], model: Any, wanted: set[str]) -> list[Any]:
        sources = [open_image(samples[item.id].image) for item in batch]
        generator = make_generator(batch_seed(cfg.seed, bench.name, batch[0].id), model)
        images = model.edit_images(
            sources, [item.prompt for item in batch], greedy=False, generator=generator
        )
        if len(images) != len(batch):
            raise RuntimeError(
                f"edit_images returned {len(images)} images for {len(batch)} instructions; it "
                "must return one edited image per source image"
            )
        return [
            save_edit(bench.name, item, image, paths)
            for item, image in zip(batch, images, strict=True)
            if item.id in wanted
        ]

    return generate_missing(
        bench,
        paths,
        policy,
        budget,
        record_type=GeneratedImages,
        batch_size=cfg.gen_batch_size,
        make_records=edits,
    )


def save_edit(benchmark: str, item: Any, image: Image.Image, paths: RunPaths) -> Any:
    """Write one edit as `images/<key>.png` (atomically) and return its predictions line."""
    from pairuni.eval.outputs import GeneratedImages, save_png_atomic

    relative = paths.image_paths(benchmark, item.id, 1)[0]
    save_png_atomic(image.convert("RGB"), paths.folder(benchmark) / relative)
    return GeneratedImages(id=item.id, prompt=item.prompt, images=[relative])


def score_imgedit_run(run: ScoringRun) -> BenchmarkResult:
    """Judge every edit not yet judged, list the failures in rejects.json, and score; more
    failures than `eval.imgedit.max_failed` stop the run with their keys."""
    from pairuni.eval.outputs import write_json_atomic
    from pairuni.eval.scoring import generated_files

    bench, paths, cfg = run.bench, run.paths, run.cfg
    files = generated_files(bench, paths, cfg)
    judge = run.judges.editing
    if judge is None:
        raise EvalSetupError("ImgEdit needs a judge (eval.imgedit.judge)")
    samples: list[ImgEditSample] = bench.samples
    verdicts = judge_edits(
        samples, {k: v[0] for k, v in files.items()}, judge, paths.judgements(bench.name)
    )
    failed = [verdicts[s.id] for s in samples if verdicts[s.id].failed]
    rejects = paths.folder(bench.name) / "rejects.json"
    if failed:
        write_json_atomic(
            rejects,
            [
                {"key": v.key, "edit_type": v.edit_type, "problem": v.problem, "reply": v.reply}
                for v in failed
            ],
        )
    else:
        rejects.unlink(missing_ok=True)
    if len(failed) > cfg.imgedit.max_failed:
        raise ImgEditRepliesError(failed, len(samples), rejects, judge.config.max_retries + 1)
    result = score_imgedit(samples, verdicts)
    result.details["judge_prompts"] = judge.prompts.source
    result.details["judge_model"] = judge.config.model
    return result


class ImgEditRepliesError(EvalSetupError):
    """Too many edits whose judge replies could not be read as three 1-5 scores."""

    def __init__(
        self, failed: Sequence[EditVerdict], total: int, rejects: Path, attempts: int
    ) -> None:
        self.failed = list(failed)
        shown = ", ".join(v.key for v in failed[:10]) + (" ..." if len(failed) > 10 else "")
        reasons = Counter(v.problem for v in failed).most_common(1)[0][0]
        super().__init__(
            f"ImgEdit: {len(failed)} of {total} edits have no readable verdict after {attempts} "
            f"attempts (keys {shown}; most often: {reasons}); their replies are in {rejects}. "
            "Run again to ask the judge about them again (finished verdicts are kept), check "
            "the judge prompts (eval.imgedit.judge_prompts) and model, or set "
            f"eval.imgedit.max_failed={len(failed)} to score without them"
        )


OFFICIAL_JUDGE = "gpt-4o"


def imgedit_notes(results: Mapping[str, Any]) -> list[str]:
    """Why an ImgEdit table may not compare with published numbers: judge, prompts, subset."""
    settings, lines = results["settings"], []
    entry = results["benchmarks"].get("imgedit", {})
    model = settings.get("imgedit_judge_model")
    if model != OFFICIAL_JUDGE:
        lines += [
            f"Judge: `{model}`. Published ImgEdit numbers use {OFFICIAL_JUDGE} with the official "
            "prompts.json; another judge gives numbers that are not comparable.",
            "",
        ]
    prompts = entry.get("judge_prompts", "pairuni")
    if prompts != "official":
        what = (
            "pairuni's own wording of the official criteria"
            if prompts == "pairuni"
            else (f"`{prompts.removeprefix('custom:')}`, not the official prompts.json")
        )
        lines += [
            f"Judge prompts: {what}; published numbers need the official "
            "Benchmark/Basic/prompts.json (`--judge-prompts`).",
            "",
        ]
    if not entry.get("official_overall", True):
        lines += [
            "Not every one of the 737 published items has a verdict: the means cover the items "
            "judged (details.json lists them).",
            "",
        ]
    return lines
