"""Sources read through `pairuni.data.io` (one reader): bad images, skip mode and its rejects file,
parquet rows and columns, de-duplication, ids across files, DatasetDict folders, option letters
and the rule for relative paths in a config."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pairuni.data.errors import DataError
from pairuni.pairing.annotators import Outcome
from pairuni.pairing.config import SourcesConfig
from pairuni.pairing.sources import load_samples, rejects_path, strip_option_letters


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def und(i: int, image: str = "good.png", **changes: Any) -> dict[str, Any]:
    row = {"id": f"u{i}", "image": image, "question": f"q{i}?", "answer": "yes"}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not None}


def jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "good.png").write_bytes(png((200, 0, 0)))
    (tmp_path / "other.png").write_bytes(png((0, 200, 0)))
    (tmp_path / "corrupt.png").write_bytes(bytes(range(256)) * 4)  # random bytes named .png
    return tmp_path


# --------------------------------------------------------------------------- bad images


def test_missing_image_names_file_line_and_field(folder: Path) -> None:
    path = jsonl(folder / "und.jsonl", [und(0), und(1, image="nope.png")])
    with pytest.raises(DataError) as caught:
        load_samples([str(path)], "understanding", SourcesConfig())
    error = caught.value
    assert (error.path, error.index, error.field) == (path, 2, "image")
    assert str(error).startswith(f"{path}, line 2, field image: image file ")
    assert "nope.png does not exist" in str(error)


def test_corrupt_image_is_an_error_or_a_reject_with_its_reason(folder: Path) -> None:
    path = jsonl(folder / "und.jsonl", [und(0), und(1, image="corrupt.png")])
    with pytest.raises(DataError, match=r"und.jsonl, line 2, field image: .*cannot be decoded"):
        load_samples([str(path)], "understanding", SourcesConfig())
    got = load_samples([str(path)], "understanding", SourcesConfig(on_bad_record="skip"))
    assert [r.id for r in got.records] == ["u0"]
    (reject,) = got.skipped
    assert (reject.path, reject.index, reject.field) == (path, 2, "image")
    assert "cannot be decoded as an image (not a known image format)" in reject.reason
    assert "BytesIO" not in reject.reason


def test_a_corrupt_image_never_reaches_the_annotator(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pairs complete` stops before any request (error) or sends only the good records (skip)."""
    from pairuni.cli import app

    sent: list[tuple[str, bytes | None]] = []

    class Recorder:
        name = "recorder"
        version = "r-1"

        def template_version(self, task: str) -> str:
            return self.version

        async def complete(self, task: str, record: dict, image: bytes | None) -> Outcome:
            sent.append((record["id"], image))
            await asyncio.sleep(0)
            return Outcome(fields={"prompt": "a caption"})

    monkeypatch.setattr("pairuni.pairing.annotators.make_annotator", lambda *a, **k: Recorder())
    data = jsonl(folder / "und.jsonl", [und(0), und(1, image="corrupt.png")])
    config = folder / "c.yaml"
    pairing = {
        "sources": {"understanding": [str(data)]},
        "complete": {"cache_dir": str(folder / "cache")},
    }
    config.write_text(yaml.safe_dump({"pairing": pairing}))
    runner = CliRunner()
    args = ["pairs", "complete", "understanding", "-c", str(config), "--no-progress"]
    res = runner.invoke(app, [*args, "--out", str(folder / "q.jsonl")])
    assert res.exit_code == 2, res.output
    assert "line 2, field image" in res.output and "cannot be decoded" in res.output
    assert sent == []
    res = runner.invoke(
        app,
        [*args, "--out", str(folder / "q2.jsonl"), "--set", "pairing.sources.on_bad_record=skip"],
    )
    assert res.exit_code == 0, res.output
    assert [s[0] for s in sent] == ["u0"] and sent[0][1] == png((200, 0, 0))


