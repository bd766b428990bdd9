"""`write_records`: image modes, atomic replacement, parquet layout, refusals."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

import pairuni.data.io as data_io
from pairuni.data import (
    DataError,
    GenerationSample,
    ImageRef,
    Pair,
    UnderstandingSample,
    check_images,
    read_records,
    write_records,
)


def png(color: tuple[int, int, int], size: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def sample(i: int, image: str | ImageRef, **extra: object) -> UnderstandingSample:
    return UnderstandingSample(
        id=f"u{i}", image=image, question="What colour?", answer="red", **extra
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """src/data.jsonl with images in src/images/ (paths relative to the file)."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "a.png").write_bytes(png((255, 0, 0)))
    (src / "images" / "b.png").write_bytes(png((0, 0, 255)))
    lines = [
        {"id": "u0", "image": "images/a.png", "question": "q", "answer": "red"},
        {"id": "u1", "image": "images/b.png", "question": "q", "answer": "blue"},
        {"id": "u2", "image": "images/a.png", "question": "q2", "answer": "red"},
    ]
    (src / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return src / "data.jsonl"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".jsonl.gz"])
def test_keep_rehomes_relative_paths(tmp_path: Path, dataset: Path, suffix: str) -> None:
    records = read_records(dataset, UnderstandingSample)
    out = tmp_path / "elsewhere" / "deeper" / f"out{suffix}"
    write_records(out, records)
    again = read_records(out, UnderstandingSample)
    assert again[0].image.path == "../../src/images/a.png"
    # The bytes behind each reference are the ones the source pointed at.
    for old, new in zip(records, again, strict=True):
        assert new.image.read_bytes(again.base_dir) == old.image.read_bytes(records.base_dir)
    assert check_images(again) is again


def test_keep_leaves_absolute_paths(tmp_path: Path) -> None:
    absolute = str(tmp_path / "x.png")
    write_records(tmp_path / "o" / "a.jsonl", [sample(0, absolute)])
    assert read_records(tmp_path / "o" / "a.jsonl", UnderstandingSample)[0].image.path == absolute


def test_plain_list_paths_are_relative_to_the_output(tmp_path: Path) -> None:
    # A generator that renders out/images/x.png and writes out/data.jsonl keeps its paths.
    write_records(tmp_path / "out" / "data.jsonl", [sample(0, "images/x.png")])
    line = json.loads((tmp_path / "out" / "data.jsonl").read_text())
    assert line["image"] == "images/x.png"


def test_base_dir_option(tmp_path: Path) -> None:
    write_records(tmp_path / "out" / "data.jsonl", [sample(0, "x.png")], base_dir=tmp_path / "pics")
    assert json.loads((tmp_path / "out" / "data.jsonl").read_text())["image"] == "../pics/x.png"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_embed(tmp_path: Path, dataset: Path, suffix: str) -> None:
    records = read_records(dataset, UnderstandingSample)
    out = tmp_path / "packed" / f"data{suffix}"
    write_records(out, records, images="embed")
    again = read_records(out, UnderstandingSample)
    assert [r.image.path for r in again] == ["a.png", "b.png", "a.png"]
    assert again[1].image.data == (dataset.parent / "images" / "b.png").read_bytes()
    assert again[1].image.open().getpixel((0, 0)) == (0, 0, 255)
    if suffix == ".jsonl":
        raw = json.loads(out.read_text().splitlines()[0])
        assert set(raw["image"]) == {"bytes", "path"}
        assert isinstance(raw["image"]["bytes"], str)  # base64 text


def test_embed_missing_image_names_source_line(tmp_path: Path, dataset: Path) -> None:
    (dataset.parent / "images" / "b.png").unlink()
    records = read_records(dataset, UnderstandingSample)
    with pytest.raises(DataError) as caught:
        write_records(tmp_path / "out.parquet", records, images="embed")
    error = caught.value
    assert (error.path, error.index, error.field) == (dataset, 2, "image")
    assert "b.png" in error.reason
    assert not (tmp_path / "out.parquet").exists()


def test_copy(tmp_path: Path, dataset: Path) -> None:
    records = read_records(dataset, UnderstandingSample)
    out = tmp_path / "copy" / "data.jsonl"
    write_records(out, records, images="copy", image_dir="imgs")
    again = read_records(out, UnderstandingSample)
    assert [r.image.path for r in again] == ["imgs/a.png", "imgs/b.png", "imgs/a.png"]
    assert sorted(p.name for p in (out.parent / "imgs").iterdir()) == ["a.png", "b.png"]
    assert (out.parent / "imgs" / "b.png").read_bytes() == png((0, 0, 255))


def test_copy_renames_clashing_names(tmp_path: Path) -> None:
    for folder, color in [("one", (255, 0, 0)), ("two", (0, 255, 0))]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "img.png").write_bytes(png(color))
    records = [sample(0, "one/img.png"), sample(1, "two/img.png"), sample(2, "one/img.png")]
    out = tmp_path / "out" / "data.jsonl"
    write_records(out, records, images="copy", base_dir=tmp_path)
    again = read_records(out, UnderstandingSample)
    paths = [r.image.path for r in again]
    assert paths[0] == paths[2] == "images/img.png"
    assert paths[1].startswith("images/img-") and paths[1] != paths[0]
    assert again[1].image.open(again.base_dir).getpixel((0, 0)) == (0, 255, 0)


