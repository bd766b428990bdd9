"""Read and write record files: JSONL (optionally gzipped), parquet, or a folder of parquet shards.

    recordset = read_records("pairs.jsonl", Pair)             # DataError on the first bad record
    recordset = read_records("pairs.jsonl", Pair, on_bad_record="skip")
    print(recordset.summary())                                # "skipped 3 of 120 records: ..."
    write_records("out/pairs.parquet", recordset, images="embed")

    with JsonlAppender("out/answers.jsonl", UnderstandingSample) as out:   # long jobs
        for sample in todo:
            if sample.id not in out.done_ids:
                out.append(solve(sample))

`iter_source_rows` yields the raw rows of any dataset the pairing sources accept (also CSV, image
folders with a metadata file and `save_to_disk` folders), with the same locations and errors.

Writes are atomic (a temporary file, fsync'ed, then `os.replace`), so a killed job never leaves
half a file; the appender fsyncs each line and drops a torn last line when reopened. The format
is documented in docs/data-format.md.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import types
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, NamedTuple, TypeVar, Union, get_args, get_origin

from pydantic import ValidationError

from pairuni.data.errors import (
    DataError,
    IndexKind,
    SkippedRecord,
    data_error_from_validation,
)
from pairuni.data.images import IMAGE_MODES, ImageMode, image_fields, rehome_images
from pairuni.data.schema import ImageRef, Record

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)
OnBadRecord = Literal["error", "skip"]

FORMAT_VERSION = 1
PARQUET_META_KEY = b"pairuni"
HF_META_KEY = b"huggingface"
PARQUET_ROWS_PER_GROUP = 256  # small groups: rows with embedded images are large
_INT64 = (-(2**63), 2**63 - 1)


# --------------------------------------------------------------------------- record sets


class Location(NamedTuple):
    """Where a record was read: its file and line (JSONL, 1-based) or row (parquet, 0-based)."""

    path: Path
    index: int
    kind: IndexKind


@dataclass
class RecordSet(Generic[R]):
    """Records read from one file or folder, with what was skipped and where each came from.

    Attributes:
        records: the valid records, in file order.
        base_dir: the folder relative image paths resolve from (the file's folder).
        skipped: records left out with ``on_bad_record="skip"`` (empty otherwise).
        total: records seen, good or bad (blank JSONL lines are not records).
        path: the file or folder read.
        locations: per record, the file and line/row it came from (for later error messages).
    """

    records: list[R]
    base_dir: Path
    skipped: list[SkippedRecord] = field(default_factory=list)
    total: int = 0
    path: Path | None = None
    locations: list[Location] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[R]:
        return iter(self.records)

    def __getitem__(self, position: int) -> R:
        return self.records[position]

    def locate(self, position: int) -> tuple[Path | None, int, IndexKind]:
        """File and line/row of ``records[position]`` (its position when not read from a file)."""
        if position < len(self.locations):
            return self.locations[position]
        return self.path, position, "record"

    def summary(self) -> str:
        """One line for a log: how many records were skipped and why, grouped by field."""
        if not self.skipped:
            return f"read {len(self.records)} records from {self.path}, skipped none"
        groups: Counter[tuple[str | None, str]] = Counter()
        example: dict[tuple[str | None, str], str] = {}
        for item in self.skipped:
            key = (item.field, _gist(item.reason))
            groups[key] += 1
            example.setdefault(key, _headline(item.reason))
        parts = [
            f"{count} x {key[0] + ': ' if key[0] else ''}{example[key]}"
            for key, count in groups.most_common()
        ]
        return f"skipped {len(self.skipped)} of {self.total} records: " + ", ".join(parts)


def _headline(reason: str) -> str:
    """The reason up to its explanation (after ';' or ' ('), for summaries."""
    return re.split(r"; | \(", reason, maxsplit=1)[0]


def _gist(reason: str) -> str:
    """The reason with quoted values and numbers masked, so similar problems group together."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|-?\d+(\.\d+)?", "#", _headline(reason))


# --------------------------------------------------------------------------- reading