def test_many_images_are_checked_in_parallel_and_errors_come_in_file_order(folder: Path) -> None:
    for i in range(24):
        (folder / f"i{i}.png").write_bytes(png((i * 10, 0, 0)))
    rows: list[dict[str, Any] | str] = [und(i, image=f"i{i}.png") for i in range(24)]
    rows[20] = und(20, image="corrupt.png")
    rows[5] = und(5, image="gone.png")
    rows.append("{not json")
    path = jsonl(folder / "und.jsonl", rows)
    with pytest.raises(DataError, match=r"line 6, field image: .*gone.png does not exist"):
        load_samples([str(path)], "understanding", SourcesConfig())
    got = load_samples([str(path)], "understanding", SourcesConfig(on_bad_record="skip"))
    assert len(got.records) == 22
    assert [(r.index, r.field) for r in got.skipped] == [(6, "image"), (21, "image"), (25, None)]
    embedded = [und(i, image={"bytes": png((0, i, 0)), "path": None}) for i in range(30)]
    embedded[7]["image"] = {"bytes": b"not an image", "path": None}
    pq.write_table(pa.Table.from_pylist(embedded), folder / "emb.parquet")
    got = load_samples(
        [str(folder / "emb.parquet")], "understanding", SourcesConfig(on_bad_record="skip")
    )
    assert len(got.records) == 29
    assert [(r.index, r.index_kind, r.field) for r in got.skipped] == [(7, "row", "image")]
    assert "the embedded image cannot be decoded" in got.skipped[0].reason


# --------------------------------------------------------------------------- skip mode, rejects


def test_skip_mode_skips_bad_json_and_writes_the_rejects(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = jsonl(
        folder / "und.jsonl",
        [und(0), '{"id": "u1", "image": oops}', und(2, answer=""), [1, 2], und(4)],  # type: ignore[list-item]
    )
    rejects = folder / "out.jsonl.rejects.understanding.jsonl"
    with caplog.at_level(logging.WARNING):
        got = load_samples(
            [str(path)], "understanding", SourcesConfig(on_bad_record="skip"), rejects=rejects
        )
    assert [r.id for r in got.records] == ["u0", "u4"]
    assert got.total == 5 and len(got.skipped) == 3
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["file"], r["line"], r["field"]) for r in rows] == [
        (str(path), 2, None),
        (str(path), 3, "answer"),
        (str(path), 4, None),
    ]
    assert "invalid JSON" in rows[0]["reason"] and rows[0]["kind"] == "bad record"
    assert all(r["task"] == "understanding" for r in rows)
    # the counts are printed (logged) with the rejects file
    assert "kept 2 of 5" in got.summary() and "bad 3" in got.summary()
    assert "kept 2 of 5" in caplog.text and str(rejects) in caplog.text
    # a run without rejects leaves no stale file behind
    jsonl(path, [und(0)])
    load_samples([str(path)], "understanding", SourcesConfig(on_bad_record="skip"), rejects=rejects)
    assert not rejects.exists()


def test_rejects_path_is_beside_the_output(tmp_path: Path) -> None:
    assert rejects_path(tmp_path / "pairs.jsonl", "generation") == (
        tmp_path / "pairs.jsonl.rejects.generation.jsonl"
    )


def test_build_writes_the_rejects_beside_its_output(folder: Path) -> None:
    from pairuni.pairing.build import run_build
    from pairuni.pairing.config import PairingConfig

    u = jsonl(folder / "und.jsonl", [und(0), und(1, image="nope.png"), und(2, image="other.png")])
    g = jsonl(folder / "gen.jsonl", [{"id": "g0", "prompt": "p", "image": "good.png"}, "{bad"])
    cfg = PairingConfig.model_validate(
        {
            "sources": {"understanding": [str(u)], "generation": [str(g)], "on_bad_record": "skip"},
            "features": {"extractor": "pixels", "cache_dir": str(folder / "fcache")},
            "select": {"num_clusters": 1},
            "on_missing_completion": "drop",
        }
    )
    out = folder / "pairs.jsonl"
    result = run_build(cfg, str(out), [], progress=False)
    und_rejects = [
        json.loads(x) for x in rejects_path(out, "understanding").read_text().splitlines()
    ]
    gen_rejects = [json.loads(x) for x in rejects_path(out, "generation").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in und_rejects] == [(2, "image")]
    assert [(r["line"], r["field"]) for r in gen_rejects] == [(2, None)]
    assert any("bad 1" in s for s in result.stats["sources"])


