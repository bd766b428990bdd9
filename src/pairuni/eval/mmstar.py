"""MMStar: loader for the Lin-Chen/MMStar parquet release and accuracy per category.

MMStar is scored with VLMEvalKit's rule-based multiple-choice matcher
(`vlmeval/utils/matching_util.py`: `can_infer` = `can_infer_option`, then `can_infer_text`).
Those rules changed over VLMEvalKit's history; `matching=` picks a version (`MATCHING_RULES`).
VLMEvalKit asks a GPT judge about the replies the rules cannot match; we count them wrong and
report how many there were (`unmatched`). Before matching, a reply is reduced to its answer
(`pairuni.eval.answers.answer_text`, `answer_span=`); replies with no answer left are counted as
`unparsed`. See docs/eval.md.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pairuni.eval.answers import AnswerSpan, answer_text
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

OPTION_LETTERS = "ABCDEF"
"""The letters an MMStar answer may be (the loader rejects any other)."""


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


# --------------------------------------------------------------------------- options


# The first item: `A:` or `A.` at the start of the tail or after a space / comma.
_FIRST_ITEM = re.compile(r"(?:^|[\s,])A(?:(?P<colon>:)\s*|\.(?:\s+|$))")


def _item_marker(letter: str, punct: str, separator: str) -> re.Pattern[str]:
    """`<separator><letter><punct>` as in `, B: ` (a `.` must be followed by a space or the end,
    so that `3.5` or `B.C.` is no marker)."""
    after = r":\s*" if punct == ":" else r"\.(?:\s+|$)"
    return re.compile(separator + re.escape(letter) + after)


def _next_item(
    tail: str, letter: str, punct: str, separators: Sequence[str], pos: int
) -> tuple[re.Match[str], str] | None:
    """The marker of option `letter` at or after `pos`, and the separator that found it."""
    for separator in separators:
        found = _item_marker(letter, punct, separator).search(tail, pos)
        if found:
            return found, separator
    return None


def parse_options(question: str) -> dict[str, str]:
    """{letter: text} from the `Options:` part of an MMStar question.

    MMStar writes `Options: A: ..., B: ..., C: ..., D: ...`. Option texts may themselves hold
    `X. ` or `X: ` ("A: Vitamin A. Good for eyes"), so the items are read in letter order: after
    option A only option B's marker can end it, and so on. The marker must use A's punctuation
    (`:` or `.`) and, once option B was found after `, `, that separator too (a bare space before
    a letter inside a text is then no marker). Lists separated by spaces or newlines only fall
    back to whitespace.
    """
    _, sep, tail = question.rpartition("Options:")
    first = _FIRST_ITEM.search(tail) if sep else None
    if first is None:
        return {}
    punct = ":" if first.group("colon") else "."
    separators: Sequence[str] = (r",\s*", r"\s+")
    starts = [first.end()]
    ends: list[int] = []
    for letter in OPTION_LETTERS[1:]:
        found = _next_item(tail, letter, punct, separators, starts[-1])
        if found is None:
            break
        marker, separator = found
        separators = (separator,)  # B fixes the list's separator for the rest
        ends.append(marker.start())
        starts.append(marker.end())
    ends.append(len(tail))
    # Trailing `,` / `.` are dropped so that "A: The cat is on the mat." matches a response that
    # quotes the option without its final period.
    texts = (tail[s:e].strip().rstrip(",.").strip() for s, e in zip(starts, ends, strict=True))
    return dict(zip(OPTION_LETTERS, texts, strict=False))


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- matching


MMStarMatching = Literal["vlmevalkit-v0.2", "vlmevalkit-2025-08", "vlmevalkit-2026-06"]
MMSTAR_MATCHINGS: tuple[str, ...] = get_args(MMStarMatching)
DEFAULT_MATCHING: MMStarMatching = "vlmevalkit-v0.2"


@dataclass(frozen=True)
class MatchingRules:
    """What one VLMEvalKit version adds to the rules every version has (see MATCHING_RULES)."""

    letter_near_end: bool
    """The letter's first occurrence must be among the last four words (PR #1175)."""
    text_length_limit: bool
    """Option-text matching only for replies at most twice as long as all option texts together
    (PR #1175)."""
    answer_is_pattern: bool
    """`answer is X` names X when the word rules find none (PR #1552)."""


MATCHING_RULES: dict[str, MatchingRules] = {
    # open-compass/VLMEvalKit tags v0.2rc1 (2024-06-27), v0.2 (2025-03-22) and v0.3rc1
    # (2025-06-21), the last tag: the same can_infer_option / can_infer_text, unchanged on main
    # from 98e3733 (2024-02-04) to c337155 (2025-08-04). Numbers published before August 2025
    # with VLMEvalKit (Janus-Pro's era) used these rules.
    "vlmevalkit-v0.2": MatchingRules(False, False, False),
    # main from c337155 (PR #1175, 2025-08-04, "Improve can_infer_option and can_infer_text").
    "vlmevalkit-2025-08": MatchingRules(True, True, False),
    # main from a67ace5 (PR #1552, 2026-06-17, "Match verbose Chain-of-Thought in eval"),
    # unchanged up to e8e78f0 (2026-08-18).
    "vlmevalkit-2026-06": MatchingRules(True, True, True),
}

MATCH_PUNCTUATION = ".()[],:;!*#{}"
"""Characters can_infer_option turns into spaces before splitting a reply into words."""

REFUSAL = "Z"
"""VLMEvalKit's answer for a refusal: it counts as matched (no judge is asked) and is wrong."""

REFUSAL_PHRASES = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
"""Replies containing one of these are refusals (the list of VLMEvalKit since 98e3733)."""

API_FAILURE = "Failed to obtain answer via API"
"""VLMEvalKit skips letter matching for replies containing this (its API error marker)."""

