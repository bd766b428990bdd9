"""`check_images`: missing and undecodable images are reported with file, line/row and field."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pairuni.data import DataError, ImageRef, Pair, check_images, read_records, write_records


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "PNG")
    return buffer.getvalue()


def pair_line(i: int, und_image: object, gen_image: object = None) -> str:
    record = {
        "pair_id": f"p{i}",
        "kind": "aligned",
        "gen_prompt": "a red square",
        "gen_image": gen_image,
        "und_image": und_image,
        "und_question": "What colour is the square?",
        "und_answer": "red",
    }
    return json.dumps(record) + "\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "good.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "images" / "text.png").write_text("this is not an image")
    truncated = png((0, 255, 0))
    (tmp_path / "images" / "cut.png").write_bytes(truncated[: len(truncated) - 30])
    return tmp_path


def write(folder: Path, lines: list[str]) -> Path:
    path = folder / "pairs.jsonl"
    path.write_text("".join(lines))
    return path


def test_good_images_pass(folder: Path) -> None:
    path = write(folder, [pair_line(0, "images/good.png", "images/good.png")])
    records = read_records(path, Pair)
    assert check_images(records) is records


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("images/missing.png", "does not exist"),
        ("images/text.png", "cannot be decoded as an image"),
        ("images/cut.png", "cannot be decoded as an image"),
    ],
)
def test_bad_image_names_file_line_field(folder: Path, image: str, reason: str) -> None:
    path = write(folder, [pair_line(0, "images/good.png"), pair_line(1, image)])
    records = read_records(path, Pair)  # reading never opens images
    with pytest.raises(DataError) as caught:
        check_images(records)
    error = caught.value
    assert (error.path, error.index, error.field) == (path, 2, "und_image")
    assert reason in error.reason
    assert str(folder / image) in error.reason


def test_gen_image_is_checked_and_fields_can_be_chosen(folder: Path) -> None:
    path = write(folder, [pair_line(0, "images/good.png", gen_image="images/missing.png")])
    records = read_records(path, Pair)
    with pytest.raises(DataError, match="field gen_image"):
        check_images(records)
    assert check_images(records, fields=["und_image"]) is records
    with pytest.raises(ValueError, match="no field"):
        check_images(records, fields=["nope"])


def test_undecodable_embedded_image(tmp_path: Path) -> None:
    good = Pair(
        pair_id="p0",
        kind="aligned",
        gen_prompt="g",
        und_image=ImageRef(bytes=png((1, 2, 3))),
        und_question="q",
        und_answer="a",
    )
    bad = good.model_copy(update={"pair_id": "p1", "und_image": ImageRef(bytes=b"\x89PNG junk")})
    out = tmp_path / "pairs.parquet"
    write_records(out, [good, bad])
    with pytest.raises(DataError) as caught:
        check_images(read_records(out, Pair))
    assert (caught.value.index, caught.value.index_kind, caught.value.field) == (
        1,
        "row",
        "und_image",
    )
    assert "the embedded image cannot be decoded" in caught.value.reason


def test_skip_mode(folder: Path) -> None:
    lines = [
        pair_line(0, "images/good.png"),
        pair_line(1, "images/missing.png"),
        pair_line(2, "images/good.png"),
        pair_line(3, "images/text.png"),
    ]
    records = read_records(write(folder, lines), Pair)
    checked = check_images(records, on_bad_record="skip")
    assert [p.pair_id for p in checked] == ["p0", "p2"]
    assert [(s.index, s.field) for s in checked.skipped] == [(2, "und_image"), (4, "und_image")]
    assert [loc.index for loc in checked.locations] == [1, 3]
    assert checked.summary().startswith("skipped 2 of 4 records: ")
    assert len(records) == 4  # the input is left as it was
