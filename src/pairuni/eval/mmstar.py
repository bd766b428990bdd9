"""MMStar: loader for the Lin-Chen/MMStar parquet release and accuracy per category.

MMStar is scored with VLMEvalKit's multiple-choice matcher (`vlmeval/utils/matching_util.py`,
can_infer_option then can_infer_text): the response names exactly one option letter, or contains
exactly one option's text. VLMEvalKit falls back to a GPT judge for the rest; we count them wrong
and report how many there were (`unmatched`). See docs/eval.md.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pairuni.eval.layout import (
    ImageRef,
    data_error,
    image_bytes,
    match_predictions,
    not_found,
    read_parquet_rows,
    require_dir,
    require_field,
    require_str,
)
from pairuni.eval.results import BenchmarkResult, Column

CATEGORIES = (
    "coarse perception",
    "fine-grained perception",
    "instance reasoning",
    "logical reasoning",
    "math",
    "science & technology",
)
"""MMStar's six core capabilities (250 questions each)."""


@dataclass(frozen=True)
class MMStarSample:
    """One MMStar question. `question` embeds the options (`Options: A: ..., B: ...`); `options`
    maps each letter to its text as parsed from it (empty when the text has no option list)."""

    id: str
    question: str
    image: ImageRef
    answer: str
    category: str
    l2_category: str
    options: dict[str, str]


# `A: text` or `A. text` items after "Options:"; an item ends where the next letter starts.
OPTION_RE = re.compile(r"(?:^|[\s,])([A-F])[:.]\s*(.*?)(?=(?:,\s*|\s+)[A-F][:.]\s|$)", re.S)


def parse_options(question: str) -> dict[str, str]:
    """{letter: text} from the `Options:` part of an MMStar question."""
    _, sep, tail = question.rpartition("Options:")
    if not sep:
        return {}
    # Trailing `,` / `.` are dropped so that "A: The cat is on the mat." matches a response that
    # quotes the option without its final period.
    return {m.group(1): m.group(2).strip().rstrip(",.").strip() for m in OPTION_RE.finditer(tail)}


def load_mmstar(root: str | Path) -> Iterator[MMStarSample]:
    """Yield every MMStar question from the parquet file(s) in `root`."""
    base = require_dir(root, "mmstar")
    files = sorted(base.glob("*.parquet")) or sorted(base.glob("**/*.parquet"))
    if not files:
        raise not_found("mmstar", base, "no parquet file")
    for path in files:
        for row, record in read_parquet_rows(path):
            yield parse_record(record, path, f"row {row}")


def parse_record(record: Mapping[str, object], path: Path, where: str) -> MMStarSample:
    index = require_field(record, "index", path, where)
    where = f"{where} (index {index})"
    answer = require_str(record, "answer", path, where).strip()
    if not re.fullmatch(r"[A-F]", answer):
        raise data_error(path, where, "answer", f"is {answer!r}", "expected one letter A-F")
    question = require_str(record, "question", path, where)
    return MMStarSample(
        id=str(index),
        question=question,
        image=image_bytes(require_field(record, "image", path, where), path, where, "image"),
        answer=answer,
        category=require_str(record, "category", path, where),
        l2_category=require_str(record, "l2_category", path, where),
        options=parse_options(question),
    )


MATCH_PUNCTUATION = ".()[],:;!*#{}"


def match_option_letter(response: str, letters: Iterable[str]) -> str | None:
    """The single option letter a response names as a word, else None.

    Punctuation becomes spaces and the response splits into words; exactly one distinct letter
    must appear. A lone `A` in a response of more than three words is rejected: it is more likely
    the article than an answer.
    """
    text = response
    for char in MATCH_PUNCTUATION:
        text = text.replace(char, " ")
    words = text.split()
    found = [letter for letter in letters if letter in words]
    if len(found) != 1:
        return None
    if "A" in words and len(words) > 3:
        return None
    return found[0]


def match_option_text(response: str, options: Mapping[str, str]) -> str | None:
    """The single option whose text appears in the response (case-insensitive), else None."""
    lowered = response.lower()
    found = [letter for letter, text in options.items() if text and text.lower() in lowered]
    return found[0] if len(found) == 1 else None


def extract_choice(response: str, sample: MMStarSample) -> str | None:
    letters = sorted(sample.options) or ["A", "B", "C", "D"]
    return match_option_letter(response, letters) or match_option_text(response, sample.options)


def score_mmstar(
    samples: Iterable[MMStarSample], predictions: Mapping[str, str]
) -> BenchmarkResult:
    """Accuracy overall, per core category and per l2 category."""
    samples = list(samples)
    responses = match_predictions([s.id for s in samples], predictions, "mmstar")
    by_category: dict[str, list[bool]] = defaultdict(list)
    by_l2: dict[str, list[bool]] = defaultdict(list)
    judged = []
    unmatched = 0
    for sample, response in zip(samples, responses, strict=True):
        choice = extract_choice(response, sample)
        unmatched += choice is None
        correct = choice == sample.answer
        by_category[sample.category].append(correct)
        by_l2[sample.l2_category].append(correct)
        judged.append({"id": sample.id, "parsed": choice, "correct": correct})
    pooled = [c for results in by_category.values() for c in results]
    metrics = {"acc": sum(pooled) / len(pooled) if pooled else 0.0}
    metrics.update({f"category/{k}/acc": sum(v) / len(v) for k, v in sorted(by_category.items())})
    metrics.update({f"l2_category/{k}/acc": sum(v) / len(v) for k, v in sorted(by_l2.items())})
    return BenchmarkResult(
        "MMStar",
        metrics,
        [Column("MMStar", "acc", digits=1, scale=100.0)],
        {"samples": judged, "unmatched": unmatched, "num_samples": len(samples)},
    )