# PR #1552's pattern: case-insensitive and with no word boundary after the letter, so
# "the answer is blue" names B; reproduced as it is.
ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)


def reply_words(response: str) -> list[str]:
    text = response
    for char in MATCH_PUNCTUATION:
        text = text.replace(char, " ")
    return text.split()


def match_option_letter(
    response: str, letters: Iterable[str], matching: MMStarMatching = DEFAULT_MATCHING
) -> str | None:
    """The option letter a reply names (can_infer_option), `Z` for a refusal, else None.

    Exactly one distinct option letter must appear as a word. VLMEvalKit rejects a lone `A` in
    a reply of more than three words ("A dog ...") only when the user sets the VERBOSE
    environment variable (none of its scripts does), so we never do.
    """
    rules = MATCHING_RULES[matching]
    if API_FAILURE in response:
        return None
    if any(phrase in response for phrase in REFUSAL_PHRASES):
        return REFUSAL
    choices = list(letters)
    words = reply_words(response)
    named = [letter for letter in choices if letter in words]
    if len(named) == 1:
        # list.index: the first occurrence must be near the end, as in VLMEvalKit.
        if not rules.letter_near_end or words.index(named[0]) > len(words) - 5:
            return named[0]
    elif not named and REFUSAL in words:
        return REFUSAL
    return answer_is_letter(response, choices) if rules.answer_is_pattern else None


def answer_is_letter(response: str, letters: Sequence[str]) -> str | None:
    """The letter of the first `answer is X` (PR #1552), when it is an option."""
    found = ANSWER_IS.search(response)
    letter = found.group(1).upper() if found else None
    return letter if letter in letters else None


def match_option_text(
    response: str, options: Mapping[str, str], matching: MMStarMatching = DEFAULT_MATCHING
) -> str | None:
    """The single option whose text appears in the reply (case-insensitive), else None
    (can_infer_text)."""
    lowered = response.lower()
    too_long = len(lowered) > 2 * sum(len(text) for text in options.values())
    if MATCHING_RULES[matching].text_length_limit and too_long:
        return None
    found = [letter for letter, text in options.items() if text and text.lower() in lowered]
    return found[0] if len(found) == 1 else None


def extract_choice(
    response: str, sample: MMStarSample, matching: MMStarMatching = DEFAULT_MATCHING
) -> str | None:
    """What VLMEvalKit's can_infer finds: an option letter, `Z` (a refusal) or None."""
    letters = sorted(sample.options) or ["A", "B", "C", "D"]
    return match_option_letter(response, letters, matching) or match_option_text(
        response, sample.options, matching
    )


# --------------------------------------------------------------------------- scoring


def judge_reply(
    sample: MMStarSample, response: str, answer_span: AnswerSpan, matching: MMStarMatching
) -> dict[str, object]:
    """One sample's verdict: the answer text read from the reply, whether there was one, the
    choice the rules found in it and whether that is the answer."""
    text = answer_text(response, answer_span)
    unparsed = not text.strip()
    choice = None if unparsed else extract_choice(text, sample, matching)
    return {
        "id": sample.id,
        "answer_text": text,
        "unparsed": unparsed,
        "parsed": choice,
        "correct": choice == sample.answer,
    }


def accuracy_metrics(samples: list[MMStarSample], verdicts: list[bool]) -> dict[str, float]:
    """`acc` overall, `category/<c>/acc` and `l2_category/<c>/acc`."""
    by_category: dict[str, list[bool]] = defaultdict(list)
    by_l2: dict[str, list[bool]] = defaultdict(list)
    for sample, correct in zip(samples, verdicts, strict=True):
        by_category[sample.category].append(correct)
        by_l2[sample.l2_category].append(correct)
    metrics = {"acc": sum(verdicts) / len(verdicts) if verdicts else 0.0}
    metrics.update({f"category/{k}/acc": sum(v) / len(v) for k, v in sorted(by_category.items())})
    metrics.update({f"l2_category/{k}/acc": sum(v) / len(v) for k, v in sorted(by_l2.items())})
    return metrics


def score_mmstar(
    samples: Iterable[MMStarSample],
    predictions: Mapping[str, str],
    *,
    answer_span: AnswerSpan = "auto",
    matching: MMStarMatching = DEFAULT_MATCHING,
) -> BenchmarkResult:
    """Accuracy overall, per core category and per l2 category, and `unparsed` (replies with no
    answer left after `answer_span`, e.g. reasoning cut off before `<answer>`; each is wrong).
    `matching` names the VLMEvalKit version whose rules read the answers (MATCHING_RULES)."""
    if matching not in MATCHING_RULES:
        raise ValueError(
            f"MMStar matching must be one of {', '.join(MMSTAR_MATCHINGS)}, got {matching!r}"
        )
    samples = list(samples)
    responses = match_predictions([s.id for s in samples], predictions, "mmstar")
    judged = [
        judge_reply(s, r, answer_span, matching) for s, r in zip(samples, responses, strict=True)
    ]
    metrics = accuracy_metrics(samples, [bool(entry["correct"]) for entry in judged])
    unparsed = [str(entry["id"]) for entry in judged if entry["unparsed"]]
    metrics["unparsed"] = len(unparsed)
    details = {
        "samples": judged,
        # Replies the rules cannot map to an option (the unparsed ones too): those VLMEvalKit
        # would hand to its GPT judge.
        "unmatched": sum(entry["parsed"] is None for entry in judged),
        "unparsed": unparsed,
        "num_samples": len(samples),
        "answer_span": answer_span,
        "matching": matching,
    }
    return BenchmarkResult(
        "MMStar", metrics, [Column("MMStar", "acc", digits=1, scale=100.0)], details
    )
