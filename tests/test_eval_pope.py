"""POPE: both loaders (incl. the Hub snapshot with Full/ beside data/), the official metrics per
split, the pooled (VLMEvalKit) headline, and RL-format replies, all computed by hand."""

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


def cases_samples() -> list[POPESample]:
    return [POPESample(f"{s}/{i}", s, "q", g, b"") for i, (s, g, _) in enumerate(CASES)]


def cases_predictions() -> dict[str, str]:
    return {f"{s}/{i}": r for i, (s, _, r) in enumerate(CASES)}


def test_metrics_per_split_mean_and_pooled() -> None:
    m = score_pope(cases_samples(), cases_predictions()).metrics
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


def test_protocols_pick_the_headline_and_report_the_same_numbers() -> None:
    official = score_pope(cases_samples(), cases_predictions())
    pooled = score_pope(cases_samples(), cases_predictions(), protocol="vlmevalkit")
    assert official.metrics == pooled.metrics  # both protocols report every number
    # mean of per-split F1 (1/2 + 2/3) / 2 = 58.3; pooled F1 over the 6 questions 4/7 = 57.1.
    assert official.markdown_header().splitlines()[0] == (
        "| Model | POPE | Pooled F1 | Random F1 | Popular F1 |"
    )
    assert official.markdown_row("m") == "| m | 58.3 | 57.1 | 50.0 | 66.7 |"
    assert pooled.markdown_header().splitlines()[0] == (
        "| Model | POPE | Mean F1 | Random F1 | Popular F1 |"
    )
    assert pooled.markdown_row("m") == "| m | 57.1 | 58.3 | 50.0 | 66.7 |"
    assert (official.details["protocol"], pooled.details["protocol"]) == ("official", "vlmevalkit")
    with pytest.raises(ValueError, match="official, vlmevalkit"):
        score_pope(cases_samples(), cases_predictions(), protocol="lmms-eval")  # type: ignore[arg-type]


def test_pooled_f1_is_not_the_mean_of_split_f1() -> None:
    # random: TP 2, FN 2 -> P 1, R 1/2, F1 2/3. popular: TP 1, FP 1 -> P 1/2, R 1, F1 2/3.
    # adversarial: TN 2, no positive prediction -> F1 0. Mean over splits: 4/9.
    # Pooled: TP 3, FP 1, FN 2, TN 2 -> P 3/4, R 3/5, F1 2/3; acc 5/8.
    rows = [
        *[("random", "yes", "Yes")] * 2,
        *[("random", "yes", "No")] * 2,
        ("popular", "yes", "Yes"),
        ("popular", "no", "Yes"),
        *[("adversarial", "no", "No")] * 2,
    ]
    samples = [POPESample(f"{s}/{i}", s, "q", g, b"") for i, (s, g, _) in enumerate(rows)]
    predictions = {f"{s}/{i}": r for i, (s, _, r) in enumerate(rows)}
    result = score_pope(samples, predictions, protocol="vlmevalkit")
    assert result.metrics["mean/f1"] == pytest.approx(4 / 9)
    assert result.metrics["all/f1"] == pytest.approx(2 / 3)
    assert result.metrics["all/acc"] == pytest.approx(5 / 8)
    assert result.markdown_row("m").startswith("| m | 66.7 | 44.4 |")


def think(reasoning: str, answer: str) -> str:
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


# Reasoning that the official rule, reading the whole reply, takes for the other answer: its
# first sentence has "not" / "no" before a yes answer, or no negative word before a no one.
MISLEADING = {
    "Yes, there is a dog.": think("I do not see it at first. yes", "Yes, there is a dog."),
    "No.": think("Yes I see one. no", "No."),
    "There is not a cat": think("Yes I see one. no", "There is not a cat"),
    "I don't think so": think("it is not there", "I don't think so"),
    "yes": think("Not a dog? no, not that", "yes"),
    "Nothing. no": think("There is no cat", "Nothing. no"),
}


def rl_predictions() -> dict[str, str]:
    return {k: MISLEADING[v] for k, v in cases_predictions().items()}


def test_rl_format_answers_score_exactly_as_plain_answers() -> None:
    plain = score_pope(cases_samples(), cases_predictions())
    wrapped = score_pope(cases_samples(), rl_predictions())
    assert wrapped.metrics == plain.metrics
    assert wrapped.details["unparsed"] == plain.details["unparsed"] == ["random/3"]
    # Read whole (the official scripts' way), the reasoning flips every verdict.
    for answer, reply in MISLEADING.items():
        assert parse_yes_no(reply) != parse_yes_no(answer), reply
    whole = score_pope(cases_samples(), rl_predictions(), answer_span="off")
    assert (whole.metrics["all/tp"], whole.metrics["all/tn"]) == (1, 2)
    assert (plain.metrics["all/tp"], plain.metrics["all/tn"]) == (2, 1)