def test_copy_does_not_overwrite_a_different_existing_file(tmp_path: Path) -> None:
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "out" / "images" / "img.png").write_bytes(png((1, 2, 3)))
    (tmp_path / "img.png").write_bytes(png((9, 9, 9)))
    write_records(
        tmp_path / "out" / "d.jsonl", [sample(0, "img.png")], images="copy", base_dir=tmp_path
    )
    assert (tmp_path / "out" / "images" / "img.png").read_bytes() == png((1, 2, 3))
    ref = read_records(tmp_path / "out" / "d.jsonl", UnderstandingSample)[0].image
    assert ref.path != "images/img.png"


def test_copy_rejects_image_dir_outside(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inside the output"):
        write_records(tmp_path / "d.jsonl", [sample(0, "a.png")], images="copy", image_dir="../x")


def test_atomic_write_keeps_old_file_when_replace_never_happens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data.jsonl"
    write_records(out, [sample(0, "a.png")])
    before = out.read_bytes()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(data_io.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_records(out, [sample(i, "b.png") for i in range(5)])
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]  # no temp left


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_atomic_write_keeps_old_file_on_a_failure_midway(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"data{suffix}"
    write_records(out, [sample(0, "a.png")])
    before = out.read_bytes()

    def records() -> object:
        yield sample(1, "a.png")
        yield sample(2, "a.png")
        raise RuntimeError("generator crashed")

    with pytest.raises(RuntimeError):
        write_records(out, records())  # type: ignore[arg-type]
    assert out.read_bytes() == before


def test_one_record_type_per_file(tmp_path: Path) -> None:
    records = [sample(0, "a.png"), GenerationSample(id="g", prompt="p")]
    with pytest.raises(TypeError, match="record 1 is a GenerationSample"):
        write_records(tmp_path / "mixed.jsonl", records)  # type: ignore[list-item]


def test_non_finite_extra_is_refused_with_its_field(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        write_records(
            tmp_path / "d.jsonl", [sample(0, "a.png"), sample(1, "a.png", score=math.nan)]
        )
    assert (caught.value.index, caught.value.field, caught.value.index_kind) == (
        1,
        "score",
        "record",
    )
    assert not (tmp_path / "d.jsonl").exists()


def test_numpy_extras_are_written_as_plain_numbers(tmp_path: Path) -> None:
    import numpy as np

    write_records(tmp_path / "d.jsonl", [sample(0, "a.png", score=np.float32(0.5), n=np.arange(3))])
    extra = read_records(tmp_path / "d.jsonl", UnderstandingSample)[0].model_extra
    assert extra == {"score": 0.5, "n": [0, 1, 2]}


def test_unknown_format_and_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        write_records(tmp_path / "d.csv", [sample(0, "a.png")])
    with pytest.raises(ValueError, match="images='inline'"):
        write_records(tmp_path / "d.jsonl", [sample(0, "a.png")], images="inline")  # type: ignore[arg-type]


def test_parquet_columns_seen_by_pyarrow(tmp_path: Path) -> None:
    pairs = [
        Pair(
            pair_id="a0",
            kind="aligned",
            gen_prompt="a red cube",
            und_image=ImageRef(bytes=png((255, 0, 0)), path="a0.png"),
            und_question="Colour?",
            und_options=["red", "blue"],
            und_answer="A",
            scene={"objects": [{"shape": "cube"}]},
            split="train",
        ),
        Pair(
            pair_id="r0",
            kind="retrieved",
            similarity=0.64,
            gen_prompt="a blue ball",
            und_image=ImageRef(bytes=png((0, 0, 255))),
            und_question="Colour?",
            und_answer="blue",
            split="train",
        ),
    ]
    out = tmp_path / "pairs.parquet"
    write_records(out, pairs)
    table = pq.read_table(out)
    assert table.column_names == [*Pair.model_fields, "scene", "split"]
    assert str(table.schema.field("und_image").type) == "struct<bytes: binary, path: string>"
    assert str(table.schema.field("und_options").type) == "list<element: string>"
    assert str(table.schema.field("similarity").type) == "double"
    assert str(table.schema.field("split").type) == "string"  # dense scalar extra: native
    rows = table.to_pylist()
    assert rows[0]["kind"] == "aligned"
    assert rows[1]["weight"] == pytest.approx(0.8)
    assert json.loads(rows[0]["scene"]) == {"objects": [{"shape": "cube"}]}  # nested: JSON text
    assert rows[1]["scene"] is None  # absent in this record
    assert rows[1]["und_image"] == {"bytes": png((0, 0, 255)), "path": None}
    metadata = table.schema.metadata
    assert json.loads(metadata[b"pairuni"])["json_columns"] == ["scene"]
    assert json.loads(metadata[b"huggingface"])["info"]["features"] == {
        "und_image": {"_type": "Image"}
    }
    assert read_records(out, Pair).records == pairs


def test_empty_files(tmp_path: Path) -> None:
    write_records(tmp_path / "e.jsonl", [])
    write_records(tmp_path / "e.parquet", [], model=Pair)
    assert read_records(tmp_path / "e.jsonl", Pair).records == []
    assert read_records(tmp_path / "e.parquet", Pair).records == []
    assert pq.read_table(tmp_path / "e.parquet").column_names == list(Pair.model_fields)


def test_write_creates_folders_and_returns_path(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "d.jsonl"
    assert write_records(out, [sample(0, "x.png")]) == out
    assert os.path.getsize(out) > 0
