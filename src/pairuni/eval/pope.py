"""POPE: loaders for the lmms-lab/POPE parquet and the official question files, and the official
metrics per split (random / popular / adversarial): accuracy, precision, recall, F1, yes-ratio.

The answer rule follows the official `evaluate.py` of AoiDragon/POPE (commit f3ec604): keep the
first sentence (up to the first `.`), drop commas, split on spaces; the answer is `no` if a word
is exactly `No`, `no` or `not`, otherwise `yes`. "Yes" is the positive class.

An RL-format reply (`<think>…</think><answer>X</answer>`) is first reduced to its answer
(`pairuni.eval.answers.answer_text`), so the rule reads X and not the reasoning.

Two protocols differ only in the headline (the table's POPE column); both report every number:

- `official`: the mean of the per-split F1 (the official script scores each split on its own);
- `vlmevalkit`: the F1 pooled over all questions of the three splits, VLMEvalKit's "Overall"
  (`POPE_rating` in vlmeval/dataset/utils/yorn.py, commit 0c7163c, reported as "Overall F1" by
  `ImageYORNDataset.report_primary_metric` in vlmeval/dataset/image_yorn.py, commit 145bdaf).

Both parse replies with the official rule. VLMEvalKit's own extraction (`YOrN_Extraction`: yes
without no, or no without yes, else Unknown, which is wrong, or an LLM judge's call) is not used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pairuni.eval.answers import AnswerSpan, answer_text
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

POPEProtocol = Literal["official", "vlmevalkit"]
POPE_PROTOCOLS: tuple[str, ...] = ("official", "vlmevalkit")

FULL_FOLDER = "full"
"""lmms-lab/POPE's `Full` config folder (compared case-insensitively): the same questions as the
standard `data/` files, one file per split. Loaded only when it is all a snapshot has."""

# A reply names an answer when it holds a yes or a no word (case-insensitive, whole words). Only
# the `unparsed` diagnostic uses this; scoring keeps the official rule.
_YES_OR_NO = re.compile(r"\b(yes|no|not)\b", re.IGNORECASE)


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
    coco_pope_<split>.json question files with a val2014/ image folder.

    A snapshot of lmms-lab/POPE holds the standard splits in `data/` and the same questions again
    in `Full/`; `Full/` is read only when there are no other parquet files."""
    base = require_dir(root, "pope")
    parquet = release_files(base, sorted(base.glob("**/*.parquet")))
    if parquet:
        yield from load_parquet_files(base, parquet)
        return
    question_files = [base / f"coco_pope_{split}.json" for split in SPLITS]
    present = [p for p in question_files if p.is_file()]
    if not present:
        raise not_found("pope", base, "neither parquet files nor coco_pope_<split>.json files")
    for path in present:
        yield from load_official(path, base / "val2014")


def in_full_config(base: Path, path: Path) -> bool:
    return any(part.lower() == FULL_FOLDER for part in path.relative_to(base).parts[:-1])


def release_files(base: Path, parquet: list[Path]) -> list[Path]:
    """The standard files, or the `Full/` ones when there are no others. Reading both would
    yield every question twice (the Hub's `Full` config repeats the default one)."""
    standard = [p for p in parquet if not in_full_config(base, p)]
    return standard or parquet


def load_parquet_files(base: Path, files: list[Path]) -> Iterator[POPESample]:
    seen: dict[str, Path] = {}
    for path in files:
        named = split_of_file(path.relative_to(base)) if in_full_config(base, path) else None
        for sample in load_parquet(path, named):
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


def gold_label(value: str, path: Path, where: str) -> str:
    label = value.strip().lower()
    if label not in ("yes", "no"):
        raise data_error(path, where, "answer", f"is {value!r}", "POPE labels are yes or no")
    return label


def split_of_file(relative: Path) -> str | None:
    """The split a `Full/` file (its path under the benchmark folder) is named for:
    `Full/random-00000-of-00001.parquet` (the Hub's files) or `Full/random/0000.parquet` (its
    parquet-converter branch). The standard files (`data/test-*.parquet`) name none."""
    for name in (relative.stem, relative.parent.name):
        head = name.split("-")[0].lower()
        if head in SPLITS:
            return head
    return None


