"""MMMU: the parquet loader and the official answer parsing, against hand-worked cases."""

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
    parse_multi_choice,
    parse_open,
    score_mmmu,
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


def write_subject(root: Path, subject: str, rows: list[dict]) -> None:
    folder = root / subject
    folder.mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [(k, pa.string()) for k in rows[0] if not k.startswith("image_")]
    fields += [(f"image_{k}", image_type) for k in range(1, 8)]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    pq.write_table(table, folder / "validation-00000-of-00001.parquet")


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
