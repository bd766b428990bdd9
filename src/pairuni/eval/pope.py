"""POPE: loaders for the lmms-lab/POPE parquet and the official question files, and the official
metrics per split (random / popular / adversarial): accuracy, precision, recall, F1, yes-ratio.

The answer rule follows the official `evaluate.py` of AoiDragon/POPE: keep the first sentence (up
to the first `.`), drop commas, split on spaces; the answer is `no` if a word is exactly `No`,
`no` or `not`, otherwise `yes`. "Yes" is the positive class.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pairuni.eval.layout import (
    ImageRef,
    data_error,
    image_bytes,
    match_predictions,
    not_found,
    read_jsonl,
    read_parquet_rows,
    require_dir,
    require_field,
    require_str,
)
from pairuni.eval.results import BenchmarkResult, Column, safe_ratio

SPLITS = ("random", "popular", "adversarial")
NEGATIVE_WORDS = ("No", "no", "not")


@dataclass(frozen=True)
class POPESample:
    """One POPE question ("Is there a X in the image?") with its yes/no label."""

    id: str
    split: str
    question: str
    answer: str  # "yes" or "no"
    image: ImageRef


def load_pope(root: str | Path) -> Iterator[POPESample]:
    """Yield POPE questions from parquet files under `root`, or from the official
    coco_pope_<split>.json question files with a val2014/ image folder."""
    base = require_dir(root, "pope")
    parquet = sorted(base.glob("**/*.parquet"))
    if parquet:
        seen: dict[str, Path] = {}
        for path in parquet:
            for sample in load_parquet(path):
                if sample.id in seen:
                    raise data_error(
                        path,
                        f"question {sample.id}",
                        "question_id",
                        f"repeats a question of {seen[sample.id]}",
                        f"keep one copy of the release under {base}",
                    )
                seen[sample.id] = path
                yield sample
        return
    question_files = [base / f"coco_pope_{split}.json" for split in SPLITS]
    present = [p for p in question_files if p.is_file()]
    if not present:
        raise not_found("pope", base, "neither parquet files nor coco_pope_<split>.json files")
    for path in present:
        yield from load_official(path, base / "val2014")


def gold_label(value: str, path: Path, where: str) -> str:
    label = value.strip().lower()
    if label not in ("yes", "no"):
        raise data_error(path, where, "answer", f"is {value!r}", "POPE labels are yes or no")
    return label


def load_parquet(path: Path) -> Iterator[POPESample]:
    for row, record in read_parquet_rows(path):
        where = f"row {row}"
        split = require_str(record, "category", path, where)
        if split not in SPLITS:
            raise data_error(path, where, "category", f"is {split!r}", f"expected one of {SPLITS}")
        qid = str(require_field(record, "question_id", path, where))
        yield POPESample(
            id=f"{split}/{qid}",
            split=split,
            question=require_str(record, "question", path, where),
            answer=gold_label(require_str(record, "answer", path, where), path, where),
            image=image_bytes(record.get("image"), path, where, "image"),
        )


def load_official(path: Path, image_dir: Path) -> Iterator[POPESample]:
    split = path.stem.removeprefix("coco_pope_")
    if not image_dir.is_dir():
        raise not_found("pope", image_dir.parent, "the val2014/ image folder is missing")
    for number, record in read_jsonl(path):
        where = f"line {number}"
        image = image_dir / require_str(record, "image", path, where)
        if not image.is_file():
            raise data_error(path, where, "image", f"names {image}, which does not exist", "")
        yield POPESample(
            id=f"{split}/{require_field(record, 'question_id', path, where)}",
            split=split,
            question=require_str(record, "text", path, where),
            answer=gold_label(require_str(record, "label", path, where), path, where),
            image=image,
        )


def parse_yes_no(response: str) -> str:
    """`no` if the first sentence contains the word No / no / not, else `yes` (official rule)."""
    first_sentence = response.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(w in NEGATIVE_WORDS for w in words) else "yes"


def binary_metrics(gold: list[str], predicted: list[str]) -> dict[str, float]:
    tp = sum(g == "yes" and p == "yes" for g, p in zip(gold, predicted, strict=True))
    fp = sum(g == "no" and p == "yes" for g, p in zip(gold, predicted, strict=True))
    tn = sum(g == "no" and p == "no" for g, p in zip(gold, predicted, strict=True))
    fn = sum(g == "yes" and p == "no" for g, p in zip(gold, predicted, strict=True))
    precision = safe_ratio(tp, tp + fp)
    recall = safe_ratio(tp, tp + fn)
    return {
        "acc": safe_ratio(tp + tn, len(gold)),
        "precision": precision,
        "recall": recall,
        "f1": safe_ratio(2 * precision * recall, precision + recall),
        "yes_ratio": safe_ratio(tp + fp, len(gold)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def score_pope(samples: Iterable[POPESample], predictions: Mapping[str, str]) -> BenchmarkResult:
    """Metrics per split, their mean over the splits present (`mean/...`), and over all questions
    pooled (`all/...`). The table shows the mean F1 over the splits (x100)."""
    samples = list(samples)
    responses = match_predictions([s.id for s in samples], predictions, "pope")
    parsed = [parse_yes_no(r) for r in responses]
    metrics: dict[str, float] = {}
    present = [s for s in SPLITS if any(x.split == s for x in samples)]
    for split in present:
        idx = [i for i, s in enumerate(samples) if s.split == split]
        split_metrics = binary_metrics([samples[i].answer for i in idx], [parsed[i] for i in idx])
        metrics.update({f"{split}/{k}": v for k, v in split_metrics.items()})
    for name in ("acc", "precision", "recall", "f1", "yes_ratio"):
        if present:
            metrics[f"mean/{name}"] = sum(metrics[f"{s}/{name}"] for s in present) / len(present)
    pooled = binary_metrics([s.answer for s in samples], parsed)
    metrics.update({f"all/{k}": v for k, v in pooled.items()})
    return BenchmarkResult(
        "POPE",
        metrics,
        [
            Column("POPE", "mean/f1", digits=1, scale=100.0),
            *(Column(f"{s.capitalize()} F1", f"{s}/f1", digits=1, scale=100.0) for s in present),
        ],
        {"num_samples": len(samples), "splits": present},
    )
