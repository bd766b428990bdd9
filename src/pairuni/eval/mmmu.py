"""MMMU: loader for the Hugging Face parquet release, the prompts, and two scoring protocols.

`official` (the default) reproduces MMMU-Benchmark/MMMU, read at commit bb0b95a (2025-05-19); the
files below last changed in 78e9c75 (2023-12-16) and moved from `eval/` to `mmmu/` in aa9b70d:

- the prompt of `mmmu/configs/llava1.5.yaml`, as `mmmu/utils/data_utils.py` (construct_prompt)
  fills it (`MMMUSample.prompt`);
- the answer parsing of `mmmu/utils/eval_utils.py` (parse_multi_choice_response,
  parse_open_response, eval_multi_choice, eval_open), rule for rule; the accuracy is
  instance-level over all samples, as in `mmmu/main_eval_only.py`.

`vlmevalkit` reproduces the protocol behind the published Janus-Pro numbers: VLMEvalKit's
MMMU_DEV_VAL (the dev and validation splits), asked with the prompt VLMEvalKit gives Janus
(`mmmu_vlmevalkit_prompt`) and scored by its rule-based option matcher, with no GPT judge
(`exact_matching`). It follows open-compass/VLMEvalKit at commit 79d54e2a (2025-01-27, the day
Janus-Pro came out); the parts reproduced are the same at tag v0.2 (e4e02637, 2025-03-22). The
file behind each rule is named where it is written.

Either way a reply is first reduced to its answer (`answers.answer_text`, so that an RL-format
`<think>…</think><answer>X</answer>` reply is read as X), and replies in which the parser finds
no answer are counted (`unparsed`). Departures are listed in docs/eval.md.
"""

from __future__ import annotations

import ast
import random
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    read_parquet_rows,
    require_dir,
    require_str,
)
from pairuni.eval.results import BenchmarkResult, Column

MAX_IMAGES = 7
"""MMMU rows carry up to seven images, in columns image_1 .. image_7."""

MMMUProtocol = Literal["official", "vlmevalkit"]
MMMU_PROTOCOLS: tuple[str, ...] = ("official", "vlmevalkit")

PROTOCOL_SPLITS: dict[str, tuple[str, ...]] = {
    "official": ("validation",),
    # VLMEvalKit's MMMU_DEV_VAL holds both; it reports each split on its own (report_acc in
    # vlmeval/dataset/utils/multiple_choice.py groups by the `split` column), and the published
    # MMMU number is the validation one.
    "vlmevalkit": ("dev", "validation"),
}
"""The splits each protocol loads (pass them to `load_mmmu(root, split=...)`)."""

HEADLINE_SPLIT = "validation"

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

# The official templates (mmmu/configs/llava1.5.yaml, task_instructions empty). They are YAML
# double-quoted scalars written over several lines, and YAML folds each blank line into one
# newline, so they read "{}\n{}\nAnswer with ..." and "{}\nAnswer the question ...".
# construct_prompt fills the second {} with `(A) text\n` lines, each ending in a newline, so one
# blank line parts the options from the instruction but none parts the question from the options.
OFFICIAL_MC_TEMPLATE = (
    "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
)
OFFICIAL_OPEN_TEMPLATE = "{question}\nAnswer the question using a single word or phrase."

# VLMEvalKit's instructions for Janus (Janus.build_prompt in vlmeval/vlm/janus.py, commit 79d54e2a;
# unchanged since b3a2f817, 2024-10-23). The trailing space of the open one is VLMEvalKit's.
VLMEVALKIT_MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
VLMEVALKIT_OPEN_INSTRUCTION = "Answer the question directly. "