# --------------------------------------------------------------------------- parquet


def test_parquet_errors_say_row_and_list_the_columns(folder: Path) -> None:
    path = folder / "und.parquet"
    rows = [{"id": "u0", "img": "good.png", "text": "q?", "answer": "A"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    cfg = SourcesConfig(columns={"image": "img"})
    with pytest.raises(DataError) as caught:
        load_samples([str(path)], "understanding", cfg)
    error = caught.value
    assert (error.index, error.index_kind, error.field) == (0, "row", "question")
    message = str(error)
    assert message.startswith(f"{path}, row 0, field question: required field is missing")
    assert "line" not in message
    assert "answer, id, img, text" in message  # the columns the source does have
    assert "pairing.sources.columns" in message


def test_a_mapped_column_that_is_absent_is_named(folder: Path) -> None:
    path = folder / "und.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "u0", "image": "good.png", "answer": "A"}]), path)
    cfg = SourcesConfig(columns={"question": "problem"})
    with pytest.raises(DataError, match=r"row 0, field question: .*column 'problem'.*answer, id"):
        load_samples([str(path)], "understanding", cfg)


# --------------------------------------------------------------------------- de-duplication


def test_dedup_keeps_every_question_of_an_image_and_drops_exact_duplicates(folder: Path) -> None:
    rows = [
        und(0, question="What colour is it?"),
        und(1, question="How many objects?"),  # same image, another question: kept
        und(2, question="What colour is it?"),  # same image and question: a duplicate
        und(3, image="other.png", question="What colour is it?"),  # another image: kept
        und(4, question="What colour is it?", answer="no"),  # duplicate, conflicting answer
    ]
    path = jsonl(folder / "und.jsonl", rows)
    rejects = folder / "rejects.jsonl"
    got = load_samples([str(path)], "understanding", SourcesConfig(), rejects=rejects)
    assert [r.id for r in got.records] == ["u0", "u1", "u3"]
    assert got.dropped_duplicate == 2
    listed = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["kind"]) for r in listed] == [(3, "duplicate"), (5, "duplicate")]
    assert f"{path}, line 1" in listed[0]["reason"] and "u0" in listed[0]["reason"]
    assert "different answer" in listed[1]["reason"]
    everything = load_samples([str(path)], "understanding", SourcesConfig(dedup=False))
    assert len(everything.records) == 5


def test_dedup_of_generation_records_is_by_image_and_prompt(folder: Path) -> None:
    rows = [
        {"id": "g0", "prompt": "a red square", "image": "good.png"},
        {"id": "g1", "prompt": "a crimson square", "image": "good.png"},
        {"id": "g2", "prompt": "a red square", "image": "good.png"},
    ]
    got = load_samples([str(jsonl(folder / "g.jsonl", rows))], "generation", SourcesConfig())
    assert [r.id for r in got.records] == ["g0", "g1"]


# --------------------------------------------------------------------------- ids


def test_default_ids_are_unique_across_files_with_the_same_name(folder: Path) -> None:
    a = jsonl(folder / "a/train.jsonl", [und(0, image="../good.png", id=None)])
    b = jsonl(folder / "b/train.jsonl", [und(0, image="../other.png", id=None)])
    got = load_samples([str(a), str(b)], "understanding", SourcesConfig())
    assert [r.id for r in got.records] == ["a/train.jsonl:1", "b/train.jsonl:1"]
    alone = load_samples([str(a)], "understanding", SourcesConfig())
    assert [r.id for r in alone.records] == ["train.jsonl:1"]


# --------------------------------------------------------------------------- DatasetDict


