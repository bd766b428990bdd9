"""MMMU (validation split): loader for the Hugging Face parquet release and the official scorer.

The answer parsing follows MMMU-Benchmark/MMMU `eval/eval_utils.py` (parse_multi_choice_response,
parse_open_response, eval_multi_choice, eval_open) rule for rule; the reported accuracy is
instance-level over all samples, as in `main_eval_only.py`. Departures are listed in docs/eval.md.
"""

from __future__ import annotations

import ast
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    require_str,
)
from pairuni.eval.results import BenchmarkResult, Column

MAX_IMAGES = 7
"""MMMU rows carry up to seven images, in columns image_1 .. image_7."""

DOMAINS: dict[str, tuple[str, ...]] = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}
"""MMMU's six disciplines and their 30 subjects (the official DOMAIN_CAT2SUB_CAT)."""


@dataclass(frozen=True)
class MMMUSample:
    """One MMMU question.

    `question` keeps the `<image k>` placeholders; `images[k-1]` is image k. For a
    multiple-choice question `options` lists the choices (A, B, ... in order) and `answer` is a
    letter; for an open question `options` is empty and `answer` lists the accepted answers.
    """

    id: str
    subject: str
    question: str
    options: tuple[str, ...]
    answer: str | tuple[str, ...]
    question_type: str
    images: tuple[ImageRef, ...]

    @property
    def choices(self) -> list[str]:
        """The option letters, `A` for the first option."""
        return [chr(ord("A") + i) for i in range(len(self.options))]

    def prompt(self) -> str:
        """The official evaluation prompt (MMMU `configs/llava1.5.yaml`): the question, the
        options as `(A) text` lines, then the answer-format instruction."""
        if self.question_type != "multiple-choice":
            return f"{self.question}\n\nAnswer the question using a single word or phrase."
        options = "\n".join(f"({c}) {o}" for c, o in zip(self.choices, self.options, strict=True))
        return (
            f"{self.question}\n\n{options}\n\n"
            "Answer with the option's letter from the given choices directly."
        )


def subject_of(sample_id: str) -> str:
    """`validation_Art_Theory_12` -> `Art_Theory` (the official grouping by id)."""
    return "_".join(sample_id.split("_")[1:-1])


def load_mmmu(root: str | Path, split: str = "validation") -> Iterator[MMMUSample]:
    """Yield the samples of one split from the MMMU parquet release (one folder per subject)."""
    base = require_dir(root, "mmmu")
    files = sorted(base.glob(f"*/{split}-*.parquet"))
    if not files:
        raise not_found("mmmu", base, f"no <Subject>/{split}-*.parquet files")
    for path in files:
        for row, record in read_parquet_rows(path):
            yield parse_record(record, path, f"row {row}")


def parse_record(record: Mapping[str, object], path: Path, where: str) -> MMMUSample:
    sample_id = require_str(record, "id", path, where)
    where = f"{where} (id {sample_id})"
    qtype = require_str(record, "question_type", path, where)
    if qtype not in ("multiple-choice", "open"):
        raise data_error(
            path, where, "question_type", f"is {qtype!r}", "expected multiple-choice or open"
        )
    options = parse_options(require_str(record, "options", path, where), path, where)
    raw_answer = require_str(record, "answer", path, where)
    answer: str | tuple[str, ...] = raw_answer
    if qtype == "open":
        answer = parse_open_gold(raw_answer)
    elif not options:
        raise data_error(path, where, "options", "is empty for a multiple-choice question", "")
    images = tuple(
        image_bytes(record[f"image_{k}"], path, where, f"image_{k}")
        for k in range(1, MAX_IMAGES + 1)
        if record.get(f"image_{k}") is not None
    )
    return MMMUSample(
        id=sample_id,
        subject=subject_of(sample_id),
        question=require_str(record, "question", path, where),
        options=options,
        answer=answer,
        question_type=qtype,
        images=images,
    )


def parse_options(text: str, path: Path, where: str) -> tuple[str, ...]:
    """MMMU stores options as a stringified Python list, e.g. "['1', '2']"."""
    try:
        value = ast.literal_eval(text) if text.strip() else []
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise data_error(
            path, where, "options", f"is not a list of strings ({text[:60]!r})", "re-download"
        )
    return tuple(value)


def parse_open_gold(text: str) -> tuple[str, ...]:
    """Some open answers are stringified lists of accepted answers ("['24', '24.0']")."""
    if text.strip().startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, list) and value:
            return tuple(str(v) for v in value)
    return (text,)


# --------------------------------------------------------------------------- multiple choice

STRIPPED_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'")


def parse_multi_choice(
    response: str, choices: Sequence[str], index2ans: Mapping[str, str], rng: random.Random
) -> str:
    """The letter a free-form response picks, by the official rules, in order:

    1. `(A)`-style letters anywhere; 2. else ` A `-style letters between spaces; 3. else, if the
    response has more than 5 words, options whose text appears in it (case-insensitive);
    4. several candidates -> the one that occurs last; 5. none -> a random letter.
    """
    # One pass per character, in this order, exactly as the official `strip` loop.
    for char in STRIPPED_PUNCTUATION:
        response = response.strip(char)
    padded = f" {response} "

    candidates = [c for c in choices if f"({c})" in padded]
    marker = "bracket" if candidates else "letter"
    if not candidates:
        candidates = [c for c in choices if f" {c} " in padded]
    if not candidates and len(padded.split()) > 5:
        lowered = padded.lower()
        candidates = [c for c, text in index2ans.items() if text.lower() in lowered]
        marker = "content"

    if not candidates:
        return rng.choice(list(choices))
    if len(candidates) == 1:
        return candidates[0]
    return max(candidates, key=lambda c: last_position(padded, c, marker, index2ans))