@dataclass(frozen=True)
class MMMUSample:
    """One MMMU question.

    `question` keeps the `<image k>` placeholders; `images[k-1]` is image k. For a
    multiple-choice question `options` lists the choices (A, B, ... in order) and `answer` is a
    letter; for an open question `options` is empty and `answer` lists the accepted answers.
    `raw_answer` is the release's `answer` field as stored (VLMEvalKit matches open questions
    against that text); `None` for a sample built by hand (see `stored_answer`).
    """

    id: str
    subject: str
    question: str
    options: tuple[str, ...]
    answer: str | tuple[str, ...]
    question_type: str
    images: tuple[ImageRef, ...]
    raw_answer: str | None = None

    @property
    def choices(self) -> list[str]:
        """The option letters, `A` for the first option."""
        return [chr(ord("A") + i) for i in range(len(self.options))]

    @property
    def split(self) -> str:
        """`dev_Art_1` -> `dev`, `validation_Art_1` -> `validation` (ids start with the split)."""
        return self.id.split("_", 1)[0]

    def stored_answer(self) -> str:
        """The `answer` field as the release stores it: `raw_answer`, else rebuilt from `answer`
        (one string, or a stringified list of several accepted answers)."""
        if self.raw_answer is not None:
            return self.raw_answer
        if isinstance(self.answer, str):
            return self.answer
        return self.answer[0] if len(self.answer) == 1 else str(list(self.answer))

    def prompt(self) -> str:
        """The official evaluation prompt (MMMU `configs/llava1.5.yaml`): the question, the
        options as `(A) text` lines, a blank line, then the letter instruction; for an open
        question, the question, then the short-answer instruction on the next line."""
        if self.question_type != "multiple-choice":
            return OFFICIAL_OPEN_TEMPLATE.format(question=self.question)
        options = "".join(f"({c}) {o}\n" for c, o in zip(self.choices, self.options, strict=True))
        return OFFICIAL_MC_TEMPLATE.format(question=self.question, options=options)


def mmmu_vlmevalkit_prompt(sample: MMMUSample, hint: str | None = None) -> str:
    """The text VLMEvalKit asks Janus for an MMMU question (Janus.build_prompt, MCQ branch):
    an optional `Hint: ...` line, the question, then `A. text` lines, a blank line and the letter
    instruction; with no options, the question and "Answer the question directly. ".

    VLMEvalKit's text starts with a newline, which separates it from the image placeholders that
    Janus puts first; that separator is the chat formatting's job and is left out here. The
    `<image k>` tags stay in the question: Janus's own prompt does not split the text at them.
    MMMU rows carry no hint (the parquet has no such field), so the runner passes none.
    """
    head = f"Hint: {hint}\n" if hint is not None else ""
    # VLMEvalKit decides by the option columns present, not by question_type.
    if not sample.options:
        return f"{head}{sample.question}\n{VLMEVALKIT_OPEN_INSTRUCTION}"
    lines = "".join(f"{c}. {o}\n" for c, o in zip(sample.choices, sample.options, strict=True))
    return f"{head}{sample.question}\n{lines}\n{VLMEVALKIT_MC_INSTRUCTION}"


def mmmu_splits(protocol: str) -> tuple[str, ...]:
    """The splits `protocol` is scored on (official: validation; vlmevalkit: dev, validation)."""
    check_protocol(protocol)
    return PROTOCOL_SPLITS[protocol]


def check_protocol(protocol: str) -> None:
    if protocol not in MMMU_PROTOCOLS:
        raise ValueError(
            f"MMMU protocol must be one of {', '.join(MMMU_PROTOCOLS)}, got {protocol!r}"
        )


def subject_of(sample_id: str) -> str:
    """`validation_Art_Theory_12` -> `Art_Theory` (the official grouping by id)."""
    return "_".join(sample_id.split("_")[1:-1])


def load_mmmu(root: str | Path, split: str | Sequence[str] = "validation") -> Iterator[MMMUSample]:
    """Yield the samples of one split, or of several in the order given, from the MMMU parquet
    release (one folder per subject, each with dev, validation and test files). A split with no
    files is an error: a protocol scored on a part of its data would not be comparable."""
    base = require_dir(root, "mmmu")
    splits = (split,) if isinstance(split, str) else tuple(split)
    files = {name: sorted(base.glob(f"*/{name}-*.parquet")) for name in splits}
    for name, found in files.items():
        if not found:
            raise not_found("mmmu", base, f"no <Subject>/{name}-*.parquet files")
    for name in splits:
        for path in files[name]:
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
        raw_answer=raw_answer,
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
    """The letter a free-form response picks, by the official rules (`find_multi_choice`), or,
    when they find none, a random letter drawn from `rng` (the official fallback)."""
    found = find_multi_choice(response, choices, index2ans)
    return found if found is not None else rng.choice(list(choices))


