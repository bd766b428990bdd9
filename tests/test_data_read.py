"""`read_records`: formats, and every error path naming file, line/row and field."""

from __future__ import annotations

import gzip
import json
import logging
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairuni.data import (
    DataError,
    GenerationSample,
    Pair,
    UnderstandingSample,
    read_records,
)


def pair(i: int, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "pair_id": f"p{i}",
        "kind": "retrieved",
        "similarity": 0.81,
        "gen_prompt": f"prompt {i}",
        "und_image": f"images/u{i}.png",
        "und_question": "Which shape is red?",
        "und_options": ["cube", "ball", "cone", "ring"],
        "und_answer": "B",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def good_lines(n: int) -> list[str]:
    return [json.dumps(pair(i)) for i in range(n)]


def test_reads_jsonl_with_blank_lines(tmp_path: Path) -> None:
    lines = good_lines(3)
    path = write_lines(tmp_path / "pairs.jsonl", [lines[0], "", "   ", lines[1], lines[2]])
    result = read_records(path, Pair)
    assert [p.pair_id for p in result] == ["p0", "p1", "p2"]
    assert result.total == 3
    assert result.base_dir == tmp_path
    assert [loc.index for loc in result.locations] == [1, 4, 5]  # file lines, 1-based
    assert result[1].weight == pytest.approx(0.9)  # sqrt(0.81)
    assert result.summary() == f"read 3 records from {path}, skipped none"


def test_reads_gzip(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(good_lines(2)).encode()))
    assert len(read_records(path, Pair)) == 2


def test_truncated_gzip_is_a_file_error(tmp_path: Path) -> None:
    data = gzip.compress("\n".join(good_lines(50)).encode())
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="gzip stream is damaged") as caught:
        read_records(path, Pair)
    assert caught.value.path == path


@pytest.mark.parametrize(
    ("bad_line", "field", "reason"),
    [
        ('{"pair_id": "p9", ', None, "invalid JSON"),
        ("[1, 2]", None, "expected a JSON object {...}, got list"),
        (json.dumps(pair(9, und_answer=...)), "und_answer", "required field is missing"),
        (json.dumps(pair(9, similarity="high")), "similarity", "Input should be a valid number"),
        (json.dumps(pair(9, und_answer="E")), "und_answer", "answer 'E' is not one of"),
        (json.dumps(pair(9, similarity=...)), "similarity", "a retrieved pair needs"),
        (json.dumps(pair(9, similarity=1.3)), "similarity", "similarity must be in [0, 1]"),
        (json.dumps(pair(9, und_options=["a", "b", ""])), "und_options.2", "an option is empty"),
        (json.dumps(pair(1)), "pair_id", "duplicate pair_id 'p1', already used at line 2"),
    ],
)
def test_jsonl_errors_name_file_line_field(
    tmp_path: Path, bad_line: str, field: str | None, reason: str
) -> None:
    path = write_lines(tmp_path / "pairs.jsonl", [*good_lines(6), bad_line, *good_lines(0)])
    with pytest.raises(DataError) as caught:
        read_records(path, Pair)
    error = caught.value
    assert (error.path, error.index, error.field) == (path, 7, field)
    assert error.reason.startswith(reason)
    prefix = f"{path}, line 7" + (f", field {field}: " if field else ": ")
    assert str(error).startswith(prefix)


def test_exact_message_for_a_bad_option_letter(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "pairs.jsonl", [*good_lines(6), json.dumps(pair(9, und_answer="E"))]
    )
    with pytest.raises(DataError) as caught:
        read_records(path, Pair)
    assert str(caught.value).startswith(
        f"{path}, line 7, field und_answer: answer 'E' is not one of the option letters A, B, C, D"
    )


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(good_lines(1)[0].encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"line 2: not valid UTF-8"):
        read_records(path, Pair)


def test_cut_off_last_line_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(good_lines(2)) + "\n" + good_lines(3)[2][:20])
    with pytest.raises(DataError, match="interrupted write") as caught:
        read_records(path, Pair)
    assert caught.value.index == 3


def test_several_problems_in_one_record_are_counted(tmp_path: Path) -> None:
    line = json.dumps(pair(0, und_question=..., gen_prompt=3, und_answer=...))
    path = write_lines(tmp_path / "pairs.jsonl", [line])
    with pytest.raises(DataError) as caught:
        read_records(path, Pair)
    assert "and 2 more problem(s)" in caught.value.reason


