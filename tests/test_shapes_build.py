"""ShapesWorld dataset files, the `pairuni shapes` commands and the `shapes` config section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from pairuni.shapes.build import read_jsonl, sample_grid, write_dataset
from pairuni.shapes.cli import shapes_app
from pairuni.shapes.config import ShapesConfig
from pairuni.shapes.render import render_scene
from pairuni.shapes.scene import Scene

UND_FIELDS = {"id", "image", "question", "options", "answer", "category", "source", "scene"}
GEN_FIELDS = {"id", "prompt", "image", "category", "source", "scene", "geneval"}


@pytest.mark.parametrize("size", [32, 64])
def test_written_dataset_loads_back_with_its_images(tmp_path: Path, size: int) -> None:
    und_path, gen_path = write_dataset(tmp_path, n_und=15, n_gen=12, seed=3, image_size=size)
    assert (und_path.name, gen_path.name) == ("understanding.jsonl", "generation.jsonl")
    und, gen = read_jsonl(und_path), read_jsonl(gen_path)
    assert len(und) == 15 and len(gen) == 12
    assert all(set(r) == UND_FIELDS and r["source"] == "shapesworld" for r in und)
    assert all(set(r) == GEN_FIELDS and r["source"] == "shapesworld" for r in gen)
    assert len({r["id"] for r in und + gen}) == 27
    for record in und + gen:
        image = np.asarray(Image.open(tmp_path / record["image"]))
        # PNG is lossless: the file holds exactly the rendering of the record's scene.
        np.testing.assert_array_equal(image, render_scene(Scene.from_dict(record["scene"]), size))
    assert (
        und[0]["image"] == "images/und_000000.png" and gen[11]["image"] == "images/gen_000011.png"
    )


def test_same_seed_same_files_and_prefixes_are_stable(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", 10, 8, seed=5)
    b = write_dataset(tmp_path / "b", 10, 8, seed=5)
    c = write_dataset(tmp_path / "c", 4, 3, seed=5)
    d = write_dataset(tmp_path / "d", 10, 8, seed=6)
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes()
    assert read_jsonl(c[0]) == read_jsonl(a[0])[:4] and read_jsonl(c[1]) == read_jsonl(a[1])[:3]
    assert read_jsonl(d[0]) != read_jsonl(a[0])
    assert (tmp_path / "a/images/und_000003.png").read_bytes() == (
        tmp_path / "b/images/und_000003.png"
    ).read_bytes()


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1}\n\n{"id": \n')
    with pytest.raises(ValueError, match=r"x\.jsonl:3: not valid JSON"):
        read_jsonl(path)


def test_cli_writes_the_data(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    args = [
        "data",
        "--out",
        str(out),
        "--n-und",
        "6",
        "--n-gen",
        "7",
        "--seed",
        "2",
        "--size",
        "64",
    ]
    result = CliRunner().invoke(shapes_app, args)
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out / "understanding.jsonl")) == 6
    gen = read_jsonl(out / "generation.jsonl")
    assert len(gen) == 7 and Image.open(out / gen[0]["image"]).size == (64, 64)


def test_cli_rejects_an_empty_request(tmp_path: Path) -> None:
    args = ["data", "--out", str(tmp_path), "--n-und", "0", "--n-gen", "0"]
    result = CliRunner().invoke(shapes_app, args)
    assert result.exit_code == 2 and "both 0" in result.output


def test_cli_settings_file_reproduces_the_data_and_options_override_it(tmp_path: Path) -> None:
    first = ["data", "--out", str(tmp_path / "a"), "--n-und", "3", "--n-gen", "2", "--seed", "5"]
    assert CliRunner().invoke(shapes_app, first).exit_code == 0
    settings = tmp_path / "a" / "shapes.yaml"
    assert ShapesConfig.model_validate(yaml.safe_load(settings.read_text())["shapes"]) == (
        ShapesConfig(n_und=3, n_gen=2, seed=5)
    )
    again = ["data", "--out", str(tmp_path / "b"), "--config", str(settings)]
    assert CliRunner().invoke(shapes_app, again).exit_code == 0
    for name in ("understanding.jsonl", "generation.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    more = [*again[:2], str(tmp_path / "c"), *again[3:], "--n-gen", "4"]
    assert CliRunner().invoke(shapes_app, more).exit_code == 0
    assert len(read_jsonl(tmp_path / "c" / "generation.jsonl")) == 4
    assert len(read_jsonl(tmp_path / "c" / "understanding.jsonl")) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "8"], "image_size"),
        (["--max-objects", "5"], "max_objects"),
    ],
)
def test_cli_names_the_bad_setting(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(shapes_app, ["data", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output


def test_cli_names_a_bad_key_in_the_settings_file(tmp_path: Path) -> None:
    config = tmp_path / "s.yaml"
    config.write_text("shapes:\n  image_sise: 64\n")
    result = CliRunner().invoke(
        shapes_app, ["data", "--out", str(tmp_path), "--config", str(config)]
    )
    assert result.exit_code == 2 and "image_sise" in result.output and str(config) in result.output


def test_shapes_is_a_subcommand_of_pairuni() -> None:
    from pairuni.cli import app

    result = CliRunner().invoke(app, ["shapes", "data", "--help"])
    assert result.exit_code == 0 and "--n-und" in result.output


def test_sample_grid_is_small(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    sample_grid(seed=0).save(path, optimize=True)
    assert path.stat().st_size < 100_000
    assert Image.open(path).size == (3 * 210, 2 * (64 * 3 + 34))


def test_config_section_defaults_and_errors() -> None:
    cfg = ShapesConfig()
    assert (cfg.image_size, cfg.max_objects, cfg.seed) == (32, 4, None)
    with pytest.raises(ValidationError, match="nothing would be written"):
        ShapesConfig(n_und=0, n_gen=0)
    with pytest.raises(ValidationError):
        ShapesConfig(max_objects=5)
    with pytest.raises(ValidationError):
        ShapesConfig(image_sise=64)


def test_max_objects_caps_understanding_scenes(tmp_path: Path) -> None:
    und, _ = write_dataset(tmp_path, n_und=20, n_gen=0, seed=1, max_objects=2)
    counts = {len(r["scene"]["objects"]) for r in read_jsonl(und)}
    assert counts == {1, 2}