def find_multi_choice(
    response: str, choices: Sequence[str], index2ans: Mapping[str, str]
) -> str | None:
    """The letter the official rules find, in order, or None:

    1. `(A)`-style letters anywhere; 2. else ` A `-style letters between spaces; 3. else, if the
    response has more than 5 words, options whose text appears in it (case-insensitive);
    4. several candidates -> the one that occurs last.
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
        return None
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


def has_candidate(parsed: Sequence[Normalized]) -> bool:
    """Whether the open-question parser found anything to compare: it falls back to the whole
    response, so it finds nothing only in an empty one (e.g. a reply cut off in `<think>`)."""
    return any(not isinstance(p, str) or p.strip() for p in parsed)


# --------------------------------------------------------------------------- VLMEvalKit matching

# VLMEvalKit's rule-based matcher, `can_infer` = can_infer_option, else can_infer_text
# (vlmeval/utils/matching_util.py, commit 79d54e2a; unchanged from c6bdffd3, 2024-03-19, until
# c3371551, 2025-08-04, which added a position rule and a length limit; neither is reproduced).
VLMEVALKIT_PUNCTUATION = ".()[],:;!*#{}"
VLMEVALKIT_API_FAILURE = "Failed to obtain answer via API"
VLMEVALKIT_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
REFUSED = "Z"
"""VLMEvalKit's letter for a refusal; no MMMU answer is Z, so it always counts wrong."""

# MMMU_preproc (vlmeval/dataset/utils/multiple_choice.py, commit 79d54e2a): at scoring time an
# open question (no option A) becomes a two-option one, A = the gold answer text, B = this.
OPEN_OTHER_OPTION = "Other Answers"


def vlmevalkit_option_letter(reply: str, letters: Iterable[str]) -> str | None:
    """can_infer_option: punctuation becomes spaces; exactly one option letter among the words
    -> that letter; no letter but a `Z` word, or a known refusal -> `Z`; else None.

    VLMEvalKit rejects a lone `A` in more than three words (as an article) only when the VERBOSE
    environment variable is set; a default run does not, and neither does this.
    """
    if VLMEVALKIT_API_FAILURE in reply:
        return None
    if any(refusal in reply for refusal in VLMEVALKIT_REFUSALS):
        return REFUSED
    text = reply
    for char in VLMEVALKIT_PUNCTUATION:
        text = text.replace(char, " ")
    words = text.split()
    found = [letter for letter in letters if letter in words]
    if len(found) == 1:
        return found[0]
    if not found and REFUSED in words:
        return REFUSED
    return None


def vlmevalkit_option_text(reply: str, options: Mapping[str, str]) -> str | None:
    """can_infer_text: the one option whose text (lower-cased) is in the lower-cased reply."""
    lowered = reply.lower()
    found = [letter for letter, text in options.items() if text.lower() in lowered]
    return found[0] if len(found) == 1 else None


def vlmevalkit_match(reply: str, options: Mapping[str, str]) -> str | None:
    """The letter VLMEvalKit reads from a reply (can_infer), or None where it reads none (its
    exact_matching mode then records `Z`, which counts wrong)."""
    return vlmevalkit_option_letter(reply, options) or vlmevalkit_option_text(reply, options)


def vlmevalkit_options(sample: MMMUSample) -> dict[str, str]:
    """The options VLMEvalKit matches against, after MMMU_preproc: the sample's own, or, for an
    open question, A = the stored gold answer text and B = "Other Answers"."""
    options = dict(zip(sample.choices, sample.options, strict=True))
    if "A" not in options:
        options.update(A=sample.stored_answer(), B=OPEN_OTHER_OPTION)
    return options


def vlmevalkit_gold(sample: MMMUSample) -> str:
    """mcq_vanilla_eval's gold letter: the answer when it is one capital letter, else `A` (so an
    open question's gold is its pseudo-option A)."""
    answer = sample.stored_answer()
    return answer if len(answer) == 1 and answer in string.ascii_uppercase else "A"


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Verdict:
    """One reply judged: what the parser read, whether it is right, and whether the parser found
    no answer in it (`unparsed`: then the official rules draw a random letter or compare the empty
    reply, and VLMEvalKit's exact matching records `Z`)."""

    parsed: object
    correct: bool
    unparsed: bool


