"""`pairuni pairs export --format bagel`: the files read back the way Bagel's trainer reads them.

The readers below repeat, line for line, what ByteDance-Seed/Bagel does with each file:
data/t2i_dataset.py (parquet row groups -> pandas -> `row['image']` bytes, `row['captions']`
JSON dict), data/vlm_dataset.py (`conversations` split on `<image>`, image at
os.path.join(data_dir, item['image'])), data/dataset_base.py (DATASET_INFO keys, group weights)
and data/parquet_utils.py (every `.parquet` in data_dir).
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.data.errors import DataError
from pairuni.data.io import write_records
from pairuni.data.schema import Pair
from pairuni.pairing import export as bagel
from pairuni.pairing.export import BagelExportOptions, export_bagel

runner = CliRunner()
QUIET = {"progress": False}


# --------------------------------------------------------------------------- helpers


def _save(path: Path, seed: int, fmt: str = "PNG") -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def _pairs(root: Path, n_aligned: int = 2, n_retrieved: int = 3) -> list[Pair]:
    """Aligned pairs (one image on both sides) then retrieved pairs (two different images)."""
    pairs = []
    for i in range(n_aligned):
        _save(root / f"img/a{i}.png", seed=i)
        pairs.append(
            Pair(
                pair_id=f"aligned:{i}",
                kind="aligned",
                gen_prompt=f"a photo of {i} cats",
                gen_image=f"img/a{i}.png",
                und_image=f"img/a{i}.png",
                und_question=f"How many cats are there in picture {i}?",
                und_options=["one", "two", "three"],
                und_answer="B",
            )
        )
    for i in range(n_retrieved):
        _save(root / f"img/g{i}.png", seed=100 + i)
        _save(root / f"img/u{i}.jpg", seed=200 + i, fmt="JPEG")
        pairs.append(
            Pair(
                pair_id=f"retrieved:{i}",
                kind="retrieved",
                similarity=0.7,
                gen_prompt=f"a red bicycle number {i}",
                gen_image=f"img/g{i}.png",
                und_image=f"img/u{i}.jpg",
                und_question=f"What is written on sign {i}?",
                und_answer=f"stop {i}",
            )
        )
    return pairs


@pytest.fixture
def pair_file(tmp_path: Path) -> Path:
    return write_records(tmp_path / "pairs.jsonl", _pairs(tmp_path))


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _export(pairs: Path, out: Path, **options: Any) -> bagel.ExportResult:
    return export_bagel(pairs, out, BagelExportOptions(**{**QUIET, **options}))


# --------------------------------------------------------------------------- Bagel's readers


def bagel_t2i_rows(data_dir: str) -> list[tuple[Image.Image, list[str], Any]]:
    """T2IIterableDataset.__iter__ without the tokenizer: (RGB image, captions, row)."""
    paths = [os.path.join(data_dir, n) for n in os.listdir(data_dir) if n.endswith(".parquet")]
    out = []
    for parquet_file_path in sorted(paths):
        with open(parquet_file_path, "rb") as f:
            fr = pq.ParquetFile(f)
            for row_group_id in range(fr.num_row_groups):
                df = fr.read_row_group(row_group_id).to_pandas()
                for _, row in df.iterrows():
                    image = Image.open(io.BytesIO(row["image"])).convert("RGB")
                    caption_dict = json.loads(row["captions"])
                    captions = [v for _, v in caption_dict.items()]
                    assert captions and all(isinstance(c, str) for c in captions)
                    random.choice(captions)  # what Bagel does with them
                    out.append((image, captions, row))
    return out


def bagel_change_format(data: dict[str, Any], num_images: int) -> list[dict[str, Any]]:
    """SftJSONLIterableDataset.change_format, verbatim."""
    elements: list[dict[str, Any]] = []
    for conversation in data["conversations"]:
        if conversation["from"] == "human":
            if "<image>" not in conversation["value"]:
                elements.append({"type": "text", "has_loss": 0, "text": conversation["value"]})
            else:
                text_list = conversation["value"].split("<image>")
                for idx, text in enumerate(text_list):
                    if text.strip() != "":
                        elements.append({"type": "text", "has_loss": 0, "text": text.strip()})
                    if (idx != len(text_list) - 1) and (idx < num_images):
                        elements.append({"type": "image"})
        elif conversation["from"] == "gpt":
            elements.append({"type": "text", "has_loss": 1, "text": conversation["value"]})
    return elements


def bagel_dataset_info(out: Path) -> dict[str, Any]:
    """Run dataset_info.py as it runs when pasted at the end of Bagel's data/dataset_info.py."""
    namespace: dict[str, Any] = {"DATASET_INFO": {"t2i_pretrain": {"t2i": {}}}}
    exec((out / "dataset_info.py").read_text(), namespace)
    return namespace["DATASET_INFO"]


