"""MMStar: the parquet loader, RL-format replies and VLMEvalKit's option matching per version,
against cases worked out by hand from the official rules (vlmeval/utils/matching_util.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError
from pairuni.eval.mmstar import (
    DEFAULT_MATCHING,
    MMStarMatching,
    MMStarSample,
    extract_choice,
    load_mmstar,
    match_option_letter,
    match_option_text,
    parse_options,
    score_mmstar,
)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 99, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


ROWS = [
    # (index, options text, answer, category, response, verdict)
    (0, "A: red, B: blue, C: green, D: white", "B", "coarse perception", "B", True),
    # The lone letter A names option A (VLMEvalKit rejects it as an article only under VERBOSE).
    (1, "A: cat, B: dog, C: bird, D: fish", "C", "coarse perception", "A dog sits there", False),
    (2, "A: 12, B: 13, C: 14, D: 15", "A", "math", "The value is 12", True),
    (3, "A: 12, B: 13, C: 14, D: 15", "D", "math", "I cannot tell", False),
    (4, "A: 12, B: 13, C: 14, D: 15", "B", "math", "(B) 13", True),
]


def write_mmstar(root: Path, answer_override: str | None = None) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [
            ("index", pa.int64()),
            ("question", pa.string()),
            ("image", image_type),
            ("answer", pa.string()),
            ("category", pa.string()),
            ("l2_category", pa.string()),
        ]
    )
    rows = [
        {
            "index": index,
            "question": f"What is shown?\nOptions: {options}",
            "image": {"bytes": png(), "path": None},
            "answer": answer_override or answer,
            "category": category,
            "l2_category": f"{category} / sub",
        }
        for index, options, answer, category, _, _ in ROWS
    ]
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "mmstar.parquet")


def plain_predictions() -> dict[str, str]:
    return {str(row[0]): row[4] for row in ROWS}


def test_loader_and_score_per_category(tmp_path: Path) -> None:
    write_mmstar(tmp_path)
    samples = list(load_mmstar(tmp_path))
    assert [s.id for s in samples] == ["0", "1", "2", "3", "4"]
    assert samples[1].options == {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    result = score_mmstar(samples, plain_predictions())
    verdicts = [entry["correct"] for entry in result.details["samples"]]
    assert verdicts == [row[5] for row in ROWS]
    assert [entry["parsed"] for entry in result.details["samples"]] == ["B", "A", "A", None, "B"]
    # 3 of 5 right; coarse perception 1 of 2; math 2 of 3.
    assert result.metrics["acc"] == pytest.approx(3 / 5)
    assert result.metrics["category/coarse perception/acc"] == pytest.approx(1 / 2)
    assert result.metrics["category/math/acc"] == pytest.approx(2 / 3)
    assert result.metrics["l2_category/math / sub/acc"] == pytest.approx(2 / 3)
    assert result.metrics["unparsed"] == 0
    assert result.details["unmatched"] == 1  # "I cannot tell": no letter, no option text
    assert result.details["matching"] == "vlmevalkit-v0.2" == DEFAULT_MATCHING
    assert result.markdown_row("m") == "| m | 60.0 |"


# --------------------------------------------------------------------------- RL-format replies


def rl_reply(answer: str) -> str:
    return f"<think>some reasoning mentioning A and C</think><answer>{answer}</answer>"


def test_rl_format_scores_as_the_plain_answer(tmp_path: Path) -> None:
    write_mmstar(tmp_path)
    samples = list(load_mmstar(tmp_path))
    plain = score_mmstar(samples, plain_predictions())
    wrapped = {sid: rl_reply(text) for sid, text in plain_predictions().items()}
    rl = score_mmstar(samples, wrapped)
    assert rl.metrics == plain.metrics
    for a, b in zip(rl.details["samples"], plain.details["samples"], strict=True):
        assert (a["answer_text"], a["parsed"], a["correct"]) == (
            b["answer_text"],
            b["parsed"],
            b["correct"],
        )
    assert rl.details["unmatched"] == plain.details["unmatched"]
    # The reduction is what makes them equal: read whole (`off`), "A" in the reasoning is the
    # only letter standing alone as a word ("C</think><answer>B</answer>" is one word), so
    # rows 0 and 3 read A (wrong), row 2 reads A (right by luck), row 4 has two letters (A, B)
    # and matches by its text "13" (B, right), row 1 reads A (wrong): 2 of 5.
    off = score_mmstar(samples, wrapped, answer_span="off")
    assert off.metrics["acc"] == pytest.approx(2 / 5)


def mc_sample(sid: str, answer: str, options: dict[str, str] | None = None) -> MMStarSample:
    options = options or {"A": "red", "B": "green", "C": "blue", "D": "white"}
    question = "Which colour?\nOptions: " + ", ".join(f"{k}: {v}" for k, v in options.items())
    return MMStarSample(sid, question, b"", answer, "math", "geometry", options)


def test_reply_cut_off_in_its_reasoning_is_unparsed() -> None:
    samples = [mc_sample("cut", "B"), mc_sample("empty", "B"), mc_sample("open", "B")]
    predictions = {
        # max_new_tokens ended the reply inside <think>: nothing is left to read.
        "cut": "<think>Comparing the options, B looks right but",
        "empty": "",
        # An <answer> that never closed is read after its tag (answers.answer_text).
        "open": "<think>hmm</think><answer>B",
    }
    result = score_mmstar(samples, predictions)
    cut, empty, opened = result.details["samples"]
    assert (cut["unparsed"], cut["parsed"], cut["correct"]) == (True, None, False)
    assert (empty["unparsed"], empty["parsed"]) == (True, None)
    assert (opened["unparsed"], opened["answer_text"], opened["correct"]) == (False, "B", True)
    assert result.metrics["unparsed"] == 2
    assert result.details["unparsed"] == ["cut", "empty"]
    assert result.details["unmatched"] == 2
    assert result.metrics["acc"] == pytest.approx(1 / 3)
    # Read whole, the cut reply's reasoning would name B (its only letter) and score right.
    off = score_mmstar(samples, predictions, answer_span="off")
    assert off.details["samples"][0]["correct"] is True
    assert off.metrics["unparsed"] == 1  # only the empty reply


# --------------------------------------------------------------------------- matching rules

V02: MMStarMatching = "vlmevalkit-v0.2"
V2508: MMStarMatching = "vlmevalkit-2025-08"
V2606: MMStarMatching = "vlmevalkit-2026-06"

# Options as one MMStar question has them: "blue" is C so that PR #1552's pattern (which reads
# "answer is b…") and the text rule disagree. All texts together are 3+5+4+5 = 17 characters,
# so PR #1175's text rule takes replies of at most 2 x 17 = 34 characters.
COLOURS = {"A": "red", "B": "green", "C": "blue", "D": "white"}

# (reply, choice under vlmevalkit-v0.2, under -2025-08, under -2026-06). Words are the reply
# with `.()[],:;!*#{}` turned into spaces, split on whitespace.
RULE_CASES = [
    # [The, answer, is, A]: one letter. VLMEvalKit rejects a lone A in more than three words
    # only under VERBOSE; 2025-08 keeps it too (index 3 > 4 - 5).
    ("The answer is A.", "A", "A", "A"),
    # One letter at index 0 of 4 words: 0 > 4 - 5 = -1, so it is near enough the end.
    ("B is the best", "B", "B", "B"),
    # Index 0 of 5 words: 0 > 5 - 5 is false, rejected from 2025-08; no option text, no
    # "answer is": nothing.
    ("B is the best one", "B", None, None),
    # [B, because, B, is, best]: the first occurrence counts (list.index), 0 > 0 is false.
    ("B, because B is best", "B", None, None),
    # B at index 4 of 13 words: rejected from 2025-08 (4 > 8 is false); 2026-06 then reads
    # "correct answer is B".
    ("The correct answer is B because the ball on the left is larger", "B", None, "B"),
    # Two letters (B, C): no word match in any version; 2026-06's pattern reads B.
    ("The answer is B, not C.", None, None, "B"),
    # Lower-case c is no option letter; the pattern is case-insensitive.
    ("the answer is c", None, None, "C"),
    # No letter: the text rule finds "blue" = C (19 <= 34 characters); 2026-06's pattern runs
    # first and, having no word boundary, reads "answer is b" as B.
    ("The answer is blue.", "C", "C", "B"),
    # [The, answer, is, blue, so, C]: the word rule finds C (index 5 > 1) before the pattern.
    ("The answer is blue, so C.", "C", "C", "C"),
    # 34 characters: still within the text limit.
    ("the colour of the car is blue, yes", "C", "C", "C"),
    # 35 characters: over it from 2025-08.
    ("the colour of the car is blue, yes!", "C", None, None),
    # Two option texts, two letters: ambiguous everywhere.
    ("blue or green", None, None, None),
    ("B or C", None, None, None),
    # Refusals are `Z` (matched, wrong): a listed phrase, or the word Z with no letter (which
    # also stops the text rule from reading "blue").
    ("Cannot determine the answer from the image.", "Z", "Z", "Z"),
    ("Z, it is not blue", "Z", "Z", "Z"),
    # The API error marker skips the letter rule; no option text follows.
    ("Failed to obtain answer via API. B", None, None, None),
]


@pytest.mark.parametrize(("reply", "v02", "v2508", "v2606"), RULE_CASES)
def test_matching_rules_per_vlmevalkit_version(
    reply: str, v02: str | None, v2508: str | None, v2606: str | None
) -> None:
    sample = mc_sample("0", "C", COLOURS)
    found = [extract_choice(reply, sample, matching) for matching in (V02, V2508, V2606)]
    assert found == [v02, v2508, v2606]
    assert extract_choice(reply, sample) == v02  # the default is v0.2


def test_text_limit_cases_have_the_lengths_worked_out() -> None:
    assert sum(len(text) for text in COLOURS.values()) == 17
    assert len("the colour of the car is blue, yes") == 34
    assert len("the colour of the car is blue, yes!") == 35


def test_option_letter_and_text_rules() -> None:
    letters = ["A", "B", "C", "D"]
    assert match_option_letter("Answer: (C).", letters) == "C"
    assert match_option_letter("A", letters) == "A"
    assert match_option_letter("A dog is here", letters) == "A"
    assert match_option_letter("The answer is E", letters, V2606) is None  # not an option
    assert match_option_text("it is a bird", {"A": "cat", "B": "bird"}) == "B"
    assert match_option_text("cat and bird", {"A": "cat", "B": "bird"}) is None


def test_score_uses_the_matching_named() -> None:
    samples = [mc_sample("0", "B"), mc_sample("1", "B"), mc_sample("2", "C")]
    predictions = {
        "0": "B is the best one",
        "1": "The answer is B, not C.",
        "2": "The answer is blue.",
    }
    # From RULE_CASES: v0.2 reads B, -, C (2 right); 2025-08 -, -, C (1 right);
    # 2026-06 -, B, B (1 right).
    expected: dict[MMStarMatching, tuple[float, int]] = {
        V02: (2 / 3, 1),
        V2508: (1 / 3, 2),
        V2606: (1 / 3, 1),
    }
    for matching, (acc, unmatched) in expected.items():
        result = score_mmstar(samples, predictions, matching=matching)
        assert result.metrics["acc"] == pytest.approx(acc), matching
        assert result.details["unmatched"] == unmatched, matching
        assert result.details["matching"] == matching
    with pytest.raises(ValueError, match=r"vlmevalkit-v0\.2, vlmevalkit-2025-08"):
        score_mmstar(samples, predictions, matching="vlmevalkit-latest")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- options


def test_parse_options_handles_periods_and_commas_in_text() -> None:
    text = "Q?\nOptions: A: The cup is on the table., B: 3.5, C: x, y, D: none"
    assert parse_options(text) == {
        "A": "The cup is on the table",
        "B": "3.5",
        "C": "x, y",
        "D": "none",
    }


def test_parse_options_with_letters_and_markers_inside_texts() -> None:
    # "A. " and "C: " inside texts are no item markers: after A only ", B: " ends it, and
    # once B came after a comma a bare " E: " inside D's text starts nothing.
    text = (
        "Which vitamin?\nOptions: A: Vitamin A. Good for eyes, B: Vitamin C: boosts immunity, "
        "C: Vitamin D. From sunlight, D: Vitamin E: an antioxidant"
    )
    assert parse_options(text) == {
        "A": "Vitamin A. Good for eyes",
        "B": "Vitamin C: boosts immunity",
        "C": "Vitamin D. From sunlight",
        "D": "Vitamin E: an antioxidant",
    }
    # Items use A's punctuation: in a `:` list, ", B. " inside option A's text is no marker.
    assert parse_options("Q?\nOptions: A: Plans A, B. and C, B: Plan D, C: none, D: all") == {
        "A": "Plans A, B. and C",
        "B": "Plan D",
        "C": "none",
        "D": "all",
    }


def test_parse_options_other_layouts() -> None:
    # `A.` items one per line (or space-separated): whitespace is the separator.
    assert parse_options("Q?\nOptions:\nA. red B. blue\nC. green\nD. U.S.A. flag") == {
        "A": "red",
        "B": "blue",
        "C": "green",
        "D": "U.S.A. flag",
    }
    assert parse_options("What is this?") == {}
    assert parse_options("Q?\nOptions: none given") == {}


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match="Lin-Chen/MMStar"):
        list(load_mmstar(tmp_path / "missing"))
    write_mmstar(tmp_path / "bad", answer_override="E or F")
    with pytest.raises(BenchmarkDataError, match=r"mmstar.parquet: row 0 \(index 0\).*'answer'"):
        list(load_mmstar(tmp_path / "bad"))
