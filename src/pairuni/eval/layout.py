"""Where each benchmark lives on disk, and the readers every loader shares.

Benchmark data never ships with pairuni: users download each benchmark once and point the loaders
at its directory. A missing or mis-laid directory raises `BenchmarkNotFoundError`, whose message
says where to download the benchmark and the layout the loader expects. A malformed record raises
`BenchmarkDataError`, whose message names the file, the record and the field, and the fix.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class BenchmarkSource:
    """Where a benchmark is published and how its local copy must be laid out."""

    name: str
    download: str
    layout: str


SOURCES: dict[str, BenchmarkSource] = {
    "mmmu": BenchmarkSource(
        "MMMU",
        "https://huggingface.co/datasets/MMMU/MMMU (e.g. `huggingface-cli download MMMU/MMMU "
        "--repo-type dataset --local-dir DIR`)",
        "DIR/<Subject>/validation-*.parquet, one folder per subject (Accounting, Art, ...), "
        "columns id, question, options, answer, question_type, image_1 .. image_7",
    ),
    "mmstar": BenchmarkSource(
        "MMStar",
        "https://huggingface.co/datasets/Lin-Chen/MMStar",
        "DIR/*.parquet (the release's mmstar.parquet), columns index, question, image, answer, "
        "category, l2_category",
    ),
    "mme": BenchmarkSource(
        "MME",
        "https://huggingface.co/datasets/lmms-lab/MME (parquet) or the official "
        "MME_Benchmark_release_version from https://github.com/BradyFU/"
        "Awesome-Multimodal-Large-Language-Models/tree/Evaluation",
        "either DIR/**/*.parquet with columns question_id, image, question, answer, category; "
        "or DIR/<subtask>/ (existence, count, position, color, posters, celebrity, scene, "
        "landmark, artwork, OCR, ...) holding images and same-named .txt files of "
        "`question<TAB>Yes|No` lines, side by side or in images/ and questions_answers_YN/",
    ),
    "pope": BenchmarkSource(
        "POPE",
        "https://huggingface.co/datasets/lmms-lab/POPE (parquet) or the official question files "
        "of https://github.com/AoiDragon/POPE (output/coco) with COCO val2014 images",
        "either DIR/**/*.parquet with columns question_id, question, answer, image, category "
        "(random / popular / adversarial); or DIR/coco_pope_{random,popular,adversarial}.json "
        "(JSON lines with question_id, image, text, label) and DIR/val2014/ with the images",
    ),
    "geneval": BenchmarkSource(
        "GenEval",
        "https://github.com/djghosh13/geneval (prompts/evaluation_metadata.jsonl)",
        "DIR/evaluation_metadata.jsonl or DIR/prompts/evaluation_metadata.jsonl: one JSON object "
        "a line with tag, prompt, include (and optionally exclude)",
    ),
    "wise": BenchmarkSource(
        "WISE",
        "https://github.com/PKU-YuanGroup/WISE (a clone; eval.wise_set picks the prompt set)",
        "a clone (WISE_legacy/data/, data/ or data_verified/) or the folder of one set's files "
        "(cultural_common_sense.json, spatio-temporal_reasoning.json, natural_science.json, or "
        "their _rewrite / _verified variants): JSON lists of objects with prompt_id, Prompt, "
        "Explanation, Subcategory",
    ),
}


class BenchmarkNotFoundError(FileNotFoundError):
    """A benchmark directory is missing or not laid out as its loader expects."""


class BenchmarkDataError(ValueError):
    """A benchmark file holds a record the loader cannot use."""


class MissingPredictionsError(ValueError):
    """Some samples handed to a scorer have no model output."""


def not_found(benchmark: str, root: Path, problem: str) -> BenchmarkNotFoundError:
    """The error for a missing or mis-laid benchmark: what is wrong, where to get it, the layout."""
    src = SOURCES[benchmark]
    return BenchmarkNotFoundError(
        f"{src.name}: {problem} (looked in {root}). Benchmark data does not ship with pairuni: "
        f"download it from {src.download} and lay it out as {src.layout}. See docs/eval.md."
    )


def require_dir(root: str | Path, benchmark: str) -> Path:
    """Return `root` as a Path if it is a directory, else raise the benchmark's download help."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise not_found(benchmark, path, "the benchmark directory does not exist")
    return path