def test_brief_example_and_cut_off_replies() -> None:
    samples = [POPESample(f"random/{i}", "random", "q", "no", b"") for i in range(4)]
    predictions = {
        "random/0": "<think>no, wait, not sure... yes</think><answer>No</answer>",
        "random/1": "<think>There is no cat, so the answer is",  # cut off while thinking
        "random/2": "<think>done</think><answer>",  # cut off right after <answer>
        "random/3": "There is a cat.",  # plain, but neither yes nor no
    }
    result = score_pope(samples, predictions)
    # Scoring keeps the official rule (no "no" word -> yes): only random/0 is a true negative;
    # the cut-off reasoning's "no" is not an answer.
    assert (result.metrics["random/tn"], result.metrics["random/fp"]) == (1, 3)
    assert result.metrics["unparsed"] == 3
    assert result.details["unparsed"] == ["random/1", "random/2", "random/3"]


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
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "test-00000-of-00001.parquet")
    samples = list(load_pope(tmp_path))
    assert [(s.id, s.split, s.answer) for s in samples] == [
        ("random/1", "random", "yes"),
        ("adversarial/2", "adversarial", "no"),
    ]
    result = score_pope(samples, {"random/1": "Yes", "adversarial/2": "Yes"})
    assert result.markdown_header().splitlines()[0] == (
        "| Model | POPE | Pooled F1 | Random F1 | Adversarial F1 |"
    )


HUB_ROWS = [  # (id, question_id, split, answer): three questions, one per split
    ("0", "1", "random", "yes"),
    ("3000", "1", "popular", "no"),
    ("6000", "1", "adversarial", "yes"),
]


def hub_row(row_id: str, qid: str, split: str, answer: str, category: bool = True) -> dict:
    row = {
        "id": row_id,
        "question_id": qid,
        "question": "Is there a snowboard in the image?",
        "answer": answer,
        "image_source": "COCO_val2014_000000310196",
        "image": {"bytes": png(), "path": None},
        "category": split,
    }
    if not category:
        del row["category"]
    return row


def write_hub_snapshot(root: Path, data: bool = True, category: bool = True) -> None:
    """lmms-lab/POPE as `huggingface-cli download` lays it out: data/test-*.parquet (the default
    config, every split with a `category` column) and Full/<split>-*.parquet (the `Full` config:
    the same questions again, one file per split)."""
    if data:
        (root / "data").mkdir(parents=True)
        table = pa.Table.from_pylist([hub_row(*r) for r in HUB_ROWS])
        pq.write_table(table, root / "data" / "test-00000-of-00001.parquet")
    (root / "Full").mkdir(parents=True)
    for row in HUB_ROWS:
        table = pa.Table.from_pylist([hub_row(*row, category=category)])
        pq.write_table(table, root / "Full" / f"{row[2]}-00000-of-00001.parquet")


def test_hub_snapshot_with_full_beside_data_reads_data_only(tmp_path: Path) -> None:
    write_hub_snapshot(tmp_path)
    samples = list(load_pope(tmp_path))
    assert [(s.id, s.split, s.answer) for s in samples] == [
        ("random/1", "random", "yes"),
        ("popular/1", "popular", "no"),
        ("adversarial/1", "adversarial", "yes"),
    ]


@pytest.mark.parametrize("category", [True, False])
def test_full_config_alone_is_read_with_its_split_from_the_file_name(
    tmp_path: Path, category: bool
) -> None:
    write_hub_snapshot(tmp_path, data=False, category=category)
    samples = list(load_pope(tmp_path))
    # Files in name order (adversarial, popular, random); ids match those of data/.
    assert [(s.id, s.split, s.answer) for s in samples] == [
        ("adversarial/1", "adversarial", "yes"),
        ("popular/1", "popular", "no"),
        ("random/1", "random", "yes"),
    ]


def test_full_config_from_the_parquet_converter_branch(tmp_path: Path) -> None:
    (tmp_path / "Full" / "popular").mkdir(parents=True)
    table = pa.Table.from_pylist([hub_row("3000", "1", "popular", "no", category=False)])
    pq.write_table(table, tmp_path / "Full" / "popular" / "0000.parquet")
    (sample,) = load_pope(tmp_path)
    assert (sample.id, sample.split) == ("popular/1", "popular")


def test_full_file_whose_rows_name_another_split_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Full").mkdir()
    table = pa.Table.from_pylist([hub_row("0", "1", "random", "yes")])
    pq.write_table(table, tmp_path / "Full" / "popular-00000-of-00001.parquet")
    with pytest.raises(
        BenchmarkDataError, match=r"popular-00000-of-00001.parquet: row 0: field 'category'"
    ):
        list(load_pope(tmp_path))


def test_a_data_file_without_category_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    table = pa.Table.from_pylist([hub_row("0", "1", "random", "yes", category=False)])
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(BenchmarkDataError, match=r"row 0: field 'category' is missing"):
        list(load_pope(tmp_path))


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