def read_records(
    path: str | os.PathLike[str],
    model: type[R],
    *,
    on_bad_record: OnBadRecord = "error",
    unique_ids: bool = True,
) -> RecordSet[R]:
    """Read and validate every record of a `.jsonl`, `.jsonl.gz` or `.parquet` file, or of a
    folder of `.parquet` shards (read in name order).

    Images referenced by path are not opened (use `check_images`). A bad record (invalid JSON,
    not an object, missing field, wrong type, failed schema check, duplicate id) raises a
    `DataError` naming file, line/row and field; with ``on_bad_record="skip"`` it is left out
    and counted in `RecordSet.skipped` (and logged). Whole-file problems (missing file, damaged
    parquet or gzip) always raise.

    Args:
        unique_ids: also reject a record whose `pair_id` / `id` repeats an earlier one.
    """
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record={on_bad_record!r} is not 'error' or 'skip'")
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    id_field = _id_field(model) if unique_ids else None
    first_seen: dict[Any, Location] = {}
    # Absolute, so that image paths still resolve if the process changes directory.
    base_dir = Path(os.path.abspath(source if source.is_dir() else source.parent))
    result: RecordSet[R] = RecordSet(records=[], base_dir=base_dir, path=source)
    for location, payload in _raw_records(source):
        result.total += 1
        try:
            record = _validate(model, payload, location)
            if id_field is not None:
                _check_unique(record, id_field, location, first_seen)
        except DataError as err:
            if on_bad_record == "error":
                raise
            result.skipped.append(SkippedRecord.from_error(err))
            continue
        result.records.append(record)
        result.locations.append(location)
    if result.skipped:
        logger.warning("%s: %s", source, result.summary())
    return result


def _id_field(model: type[Record]) -> str | None:
    for name in ("pair_id", "id"):
        if name in model.model_fields:
            return name
    return None


def _check_unique(
    record: Record, id_field: str, location: Location, first_seen: dict[Any, Location]
) -> None:
    value = getattr(record, id_field)
    if value in first_seen:
        first = first_seen[value]
        raise DataError(
            location.path,
            location.index,
            id_field,
            f"duplicate {id_field} {value!r}, already used at {first.kind} {first.index}"
            + ("" if first.path == location.path else f" of {first.path}")
            + f"; every record needs its own {id_field}",
            index_kind=location.kind,
        )
    first_seen[value] = location


def _validate(model: type[R], payload: dict[str, Any] | DataError, location: Location) -> R:
    if isinstance(payload, DataError):
        raise payload
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        error = data_error_from_validation(err, location.path, location.index, location.kind)
        if error.reason.startswith(MISSING):
            columns = source_columns(location.path) if location.kind == "row" else None
            present = (
                f"the file's columns are: {', '.join(columns)}"
                if columns is not None
                else f"the record has the fields: {', '.join(sorted(payload)) or 'none'}"
            )
            raise DataError(
                error.path,
                error.index,
                error.field,
                f"{error.reason}; {present}",
                index_kind=error.index_kind,
            ) from None
        raise error from None


MISSING = "required field is missing"
"""How `DataError.reason` starts for an absent required field."""


def _raw_records(source: Path) -> Iterator[tuple[Location, dict[str, Any] | DataError]]:
    """(where, the record as a dict, or the DataError that stops it from being one)."""
    name = source.name.lower()
    if source.is_dir():
        shards = sorted(p for p in source.iterdir() if p.suffix == ".parquet" and p.is_file())
        if not shards:
            raise DataError(source, None, None, "the folder holds no .parquet shards")
        for shard in shards:
            yield from _parquet_rows(shard)
    elif name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        yield from _jsonl_rows(source)
    elif name.endswith(".parquet"):
        yield from _parquet_rows(source)
    else:
        raise DataError(
            source, None, None, "unknown format: use .jsonl, .jsonl.gz, .parquet or a folder"
        )


