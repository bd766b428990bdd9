"""Rule-based rewards for understanding answers (text completions).

The answer is read from the last `<answer>...</answer>` block when there is one; otherwise from
the text after the last `</think>` (an unclosed `<think>` means the model never answered). The
exact rules are in docs/rewards.md; every reward returns 1.0 / 0.0, or None where it does not
apply (a sample without options for `mc_accuracy`, without a numeric gold answer for
`numeric_accuracy`, without a gold answer at all).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from pairuni.rewards.base import register_reward

LETTERS = "ABCDEFGHIJ"

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# A letter on its own, optionally in brackets and followed by a delimiter: "B", "(B)", "B.",
# "B)", "B:", "[B]", and "B. the option text" / "(B) the option text".
_LETTER_ALONE = re.compile(r"^[(\[]?([A-J])[)\]]?[.:]?$")
_LETTER_THEN_TEXT = re.compile(r"^(?:\(([A-J])\)|\[([A-J])\]|([A-J])[.:)])\s+\S")
# Lead-ins removed before the letter rules: "Answer: B", "The answer is (B)", "Option B".
_LEAD_IN = re.compile(
    r"^(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*(?:is\s*)?[:：]?\s*",
    re.IGNORECASE,
)
# "... the answer is B ..." inside longer text: the letter must stand alone (end, punctuation
# or a space after it); the last such phrase wins.
_ANSWER_PHRASE = re.compile(
    r"(?:answer|option|choice)\s*(?:is\s*)?[:：]?\s*[(\[]?([A-J])[)\]]?(?=$|[\s.,;:!?])",
    re.IGNORECASE,
)
_NUMBER = re.compile(
    r"(?<![\w.])([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
    r"|[-+]?\.\d+(?:[eE][-+]?\d+)?)"
    r"(?:\s*/\s*(\d+(?:\.\d+)?))?"
    r"(\s*%)?"
)
_PUNCT_TABLE = str.maketrans(dict.fromkeys(string.punctuation, " "))


def answer_region(completion: str) -> str:
    """The part of a completion that holds the answer (see the module docstring)."""
    blocks = _ANSWER_BLOCK.findall(completion)
    if blocks:
        return blocks[-1].strip()
    lowered = completion.lower()
    if "</think>" in lowered:
        completion = completion[lowered.rindex("</think>") + len("</think>") :]
    elif "<think>" in lowered:
        return ""
    lowered = completion.lower()
    if "<answer>" in lowered:  # opened but never closed: take what follows
        completion = completion[lowered.rindex("<answer>") + len("<answer>") :]
    return completion.strip()


def normalize_text(text: str) -> str:
    """Lower case, punctuation turned into spaces, runs of whitespace collapsed."""
    return " ".join(text.lower().translate(_PUNCT_TABLE).split())


def parse_choice(region: str, options: Sequence[str]) -> str | None:
    """The option letter an answer region picks, or None when it picks none or several.

    Order: a letter on its own ("B", "(B)", "B.", "Answer: B", "B. option text"); the region
    equal to exactly one option's text (normalised); "the answer is B" inside longer text; the
    region containing exactly one option's text as whole words, where an option contained in
    another contained option (e.g. "red" in "dark red") does not count.
    """
    valid = LETTERS[: len(options)]
    text = region.strip().rstrip(".!?。").strip()
    bare = _LEAD_IN.sub("", text, count=1).strip()
    for candidate in (text, bare):
        match = _LETTER_ALONE.match(candidate) or _LETTER_THEN_TEXT.match(candidate)
        if match:
            letter = next(g for g in match.groups() if g)
            return letter if letter in valid else None
    normalized = normalize_text(text)
    exact = [LETTERS[i] for i, o in enumerate(options) if normalize_text(o) == normalized]
    if len(exact) == 1:
        return exact[0]
    phrases = _ANSWER_PHRASE.findall(text)
    if phrases:
        letter = phrases[-1].upper()
        return letter if letter in valid else None
    return _unique_contained_option(normalized, options)


def _unique_contained_option(normalized: str, options: Sequence[str]) -> str | None:
    padded = f" {normalized} "
    texts = [normalize_text(o) for o in options]
    found = [i for i, t in enumerate(texts) if t and f" {t} " in padded]
    # Drop an option whose text lies inside another found option ("red" inside "dark red").
    maximal = [
        i for i in found if not any(j != i and f" {texts[i]} " in f" {texts[j]} " for j in found)
    ]
    return LETTERS[maximal[0]] if len(maximal) == 1 else None


def gold_letter(answer: Any, n_options: int, index: int) -> str:
    """The gold letter of sample `index`, checked against its number of options."""
    letter = str(answer).strip().strip("()[]").strip().upper() if answer is not None else ""
    if len(letter) != 1 or letter not in LETTERS[:n_options]:
        raise ValueError(
            f"mc_accuracy: und_answer[{index}] = {answer!r} is not one of the option letters "
            f"{LETTERS[:n_options]} for its {n_options} und_options; store the gold letter"
        )
    return letter


@register_reward("mc_accuracy", task="understanding")
def mc_accuracy(
    prompts: list[str],
    completions: list[str],
    *,
    und_options: list[Sequence[str]] | None = None,
    und_answer: list[Any] | None = None,
    **columns: Any,
) -> list[float | None]:
    """Multiple-choice accuracy: 1.0 if the chosen option letter is the gold `und_answer`.

    Needs the columns `und_options` (the option texts, A first) and `und_answer` (the gold
    letter). A sample without options gets None (not a multiple-choice question).
    """
    n = len(completions)
    options_column = und_options if und_options is not None else [[]] * n
    if und_answer is None:
        raise ValueError("mc_accuracy needs the column `und_answer` (the gold option letter)")
    rewards: list[float | None] = []
    for index, (completion, options, answer) in enumerate(
        zip(completions, options_column, und_answer, strict=True)
    ):
        if not options:
            rewards.append(None)
            continue
        gold = gold_letter(answer, len(options), index)
        chosen = parse_choice(answer_region(completion), list(options))
        rewards.append(1.0 if chosen == gold else 0.0)
    return rewards


def parse_number(text: str) -> list[float]:
    """The values a number in `text` may stand for: one value, or for a percentage both x/100
    and x (so "25%" matches 0.25 and 25). Takes the last number; [] when there is none.

    Understands signs, thousands commas ("1,234.5"), decimals, exponents and fractions ("3/4").
    """
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return []
    whole, denominator, percent = matches[-1].groups()
    value = float(whole.replace(",", ""))
    if denominator is not None:
        if float(denominator) == 0:
            return []
        value = float(Fraction(whole.replace(",", "")) / Fraction(denominator))
    return [value / 100, value] if percent else [value]


def numbers_match(
    predicted: list[float], gold: list[float], rel_tol: float, abs_tol: float
) -> bool:
    """True when any reading of the prediction equals any reading of the gold within
    |p - g| <= max(abs_tol, rel_tol * |g|)."""
    return any(abs(p - g) <= max(abs_tol, rel_tol * abs(g)) for p in predicted for g in gold)


@register_reward("numeric_accuracy", task="understanding")
def numeric_accuracy(
    prompts: list[str],
    completions: list[str],
    *,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    answer_column: str = "und_answer",
    **columns: Any,
) -> list[float | None]:
    """Numeric accuracy: 1.0 if the last number of the answer equals the gold number within
    tolerance. None for samples whose gold answer holds no number (e.g. a letter)."""
    if rel_tol < 0 or abs_tol < 0:
        raise ValueError("numeric_accuracy: rel_tol and abs_tol must be >= 0")
    golds = _column(columns, answer_column, "numeric_accuracy", len(completions))
    rewards: list[float | None] = []
    for completion, gold_text in zip(completions, golds, strict=True):
        gold = parse_number(str(gold_text)) if gold_text is not None else []
        if not gold:
            rewards.append(None)
            continue
        predicted = parse_number(answer_region(completion))
        rewards.append(
            1.0 if predicted and numbers_match(predicted, gold, rel_tol, abs_tol) else 0.0
        )
    return rewards


@register_reward("exact_match", task="understanding")
def exact_match(
    prompts: list[str],
    completions: list[str],
    *,
    answer_column: str = "und_answer",
    **columns: Any,
) -> list[float | None]:
    """Exact match: 1.0 if the answer equals the gold answer after normalising case, whitespace
    and punctuation. None where the gold answer is missing."""
    golds = _column(columns, answer_column, "exact_match", len(completions))
    rewards: list[float | None] = []
    for completion, gold in zip(completions, golds, strict=True):
        if gold is None or not normalize_text(str(gold)):
            rewards.append(None)
            continue
        same = normalize_text(answer_region(completion)) == normalize_text(str(gold))
        rewards.append(1.0 if same else 0.0)
    return rewards


# No tag may appear inside a block, so "<answer>a</answer><answer>b</answer>" is rejected.
_NO_TAG = r"(?:(?!</?(?:think|answer)>).)*"
_FORMAT = re.compile(rf"\s*<think>{_NO_TAG}</think>\s*<answer>{_NO_TAG}</answer>\s*", re.DOTALL)


@register_reward("format", task="understanding")
def format_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
    """Format: 1.0 iff the completion is `<think>...</think><answer>...</answer>` with only
    whitespace around and between the blocks (one block of each, no nested tags)."""
    return [1.0 if _FORMAT.fullmatch(c) else 0.0 for c in completions]


def _column(columns: dict[str, Any], name: str, reward: str, n: int) -> list[Any]:
    if name not in columns:
        raise ValueError(
            f"{reward} needs the column {name!r}; columns given: {sorted(columns) or 'none'} "
            "(set kwargs.answer_column to the column that holds the gold answer)"
        )
    return list(columns[name])
