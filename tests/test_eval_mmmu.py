"""MMMU: the parquet loader, the prompts, and both scoring protocols (the official answer parsing
and VLMEvalKit's option matching), against hand-worked cases."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pairuni.eval.layout import (
    BenchmarkDataError,
    BenchmarkNotFoundError,
    MissingPredictionsError,
    open_image,
)
from pairuni.eval.mmmu import (
    MMMUSample,
    eval_open,
    extract_numbers,
    load_mmmu,
    mmmu_splits,
    mmmu_vlmevalkit_prompt,
    parse_multi_choice,
    parse_open,
    score_mmmu,
    vlmevalkit_gold,
    vlmevalkit_match,
    vlmevalkit_options,
)


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def mmmu_row(sample_id: str, qtype: str, options: str, answer: str, images: int) -> dict:
    row = {
        "id": sample_id,
        "question": "Look at <image 1>. What is it?",
        "options": options,
        "explanation": "",
        "answer": answer,
        "question_type": qtype,
        "img_type": "['Photos']",
        "topic_difficulty": "Easy",
        "subfield": "x",
    }
    for k in range(1, 8):
        row[f"image_{k}"] = {"bytes": png((10 * k, 0, 0)), "path": None} if k <= images else None
    return row


def write_subject(root: Path, subject: str, rows: list[dict], split: str = "validation") -> None:
    folder = root / subject
    folder.mkdir(parents=True, exist_ok=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [(k, pa.string()) for k in rows[0] if not k.startswith("image_")]
    fields += [(f"image_{k}", image_type) for k in range(1, 8)]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")


def test_loader_reads_subjects_options_answers_and_images(tmp_path: Path) -> None:
    write_subject(
        tmp_path,
        "Art_Theory",
        [
            mmmu_row("validation_Art_Theory_1", "multiple-choice", "['cat', 'dog']", "B", 2),
            mmmu_row("validation_Art_Theory_2", "open", "[]", "['24', '24.0']", 1),
        ],
    )
    write_subject(tmp_path, "Math", [mmmu_row("validation_Math_1", "open", "[]", "7", 0)])
    samples = list(load_mmmu(tmp_path))
    assert [s.id for s in samples] == [
        "validation_Art_Theory_1",
        "validation_Art_Theory_2",
        "validation_Math_1",
    ]
    mc, open_list, open_plain = samples
    assert mc.subject == "Art_Theory" and mc.options == ("cat", "dog") and mc.answer == "B"
    assert len(mc.images) == 2 and open_image(mc.images[1]).getpixel((0, 0)) == (20, 0, 0)
    assert open_list.answer == ("24", "24.0")
    assert open_plain.answer == ("7",) and open_plain.images == ()
    # The stored text is kept for VLMEvalKit, which matches open questions against it verbatim.
    assert open_list.raw_answer == "['24', '24.0']" and open_plain.raw_answer == "7"
    assert open_list.stored_answer() == "['24', '24.0']" and open_plain.stored_answer() == "7"
    assert mc.split == "validation" and mc.stored_answer() == "B"
    assert "(A) cat\n(B) dog" in mc.prompt() and mc.prompt().endswith("directly.")


def test_missing_directory_says_where_to_download(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match=r"huggingface.co/datasets/MMMU/MMMU"):
        list(load_mmmu(tmp_path / "nope"))
    with pytest.raises(BenchmarkNotFoundError, match=r"<Subject>/validation-\*\.parquet"):
        list(load_mmmu(tmp_path))


def test_bad_options_names_file_row_and_field(tmp_path: Path) -> None:
    write_subject(
        tmp_path, "Art", [mmmu_row("validation_Art_1", "multiple-choice", "not a list", "A", 0)]
    )
    with pytest.raises(BenchmarkDataError, match=r"validation-00000.*row 0.*'options'"):
        list(load_mmmu(tmp_path))


CHOICES = ["A", "B", "C", "D"]
INDEX2ANS = {"A": "green pear", "B": "red apple", "C": "blue car", "D": "yellow sun"}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("(B)", "B"),
        ("B", "B"),
        ("I think B.", "B"),  # the trailing '.' is stripped, leaving " B "
        ("The answer is (A), no wait, (C)", "C"),  # several brackets: the last one
        ("A or maybe B", "B"),  # several bare letters: the last one
        ("(D) and also B", "D"),  # a bracketed letter beats bare ones
        ("It is clearly the red apple on the table", "B"),  # > 5 words: option text
        ("The red apple, not the green pear here", "A"),  # both texts: the later one
    ],
)
def test_multiple_choice_parsing_follows_official_order(response: str, expected: str) -> None:
    assert parse_multi_choice(response, CHOICES, INDEX2ANS, random.Random(0)) == expected


def test_unparseable_multiple_choice_is_a_seeded_random_letter() -> None:
    picks = [parse_multi_choice("no idea", CHOICES, INDEX2ANS, random.Random(7)) for _ in range(3)]
    assert len(set(picks)) == 1 and picks[0] in CHOICES
    # Short responses never match option text (the content rule needs more than 5 words).
    assert parse_multi_choice("red apple", ["A", "B"], INDEX2ANS, random.Random(1)) in "AB"


def test_number_extraction() -> None:
    assert extract_numbers("1,234 apples and 2.5e3 m, then -7 or .5") == [
        "1,234",
        "2.5e3",
        # The official plain-number pattern also sees pieces of the other two kinds: the tail of
        # 1,234 and, around the mantissa of 2.5e3, the digits 2 and 3. Kept for fidelity.
        "234",
        "2",
        "3",
        "-7",
        ".5",
    ]


@pytest.mark.parametrize(
    ("response", "gold", "correct"),
    [
        ("The answer is 3.14159", ["3.14"], True),  # both round to 3.14
        ("The answer is 3.2", ["3.14"], False),
        ("1,234 apples", ["1234"], True),
        ("It is Paris, France", ["paris"], True),  # gold string inside the key tail
        ("so the result = 12", ["12.0"], True),  # '=' on the last line
        ("the answer is a", ["a"], True),  # single letters are space-padded
        ("it is 3", ["2"], False),
        ("maybe\nx = 5", ["5"], True),  # only the last line may use '='
    ],
)
def test_open_answers(response: str, gold: list[str], correct: bool) -> None:
    assert eval_open(gold, parse_open(response)) is correct


def test_parse_open_keeps_the_shortest_tail() -> None:
    # 'is ' gives "5 dollars", 'answer ' gives "is 5 dollars": the shorter wins, then its number.
    assert parse_open("The answer is 5 dollars") == ["5 dollars", 5.0]


def sample(sample_id: str, qtype: str, answer: str | tuple[str, ...]) -> MMMUSample:
    options = ("cat", "dog", "cow") if qtype == "multiple-choice" else ()
    return MMMUSample(sample_id, sample_id.split("_")[1], "q", options, answer, qtype, ())


def test_score_is_instance_level_with_subject_and_domain_breakdown() -> None:
    samples = [
        sample("validation_Art_1", "multiple-choice", "B"),
        sample("validation_Art_2", "open", ("42",)),
        sample("validation_Math_1", "multiple-choice", "C"),
        sample("validation_Math_2", "open", ("7",)),
    ]
    predictions = {
        "validation_Art_1": "(B)",  # right
        "validation_Art_2": "The answer is 41",  # wrong
        "validation_Math_1": "C",  # right
        "validation_Math_2": "x = 7",  # right
    }
    result = score_mmmu(samples, predictions)
    assert result.metrics["acc"] == pytest.approx(3 / 4)
    assert result.metrics["subject/Art/acc"] == pytest.approx(1 / 2)
    assert result.metrics["domain/Science/acc"] == pytest.approx(1.0)
    assert result.metrics["domain/Art and Design/acc"] == pytest.approx(0.5)
    assert result.markdown_row("model") == "| model | 75.0 |"
    assert result.markdown_header().startswith("| Model | MMMU |")


def test_missing_predictions_are_listed() -> None:
    with pytest.raises(MissingPredictionsError, match=r"1 of 1 samples.*validation_Art_1"):
        score_mmmu([sample("validation_Art_1", "open", ("1",))], {})


# --------------------------------------------------------------------------- prompts


def test_official_prompt_is_the_llava15_template() -> None:
    # MMMU-Benchmark/MMMU mmmu/configs/llava1.5.yaml (commit bb0b95a; unchanged since 78e9c75):
    #   multi_choice_example_format: "{}\n\n{}\n\nAnswer with the option's letter ..."  (on
    #   separate lines, YAML folds each blank line into one "\n": "{}\n{}\nAnswer ...") and
    #   short_ans_example_format: "{}\nAnswer the question using a single word or phrase.";
    # data_utils.construct_prompt fills the options as "(A) cat\n(B) dog\n".
    mc = MMMUSample(
        "validation_Art_1", "Art", "Q <image 1>?", ("cat", "dog"), "B", "multiple-choice", ()
    )
    assert mc.prompt() == (
        "Q <image 1>?\n(A) cat\n(B) dog\n\nAnswer with the option's letter from the given choices "
        "directly."
    )
    open_q = MMMUSample("validation_Art_2", "Art", "How many?", (), ("3",), "open", ())
    assert open_q.prompt() == "How many?\nAnswer the question using a single word or phrase."


def test_vlmevalkit_prompt_is_what_janus_gets() -> None:
    # open-compass/VLMEvalKit vlmeval/vlm/janus.py, Janus.build_prompt (commit 79d54e2a): MCQ
    # branch '\n' [+ 'Hint: {hint}\n'] + '{question}\n' + 'A. text\n' lines + '\n' + instruction,
    # or, with no options, + 'Answer the question directly. '. The leading '\n' (after the image
    # placeholders) is left to the chat formatting.
    mc = MMMUSample("dev_Art_1", "Art", "Q <image 1>?", ("cat", "dog"), "B", "multiple-choice", ())
    letter_line = "Answer with the option's letter from the given choices directly."
    assert mmmu_vlmevalkit_prompt(mc) == f"Q <image 1>?\nA. cat\nB. dog\n\n{letter_line}"
    assert (
        mmmu_vlmevalkit_prompt(mc, hint="h")
        == f"Hint: h\nQ <image 1>?\nA. cat\nB. dog\n\n{letter_line}"
    )
    open_q = MMMUSample("dev_Art_2", "Art", "How many?", (), ("3",), "open", ())
    assert mmmu_vlmevalkit_prompt(open_q) == "How many?\nAnswer the question directly. "


# --------------------------------------------------------------------------- RL-format replies

MIXED = [
    sample("validation_Art_1", "multiple-choice", "B"),
    sample("validation_Art_2", "multiple-choice", "C"),
    sample("validation_Math_1", "multiple-choice", "A"),
    sample("validation_Math_2", "open", ("42",)),
    sample("validation_Math_3", "open", ("7",)),
    sample("validation_Math_4", "open", ("paris",)),
]
PLAIN = {
    "validation_Art_1": "(B)",
    "validation_Art_2": "C",
    "validation_Math_1": "no idea",  # unparsable: the official rules draw a random letter
    "validation_Math_2": "The answer is 42",
    "validation_Math_3": "7",
    "validation_Math_4": "Paris",
}


def rl_wrapped(answer: str) -> str:
    # Reasoning that would mislead the parsers if they read it: a bracketed letter and a number.
    return f"<think>Maybe (A)? So the result is 41.</think><answer>{answer}</answer>"


@pytest.mark.parametrize("protocol", ["official", "vlmevalkit"])
def test_rl_format_scores_exactly_as_the_plain_answer(protocol: str) -> None:
    plain = score_mmmu(MIXED, PLAIN, protocol=protocol)
    wrapped = score_mmmu(MIXED, {k: rl_wrapped(v) for k, v in PLAIN.items()}, protocol=protocol)
    assert wrapped.metrics == plain.metrics
    assert wrapped.details["samples"] == plain.details["samples"]
    assert plain.metrics["acc"] > 0  # not vacuous: some answers are right


def test_answer_span_off_reads_the_whole_reply() -> None:
    reply = {"validation_Art_2": rl_wrapped("C")}
    samples = [sample("validation_Art_2", "multiple-choice", "C")]
    assert score_mmmu(samples, reply).details["samples"][0]["parsed"] == "C"
    assert score_mmmu(samples, reply, answer_span="off").details["samples"][0]["parsed"] == "A"


CUT_OFF = "<think>Let me look. The answer might be (B) because the result is 7 and"


@pytest.mark.parametrize("protocol", ["official", "vlmevalkit"])
def test_cut_off_think_reply_counts_as_unparsed(protocol: str) -> None:
    samples = [
        sample("validation_Art_1", "multiple-choice", "B"),
        sample("validation_Math_3", "open", ("7",)),
        sample("validation_Art_2", "multiple-choice", "C"),
    ]
    replies = {"validation_Art_1": CUT_OFF, "validation_Math_3": CUT_OFF, "validation_Art_2": "C"}
    result = score_mmmu(samples, replies, protocol=protocol)
    assert result.metrics["unparsed"] == 2
    assert result.details["unparsed"] == ["validation_Art_1", "validation_Math_3"]
    flags = {s["id"]: s["unparsed"] for s in result.details["samples"]}
    assert flags == {"validation_Art_1": True, "validation_Art_2": False, "validation_Math_3": True}
    assert result.metrics["subject/Math/acc"] == 0.0  # the "7" in the reasoning is not read


def test_official_unparsed_is_decided_before_the_random_fallback() -> None:
    samples = [
        sample("validation_Art_1", "multiple-choice", "B"),
        sample("validation_Art_2", "open", ("x",)),
    ]
    # Whatever letter the fallback draws (right or wrong), the reply named none; an open reply
    # that names no key phrase is still compared whole, so only an empty one is unparsed.
    result = score_mmmu(samples, {"validation_Art_1": "no idea", "validation_Art_2": "paris"})
    assert [s["unparsed"] for s in result.details["samples"]] == [True, False]
    result = score_mmmu(samples, {"validation_Art_1": "(B)", "validation_Art_2": " . "})
    assert [s["unparsed"] for s in result.details["samples"]] == [False, True]


# --------------------------------------------------------------------------- VLMEvalKit scoring

OPTIONS = {"A": "green pear", "B": "red apple", "C": "blue car", "D": "yellow sun"}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", "B"),
        ("(B)", "B"),  # punctuation .()[],:;!*#{} becomes spaces
        ("**C**.", "C"),
        ("The answer is D", "D"),  # one option letter among the words
        ("A red apple it is", "A"),  # no article rule in a default (non-VERBOSE) run
        ("A or B", None),  # two letters and no single option text: no match
        ("It is the red apple", "B"),  # no letter: exactly one option text
        ("red apple or green pear", None),  # two option texts
        ("Z", "Z"),  # a Z word with no option letter
        ("Cannot determine the answer", "Z"),  # a known refusal
        ("Failed to obtain answer via API: A, red apple", "B"),  # skips letters, reads text
        ("b", None),  # letters are case-sensitive
    ],
)
def test_vlmevalkit_matcher(reply: str, expected: str | None) -> None:
    assert vlmevalkit_match(reply, dict(OPTIONS)) == expected


def test_vlmevalkit_open_question_becomes_a_two_option_one() -> None:
    # MMMU_preproc (vlmeval/dataset/utils/multiple_choice.py, commit 79d54e2a): A = the gold
    # text, B = "Other Answers", gold letter A (VLMEvalKit issue #110 describes the quirk).
    open_q = sample("validation_Math_1", "open", ("24",))
    assert vlmevalkit_options(open_q) == {"A": "24", "B": "Other Answers"}
    assert vlmevalkit_gold(open_q) == "A"
    assert vlmevalkit_gold(sample("validation_Math_2", "multiple-choice", "C")) == "C"
    single_letter = MMMUSample("validation_Math_3", "Math", "q", (), ("B",), "open", ())
    assert vlmevalkit_gold(single_letter) == "B"  # a one-letter answer is kept as the letter
    replies = {"24": True, "It is 24 dollars": True, "A": True, "B": False, "25": False}
    for reply, correct in replies.items():
        result = score_mmmu([open_q], {open_q.id: reply}, protocol="vlmevalkit")
        assert result.metrics["acc"] == float(correct), reply
    # A list-valued gold is matched as its stored text ("['24']"), which a reply rarely contains.
    listed = MMMUSample("validation_Math_4", "Math", "q", (), ("24",), "open", (), "['24']")
    assert score_mmmu([listed], {listed.id: "24"}, protocol="vlmevalkit").metrics["acc"] == 0.0
    assert score_mmmu([listed], {listed.id: "24"}).metrics["acc"] == 1.0  # the official rules


def test_vlmevalkit_has_no_random_fallback() -> None:
    mc = [sample(f"validation_Art_{i}", "multiple-choice", "A") for i in range(20)]
    replies = {s.id: "no idea" for s in mc}
    result = score_mmmu(mc, replies, protocol="vlmevalkit")
    assert result.metrics["acc"] == 0.0 and result.metrics["unparsed"] == 20
    assert {s["parsed"] for s in result.details["samples"]} == {None}
    assert score_mmmu(mc, replies).metrics["acc"] > 0  # the official fallback guesses some
    # A refusal is read as Z, which is no option: wrong, and counted as unparsed.
    refused = score_mmmu(mc[:1], {mc[0].id: "Z"}, protocol="vlmevalkit")
    assert refused.details["samples"][0] == {
        "id": mc[0].id,
        "parsed": "Z",
        "correct": False,
        "unparsed": True,
    }


def test_vlmevalkit_headline_is_the_validation_split() -> None:
    samples = [
        sample("dev_Art_1", "multiple-choice", "B"),
        sample("validation_Art_1", "multiple-choice", "B"),
        sample("validation_Math_1", "multiple-choice", "C"),
    ]
    replies = {"dev_Art_1": "A", "validation_Art_1": "B", "validation_Math_1": "A"}
    result = score_mmmu(samples, replies, protocol="vlmevalkit")
    assert result.metrics["acc"] == pytest.approx(1 / 2)
    assert result.metrics["split/dev/acc"] == 0.0
    assert result.metrics["split/validation/acc"] == pytest.approx(1 / 2)
    assert result.metrics["subject/Art/acc"] == 1.0  # the breakdown is over validation too
    assert result.markdown_row("m") == "| m | 50.0 |"
    # The official protocol is scored over every sample it is given.
    assert score_mmmu(samples, replies).metrics["acc"] == pytest.approx(1 / 3)
    # With no validation question (e.g. a --limit run), acc is over what there is.
    dev_only = score_mmmu(samples[:1], replies, protocol="vlmevalkit")
    assert dev_only.metrics["acc"] == 0.0


def test_vlmevalkit_loads_dev_and_validation(tmp_path: Path) -> None:
    assert mmmu_splits("official") == ("validation",)
    assert mmmu_splits("vlmevalkit") == ("dev", "validation")
    write_subject(tmp_path, "Art", [mmmu_row("validation_Art_1", "open", "[]", "7", 0)])
    with pytest.raises(BenchmarkNotFoundError, match=r"<Subject>/dev-\*\.parquet"):
        list(load_mmmu(tmp_path, split=mmmu_splits("vlmevalkit")))
    write_subject(tmp_path, "Art", [mmmu_row("dev_Art_1", "open", "[]", "7", 0)], split="dev")
    write_subject(tmp_path, "Math", [mmmu_row("dev_Math_1", "open", "[]", "7", 0)], split="dev")
    ids = [s.id for s in load_mmmu(tmp_path, split=mmmu_splits("vlmevalkit"))]
    assert ids == ["dev_Art_1", "dev_Math_1", "validation_Art_1"]
    assert [s.id for s in load_mmmu(tmp_path)] == ["validation_Art_1"]


def test_unknown_protocol_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"official, vlmevalkit.*'lmms'"):
        score_mmmu(
            [sample("validation_Art_1", "open", ("1",))], {"validation_Art_1": "1"}, protocol="lmms"
        )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"official, vlmevalkit"):
        mmmu_splits("lmms")
