"""MME: both loaders, the official acc / acc+ / perception total, and RL-format replies, all
computed by hand."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError
from pairuni.eval.mme import PERCEPTION, MMESample, load_mme, parse_yes_no, score_mme


def save_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (5, 5, 5)).save(path)


def write_official(root: Path) -> None:
    """`existence` with images and .txt side by side; `count` in images/ + questions_answers_YN/."""
    for name in ("000", "001"):
        save_image(root / "existence" / f"{name}.jpg")
        (root / "existence" / f"{name}.txt").write_text(
            "Is there a dog?\tYes\nIs there a cat?\tNo\n", encoding="utf-8"
        )
        save_image(root / "count" / "images" / f"{name}.png")
        qa = root / "count" / "questions_answers_YN"
        qa.mkdir(parents=True, exist_ok=True)
        (qa / f"{name}.txt").write_text("Two dogs?\tYes\nThree dogs?\tNo\n", encoding="utf-8")


PREDICTIONS = {
    # existence: image 000 both right; image 001 one "other" (wrong) and one right.
    "existence/000.jpg#0": "Yes",
    "existence/000.jpg#1": "No, there is not.",
    "existence/001.jpg#0": "There is a dog.",
    "existence/001.jpg#1": "no",
    # count: image 000 one right one wrong; image 001 "not sure" reads as no (wrong), right.
    "count/000.png#0": "yes",
    "count/000.png#1": "yes",
    "count/001.png#0": "not sure",
    "count/001.png#1": "No",
}


def test_official_folders_and_scores(tmp_path: Path) -> None:
    write_official(tmp_path)
    samples = list(load_mme(tmp_path))
    assert [s.id for s in samples][:2] == ["count/000.png#0", "count/000.png#1"]
    assert {s.subtask for s in samples} == {"existence", "count"}
    assert samples[0].answer == "yes" and samples[1].answer == "no"
    result = score_mme(samples, PREDICTIONS)
    m = result.metrics
    # existence: acc 3/4, acc+ 1/2 -> 100 * 1.25; count: acc 2/4, acc+ 0 -> 50.
    assert m["existence/acc"] == pytest.approx(0.75)
    assert m["existence/acc_plus"] == pytest.approx(0.5)
    assert m["existence/score"] == pytest.approx(125.0)
    assert m["count/score"] == pytest.approx(50.0)
    assert result.details["other_answers"] == {"existence": 1, "count": 0}
    assert m["unparsed"] == 1 and result.details["unparsed"] == ["existence/001.jpg#0"]
    assert "perception_total" not in m  # only 2 of the 10 perception subtasks
    assert result.markdown_row("m") == "| m | – |"


def think(reasoning: str, answer: str) -> str:
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


# Reasoning that would decide the verdict if the parser read the whole reply (it starts with
# "no" before a yes answer and the other way round), and the paper's format around the answer.
REASONING = {"yes": "no, wait, not sure... yes", "no": "yes? no, wait"}


def test_rl_format_answers_score_exactly_as_plain_answers(tmp_path: Path) -> None:
    write_official(tmp_path)
    samples = list(load_mme(tmp_path))
    plain = score_mme(samples, PREDICTIONS)
    gold = {s.id: s.answer for s in samples}
    wrapped = {k: think(REASONING[gold[k]], v) for k, v in PREDICTIONS.items()}
    result = score_mme(samples, wrapped)
    assert result.metrics == plain.metrics
    assert result.details["other_answers"] == plain.details["other_answers"]
    assert result.details["unparsed"] == plain.details["unparsed"]
    # Read whole, every reply starts "<thi" and is `other` (the bug this fixes)...
    assert score_mme(samples, wrapped, answer_span="off").metrics["unparsed"] == len(samples)
    # ... and reasoning alone (no <think> tags) would decide the verdict.
    for answer in ("yes", "no"):
        assert parse_yes_no(REASONING[answer]) not in (answer, "other")


def test_cut_off_replies_are_unparsed() -> None:
    samples = [MMESample(f"color/img#{k}", "color", "color/img", "q", "yes", b"") for k in (0, 1)]
    predictions = {
        "color/img#0": "<think>The car looks red, so yes",  # cut off while thinking
        "color/img#1": "<think>no, wait, not sure... yes</think><answer>Yes</answer>",
    }
    result = score_mme(samples, predictions)
    assert result.metrics["color/acc"] == pytest.approx(0.5)
    assert result.metrics["unparsed"] == 1
    assert result.details["unparsed"] == ["color/img#0"]


def test_parse_yes_no_official_rule() -> None:
    assert parse_yes_no("Yes") == "yes"
    assert parse_yes_no("Yes.") == "yes"
    assert parse_yes_no("No, it is not") == "no"
    assert parse_yes_no("Nope") == "no"  # "no" in the first four characters
    assert parse_yes_no("I see yes") == "other"  # only the first four characters count
    assert parse_yes_no("noyes") == "no"  # "yes" is not within the first four
    assert parse_yes_no("") == "other"


def test_perception_total_sums_ten_subtasks() -> None:
    samples, predictions = [], {}
    for task in PERCEPTION:
        for k, gold in enumerate(("yes", "no")):
            sample = MMESample(f"{task}/img#{k}", task, f"{task}/img", "q", gold, b"")
            samples.append(sample)
            # Every answer right except OCR's first: OCR scores 100 * (1/2 + 0) = 50.
            wrong = task == "OCR" and k == 0
            predictions[sample.id] = ("no" if gold == "yes" else "yes") if wrong else gold
    result = score_mme(samples, predictions)
    assert result.metrics["OCR/score"] == pytest.approx(50.0)
    assert result.metrics["perception_total"] == pytest.approx(9 * 200.0 + 50.0)
    assert result.markdown_row("m") == "| m | 1850.0 |"


def test_parquet_layout(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    image = {"bytes": buffer.getvalue(), "path": None}
    rows = [
        {"question_id": "artwork/1.jpg", "question": "q1", "answer": "Yes", "category": "artwork"},
        {"question_id": "artwork/1.jpg", "question": "q2", "answer": "No", "category": "artwork"},
    ]
    for row in rows:
        row["image"] = image
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "test-00000.parquet")
    samples = list(load_mme(tmp_path))
    assert [(s.id, s.image_id, s.answer) for s in samples] == [
        ("artwork/1.jpg#0", "artwork/1.jpg", "yes"),
        ("artwork/1.jpg#1", "artwork/1.jpg", "no"),
    ]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match="lmms-lab/MME"):
        list(load_mme(tmp_path))
    save_image(tmp_path / "color" / "a.jpg")
    (tmp_path / "color" / "a.txt").write_text("Is it red?\tMaybe\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"a.txt: line 1: field 'answer'"):
        list(load_mme(tmp_path))