# --------------------------------------------------------------------------- the formats


def test_t2i_parquet_reads_like_bagel_and_targets_the_generation_image(
    pair_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bagel"
    result = _export(pair_file, out, t2i_shards=2)
    info = json.loads((out / "dataset_info.json").read_text())["t2i_pretrain"]["pairug_t2i"]
    rows = bagel_t2i_rows(info["data_dir"])
    assert len(rows) == info["num_total_samples"] == result.exported == 5
    assert info["num_files"] == len(result.shards) == 2
    by_id = {row["pair_id"]: (image, captions, row) for image, captions, row in rows}
    for pair in _pairs(tmp_path):
        image, captions, row = by_id[pair.pair_id]
        assert captions == [pair.gen_prompt]
        # The target is the image the prompt describes (gen_image), never the retrieved
        # understanding image; PNG bytes travel unchanged.
        assert row["image"] == (tmp_path / pair.gen_image.path).read_bytes()
        assert np.array_equal(np.asarray(image), np.asarray(pair.gen_image.open(tmp_path)))
    # Round-robin: each shard mixes aligned and retrieved pairs.
    kinds = [
        {r["pair_id"].split(":")[0] for r in pq.read_table(s.path).to_pylist()}
        for s in result.shards
    ]
    assert all(k == {"aligned", "retrieved"} for k in kinds)


def test_parquet_info_counts_row_groups(pair_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bagel"
    result = _export(pair_file, out, t2i_shards=1, rows_per_row_group=2)
    info = json.loads((out / "parquet_info.json").read_text())
    (shard,) = result.shards
    key = f"{os.path.abspath(out)}/t2i/{shard.path.name}"
    assert info == {key: {"num_row_groups": 3, "num_rows": 5}}
    assert pq.ParquetFile(shard.path).num_row_groups == 3


def test_vlm_jsonl_reads_like_bagel(pair_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bagel"
    _export(pair_file, out)
    info = json.loads((out / "dataset_info.json").read_text())["vlm_sft"]["pairug_und"]
    records = _jsonl_rows(Path(info["jsonl_path"]))
    assert len(records) == info["num_total_samples"] == 5
    for record, pair in zip(records, _pairs(tmp_path), strict=True):
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        assert gpt["value"] == pair.und_answer
        image_path = os.path.join(info["data_dir"], record["image"])
        assert not os.path.isabs(record["image"])
        assert Path(image_path).read_bytes() == (tmp_path / pair.und_image.path).read_bytes()
        elements = bagel_change_format(record, num_images=1)
        assert [e["type"] for e in elements] == ["image", "text", "text"]
        assert [e.get("has_loss") for e in elements[1:]] == [0, 1]
    aligned, retrieved = records[0], records[2]
    assert aligned["conversations"][0]["value"] == (
        "<image>\nHow many cats are there in picture 0?\nA. one\nB. two\nC. three\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert retrieved["conversations"][0]["value"] == "<image>\nWhat is written on sign 0?"


def test_data_config_mixes_the_two_tasks_one_to_one_at_512(pair_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bagel"
    _export(pair_file, out, t2i_shards=4)
    config = yaml.safe_load((out / "bagel_data.yaml").read_text())
    assert set(config) == {"t2i_pretrain", "vlm_sft"}
    assert config["t2i_pretrain"]["weight"] == config["vlm_sft"]["weight"] == 1
    t2i_size = config["t2i_pretrain"]["image_transform_args"]
    assert t2i_size["max_image_size"] == t2i_size["min_image_size"] == 512
    assert "frame_sampler_args" in config["vlm_sft"]  # SftJSONLIterableDataset requires one
    assert config["t2i_pretrain"]["num_used_data"] == [4]  # files
    assert config["vlm_sft"]["num_used_data"] == [5]  # lines
    registry = bagel_dataset_info(out)
    assert registry["t2i_pretrain"]["t2i"] == {}  # Bagel's own entries stay
    for group, args in config.items():
        for name in args["dataset_names"]:
            meta = registry[group][name]  # what dataset_base.build_datasets looks up
            assert Path(meta["data_dir"]).is_dir()
    assert "parquet_info_path" not in registry["t2i_pretrain"]["pairug_t2i"]
    as_json = json.loads((out / "dataset_info.json").read_text())
    assert registry["vlm_sft"] == as_json["vlm_sft"]
    assert registry["t2i_pretrain"]["pairug_t2i"] == as_json["t2i_pretrain"]["pairug_t2i"]
    readme = (out / "README.txt").read_text()
    assert f"--dataset_config_file {os.path.abspath(out)}/bagel_data.yaml" in readme
    assert "train/pretrain_unified_navit.py" in readme and "--max_latent_size 64" in readme


def test_data_root_is_where_bagel_sees_the_folder(pair_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bagel"
    _export(pair_file, out, data_root="/cluster/pairug")
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["t2i_pretrain"]["pairug_t2i"]["data_dir"] == "/cluster/pairug/t2i"
    assert info["vlm_sft"]["pairug_und"]["jsonl_path"] == "/cluster/pairug/vlm/pairug_und.jsonl"
    assert (
        "--dataset_config_file /cluster/pairug/bagel_data.yaml" in (out / "README.txt").read_text()
    )


# --------------------------------------------------------------------------- images


def test_png_and_jpeg_keep_their_bytes_other_formats_become_png(tmp_path: Path) -> None:
    png = _save(tmp_path / "x.png", 1).read_bytes()
    jpeg = _save(tmp_path / "x.jpg", 2, "JPEG").read_bytes()
    bmp = _save(tmp_path / "x.bmp", 3, "BMP").read_bytes()
    assert bagel.encoded_for_bagel(png) == (png, ".png")
    assert bagel.encoded_for_bagel(jpeg) == (jpeg, ".jpg")
    data, suffix = bagel.encoded_for_bagel(bmp)
    assert suffix == ".png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as again, Image.open(io.BytesIO(bmp)) as before:
        assert np.array_equal(np.asarray(again), np.asarray(before))


def test_embedded_images_in_a_parquet_pair_file(tmp_path: Path) -> None:
    pairs = _pairs(tmp_path)
    _save(tmp_path / "img/g0.png", 7, "BMP")  # a BMP under a .png name: content decides
    source = write_records(tmp_path / "pairs.parquet", pairs, images="embed")
    out = tmp_path / "bagel"
    result = _export(source, out)
    assert result.exported == 5
    rows = {row["pair_id"]: image for image, _, row in bagel_t2i_rows(str(out / "t2i"))}
    assert rows["retrieved:0"].size == (16, 12)
    raw = pq.read_table(out / "t2i").to_pylist()
    assert all(r["image"][:8] == b"\x89PNG\r\n\x1a\n" for r in raw)  # the BMP re-encoded


def test_link_mode_symlinks_the_understanding_images(pair_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bagel"
    _export(pair_file, out, images="link")
    for record in _jsonl_rows(out / "vlm/pairug_und.jsonl"):
        image = out / "vlm" / record["image"]
        assert image.is_symlink() and Path(os.readlink(image)).is_absolute()
        Image.open(image).load()


# --------------------------------------------------------------------------- bad pairs


def test_a_missing_image_names_the_line_and_field_and_writes_nothing(
    pair_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "img/u1.jpg").unlink()
    out = tmp_path / "bagel"
    with pytest.raises(DataError) as caught:
        _export(pair_file, out)
    err = caught.value
    assert (err.path, err.index, err.index_kind, err.field) == (pair_file, 4, "line", "und_image")
    assert f"{pair_file}, line 4, field und_image: image file" in str(err)
    assert "does not exist" in str(err)
    assert not out.exists()  # checked before anything is written


def test_a_missing_answer_names_the_line_and_field(pair_file: Path, tmp_path: Path) -> None:
    rows = _jsonl_rows(pair_file)
    del rows[1]["und_answer"]
    with pytest.raises(DataError, match=r"line 2, field und_answer: required field is missing"):
        _export(_write_jsonl(pair_file, rows), tmp_path / "bagel")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"gen_prompt": "   "}, "gen_prompt"),
        ({"und_answer": " \n"}, "und_answer"),
        ({"und_question": "\t"}, "und_question"),
        ({"gen_image": None}, "gen_image"),
    ],
)
def test_blank_texts_and_a_retrieved_pair_without_its_image(
    pair_file: Path, tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    rows = _jsonl_rows(pair_file)
    rows[3].update(change)  # a retrieved pair, line 4
    with pytest.raises(DataError) as caught:
        _export(_write_jsonl(pair_file, rows), tmp_path / "bagel")
    assert (caught.value.index, caught.value.field) == (4, field)


def test_an_aligned_pair_without_gen_image_uses_its_one_image(
    pair_file: Path, tmp_path: Path
) -> None:
    rows = _jsonl_rows(pair_file)
    rows[0]["gen_image"] = None
    out = tmp_path / "bagel"
    _export(_write_jsonl(pair_file, rows), out)
    target = {row["pair_id"]: row["image"] for _, _, row in bagel_t2i_rows(str(out / "t2i"))}
    assert target["aligned:0"] == (tmp_path / "img/a0.png").read_bytes()


def test_skip_leaves_bad_pairs_out_and_lists_them(pair_file: Path, tmp_path: Path) -> None:
    rows = _jsonl_rows(pair_file)
    del rows[0]["gen_prompt"]
    rows[2]["und_image"] = "img/nowhere.png"
    out = tmp_path / "bagel"
    result = _export(_write_jsonl(pair_file, rows), out, on_bad_record="skip")
    assert (result.total, result.exported, len(result.skipped)) == (5, 3, 2)
    rejects = _jsonl_rows(out / "rejects.jsonl")
    assert [(r["line"], r["field"]) for r in rejects] == [(1, "gen_prompt"), (3, "und_image")]
    assert all(r["file"] == str(pair_file) and r["reason"] for r in rejects)
    # Both tasks keep the same pairs: the counts stay 1:1.
    assert len(bagel_t2i_rows(str(out / "t2i"))) == 3
    assert len(_jsonl_rows(out / "vlm/pairug_und.jsonl")) == 3
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["vlm_sft"]["pairug_und"]["num_total_samples"] == 3
    assert "skipped 2 bad pairs" in result.summary()
    # A clean re-run removes the list of an earlier run.
    _export(write_records(pair_file, _pairs(tmp_path)), out, on_bad_record="skip")
    assert not (out / "rejects.jsonl").exists()


def test_no_pair_left_is_an_error(pair_file: Path, tmp_path: Path) -> None:
    rows = [{**row, "und_answer": " "} for row in _jsonl_rows(pair_file)]
    with pytest.raises(ValueError, match="no pair to export"):
        _export(_write_jsonl(pair_file, rows), tmp_path / "bagel", on_bad_record="skip")


# --------------------------------------------------------------------------- re-runs, atomicity


def test_a_rerun_with_fewer_shards_leaves_no_stale_shard(pair_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bagel"
    _export(pair_file, out, t2i_shards=5)
    (out / "t2i/other.parquet").write_bytes(b"not ours")  # a user's file is not touched
    _export(pair_file, out, t2i_shards=2)
    names = sorted(p.name for p in (out / "t2i").iterdir())
    ours = [f"pairug-t2i-0000{i}-of-00002.parquet" for i in range(2)]
    assert names == ["other.parquet", *ours]


def test_a_killed_export_leaves_no_data_config(
    pair_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bagel"
    _export(pair_file, out)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bagel, "write_vlm_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        _export(pair_file, out)
    # The old config is gone, so the half-new folder does not look complete.
    assert not any((out / name).exists() for name in bagel.COMPLETION_FILES)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    for shard in (out / "t2i").glob("*.parquet"):
        pq.ParquetFile(shard)  # every shard there is whole


# --------------------------------------------------------------------------- the command


def test_cli_end_to_end(pair_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bagel"
    args = ["pairs", "export", "--format", "bagel", "--pairs", str(pair_file), "--out", str(out)]
    res = runner.invoke(app, [*args, "--no-progress", "--t2i-shards", "2"])
    assert res.exit_code == 0, res.output
    assert "exported 5 of 5 pairs" in res.output and "README.txt" in res.output
    assert len(bagel_t2i_rows(str(out / "t2i"))) == 5
    assert yaml.safe_load((out / "bagel_data.yaml").read_text())["vlm_sft"]["weight"] == 1


def test_cli_errors_are_one_line_with_the_location(pair_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bagel"
    base = ["pairs", "export", "--pairs", str(pair_file), "--out", str(out), "--no-progress"]
    wrong = runner.invoke(app, [*base, "--format", "llava"])
    assert wrong.exit_code == 2 and "--format must be one of bagel" in wrong.output
    rows = _jsonl_rows(pair_file)
    rows[1]["und_answer"] = ""
    _write_jsonl(pair_file, rows)
    bad = runner.invoke(app, base)
    assert bad.exit_code == 2 and "line 2, field und_answer" in bad.output
    assert "Traceback" not in bad.output
    skipped = runner.invoke(app, [*base, "--on-bad-record", "skip"])
    assert skipped.exit_code == 0, skipped.output
    assert "exported 4 of 5" in skipped.output and (out / "rejects.jsonl").exists()
    mode = runner.invoke(app, [*base, "--on-bad-record", "ignore"])
    assert mode.exit_code == 2 and "on_bad_record" in mode.output