def test_a_dataset_dict_folder_loads_every_split_or_the_chosen_one(folder: Path) -> None:
    import datasets

    def split(name: str, n: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "prompt": [f"{name} {i}" for i in range(n)],
                "image": [str(folder / "good.png")] * n,
            }
        ).cast_column("image", datasets.Image())

    dd = datasets.DatasetDict({"train": split("train", 2), "test": split("test", 1)})
    dd.save_to_disk(str(folder / "hf"))
    assert (folder / "hf" / "dataset_dict.json").is_file()
    got = load_samples([str(folder / "hf")], "generation", SourcesConfig(dedup=False))
    assert sorted(r.prompt for r in got.records) == ["test 0", "train 0", "train 1"]
    assert len({r.id for r in got.records}) == 3
    assert all(r.image.sha256() == got.records[0].image.sha256() for r in got.records)
    only = load_samples([str(folder / "hf")], "generation", SourcesConfig(split="test"))
    assert [r.prompt for r in only.records] == ["test 0"]
    with pytest.raises(DataError, match=r"no split 'dev'.*test, train"):
        load_samples([str(folder / "hf")], "generation", SourcesConfig(split="dev"))


# --------------------------------------------------------------------------- option letters


@pytest.mark.parametrize(
    "options",
    [
        ["A. first", "B. second", "C. third"],
        ["A) first", "B) second", "C) third"],
        ["(A) first", "(B) second", "(C) third"],
    ],
)
def test_option_letters_already_in_the_options_are_stripped(
    folder: Path, options: list[str]
) -> None:
    path = jsonl(folder / "und.jsonl", [und(0, options=options, answer="B")])
    (record,) = load_samples([str(path)], "understanding", SourcesConfig()).records
    assert record.options == ["first", "second", "third"]
    assert record.answer == "B"


def test_option_letters_are_kept_unless_every_option_carries_its_own() -> None:
    assert strip_option_letters(["A. first", "second"]) == ["A. first", "second"]
    assert strip_option_letters(["B. first", "A. second"]) == ["B. first", "A. second"]
    assert strip_option_letters(["A.M. shift", "P.M. shift"]) == ["A.M. shift", "P.M. shift"]
    assert strip_option_letters(["a) x", "b) y"]) == ["x", "y"]
    assert strip_option_letters(["A. x", "B) y"]) == ["A. x", "B) y"]  # mixed styles


def test_a_prefixed_answer_becomes_its_letter(folder: Path) -> None:
    rows = [und(0, options=["(A) cat", "(B) dog"], answer="(B)")]
    (record,) = load_samples(
        [str(jsonl(folder / "und.jsonl", rows))], "understanding", SourcesConfig()
    ).records
    assert (record.options, record.answer) == (["cat", "dog"], "B")


# --------------------------------------------------------------------------- relative paths


def test_relative_paths_in_a_config_resolve_from_its_folder(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pairuni.config import load_config

    project = folder / "project"
    jsonl(project / "data/und.jsonl", [und(0, image="../../good.png")])
    config = project / "configs/pairing.yaml"
    config.parent.mkdir()
    pairing = {
        "sources": {"understanding": ["../data/und.jsonl"], "generation": ["/abs/gen.jsonl"]},
        "features": {"cache_dir": "../cache/features", "model_dir": "../models/resnet"},
        "complete": {"cache_dir": "../cache/completions", "templates_dir": "../templates"},
    }
    config.write_text(yaml.safe_dump({"pairing": pairing}))
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pc = load_config(config).pairing
    assert pc.sources.understanding == [str(project / "data/und.jsonl")]
    assert pc.sources.generation == ["/abs/gen.jsonl"]
    assert pc.features.cache_dir == str(project / "cache/features")
    assert pc.features.model_dir == str(project / "models/resnet")
    assert pc.complete.cache_dir == str(project / "cache/completions")
    assert pc.complete.templates_dir == str(project / "templates")
    assert load_samples(pc.sources.understanding, "understanding", pc.sources).records
    # a path given on the command line is relative to the working directory; defaults stay
    pc = load_config(config, ["pairing.features.cache_dir=here"]).pairing
    assert pc.features.cache_dir == "here"
    assert load_config(None).pairing.features.cache_dir == ".cache/pairuni/features"
