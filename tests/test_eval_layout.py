"""The pieces every benchmark shares: prediction files, images, results tables, the eval config."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from pairuni.eval.config import EvalConfig
from pairuni.eval.layout import (
    SOURCES,
    BenchmarkDataError,
    BenchmarkNotFoundError,
    load_predictions,
    open_image,
    require_dir,
)
from pairuni.eval.results import BenchmarkResult, Column


def test_load_predictions_keeps_the_last_line_per_id(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    lines = [{"id": "a", "response": "x"}, {"id": 7, "response": "y"}, {"id": "a", "response": "z"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    assert load_predictions(path) == {"a": "z", "7": "y"}


def test_load_predictions_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text('{"id": "a", "response": "x"}\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"preds.jsonl: line 2: field 'response'"):
        load_predictions(path)
    path.write_text('{"id": "a", "response": "x"}\nnot json\n', encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"line 2: not valid JSON"):
        load_predictions(path)
    with pytest.raises(FileNotFoundError, match="run the model first"):
        load_predictions(tmp_path / "absent.jsonl")


def test_open_image_from_bytes_and_path(tmp_path: Path) -> None:
    image = Image.new("L", (3, 2), 128)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    image.save(tmp_path / "x.png")
    for ref in (buffer.getvalue(), tmp_path / "x.png"):
        decoded = open_image(ref)
        assert decoded.mode == "RGB" and decoded.size == (3, 2)
        assert decoded.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("benchmark", sorted(SOURCES))
def test_every_benchmark_has_download_help(tmp_path: Path, benchmark: str) -> None:
    with pytest.raises(BenchmarkNotFoundError) as info:
        require_dir(tmp_path / "missing", benchmark)
    message = str(info.value)
    assert "does not exist" in message and "download it from" in message
    assert SOURCES[benchmark].layout in message and "docs/eval.md" in message


def test_markdown_rows_scale_and_mark_missing_values() -> None:
    result = BenchmarkResult(
        "X",
        {"acc": 0.4567, "total": 1483.18},
        [Column("Acc", "acc", 1, 100.0), Column("Total", "total", 2), Column("Gone", "gone")],
    )
    assert result.markdown_header() == "| Model | Acc | Total | Gone |\n|---|---|---|---|"
    assert result.markdown_row("PairUni-1B") == "| PairUni-1B | 45.7 | 1483.18 | – |"
    assert json.loads(json.dumps(result.to_dict()))["metrics"]["acc"] == 0.4567


def test_eval_config_directories_and_validation(tmp_path: Path) -> None:
    config = EvalConfig(data_root=tmp_path, mme_dir=tmp_path / "elsewhere")
    assert config.benchmark_dir("mmmu") == tmp_path / "mmmu"
    assert config.benchmark_dir("mme") == tmp_path / "elsewhere"
    with pytest.raises(ValidationError, match="judge"):
        EvalConfig.model_validate({"judge": {"max_retries": -1}})
    with pytest.raises(ValidationError, match="extra"):
        EvalConfig.model_validate({"geneval": {"treshold": 0.5}})