def judge_official(sample: MMMUSample, answer: str, rng: random.Random) -> Verdict:
    if sample.question_type == "multiple-choice":
        index2ans = dict(zip(sample.choices, sample.options, strict=True))
        found = find_multi_choice(answer, sample.choices, index2ans)
        letter = found if found is not None else rng.choice(sample.choices)
        return Verdict(letter, letter == sample.answer, found is None)
    parsed = parse_open(answer)
    gold = sample.answer if isinstance(sample.answer, tuple) else (sample.answer,)
    return Verdict(parsed, eval_open(gold, parsed), not has_candidate(parsed))


def judge_vlmevalkit(sample: MMMUSample, answer: str) -> Verdict:
    options = vlmevalkit_options(sample)
    letter = vlmevalkit_match(answer, options)
    unparsed = letter is None or letter not in options
    return Verdict(letter, letter == vlmevalkit_gold(sample), unparsed)


def score_mmmu(
    samples: Iterable[MMMUSample],
    predictions: Mapping[str, str],
    *,
    seed: int = 42,
    answer_span: AnswerSpan = "auto",
    protocol: MMMUProtocol = "official",
) -> BenchmarkResult:
    """Accuracy overall, per subject, per discipline and per split, and `unparsed`.

    `predictions` maps sample id -> model response; each is first reduced by `answer_text(...,
    answer_span)`. `official`: instance-level accuracy over all samples, as the official script;
    an unparsable multiple-choice response gets a random letter from a generator seeded with
    `seed` (the official script seeds 42 globally), drawn in sorted-id order, so scores are
    reproducible. `vlmevalkit`: `acc` (and the subject / discipline breakdown) is over the
    validation split, VLMEvalKit's headline MMMU number (over all samples when none is from
    validation); `split/<split>/acc` gives each split; `seed` is unused (no random fallback).
    """
    check_protocol(protocol)
    samples = sorted(samples, key=lambda s: s.id)
    responses = match_predictions([s.id for s in samples], predictions, "mmmu")
    rng = random.Random(seed)
    verdicts = []
    for sample, response in zip(samples, responses, strict=True):
        answer = answer_text(response, answer_span)
        if protocol == "official":
            verdicts.append(judge_official(sample, answer, rng))
        else:
            verdicts.append(judge_vlmevalkit(sample, answer))
    metrics = protocol_metrics(samples, verdicts, protocol)
    unparsed = [s.id for s, v in zip(samples, verdicts, strict=True) if v.unparsed]
    metrics["unparsed"] = len(unparsed)
    judged = [
        {"id": s.id, "parsed": v.parsed, "correct": v.correct, "unparsed": v.unparsed}
        for s, v in zip(samples, verdicts, strict=True)
    ]
    details = {
        "samples": judged,
        "num_samples": len(samples),
        "protocol": protocol,
        "answer_span": answer_span,
        "unparsed": unparsed,
    }
    return BenchmarkResult("MMMU", metrics, [Column("MMMU", "acc", digits=1, scale=100.0)], details)


def protocol_metrics(
    samples: Sequence[MMMUSample], verdicts: Sequence[Verdict], protocol: str
) -> dict[str, float]:
    """`acc` with its subject / discipline breakdown over the protocol's headline samples, then
    `split/<split>/acc` for every split present."""
    pairs = list(zip(samples, verdicts, strict=True))
    headline = pairs
    if protocol == "vlmevalkit" and any(s.split == HEADLINE_SPLIT for s, _ in pairs):
        headline = [(s, v) for s, v in pairs if s.split == HEADLINE_SPLIT]
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for sample, verdict in headline:
        by_subject[sample.subject].append(verdict.correct)
    metrics = aggregate(by_subject)
    by_split: dict[str, list[bool]] = defaultdict(list)
    for sample, verdict in pairs:
        by_split[sample.split].append(verdict.correct)
    for split, results in sorted(by_split.items()):
        metrics[f"split/{split}/acc"] = sum(results) / len(results)
    return metrics


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