def data_error(path: Path | str, record: str, field: str, problem: str, fix: str) -> Exception:
    """The error for one unusable record, naming file, record, field and the fix."""
    return BenchmarkDataError(f"{path}: {record}: field {field!r} {problem}; {fix}")


def read_parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number, row as a dict) from a parquet file, one record batch at a time so that
    image columns never all sit in memory together."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise BenchmarkDataError(
            f"{path}: not a readable parquet file ({err}); re-download it"
        ) from None
    row = 0
    for batch in parquet.iter_batches(batch_size=64):
        for record in batch.to_pylist():
            yield row, record
            row += 1


def require_field(record: Mapping[str, Any], field: str, path: Path, where: str) -> Any:
    """The value of a required field, or an error naming file, record and field."""
    if field not in record or record[field] is None:
        raise data_error(
            path, where, field, "is missing", "use the benchmark's original release files"
        )
    return record[field]


def require_str(record: Mapping[str, Any], field: str, path: Path, where: str) -> str:
    value = require_field(record, field, path, where)
    if not isinstance(value, str):
        raise data_error(
            path, where, field, f"must be a string, got {type(value).__name__}", "fix the record"
        )
    return value


def image_bytes(cell: Any, path: Path, where: str, field: str) -> bytes:
    """The encoded image in a cell: raw bytes, or the Hugging Face Image struct {bytes, path}."""
    if isinstance(cell, bytes | bytearray):
        return bytes(cell)
    if isinstance(cell, Mapping) and isinstance(cell.get("bytes"), bytes | bytearray):
        return bytes(cell["bytes"])
    raise data_error(
        path,
        where,
        field,
        f"holds no encoded image (got {type(cell).__name__})",
        "use the parquet release whose image column stores the image bytes",
    )


ImageRef = bytes | Path
"""An image as the loaders keep it: encoded bytes (from parquet) or a file path (from folders).
Decoding waits until a runner needs the pixels."""


def open_image(ref: ImageRef) -> Image.Image:
    """Decode an `ImageRef` to an RGB PIL image."""
    if isinstance(ref, Path):
        with Image.open(ref) as img:
            return img.convert("RGB")
    return Image.open(io.BytesIO(ref)).convert("RGB")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(
            f"{path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); "
            "re-download the file"
        ) from None


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-empty line of a JSON-lines file."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkDataError(
                    f"{path}: line {number}: not valid JSON ({err.msg}); fix or remove the line"
                ) from None


def load_predictions(path: str | Path, text_field: str = "response") -> dict[str, str]:
    """Read model outputs from a JSON-lines file of {"id": ..., "response": ...} objects.

    This is the hand-off format between a runner and the scorers: one line per sample, keyed by the
    loader's sample id. A repeated id keeps its last line (a resumed run may rewrite a sample).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found; run the model first")
    out: dict[str, str] = {}
    for number, obj in read_jsonl(path):
        where = f"line {number}"
        if not isinstance(obj, dict):
            raise data_error(path, where, "id", "is missing (the line is not an object)", "")
        sample_id = require_field(obj, "id", path, where)
        text = require_field(obj, text_field, path, where)
        if not isinstance(text, str):
            raise data_error(path, where, text_field, "must be a string", "write the model text")
        out[str(sample_id)] = text
    return out


def match_predictions(
    sample_ids: list[str], predictions: Mapping[str, str], benchmark: str
) -> list[str]:
    """The prediction of every sample, in order; an error lists the ids that have none."""
    missing = [sid for sid in sample_ids if sid not in predictions]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise MissingPredictionsError(
            f"{SOURCES[benchmark].name}: {len(missing)} of {len(sample_ids)} samples have no "
            f"prediction (e.g. {shown}); run the model on every sample, or score a subset by "
            "passing only the samples you ran"
        )
    return [predictions[sid] for sid in sample_ids]
