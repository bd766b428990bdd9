"""POPE: both loaders and the official metrics per split, computed by hand."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError
from pairuni.eval.pope import POPESample, load_pope, parse_yes_no, score_pope


def test_parse_yes_no_official_rule() -> None:
    assert parse_yes_no("Yes, there is a dog.") == "yes"
    assert parse_yes_no("No.") == "no"
    assert parse_yes_no("There is not a cat in the image") == "no"
    assert parse_yes_no("I don't think so") == "yes"  # "don't" is not a negative word
    assert parse_yes_no("Yes. No") == "yes"  # only the first sentence counts
    assert parse_yes_no("Nothing. no") == "yes"  # whole words only
    assert parse_yes_no("no, never") == "no"  # commas are removed before splitting


CASES = [
    # split, gold, response -> parsed
    ("random", "yes", "Yes, there is a dog."),  # TP
    ("random", "yes", "No."),  # FN
    ("random", "no", "There is not a cat"),  # TN
    ("random", "no", "I don't think so"),  # FP
    ("popular", "yes", "yes"),  # TP
    ("popular", "no", "Nothing. no"),  # FP
]


def test_metrics_per_split_mean_and_pooled() -> None:
    samples = [POPESample(f"{s}/{i}", s, "q", g, b"") for i, (s, g, _) in enumerate(CASES)]
    predictions = {f"{s}/{i}": r for i, (s, _, r) in enumerate(CASES)}
    m = score_pope(samples, predictions).metrics
    # random: TP=FN=TN=FP=1 -> every metric 0.5.
    for name in ("acc", "precision", "recall", "f1", "yes_ratio"):
        assert m[f"random/{name}"] == pytest.approx(0.5)
    # popular: TP=1, FP=1 -> precision 1/2, recall 1, F1 2/3, acc 1/2, yes-ratio 1.
    assert m["popular/precision"] == pytest.approx(0.5)
    assert m["popular/recall"] == pytest.approx(1.0)
    assert m["popular/f1"] == pytest.approx(2 / 3)
    assert m["popular/yes_ratio"] == pytest.approx(1.0)
    assert m["mean/f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    # pooled: TP=2, FP=2, TN=1, FN=1 -> precision 1/2, recall 2/3, F1 4/7.
    assert m["all/f1"] == pytest.approx(4 / 7)
    assert m["all/acc"] == pytest.approx(0.5)
    assert "adversarial/f1" not in m


def test_no_positive_predictions_gives_zero_not_a_crash() -> None:
    samples = [POPESample("random/0", "random", "q", "yes", b"")]
    m = score_pope(samples, {"random/0": "no"}).metrics
    assert m["random/precision"] == 0.0 and m["random/f1"] == 0.0


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_parquet_loader(tmp_path: Path) -> None:
    rows = [
        {
            "id": str(i),
            "question_id": str(i + 1),
            "question": "Is there a dog in the image?",
            "answer": answer,
            "image_source": "COCO_val2014_x",
            "image": {"bytes": png(), "path": None},
            "category": split,
        }
        for i, (split, answer) in enumerate([("random", "yes"), ("adversarial", "no")])
    ]
    (tmp_path / "Full").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "Full" / "test-0.parquet")
    samples = list(load_pope(tmp_path))
    assert [(s.id, s.split, s.answer) for s in samples] == [
        ("random/1", "random", "yes"),
        ("adversarial/2", "adversarial", "no"),
    ]
    result = score_pope(samples, {"random/1": "Yes", "adversarial/2": "Yes"})
    assert (
        result.markdown_header().splitlines()[0] == "| Model | POPE | Random F1 | Adversarial F1 |"
    )


def test_two_copies_of_the_release_are_an_error(tmp_path: Path) -> None:
    row = {
        "question_id": "1",
        "question": "Is there a dog?",
        "answer": "yes",
        "image": {"bytes": png(), "path": None},
        "category": "random",
    }
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / folder / "test.parquet")
    with pytest.raises(BenchmarkDataError, match=r"b/test.parquet: question random/1.*one copy"):
        list(load_pope(tmp_path))


def test_official_question_files(tmp_path: Path) -> None:
    (tmp_path / "val2014").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "val2014" / "COCO_val2014_1.jpg")
    line = {
        "question_id": 1,
        "image": "COCO_val2014_1.jpg",
        "text": "Is there a cat?",
        "label": "no",
    }
    (tmp_path / "coco_pope_popular.json").write_text(json.dumps(line) + "\n", encoding="utf-8")
    (sample,) = load_pope(tmp_path)
    assert (sample.id, sample.split, sample.answer) == ("popular/1", "popular", "no")
    assert sample.image == tmp_path / "val2014" / "COCO_val2014_1.jpg"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match=r"lmms-lab/POPE.*docs/eval.md"):
        list(load_pope(tmp_path / "nope"))
    with pytest.raises(BenchmarkNotFoundError, match=r"coco_pope_<split>\.json"):
        list(load_pope(tmp_path))