def _jsonl_rows(path: Path) -> Iterator[tuple[Location, dict[str, Any] | DataError]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        try:
            for line_number, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield Location(path, line_number, "line"), _parse_line(raw, path, line_number)
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise DataError(
                path, None, None, f"the gzip stream is damaged or cut off ({err}); rewrite it"
            ) from None


def _parse_line(raw: bytes, path: Path, line_number: int) -> dict[str, Any] | DataError:
    def problem(reason: str) -> DataError:
        if not raw.endswith(b"\n"):
            reason += (
                "; this last line has no newline: the file was probably cut off by an "
                "interrupted write (JsonlAppender drops such a line when it reopens the file)"
            )
        return DataError(path, line_number, None, reason)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return problem(f"not valid UTF-8 text ({err.reason} at byte {err.start})")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return problem(f"invalid JSON ({err.msg} at column {err.colno})")
    if not isinstance(value, dict):
        return problem(f"expected a JSON object {{...}}, got {type(value).__name__}")
    return value


def _parquet_rows(path: Path) -> Iterator[tuple[Location, dict[str, Any] | DataError]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, None, None, f"not a readable parquet file ({err})") from None
    metadata = parquet.schema_arrow.metadata or {}
    json_columns = set(json.loads(metadata.get(PARQUET_META_KEY, b"{}")).get("json_columns", []))
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_ROWS_PER_GROUP):
            for values in batch.to_pylist():
                yield Location(path, row, "row"), _decode_row(values, json_columns, path, row)
                row += 1
    except (pa.ArrowException, OSError) as err:
        reason = f"the parquet file is damaged ({err})"
        raise DataError(path, row, None, reason, index_kind="row") from None


