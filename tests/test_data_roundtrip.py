"""Round trips through JSONL / gzip / parquet (property-based) and HF `datasets` compatibility."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pairuni.data import (
    OPTION_LETTERS,
    GenerationSample,
    ImageRef,
    Pair,
    Quadruple,
    Record,
    UnderstandingSample,
    read_records,
    write_records,
)

SUFFIXES = [".jsonl", ".jsonl.gz", ".parquet"]

text = st.text(min_size=1, max_size=12)
ids = st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True)
relative_paths = st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_]{1,8}){0,2}\.png", fullmatch=True)
images = st.one_of(
    relative_paths.map(lambda p: ImageRef(path=p)),
    relative_paths.map(lambda p: ImageRef(path="/abs/" + p)),
    st.builds(
        lambda data, path: ImageRef.model_validate({"bytes": data, "path": path}),
        st.binary(max_size=64),
        st.none() | relative_paths,
    ),
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # also beyond int64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
extras = st.dictionaries(st.from_regex(r"x_[a-z]{1,4}", fullmatch=True), json_values, max_size=3)


@st.composite
def multiple_choice(draw: st.DrawFn) -> tuple[list[str], str]:
    options = draw(st.lists(text.filter(str.strip), unique=True, max_size=len(OPTION_LETTERS)))
    answer = draw(st.sampled_from(OPTION_LETTERS[: len(options)]) if options else text)
    return options, answer


@st.composite
def understanding(draw: st.DrawFn) -> UnderstandingSample:
    options, answer = draw(multiple_choice())
    return UnderstandingSample(
        id=draw(ids),
        image=draw(images),
        question=draw(text),
        options=options,
        answer=answer,
        category=draw(st.none() | text),
        source=draw(st.none() | text),
        **draw(extras),
    )


@st.composite
def generation(draw: st.DrawFn) -> GenerationSample:
    return GenerationSample(
        id=draw(ids),
        prompt=draw(text),
        image=draw(st.none() | images),
        category=draw(st.none() | text),
        **draw(extras),
    )


@st.composite
def quadruple(draw: st.DrawFn) -> Quadruple:
    options, answer = draw(multiple_choice())
    return Quadruple(
        id=draw(ids),
        origin=draw(st.sampled_from(["understanding", "generation"])),
        image=draw(images),
        prompt=draw(text),
        question=draw(text),
        options=options,
        answer=answer,
        **draw(extras),
    )


@st.composite
def pair(draw: st.DrawFn) -> Pair:
    options, answer = draw(multiple_choice())
    kind = draw(st.sampled_from(["aligned", "retrieved"]))
    unit = st.floats(min_value=0.0, max_value=1.0)
    return Pair(
        pair_id=draw(ids),
        kind=kind,
        similarity=draw(unit if kind == "retrieved" else st.none() | unit),
        weight=draw(st.none() | (unit if kind == "retrieved" else st.just(1.0))),
        gen_prompt=draw(text),
        gen_image=draw(st.none() | images),
        gen_source_id=draw(st.none() | ids),
        und_image=draw(images),
        und_question=draw(text),
        und_options=options,
        und_answer=answer,
        und_source_id=draw(st.none() | ids),
        category=draw(st.none() | text),
        **draw(extras),
    )


def record_lists(
    strategy: st.SearchStrategy[Record], key: str = "id"
) -> st.SearchStrategy[list[Record]]:
    return st.lists(strategy, max_size=6, unique_by=lambda r: getattr(r, key))


def assert_round_trips(records: list[Record], model: type[Record]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for suffix in SUFFIXES:
            path = Path(folder) / f"records{suffix}"
            write_records(path, records, model=model)
            again = read_records(path, model)
            assert again.records == records, suffix
            assert again.skipped == []


SLOW_OK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW_OK
@given(record_lists(pair(), key="pair_id"))
def test_pairs_round_trip(records: list[Record]) -> None:
    assert_round_trips(records, Pair)


@SLOW_OK
@given(record_lists(understanding()))
def test_understanding_round_trips(records: list[Record]) -> None:
    assert_round_trips(records, UnderstandingSample)


@SLOW_OK
@given(record_lists(generation()))
def test_generation_round_trips(records: list[Record]) -> None:
    assert_round_trips(records, GenerationSample)


@SLOW_OK
@given(record_lists(quadruple()))
def test_quadruples_round_trip(records: list[Record]) -> None:
    assert_round_trips(records, Quadruple)


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_shapesworld_style_records_round_trip(tmp_path: Path) -> None:
    scene = {"objects": [{"shape": "cube", "color": "red", "xy": [0.25, 0.5]}], "size": 64}
    geneval = {"tag": "counting", "include": [{"class": "cube", "count": 2}]}
    records = [
        UnderstandingSample(
            id="s0", image="images/s0.png", question="How many cubes?", answer="2", scene=scene
        ),
        UnderstandingSample(
            id="s1",
            image="images/s1.png",
            question="Colour?",
            options=["red", "blue"],
            answer="B",
            scene=scene,
            geneval=geneval,
        ),
    ]
    for suffix in SUFFIXES:
        write_records(tmp_path / f"u{suffix}", records)
        assert read_records(tmp_path / f"u{suffix}", UnderstandingSample).records == records


def test_hf_datasets_parquet_reads_as_understanding_samples(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    red, blue = png((255, 0, 0)), png((0, 0, 255))
    columns: dict[str, list[Any]] = {
        "id": ["a", "b"],
        "image": [{"bytes": red, "path": None}, {"bytes": blue, "path": "blue.png"}],
        "question": ["Colour?", "Which colour is shown?"],
        "options": [[], ["red", "blue"]],
        "answer": ["red", "B"],
        "meta": [{"difficulty": 1}, {"difficulty": 2}],
    }
    dataset = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    dataset.to_parquet(str(tmp_path / "hf.parquet"))
    records = read_records(tmp_path / "hf.parquet", UnderstandingSample)
    assert [r.image.data for r in records] == [red, blue]
    assert records[1].image.path == "blue.png"
    assert records[1].options == ["red", "blue"]
    assert records[0].model_extra == {"meta": {"difficulty": 1}}
    assert records[1].image.open().getpixel((0, 0)) == (0, 0, 255)


def test_our_embedded_parquet_loads_in_hf_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    green = ImageRef(bytes=png((0, 255, 0)), path="g.png")
    red = ImageRef(bytes=png((255, 0, 0)))
    records = [
        UnderstandingSample(id="a", image=green, question="q", answer="a", n=2, tag="x"),
        UnderstandingSample(id="b", image=red, question="q", answer="b", n=3),
    ]
    path = tmp_path / "ours.parquet"
    write_records(path, records, images="embed")
    for loaded in (
        datasets.Dataset.from_parquet(str(path)),
        datasets.load_dataset("parquet", data_files=str(path), split="train"),
    ):
        assert isinstance(loaded.features["image"], datasets.Image)
        assert loaded[0]["image"].convert("RGB").getpixel((0, 0)) == (0, 255, 0)
        assert loaded[1]["answer"] == "b"
        assert loaded[1]["n"] == 3  # in every record with one type: a typed column
        assert loaded[0]["tag"] == '"x"'  # absent in some record: JSON text, null where absent
        assert loaded[1]["tag"] is None