def test_skip_mode_counts_and_reasons(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = good_lines(5)
    lines[1] = json.dumps(pair(1, und_answer="E"))
    lines[2] = json.dumps(pair(2, und_answer="F"))
    lines[3] = "{oops"
    path = write_lines(tmp_path / "pairs.jsonl", lines)
    with caplog.at_level(logging.WARNING):
        result = read_records(path, Pair, on_bad_record="skip")
    assert [p.pair_id for p in result] == ["p0", "p4"]
    assert result.total == 5
    assert [(s.index, s.field) for s in result.skipped] == [
        (2, "und_answer"),
        (3, "und_answer"),
        (4, None),
    ]
    assert result.skipped[2].reason.startswith("invalid JSON")
    assert result.summary() == (
        "skipped 3 of 5 records: "
        "2 x und_answer: answer 'E' is not one of the option letters A, B, C, D, "
        "1 x invalid JSON"
    )
    assert "skipped 3 of 5 records" in caplog.text
    assert str(result.skipped[0]).startswith(f"{path}, line 2, field und_answer: answer 'E'")
    assert [loc.index for loc in result.locations] == [1, 5]


def test_skip_mode_still_raises_for_whole_file_problems(tmp_path: Path) -> None:
    path = tmp_path / "pairs.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        read_records(path, Pair, on_bad_record="skip")


def test_duplicates_allowed_when_asked(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pairs.jsonl", good_lines(2) + good_lines(1))
    assert len(read_records(path, Pair, unique_ids=False)) == 3


def parquet_of(rows: list[dict[str, object]], path: Path) -> Path:
    """A parquet file written by pyarrow directly (not by the code under test)."""
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_parquet_errors_name_row(tmp_path: Path) -> None:
    rows = [pair(i) for i in range(7)]
    rows[6] = pair(6, und_answer="E")
    path = parquet_of(rows, tmp_path / "pairs.parquet")
    with pytest.raises(DataError) as caught:
        read_records(path, Pair)
    assert (caught.value.index, caught.value.field, caught.value.index_kind) == (
        6,
        "und_answer",
        "row",
    )
    assert str(caught.value).startswith(f"{path}, row 6, field und_answer: answer 'E'")


def test_parquet_null_required_field_is_missing(tmp_path: Path) -> None:
    rows = [pair(0), pair(1, gen_prompt=None)]
    path = parquet_of(rows, tmp_path / "pairs.parquet")
    with pytest.raises(DataError, match=r"row 1, field gen_prompt: required field is missing"):
        read_records(path, Pair)


def test_folder_of_shards(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    parquet_of([pair(i) for i in range(3, 5)], folder / "train-00001-of-00002.parquet")
    parquet_of([pair(i) for i in range(3)], folder / "train-00000-of-00002.parquet")
    (folder / "README.md").write_text("not a shard")
    result = read_records(folder, Pair)
    assert [p.pair_id for p in result] == [f"p{i}" for i in range(5)]
    assert result.base_dir == folder
    assert result.locations[3] == (folder / "train-00001-of-00002.parquet", 0, "row")


def test_duplicate_across_shards_names_both(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    parquet_of([pair(0)], folder / "a.parquet")
    parquet_of([pair(1), pair(0)], folder / "b.parquet")
    with pytest.raises(DataError) as caught:
        read_records(folder, Pair)
    error = caught.value
    assert (error.path, error.index, error.field) == (folder / "b.parquet", 1, "pair_id")
    assert f"already used at row 0 of {folder / 'a.parquet'}" in error.reason


def test_empty_folder_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \.parquet shards"):
        read_records(tmp_path, Pair)
    (tmp_path / "pairs.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown format"):
        read_records(tmp_path / "pairs.csv", Pair)
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        read_records(tmp_path / "missing.jsonl", Pair)


def test_other_models(tmp_path: Path) -> None:
    und = {"id": "u1", "image": "a.png", "question": "q?", "answer": "yes", "scene": {"n": 2}}
    gen = {"id": "g1", "prompt": "two cubes", "geneval": {"tag": "counting"}}
    result_u = read_records(
        write_lines(tmp_path / "u.jsonl", [json.dumps(und)]), UnderstandingSample
    )
    result_g = read_records(write_lines(tmp_path / "g.jsonl", [json.dumps(gen)]), GenerationSample)
    assert result_u[0].model_extra == {"scene": {"n": 2}}
    assert result_g[0].image is None
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({**und, "id": 7})])
    with pytest.raises(DataError, match=r"line 1, field id: Input should be a valid string, got 7"):
        read_records(bad, UnderstandingSample)


def test_data_error_pickles() -> None:
    error = DataError(Path("pairs.jsonl"), 7, "und_answer", "bad letter")
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.index, again.field, again.reason, str(again)) == (
        error.path,
        7,
        "und_answer",
        "bad letter",
        "pairs.jsonl, line 7, field und_answer: bad letter",
    )


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    """The JSONL example in docs/data-format.md reads as two pairs with the stated weights."""
    doc = (Path(__file__).parents[1] / "docs" / "data-format.md").read_text()
    block = doc.split("## JSONL example", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "pairs.jsonl"
    path.write_text(block)
    aligned, retrieved = read_records(path, Pair)
    assert (aligned.kind, aligned.weight, aligned.und_answer) == ("aligned", 1.0, "B")
    assert (retrieved.kind, retrieved.weight) == ("retrieved", pytest.approx(0.8))
    assert aligned.model_extra is not None and "scene" in aligned.model_extra


def test_bad_json_cell_in_a_json_column(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([{**pair(0), "scene": '{"n": 1}'}, {**pair(1), "scene": "{oops"}])
    meta = {b"pairuni": json.dumps({"format_version": 1, "json_columns": ["scene"]}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "pairs.parquet")
    with pytest.raises(DataError) as caught:
        read_records(tmp_path / "pairs.parquet", Pair)
    assert (caught.value.index, caught.value.field) == (1, "scene")
    assert "invalid JSON in a JSON-encoded column" in caught.value.reason
    result = read_records(tmp_path / "pairs.parquet", Pair, on_bad_record="skip")
    assert result[0].model_extra == {"scene": {"n": 1}}


def test_a_missing_field_lists_what_the_record_has(tmp_path: Path) -> None:
    rows = [{k: v for k, v in pair(0).items() if k != "gen_prompt"} | {"prompt": "p"}]
    path = parquet_of(rows, tmp_path / "pairs.parquet")
    with pytest.raises(DataError) as caught:
        read_records(path, Pair)
    message = str(caught.value)
    assert message.startswith(f"{path}, row 0, field gen_prompt: required field is missing")
    assert "the file's columns are: pair_id, kind, similarity, und_image," in message
    assert message.endswith("und_answer, prompt")
    lines = write_lines(tmp_path / "pairs.jsonl", [json.dumps(rows[0])])
    with pytest.raises(
        DataError, match=r"line 1, field gen_prompt: .*fields: kind, pair_id, prompt"
    ):
        read_records(lines, Pair)
