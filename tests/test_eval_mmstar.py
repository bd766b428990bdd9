"""MMStar: the parquet loader and VLMEvalKit-style option matching, against hand-worked cases."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError
from pairuni.eval.mmstar import (
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


def test_loader_and_score_per_category(tmp_path: Path) -> None:
    write_mmstar(tmp_path)
    samples = list(load_mmstar(tmp_path))
    assert [s.id for s in samples] == ["0", "1", "2", "3", "4"]
    assert samples[1].options == {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    predictions = {str(row[0]): row[4] for row in ROWS}
    result = score_mmstar(samples, predictions)
    verdicts = [entry["correct"] for entry in result.details["samples"]]
    assert verdicts == [row[5] for row in ROWS]
    # 3 of 5 right; coarse perception 1 of 2; math 2 of 3.
    assert result.metrics["acc"] == pytest.approx(3 / 5)
    assert result.metrics["category/coarse perception/acc"] == pytest.approx(1 / 2)
    assert result.metrics["category/math/acc"] == pytest.approx(2 / 3)
    assert result.metrics["l2_category/math / sub/acc"] == pytest.approx(2 / 3)
    assert result.details["unmatched"] == 1
    assert result.markdown_row("m") == "| m | 60.0 |"


def test_option_letter_rules() -> None:
    letters = ["A", "B", "C", "D"]
    assert match_option_letter("Answer: (C).", letters) == "C"
    assert match_option_letter("B or C", letters) is None  # two letters: ambiguous
    assert match_option_letter("A", letters) == "A"
    assert match_option_letter("A dog is here", letters) is None  # `A` as an article
    assert match_option_text("it is a bird", {"A": "cat", "B": "bird"}) == "B"
    assert match_option_text("cat and bird", {"A": "cat", "B": "bird"}) is None


def test_parse_options_handles_periods_and_commas_in_text() -> None:
    text = "Q?\nOptions: A: The cup is on the table., B: 3.5, C: x, y, D: none"
    assert parse_options(text) == {
        "A": "The cup is on the table",
        "B": "3.5",
        "C": "x, y",
        "D": "none",
    }


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match="Lin-Chen/MMStar"):
        list(load_mmstar(tmp_path / "missing"))
    write_mmstar(tmp_path / "bad", answer_override="E or F")
    with pytest.raises(BenchmarkDataError, match=r"mmstar.parquet: row 0 \(index 0\).*'answer'"):
        list(load_mmstar(tmp_path / "bad"))