def row_split(record: Mapping[str, object], path: Path, where: str, named: str | None) -> str:
    """The split of one row: its `category`, else the split its file is named for."""
    if record.get("category") is None and named is not None:
        return named
    split = require_str(record, "category", path, where)
    if split not in SPLITS:
        raise data_error(path, where, "category", f"is {split!r}", f"expected one of {SPLITS}")
    if named is not None and split != named:
        raise data_error(
            path, where, "category", f"is {split!r} in a file named for {named!r}", "re-download it"
        )
    return split


def load_parquet(path: Path, named: str | None = None) -> Iterator[POPESample]:
    """The rows of one parquet file; `named` is the split its name gives (used when a row has
    no `category`, and checked against it when it has)."""
    for row, record in read_parquet_rows(path):
        where = f"row {row}"
        split = row_split(record, path, where, named)
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


def names_an_answer(text: str) -> bool:
    """Whether `text` holds a yes or a no word. The official rule reads anything else as yes
    (an empty or cut-off reply too), so such replies are counted as `unparsed`."""
    return _YES_OR_NO.search(text) is not None


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


def split_metrics(
    samples: list[POPESample], parsed: list[str], present: list[str]
) -> dict[str, float]:
    """`<split>/...` per split, `mean/...` over the splits, `all/...` over all questions."""
    metrics: dict[str, float] = {}
    for split in present:
        idx = [i for i, s in enumerate(samples) if s.split == split]
        found = binary_metrics([samples[i].answer for i in idx], [parsed[i] for i in idx])
        metrics.update({f"{split}/{k}": v for k, v in found.items()})
    for name in ("acc", "precision", "recall", "f1", "yes_ratio"):
        if present:
            metrics[f"mean/{name}"] = sum(metrics[f"{s}/{name}"] for s in present) / len(present)
    # Pooled over every question, as VLMEvalKit's "Overall" (a question asked in two splits
    # counts in both there too: POPE_rating explodes its comma-separated categories first).
    pooled = binary_metrics([s.answer for s in samples], parsed)
    metrics.update({f"all/{k}": v for k, v in pooled.items()})
    return metrics


def pope_columns(protocol: str, present: list[str]) -> list[Column]:
    """The protocol's headline first (the main table shows it), then the other F1, per split."""
    headline, second = ("mean/f1", "all/f1") if protocol == "official" else ("all/f1", "mean/f1")
    header = "Pooled F1" if second == "all/f1" else "Mean F1"
    return [
        Column("POPE", headline, digits=1, scale=100.0),
        Column(header, second, digits=1, scale=100.0),
        *(Column(f"{s.capitalize()} F1", f"{s}/f1", digits=1, scale=100.0) for s in present),
    ]


def score_pope(
    samples: Iterable[POPESample],
    predictions: Mapping[str, str],
    *,
    answer_span: AnswerSpan = "auto",
    protocol: POPEProtocol = "official",
) -> BenchmarkResult:
    """Metrics per split, their mean over the splits present (`mean/...`), over all questions
    pooled (`all/...`), and `unparsed` (replies with no yes or no word after `answer_span`).
    The table's POPE column is the mean F1 (`official`) or the pooled F1 (`vlmevalkit`), x100."""
    if protocol not in POPE_PROTOCOLS:
        raise ValueError(
            f"POPE protocol must be one of {', '.join(POPE_PROTOCOLS)}, got {protocol!r}"
        )
    samples = list(samples)
    responses = match_predictions([s.id for s in samples], predictions, "pope")
    answers = [answer_text(r, answer_span) for r in responses]
    parsed = [parse_yes_no(a) for a in answers]
    unparsed = [s.id for s, a in zip(samples, answers, strict=True) if not names_an_answer(a)]
    present = [s for s in SPLITS if any(x.split == s for x in samples)]
    metrics = split_metrics(samples, parsed, present)
    metrics["unparsed"] = len(unparsed)
    details = {
        "num_samples": len(samples),
        "splits": present,
        "protocol": protocol,
        "answer_span": answer_span,
        "unparsed": unparsed,
    }
    return BenchmarkResult("POPE", metrics, pope_columns(protocol, present), details)
