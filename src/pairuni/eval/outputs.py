"""The run folder: where predictions, images, judgements and results live, and how they are
written (atomically, so a killed run never leaves a torn file behind).

    OUT/run.json                         the settings the outputs were generated with
    OUT/<benchmark>/predictions.jsonl    understanding: {"id", "response"} per question;
                                         generation: {"id", "prompt", "images"} per prompt
    OUT/geneval/images/<prompt id>/      metadata.jsonl + samples/<k>.png (the official layout)
    OUT/wise/images/<prompt id>.png
    OUT/<benchmark>/judgements.jsonl     GenEval / WISE verdicts per image (resumable)
    OUT/<benchmark>/details.json         per-sample verdicts of the scorer
    OUT/results.json, OUT/results.md     every metric; the paper's tables and the settings
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from PIL import Image

from pairuni.data.io import atomic_output
from pairuni.data.schema import Record
from pairuni.eval.errors import EvalSetupError


class Prediction(Record):
    """One line of an understanding benchmark's predictions.jsonl."""

    id: str
    response: str


class GeneratedImages(Record):
    """One line of a generation benchmark's predictions.jsonl: the images of one prompt, as paths
    relative to the benchmark's output folder."""

    id: str
    prompt: str
    images: list[str]


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where everything of a run lives."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    def folder(self, benchmark: str) -> Path:
        return self.root / benchmark

    def predictions(self, benchmark: str) -> Path:
        return self.folder(benchmark) / "predictions.jsonl"

    def judgements(self, benchmark: str) -> Path:
        return self.folder(benchmark) / "judgements.jsonl"

    def details(self, benchmark: str) -> Path:
        return self.folder(benchmark) / "details.json"

    def image_paths(self, benchmark: str, prompt_id: str, count: int) -> list[str]:
        """Relative paths of one prompt's images: GenEval's official folder layout
        (`images/<id>/samples/<k:04d>.png`, read by its evaluate_images.py), WISE's one file."""
        if benchmark == "geneval":
            return [f"images/{prompt_id}/samples/{k:04d}.png" for k in range(count)]
        return [f"images/{prompt_id}.png"]


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def save_png_atomic(image: Image.Image, path: Path) -> None:
    with atomic_output(path) as temp:
        image.save(temp, format="PNG")


def read_generated(path: Path) -> dict[str, GeneratedImages]:
    """prompt id -> its record in a generation predictions.jsonl (a torn last line, left by a
    kill mid-write, is ignored; any other bad line is an error naming it)."""
    from pydantic import ValidationError

    records: dict[str, GeneratedImages] = {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines[:-1] if not text.endswith("\n") else lines, start=1):
        if not line.strip():
            continue
        try:
            record = GeneratedImages.model_validate_json(line)
        except ValidationError as err:
            raise EvalSetupError(
                f"{path}: line {number}: not a generated-images record ({err.errors()[0]['msg']}); "
                "delete the line and run again to redraw that prompt"
            ) from None
        records[record.id] = record
    return records


def read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalSetupError(f"{path}: no {what} here") from None
    except json.JSONDecodeError as err:
        raise EvalSetupError(
            f"{path}: line {err.lineno}: not valid JSON ({err.msg}); restore or delete the file"
        ) from None