def _decode_row(
    values: dict[str, Any], json_columns: set[str], path: Path, row: int
) -> dict[str, Any] | DataError:
    """A parquet row as the dict a record validates from: JSON columns decoded, nulls mapped."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in json_columns:
            if value is None:
                continue  # null in a JSON column: this record has no such field
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                reason = f"invalid JSON in a JSON-encoded column ({err.msg})"
                return DataError(path, row, name, reason, index_kind="row")
        elif value is None:
            continue  # a null column value: the field is absent (its default applies)
        out[name] = value
    return out


# --------------------------------------------------------------------------- dataset sources

METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
"""The metadata file of an image folder (HF `imagefolder` layout, `file_name` column)."""


def iter_source_rows(
    path: str | os.PathLike[str], *, split: str | None = None
) -> Iterator[tuple[Location, dict[str, Any] | DataError]]:
    """The raw rows of a dataset, before any schema: (where, the row as a dict, or the DataError
    that stops it from being one, e.g. a line of invalid JSON).

    Reads what `read_records` reads (`.jsonl`, `.jsonl.gz`, `.parquet`, a folder of parquet
    shards, searched recursively when none is at the top) and also `.csv` files (1-based line of
    the record's last line, header included; empty cells are absent), image folders with a
    `metadata.jsonl` / `.csv` / `.parquet` file (`file_name` becomes `image`), and HF `datasets`
    folders written by `save_to_disk`: a `Dataset`, or a `DatasetDict` (`dataset_dict.json`)
    whose splits are read in order, or only `split` when given. Images are never decoded.
    Whole-file problems raise `DataError` (or `FileNotFoundError`).
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if not source.is_dir():
        if source.name.lower().endswith(".csv"):
            yield from _csv_rows(source)
        else:
            yield from _raw_records(source)
        return
    for name in METADATA_FILES:
        if (source / name).is_file():
            for location, row in iter_source_rows(source / name):
                if isinstance(row, dict) and "file_name" in row and "image" not in row:
                    row["image"] = row.pop("file_name")
                yield location, row
            return
    if (source / "dataset_dict.json").is_file():
        yield from _dataset_dict_rows(source, split)
    elif (source / "dataset_info.json").is_file() or (source / "state.json").is_file():
        yield from _dataset_rows(source)
    else:
        shards = sorted(p for p in source.iterdir() if p.suffix == ".parquet" and p.is_file())
        shards = shards or sorted(p for p in source.rglob("*.parquet") if p.is_file())
        if not shards:
            raise DataError(
                source,
                None,
                None,
                "not a dataset folder: no metadata.jsonl / .csv / .parquet file, no "
                "`save_to_disk` dataset (dataset_info.json or dataset_dict.json) and no "
                ".parquet shards in it",
            )
        for shard in shards:
            yield from _parquet_rows(shard)


def source_base_dir(path: str | os.PathLike[str]) -> Path:
    """The folder relative image paths of a dataset resolve from: the file's folder, or the
    folder itself (absolute)."""
    source = Path(path)
    return Path(os.path.abspath(source if source.is_dir() else source.parent))


def source_columns(path: Path) -> list[str] | None:
    """The column names of a parquet file or a `save_to_disk` split folder (None for formats
    whose rows carry their own keys, such as JSONL)."""
    try:
        if path.is_file() and path.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        info = path / "dataset_info.json"
        if info.is_file():
            features = json.loads(info.read_text(encoding="utf-8")).get("features") or {}
            return list(features)
    except (OSError, ValueError, ImportError):
        return None
    return None


def _csv_rows(path: Path) -> Iterator[tuple[Location, dict[str, Any] | DataError]]:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                location = Location(path, reader.line_num, "line")
                if None in row:  # more cells than the header has columns
                    extra = row.pop(None)  # type: ignore[call-overload]
                    reason = f"{len(row) + len(extra)} cells, the header has {len(row)} columns"
                    yield location, DataError(path, reader.line_num, None, reason)
                    continue
                yield location, {k: v for k, v in row.items() if v not in (None, "")}
        except UnicodeDecodeError as err:
            raise DataError(
                path, reader.line_num + 1, None, f"not valid UTF-8 text ({err.reason})"
            ) from None
        except csv.Error as err:
            raise DataError(path, reader.line_num, None, f"not valid CSV ({err})") from None


def _dataset_dict_rows(
    folder: Path, split: str | None
) -> Iterator[tuple[Location, dict[str, Any] | DataError]]:
    try:
        splits = list(json.loads((folder / "dataset_dict.json").read_text())["splits"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(folder, None, None, f"unreadable dataset_dict.json ({err})") from None
    if split is not None:
        if split not in splits:
            raise DataError(
                folder,
                None,
                None,
                f"no split {split!r} in this DatasetDict; its splits are "
                f"{', '.join(sorted(splits))} (pairing.sources.split, or null for every split)",
            )
        splits = [split]
    for name in splits:
        yield from _dataset_rows(folder / name)


def _dataset_rows(folder: Path) -> Iterator[tuple[Location, dict[str, Any] | DataError]]:
    """The rows of a `save_to_disk` Dataset, as stored (images as {bytes, path}, not decoded);
    ClassLabel columns as their names."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as err:
        raise DataError(
            folder, None, None, f"not a readable `save_to_disk` dataset ({err})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):  # a split folder that is itself a DatasetDict
        yield from _dataset_dict_rows(folder, None)
        return
    labels = {
        name: feature.names
        for name, feature in ds.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    row = 0
    for batch in ds.with_format("arrow").iter(batch_size=PARQUET_ROWS_PER_GROUP):
        for values in batch.to_pylist():
            for name, names in labels.items():
                value = values.get(name)
                if isinstance(value, int) and 0 <= value < len(names):
                    values[name] = names[value]
            yield Location(folder, row, "row"), {k: v for k, v in values.items() if v is not None}
            row += 1


# --------------------------------------------------------------------------- writing


def write_records(
    path: str | os.PathLike[str],
    records: Iterable[Record] | RecordSet[Any],
    *,
    images: ImageMode = "keep",
    image_dir: str = "images",
    base_dir: str | os.PathLike[str] | None = None,
    model: type[Record] | None = None,
) -> Path:
    """Write records to `.jsonl`, `.jsonl.gz` or `.parquet` (by extension), atomically.

    Args:
        records: all of one record type; a `RecordSet` brings its `base_dir` and locations.
        images: ``keep`` rewrites relative image paths so they still resolve from the new file's
            folder; ``embed`` stores the image bytes in the file; ``copy`` copies the image
            files into ``image_dir`` next to the output and points the records there.
            Embedded images are written as they are in every mode.
        image_dir: the folder for ``copy``, relative to the output file's folder.
        base_dir: the folder the records' relative image paths resolve from now. Default: the
            `RecordSet`'s base_dir, else the output file's folder (the paths are already relative
            to the file being written).
        model: the record type, needed only to give an empty parquet file its columns.

    Returns:
        The path written. The old file (if any) stays untouched until the new one is complete.
    """
    target = Path(path)
    if images not in IMAGE_MODES:
        raise ValueError(f"images={images!r} is not one of {', '.join(IMAGE_MODES)}")
    out_dir = target.parent
    if isinstance(records, RecordSet):
        source_dir = Path(base_dir) if base_dir is not None else records.base_dir
        locate = records.locate
    else:
        source_dir = Path(base_dir) if base_dir is not None else out_dir

        def locate(position: int) -> tuple[Path | None, int, IndexKind]:
            return target, position, "record"

    stream = rehome_images(
        _same_type(records, model, target),
        images,
        base_dir=source_dir,
        out_dir=out_dir,
        image_dir=image_dir,
        locate=locate,
    )
    name = target.name.lower()
    if name.endswith(".parquet"):
        _write_parquet(target, list(stream), model)
    elif name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        _write_jsonl(target, stream)
    else:
        raise ValueError(f"{target}: unknown format; write to .jsonl, .jsonl.gz or .parquet")
    return target


def _same_type(
    records: Iterable[Record], model: type[Record] | None, target: Path
) -> Iterator[Record]:
    """The records, checked to be of one type (a file holds one record type)."""
    expected = model
    for position, record in enumerate(records):
        if expected is None:
            expected = type(record)
        if type(record) is not expected:
            raise TypeError(
                f"writing {target}: record {position} is a {type(record).__name__}, the others "
                f"are {expected.__name__}; a file holds one record type"
            )
        yield record


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` that replaces it, fsync'ed, only if the block succeeds.

    A crash or exception before the end leaves the old file untouched (a killed process may
    leave a hidden ``.name.*.tmp`` file behind, never a half-written `path`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _fsync_dir(path.parent)
    finally:
        temp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); not possible, and not needed, everywhere."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write_jsonl(target: Path, records: Iterable[Record]) -> None:
    with atomic_output(target) as temp:
        compressed = target.name.lower().endswith(".gz")
        handle: IO[bytes]
        with gzip.open(temp, "wb") if compressed else open(temp, "wb") as handle:  # type: ignore[assignment]
            for position, record in enumerate(records):
                handle.write(record_to_json_line(record, where=(target, position)) + b"\n")


def record_to_json_dict(record: Record) -> dict[str, Any]:
    """The record as a JSON-ready dict: path-only images as their path string, embedded images
    as ``{"bytes": "<base64>", "path": "name.png"}``, extra fields as they are."""
    data = record.model_dump(mode="python")
    for name in image_fields(type(record)):
        data[name] = _image_to_json(getattr(record, name))
    return data


def _image_to_json(ref: ImageRef | None) -> Any:
    if ref is None or ref.data is None:
        return None if ref is None else ref.path
    encoded = ref.model_dump(mode="json", by_alias=True)  # base64 text (ImageRef's serializer)
    return (
        {"bytes": encoded["bytes"], "path": ref.path} if ref.path else {"bytes": encoded["bytes"]}
    )


def record_to_json_line(record: Record, *, where: tuple[Path, int] | None = None) -> bytes:
    """One JSONL line (no newline). Non-finite floats are refused: they are not JSON."""
    data = record_to_json_dict(record)
    try:
        return _dumps(data).encode("utf-8")
    except (TypeError, ValueError) as err:
        culprit = next((k for k, v in data.items() if not _serializable(v)), None)
        path, position = where if where is not None else (None, None)
        reason = f"cannot be written as JSON ({err}); store it as a string or a finite number"
        raise DataError(path, position, culprit, reason, index_kind="record") from None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, default=_json_default)


def _serializable(value: Any) -> bool:
    try:
        _dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays and paths, which reward code and generators commonly produce."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"a {type(value).__name__} is not JSON")


# --------------------------------------------------------------------------- parquet


@dataclass(frozen=True)
class _Column:
    name: str
    encoding: Literal["native", "image", "json"]
    arrow_type: Any  # pyarrow.DataType (pyarrow is imported lazily)


def _image_arrow_type() -> Any:
    import pyarrow as pa

    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF datasets' Image


def _arrow_type(annotation: Any) -> Any | None:
    """The arrow type of a field annotation, or None when it is stored as JSON text."""
    import pyarrow as pa

    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _arrow_type(rest[0]) if len(rest) == 1 else None
    if annotation is ImageRef:
        return _image_arrow_type()
    if origin is Literal:
        return pa.string() if all(isinstance(a, str) for a in args) else None
    if origin is list and len(args) == 1:
        inner = _arrow_type(args[0])
        return None if inner is None or args[0] is ImageRef else pa.list_(inner)
    simple = {str: pa.string(), bool: pa.bool_(), int: pa.int64(), float: pa.float64()}
    return simple.get(annotation)


def _plan_columns(model: type[Record], records: list[Record]) -> list[_Column]:
    """Columns: one per model field (typed), then one per extra field in first-seen order.

    An extra field becomes a typed column only when every record has it with the same scalar
    type (str, int, bool, float) and no null; otherwise (nested values, mixed types, absent in
    some records) it is JSON text, null where a record lacks it, so nothing is lost.
    """
    import pyarrow as pa

    columns: list[_Column] = []
    for name, info in model.model_fields.items():
        arrow_type = _arrow_type(info.annotation)
        if arrow_type is None:
            columns.append(_Column(name, "json", pa.string()))
        elif name in image_fields(model):
            columns.append(_Column(name, "image", arrow_type))
        else:
            columns.append(_Column(name, "native", arrow_type))
    extras: dict[str, list[Any]] = {}
    for record in records:
        for key, value in (record.model_extra or {}).items():
            extras.setdefault(key, []).append(value)
    scalar = {str: pa.string(), bool: pa.bool_(), int: pa.int64(), float: pa.float64()}
    for key, values in extras.items():
        kinds = {type(v) for v in values}
        native = len(values) == len(records) and len(kinds) == 1 and next(iter(kinds)) in scalar
        if native and int in kinds:
            native = all(_INT64[0] <= v <= _INT64[1] for v in values)
        arrow_type = scalar[next(iter(kinds))] if native else pa.string()
        columns.append(_Column(key, "native" if native else "json", arrow_type))
    return columns


def _parquet_row(record: Record, columns: list[_Column], where: tuple[Path, int]) -> dict:
    data = record.model_dump(mode="python")
    row: dict[str, Any] = {}
    for column in columns:
        if column.name not in data:
            continue  # an extra field this record lacks: null
        value = data[column.name]
        if column.encoding == "image":
            ref = getattr(record, column.name)
            row[column.name] = None if ref is None else {"bytes": ref.data, "path": ref.path}
        elif column.encoding == "json":
            try:
                row[column.name] = _dumps(value)
            except (TypeError, ValueError) as err:
                reason = f"cannot be written as JSON ({err}); store a string or finite number"
                raise DataError(
                    where[0], where[1], column.name, reason, index_kind="record"
                ) from None
        else:
            row[column.name] = value
    return row


def _parquet_metadata(columns: list[_Column], records: list[Record], model: type) -> dict:
    json_columns = [c.name for c in columns if c.encoding == "json"]
    meta = {"format_version": FORMAT_VERSION, "record_type": model.__name__}
    metadata = {PARQUET_META_KEY: json.dumps({**meta, "json_columns": json_columns})}
    # Mark image columns as HF `Image` features when every image is embedded: `datasets` then
    # decodes them. (Relative paths would resolve from the reader's working directory there.)
    embedded = {}
    for column in columns:
        if column.encoding != "image":
            continue
        refs = [getattr(r, column.name) for r in records]
        refs = [r for r in refs if r is not None]
        if refs and all(r.data is not None for r in refs):
            embedded[column.name] = {"_type": "Image"}
    if embedded:
        metadata[HF_META_KEY] = json.dumps({"info": {"features": embedded}})
    return metadata


def _write_parquet(target: Path, records: list[Record], model: type[Record] | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = model or (type(records[0]) if records else None)
    columns = _plan_columns(model, records) if model is not None else []
    schema = pa.schema([pa.field(c.name, c.arrow_type) for c in columns])
    if model is not None:
        schema = schema.with_metadata(_parquet_metadata(columns, records, model))
    with atomic_output(target) as temp, pq.ParquetWriter(temp, schema) as writer:
        for start in range(0, len(records), PARQUET_ROWS_PER_GROUP):
            chunk = records[start : start + PARQUET_ROWS_PER_GROUP]
            rows = [_parquet_row(r, columns, (target, start + i)) for i, r in enumerate(chunk)]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


# --------------------------------------------------------------------------- appending


class JsonlAppender(Generic[R]):
    """Append-only JSONL writer for long jobs: every record is one line, flushed and fsync'ed.

    Opening an existing file resumes it: a torn last line (a kill mid-write) is cut off and
    logged, every complete line is validated as `model`, and `done_ids` holds the `key` of
    each record already written, so the job can skip them. A lock stops a second process from
    appending to the same file.

    Args:
        key: the field that identifies a record (default: `pair_id` or `id` of the model).
        fsync: fsync after every record (turn off only for throwaway output).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: type[R],
        *,
        key: str | None = None,
        fsync: bool = True,
    ) -> None:
        self.path = Path(path)
        self.model = model
        if self.path.name.lower().endswith(".gz"):
            raise ValueError(f"{self.path}: JsonlAppender writes plain .jsonl (gzip cannot resume)")
        self.key = key or _id_field(model)
        if self.key is None or self.key not in model.model_fields:
            raise ValueError(
                f"JsonlAppender needs key=<a field of {model.__name__}> to know which records are "
                "done"
            )
        self.fsync = fsync
        self.done_ids: set[Any] = set()
        self.dropped_bytes = 0
        """Bytes of a torn last line cut off on open (0 when the file was whole)."""
        self.written = 0
        """Records appended since open."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[bytes] | None = open(self.path, "a+b")  # noqa: SIM115 (closed in close())
        try:
            lock_exclusive(self._handle, self.path)
            self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        assert self._handle is not None
        size = os.fstat(self._handle.fileno()).st_size
        for line_number, raw in complete_lines(self._handle, self.path):
            self._remember(raw, line_number)
        self.dropped_bytes = size - self._handle.tell()

    def _remember(self, raw: bytes, line_number: int) -> None:
        location = Location(self.path, line_number, "line")
        record = _validate(self.model, _parse_line(raw, self.path, line_number), location)
        value = getattr(record, self.key)  # type: ignore[arg-type]
        if value in self.done_ids:
            raise DataError(
                self.path,
                line_number,
                self.key,
                f"duplicate {self.key} {value!r}: the file already holds this record; "
                "remove one of the two lines",
            )
        self.done_ids.add(value)

    def append(self, record: R) -> None:
        """Write one record (a new key) durably before returning."""
        if self._handle is None:
            raise ValueError(f"{self.path}: the appender is closed")
        if not isinstance(record, self.model):
            raise TypeError(f"expected a {self.model.__name__}, got {type(record).__name__}")
        value = getattr(record, self.key)  # type: ignore[arg-type]
        if value in self.done_ids:
            raise ValueError(
                f"{self.path}: {self.key} {value!r} is already written; skip records whose "
                f"{self.key} is in `done_ids`"
            )
        line = record_to_json_line(record, where=(self.path, self.written))
        self._handle.write(line + b"\n")
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())
        self.done_ids.add(value)
        self.written += 1

    def extend(self, records: Iterable[R]) -> None:
        for record in records:
            self.append(record)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # also releases the lock
            self._handle = None

    def __enter__(self) -> JsonlAppender[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lock_exclusive(
    handle: IO[bytes], path: Path, on_busy: Callable[[], Exception] | None = None
) -> None:
    """Take an exclusive, non-blocking lock on an open file (released when it is closed), so
    that two jobs never append to one output. Another holder raises `on_busy()` (by default a
    RuntimeError naming the file). Not POSIX: no lock, the rest works."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_busy is not None:
            raise on_busy() from None
        raise RuntimeError(
            f"{path}: another process is appending to this file; run one job per output file"
        ) from None


def complete_lines(handle: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of every complete, non-blank line of an append-only file opened
    `a+b`. A torn last line (no newline: a write killed half-way) is cut off durably and logged,
    so that its record is redone. Exhausted, it leaves the handle at the end of the file."""
    handle.seek(0)
    offset = 0
    for line_number, raw in enumerate(handle, start=1):
        if not raw.endswith(b"\n"):
            handle.truncate(offset)
            handle.flush()
            os.fsync(handle.fileno())
            logger.warning(
                "%s: dropped a partial last line (line %d, %d bytes) left by an interrupted "
                "write; that record will be redone",
                path,
                line_number,
                len(raw),
            )
            break
        offset += len(raw)
        if raw.strip():
            yield line_number, raw
    handle.seek(0, os.SEEK_END)
