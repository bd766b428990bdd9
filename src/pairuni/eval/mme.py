"""MME: loaders for the official release folders and the lmms-lab/MME parquet, and the official
scores (acc and acc+ per subtask, x100, summed into the perception and cognition totals).

The rules follow the official `eval_tool/calculation.py` (in tools/eval_tool.zip of
BradyFU/Awesome-Multimodal-Large-Language-Models at commit 1c1d69e; read in the copy that
zjunlp/Deco keeps at commit a3ccc15): an answer is `yes` or `no` if it is exactly that word
(after lower-casing), else whichever of the two its first four characters contain (yes first),
else `other`, which counts as wrong. acc is over questions, acc+ over
images whose questions (two per image) are all right; a subtask scores 100 * (acc + acc+), and the
perception total (the paper's MME(P)) sums the ten perception subtasks.

An RL-format reply (`<think>…</think><answer>X</answer>`) is first reduced to its answer
(`pairuni.eval.answers.answer_text`): the official rule reads only the first four characters, so
it would read `<thi` and call every such reply `other`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pairuni.eval.answers import AnswerSpan, answer_text
from pairuni.eval.layout import (
    ImageRef,
    data_error,
    image_bytes,
    match_predictions,
    not_found,
    read_parquet_rows,
    require_dir,
    require_str,
)
from pairuni.eval.results import BenchmarkResult, Column

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class MMESample:
    """One MME yes/no question. `image_id` groups the (two) questions asked about one image."""

    id: str
    subtask: str
    image_id: str
    question: str
    answer: str  # "yes" or "no"
    image: ImageRef


def load_mme(root: str | Path) -> Iterator[MMESample]:
    """Yield MME questions from a parquet copy (if `root` holds any .parquet) or the official
    folders (one per subtask)."""
    base = require_dir(root, "mme")
    parquet = sorted(base.glob("**/*.parquet"))
    if parquet:
        yield from load_parquet(parquet)
        return
    known = PERCEPTION + COGNITION
    subtasks = [d for d in sorted(base.iterdir()) if d.is_dir() and d.name in known]
    if not subtasks:
        raise not_found("mme", base, "neither parquet files nor subtask folders")
    for folder in subtasks:
        yield from load_subtask_folder(folder)


def normalize_gold(answer: str, path: Path, where: str) -> str:
    gold = answer.strip().lower()
    if gold not in ("yes", "no"):
        raise data_error(path, where, "answer", f"is {answer!r}", "MME answers are Yes or No")
    return gold


def load_parquet(files: list[Path]) -> Iterator[MMESample]:
    seen: dict[str, int] = defaultdict(int)
    for path in files:
        for row, record in read_parquet_rows(path):
            where = f"row {row}"
            image_key = require_str(record, "question_id", path, where)
            subtask = require_str(record, "category", path, where)
            where = f"{where} (question_id {image_key})"
            if subtask not in PERCEPTION + COGNITION:
                raise data_error(path, where, "category", f"is {subtask!r}", "not an MME subtask")
            # question_id names the image; the n-th question about it gets suffix #n.
            number = seen[image_key]
            seen[image_key] += 1
            yield MMESample(
                id=f"{image_key}#{number}",
                subtask=subtask,
                image_id=image_key,
                question=require_str(record, "question", path, where),
                answer=normalize_gold(require_str(record, "answer", path, where), path, where),
                image=image_bytes(record.get("image"), path, where, "image"),
            )


def load_subtask_folder(folder: Path) -> Iterator[MMESample]:
    """Images and their question files, side by side or in images/ + questions_answers_YN/."""
    split_layout = (folder / "questions_answers_YN").is_dir()
    text_dir = folder / "questions_answers_YN" if split_layout else folder
    image_dir = folder / "images" if split_layout else folder
    question_files = sorted(text_dir.glob("*.txt"))
    if not question_files:
        raise not_found("mme", folder, f"subtask {folder.name} has no question .txt files")
    for txt in question_files:
        image = find_image(image_dir, txt.stem)
        if image is None:
            raise data_error(
                txt, "file", "image", f"has no image {txt.stem}.jpg/.png in {image_dir}", ""
            )
        for number, (question, answer) in enumerate(read_question_file(txt)):
            yield MMESample(
                id=f"{folder.name}/{image.name}#{number}",
                subtask=folder.name,
                image_id=f"{folder.name}/{image.name}",
                question=question,
                answer=answer,
                image=image,
            )


def find_image(image_dir: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_question_file(txt: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise data_error(
                txt, f"line {number}", "question", "is not `question<TAB>answer`", "fix the line"
            )
        pairs.append((parts[0].strip(), normalize_gold(parts[1], txt, f"line {number}")))
    return pairs


def parse_yes_no(response: str) -> str:
    """`yes`, `no` or `other` by the official rule (exact word, else the first four characters)."""
    text = response.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def score_mme(
    samples: Iterable[MMESample],
    predictions: Mapping[str, str],
    *,
    answer_span: AnswerSpan = "auto",
) -> BenchmarkResult:
    """acc, acc+ and score per subtask, the perception / cognition totals when every subtask
    of that group is present (a partial total would not be comparable with published ones), and
    `unparsed`: the replies read as `other` (no yes / no) after `answer_span`, which count wrong."""
    samples = list(samples)
    responses = match_predictions([s.id for s in samples], predictions, "mme")
    per_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    others: dict[str, int] = defaultdict(int)
    unparsed: list[str] = []
    for sample, response in zip(samples, responses, strict=True):
        parsed = parse_yes_no(answer_text(response, answer_span))
        others[sample.subtask] += parsed == "other"
        if parsed == "other":
            unparsed.append(sample.id)
        per_image[sample.subtask][sample.image_id].append(parsed == sample.answer)
    metrics = subtask_metrics(per_image)
    metrics["unparsed"] = len(unparsed)
    details = {
        "other_answers": dict(others),
        "num_samples": len(samples),
        "answer_span": answer_span,
        "unparsed": unparsed,
    }
    return BenchmarkResult(
        "MME", metrics, [Column("MME(P)", "perception_total", digits=1)], details
    )


def subtask_metrics(per_image: Mapping[str, Mapping[str, list[bool]]]) -> dict[str, float]:
    """acc, acc+ and score per subtask (verdicts grouped by image), then the group totals."""
    metrics: dict[str, float] = {}
    for subtask, images in sorted(per_image.items()):
        answers = [c for results in images.values() for c in results]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(results) for results in images.values()) / len(images)
        metrics[f"{subtask}/acc"] = acc
        metrics[f"{subtask}/acc_plus"] = acc_plus
        metrics[f"{subtask}/score"] = 100.0 * (acc + acc_plus)
    for name, group in (("perception_total", PERCEPTION), ("cognition_total", COGNITION)):
        if all(task in per_image for task in group):
            metrics[name] = sum(metrics[f"{task}/score"] for task in group)
    return metrics
