"""Single-task data sources: understanding (image, question, options, answer, category) and
generation (prompt, image) records from JSONL, parquet, HF `datasets` directories and image
folders with a metadata file; column mapping, category filters, de-duplication by image hash.

    samples = load_samples(["orsta.parquet"], "understanding", cfg.pairing.sources)
    print(samples.summary())

Image paths are made absolute (relative ones resolve from the file's folder), so records can be
written anywhere afterwards.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from pairuni.data.errors import DataError
from pairuni.data.schema import GenerationSample, ImageRef, UnderstandingSample
from pairuni.pairing.config import SourcesConfig

Task = Literal["understanding", "generation"]
MODELS: dict[str, type[UnderstandingSample] | type[GenerationSample]] = {
    "understanding": UnderstandingSample,
    "generation": GenerationSample,
}
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


@dataclass
class Samples:
    """Loaded records with the counts of what was left out and why."""

    task: Task
    records: list[Any] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One message (file, row, field, reason) per record that did not fit the schema."""
    dropped_category: int = 0
    dropped_duplicate: int = 0
    total: int = 0

    def summary(self) -> str:
        cats = Counter(r.category or "(none)" for r in self.records)
        top = ", ".join(f"{c} {n}" for c, n in cats.most_common(8))
        return (
            f"{self.task}: kept {len(self.records)} of {self.total} "
            f"(bad {len(self.skipped)}, category-filtered {self.dropped_category}, "
            f"duplicate images {self.dropped_duplicate}); categories: {top or '-'}"
        )


def load_samples(paths: list[str], task: Task, cfg: SourcesConfig) -> Samples:
    """Read, map, validate, filter and de-duplicate the records of every source in `paths`."""
    model = MODELS[task]
    out = Samples(task=task)
    seen_hashes: set[str] = set()
    seen_ids: set[str] = set()
    for source in paths:
        for where, index, row, base in iter_rows(Path(source)):
            out.total += 1
            try:
                record = to_record(
                    row, model, cfg.columns, base, default_id=f"{where.stem}:{index}"
                )
                if record.id in seen_ids:
                    raise DataError(where, index, "id", f"duplicate id {record.id!r}")
            except DataError as err:
                if cfg.on_bad_record == "error":
                    raise
                out.skipped.append(str(err))
                continue
            if not keep_category(record.category, task, cfg):
                out.dropped_category += 1
                continue
            if cfg.dedup and record.image is not None:
                digest = record.image.sha256()
                if digest in seen_hashes:
                    out.dropped_duplicate += 1
                    continue
                seen_hashes.add(digest)
            seen_ids.add(record.id)
            out.records.append(record)
    return out


def keep_category(category: str | None, task: Task, cfg: SourcesConfig) -> bool:
    """Drop (understanding only) categories containing a `drop_categories` entry; then keep only
    `keep_categories` when set. Case-insensitive."""
    name = (category or "").lower()
    if task == "understanding" and any(d.lower() in name for d in cfg.drop_categories if d):
        return False
    if cfg.keep_categories is not None:
        return name in {k.lower() for k in cfg.keep_categories}
    return True


def to_record(
    row: dict[str, Any],
    model: type[UnderstandingSample] | type[GenerationSample],
    columns: dict[str, str],
    base: Path,
    default_id: str,
) -> Any:
    """One raw row -> a validated record, or a DataError naming the field."""
    where, index = row.pop("__file__"), row.pop("__index__")
    payload: dict[str, Any] = {}
    mapped_columns = set(columns.values())
    for name in model.model_fields:
        column = columns.get(name, name)
        if column in row:
            payload[name] = row[column]
    # extra columns (e.g. a ShapesWorld `scene`) travel with the record
    for column, value in row.items():
        if column not in mapped_columns and column not in payload:
            payload[column] = value
    payload.setdefault("id", default_id)
    payload["id"] = str(payload["id"])
    if isinstance(payload.get("options"), str) and payload["options"].strip().startswith("["):
        payload["options"] = json.loads(payload["options"])
    if payload.get("options") is None:
        payload.pop("options", None)
    try:
        if payload.get("image") is not None:
            payload["image"] = absolute_image(payload["image"], base)
        return model.model_validate(payload)
    except ValidationError as err:
        problem = err.errors()[0]
        field_name = ".".join(str(p) for p in problem["loc"]) or None
        column = columns.get(field_name or "", field_name)
        hint = f" (source column {column!r})" if column != field_name else ""
        raise DataError(
            where,
            index,
            field_name,
            f"{problem['msg']}{hint}; fix the data or map the right column with "
            f"pairing.sources.columns",
        ) from None
    except (ValueError, TypeError) as err:
        raise DataError(where, index, "image", f"unusable image value: {err}") from None