def last_position(padded: str, choice: str, marker: str, index2ans: Mapping[str, str]) -> int:
    """Where a candidate occurs last; `max` keeps the first of equal positions, like argmax."""
    if marker == "bracket":
        return padded.rfind(f"({choice})")
    if marker == "letter":
        return padded.rfind(f" {choice} ")
    return padded.lower().rfind(index2ans[choice].lower())


# --------------------------------------------------------------------------- open questions

KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
TRIVIAL_TAILS = (":", ",", ".", "!", "?", ";", "'")

# Numbers as the official extractor sees them: with thousands separators, in scientific notation,
# and plain (a plain number may not be the mantissa of a scientific one, nor run into a comma).
THOUSANDS_RE = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
SCIENTIFIC_RE = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
PLAIN_RE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")

Normalized = str | float


def extract_numbers(text: str) -> list[str]:
    """Every number in `text`, as strings: thousands-separated, then scientific, then plain."""
    return [*THOUSANDS_RE.findall(text), *SCIENTIFIC_RE.findall(text), *PLAIN_RE.findall(text)]


def is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_answer(text: str) -> list[Normalized]:
    """A number becomes its float rounded to 2 decimals; other text is lower-cased, and a single
    character is padded with a space on either side so that it cannot match inside a word."""
    text = text.strip()
    if is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [f" {text}", f"{text} "]
    return [text]


def key_subresponses(response: str) -> list[str]:
    """The tails of the response most likely to hold the answer (after `is`, `so`, `=`...)."""
    response = response.strip().strip(".").lower()
    # The official split also tries `. ` before a capital letter, but it runs on the lower-cased
    # text, so in effect only newlines split the response. Kept as is to reproduce its scores.
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys: list[str] = []
    for index, part in enumerate(parts):
        indicators = KEY_INDICATORS + (("=",) if index == len(parts) - 1 else ())
        shortest: str | None = None
        for indicator in indicators:
            if indicator not in part:
                continue
            tail = part.split(indicator)[-1].strip()
            # An empty tail counts as "none yet", as in the official `if not shortest`.
            if not shortest or len(tail) < len(shortest):
                shortest = tail
        if shortest and shortest.strip() not in TRIVIAL_TAILS:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list[Normalized]:
    """The normalised candidate answers in an open response (strings and rounded floats)."""
    keys = key_subresponses(response)
    raw = list(keys)
    for key in keys:
        raw.extend(extract_numbers(key))
    out: list[Normalized] = []
    for item in raw:
        for norm in normalize_answer(item):
            if norm not in out:
                out.append(norm)
    return out


def eval_open(gold: Iterable[str], predicted: Sequence[Normalized]) -> bool:
    """Correct if a predicted number equals a gold number, or a gold string is a substring of a
    predicted string."""
    golds = [norm for answer in gold for norm in normalize_answer(answer)]
    for pred in predicted:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


# --------------------------------------------------------------------------- scoring


def judge_mmmu(sample: MMMUSample, response: str, rng: random.Random) -> tuple[bool, object]:
    """(correct, parsed prediction) for one response."""
    if sample.question_type == "multiple-choice":
        index2ans = dict(zip(sample.choices, sample.options, strict=True))
        letter = parse_multi_choice(response, sample.choices, index2ans, rng)
        return letter == sample.answer, letter
    parsed = parse_open(response)
    gold = sample.answer if isinstance(sample.answer, tuple) else (sample.answer,)
    return eval_open(gold, parsed), parsed


def score_mmmu(
    samples: Iterable[MMMUSample], predictions: Mapping[str, str], seed: int = 42
) -> BenchmarkResult:
    """Accuracy overall, per subject and per discipline (instance-level, as the official script).

    `predictions` maps sample id -> model response. Unparseable multiple-choice responses get a
    random letter from a generator seeded with `seed` (the official script seeds 42 globally), so
    scores are reproducible run to run.
    """
    samples = sorted(samples, key=lambda s: s.id)
    responses = match_predictions([s.id for s in samples], predictions, "mmmu")
    rng = random.Random(seed)
    by_subject: dict[str, list[bool]] = defaultdict(list)
    judged = []
    for sample, response in zip(samples, responses, strict=True):
        correct, parsed = judge_mmmu(sample, response, rng)
        by_subject[sample.subject].append(correct)
        judged.append({"id": sample.id, "parsed": parsed, "correct": correct})
    metrics = aggregate(by_subject)
    return BenchmarkResult(
        "MMMU",
        metrics,
        [Column("MMMU", "acc", digits=1, scale=100.0)],
        {"samples": judged, "num_samples": len(samples)},
    )


def aggregate(by_subject: Mapping[str, list[bool]]) -> dict[str, float]:
    everything = [c for results in by_subject.values() for c in results]
    metrics = {"acc": sum(everything) / len(everything) if everything else 0.0}
    for subject, results in sorted(by_subject.items()):
        metrics[f"subject/{subject}/acc"] = sum(results) / len(results)
    for domain, subjects in DOMAINS.items():
        pooled = [c for s in subjects for c in by_subject.get(s, [])]
        if pooled:
            metrics[f"domain/{domain}/acc"] = sum(pooled) / len(pooled)
    return metrics
