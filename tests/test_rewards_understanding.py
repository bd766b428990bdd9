"""Understanding rewards on hand-written completions, adversarial ones included."""

from __future__ import annotations

import pytest

from pairuni.rewards.understanding import (
    answer_region,
    exact_match,
    format_reward,
    mc_accuracy,
    numeric_accuracy,
    parse_choice,
    parse_number,
)

ANIMALS = ["A cat", "A dog", "A bird", "A fish"]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>B</answer>", "B"),
        ("<think>A looks wrong, C too</think><answer>B</answer>", "B"),
        ("<think>x</think> <answer> (B) </answer>", "B"),
        ("<answer>B.</answer>", "B"),
        ("<answer>B)</answer>", "B"),
        ("<answer>[B]</answer>", "B"),
        ("<answer>Answer: B</answer>", "B"),
        ("<answer>The answer is (B).</answer>", "B"),
        ("<answer>B. A dog</answer>", "B"),
        ("<answer>(B) A dog</answer>", "B"),
        ("B", "B"),
        ("(D)", "D"),
        ("Answer: C", "C"),
        ("<think>I pick A</think>C", "C"),
        # The option text, not a letter: "A cat" starts with the article A, which is no letter.
        ("<answer>A cat</answer>", "A"),
        ("<answer>a dog.</answer>", "B"),
        ("A fish", "D"),
        ("<answer>It is a bird</answer>", "C"),
        ("After thinking, the answer is D because fish swim.", "D"),
        # The last answer block wins.
        ("<answer>A</answer> no wait <answer>C</answer>", "C"),
        # Two letters, or two options, or nothing: no choice.
        ("<answer>A or B</answer>", None),
        ("<answer>B, C</answer>", None),
        ("<answer>A cat and a dog</answer>", None),
        ("<answer></answer>", None),
        ("<think>B is right", None),  # never closed the reasoning, never answered
        ("<answer>E</answer>", None),  # out of range for 4 options
        ("<answer>b</answer>", None),  # lower-case letters are words, not choices
        ("<answer>Because</answer>", None),
    ],
)
def test_parse_choice(completion: str, expected: str | None) -> None:
    assert parse_choice(answer_region(completion), ANIMALS) == expected


def test_option_contained_in_another_option() -> None:
    options = ["red", "dark red", "blue"]
    assert parse_choice("dark red", options) == "B"
    assert parse_choice("it is dark red", options) == "B"  # "red" inside "dark red" ignored
    assert parse_choice("it is red", options) == "A"
    assert parse_choice("red or blue", options) is None
    assert parse_choice("reddish", options) is None  # whole words only


def test_mc_accuracy_rewards_and_none_for_non_mc() -> None:
    completions = ["<answer>B</answer>", "<answer>A cat</answer>", "<answer>C</answer>", "x"]
    rewards = mc_accuracy(
        ["q"] * 4,
        completions,
        und_options=[ANIMALS, ANIMALS, ANIMALS, []],
        und_answer=["B", "(a)", "D", "42"],
    )
    assert rewards == [1.0, 1.0, 0.0, None]


def test_mc_accuracy_bad_gold_names_the_sample() -> None:
    with pytest.raises(ValueError, match=r"und_answer\[1\] = 'F'.*ABCD"):
        mc_accuracy(["q"] * 2, ["A", "A"], und_options=[ANIMALS, ANIMALS], und_answer=["A", "F"])
    with pytest.raises(ValueError, match="und_answer"):
        mc_accuracy(["q"], ["A"], und_options=[ANIMALS])


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("42", [42.0]),
        ("-3.5", [-3.5]),
        ("1,234.5 apples", [1234.5]),
        ("3/4", [0.75]),
        ("-1/8", [-0.125]),
        ("25%", [0.25, 25.0]),
        ("1e-3", [0.001]),
        (".5", [0.5]),
        ("between 3 and 7", [7.0]),  # the last number
        ("1,2,3", [3.0]),  # a list, not a thousands separator
        ("no number", []),
        ("5/0", []),
        ("x2", []),  # part of a word
    ],
)
def test_parse_number(text: str, values: list[float]) -> None:
    assert parse_number(text) == pytest.approx(values)


def test_numeric_accuracy_tolerances_and_sources() -> None:
    completions = [
        "<think>2+2 is 4, maybe 5</think><answer>4</answer>",
        "<answer>The total is 1,000</answer>",
        "so 0.333",
        "I get 12.5%",
        "<answer>seven</answer>",
        "<answer>4</answer>",
    ]
    gold = ["4", "1000", "1/3", "0.125", "7", "B"]
    strict = numeric_accuracy(["q"] * 6, completions, und_answer=gold)
    assert strict == [1.0, 1.0, 0.0, 1.0, 0.0, None]
    loose = numeric_accuracy(["q"] * 6, completions, und_answer=gold, rel_tol=0.01)
    assert loose[2] == 1.0  # |0.333 - 1/3| = 0.00033 <= 0.01 * 1/3
    absolute = numeric_accuracy(["q"], ["<answer>10.4</answer>"], und_answer=["10"], abs_tol=0.5)
    assert absolute == [1.0]
    assert numeric_accuracy(["q"], ["<answer>10.6</answer>"], und_answer=["10"], abs_tol=0.5) == [
        0.0
    ]


def test_numeric_accuracy_missing_column_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match="answer_column"):
        numeric_accuracy(["q"], ["1"], answer="1")
    assert numeric_accuracy(["q"], ["1"], answer=["1"], answer_column="answer") == [1.0]


def test_exact_match_normalises_case_space_punctuation() -> None:
    completions = [
        "<answer>  New   York City! </answer>",
        "<think>hmm</think>new-york city",
        "<answer>Boston</answer>",
        "<answer>anything</answer>",
    ]
    rewards = exact_match(
        ["q"] * 4, completions, und_answer=["new york city", "New York City", "NYC", None]
    )
    assert rewards == [1.0, 1.0, 0.0, None]


@pytest.mark.parametrize(
    ("completion", "ok"),
    [
        ("<think>reason</think><answer>B</answer>", True),
        ("  <think>\nmulti\nline\n</think>\n\n<answer>B</answer>\n", True),
        ("<think></think><answer></answer>", True),
        ("<answer>B</answer>", False),
        ("<think>r</think>", False),
        ("<answer>B</answer><think>r</think>", False),
        ("so <think>r</think><answer>B</answer>", False),
        ("<think>r</think><answer>B</answer> trailing", False),
        ("<think>r</think> text <answer>B</answer>", False),
        ("<think>r</think><answer>A</answer><answer>B</answer>", False),
        ("<think>a<think>b</think><answer>B</answer>", False),
        ("<think>r</think><answer>B", False),
    ],
)
def test_format_reward(completion: str, ok: bool) -> None:
    assert format_reward(["q"], [completion]) == [1.0 if ok else 0.0]