def absolute_image(value: Any, base: Path) -> ImageRef:
    """An ImageRef whose path (if any) is absolute; PIL images become embedded PNG bytes."""
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        import io

        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return ImageRef(bytes=buffer.getvalue())
    ref = ImageRef.model_validate(value)
    if ref.data is None and ref.path is not None and not Path(ref.path).is_absolute():
        return ImageRef(path=str((base / ref.path).resolve()))
    return ref


# --------------------------------------------------------------------------- raw rows


def iter_rows(source: Path) -> Iterator[tuple[Path, int, dict[str, Any], Path]]:
    """(file, row index, row dict, folder image paths resolve from) for any supported source.

    JSONL rows are numbered by 1-based line, parquet / datasets rows by 0-based row."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder; check pairing.sources")
    if source.is_dir():
        yield from _dir_rows(source)
        return
    name = source.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        yield from _jsonl_rows(source, source.parent)
    elif name.endswith(".parquet"):
        yield from _parquet_rows(source, source.parent)
    elif name.endswith(".csv"):
        yield from _csv_rows(source, source.parent)
    else:
        raise DataError(
            source, None, None, "unknown format; use .jsonl, .parquet, .csv or a folder"
        )


def _dir_rows(folder: Path) -> Iterator[tuple[Path, int, dict[str, Any], Path]]:
    for meta in METADATA_FILES:
        if (folder / meta).is_file():  # an image folder: file_name column -> image
            for where, index, row, base in iter_rows(folder / meta):
                if "file_name" in row and "image" not in row:
                    row["image"] = row.pop("file_name")
                yield where, index, row, base
            return
    if (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file():
        yield from _datasets_rows(folder)
        return
    shards = sorted(folder.glob("*.parquet")) or sorted(folder.glob("**/*.parquet"))
    if not shards:
        raise DataError(
            folder,
            None,
            None,
            "not a dataset folder: expected a metadata.jsonl/.csv/.parquet file, a "
            "`save_to_disk` dataset or parquet shards",
        )
    for shard in shards:
        yield from _parquet_rows(shard, folder)


def _tag(row: dict[str, Any], where: Path, index: int) -> dict[str, Any]:
    row["__file__"], row["__index__"] = where, index
    return row


def _jsonl_rows(path: Path, base: Path) -> Iterator[tuple[Path, int, dict[str, Any], Path]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, line_number, None, f"invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(path, line_number, None, "a record must be a JSON object")
            yield path, line_number, _tag(row, path, line_number), base


def _parquet_rows(path: Path, base: Path) -> Iterator[tuple[Path, int, dict[str, Any], Path]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for row in batch.to_pylist():
            yield path, index, _tag(row, path, index), base
            index += 1


def _csv_rows(path: Path, base: Path) -> Iterator[tuple[Path, int, dict[str, Any], Path]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        for line_number, row in enumerate(csv.DictReader(fh), start=2):
            clean = {k: v for k, v in row.items() if v not in (None, "")}
            yield path, line_number, _tag(clean, path, line_number), base


def _datasets_rows(folder: Path) -> Iterator[tuple[Path, int, dict[str, Any], Path]]:
    import datasets

    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(
            folder,
            None,
            None,
            f"a DatasetDict with splits {list(ds)}; pass one split's folder, e.g. "
            f"{folder / next(iter(ds))}",
        )
    for name, feature in ds.features.items():  # keep images as {bytes, path}: no decoding
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    for index, row in enumerate(ds):
        yield folder, index, _tag(dict(row), folder, index), folder
