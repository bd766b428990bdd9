"""`pairuni tiny-model`, `pairuni generate` and `pairuni answer` end to end on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pairuni.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    result = runner.invoke(app, ["tiny-model", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    return out


def test_generate_writes_a_grid(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    args = ["generate", "--model", str(tiny_dir), "--prompt", "a red square", "-n", "4"]
    result = runner.invoke(app, [*args, "--out", str(out), "--cfg", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "4 images of 16 px" in result.output
    # 4 images -> 2 x 2 grid of 16 px tiles with a 2 px gap
    assert Image.open(out).size == (2 * 16 + 2, 2 * 16 + 2)


def test_answer_prints_one_line_per_answer(tiny_dir: Path, tmp_path: Path) -> None:
    picture = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (0, 200, 0)).save(picture)
    args = ["answer", "--model", str(tiny_dir), "--image", str(picture), "--question", "Colour?"]
    result = runner.invoke(app, [*args, "-n", "2", "--max-new-tokens", "4", "--option", "red"])
    assert result.exit_code == 0, result.output
    # stdout only (transformers' loading bar goes to stderr); an answer may span lines
    starts = [line[:4] for line in result.stdout.splitlines() if line.startswith("[")]
    assert starts == ["[1] ", "[2] "] and result.stdout.startswith("[1] ")


def test_bad_input_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    base = ["generate", "--prompt", "x", "--out", str(tmp_path / "g.png")]
    result = runner.invoke(app, [*base, "--model", str(tiny_dir), "--dtype", "float8"])
    assert result.exit_code == 2 and "float32" in result.output and "bfloat16" in result.output
    result = runner.invoke(app, [*base, "--model", str(tiny_dir), "--device", "gpu"])
    assert result.exit_code == 2 and "valid devices" in result.output
    result = runner.invoke(app, [*base, "--model", str(tmp_path)])
    assert (
        result.exit_code == 2
        and "config.json" in result.output
        and "model weights" in result.output
    )
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "--model" in result.output
    args = ["answer", "--model", str(tiny_dir), "--image", str(tmp_path / "no.png"), "-q", "?"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "does not exist" in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys, pairuni.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
