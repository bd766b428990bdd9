"""Single-task data sources: understanding (image, question, options, answer, category) and
generation (prompt, image) records from JSONL, parquet, CSV, HF `datasets` folders and image
folders with a metadata file; column mapping, category filters, image checks, de-duplication.

    samples = load_samples(["orsta.parquet"], "understanding", cfg.pairing.sources,
                           rejects=rejects_path("pairug.jsonl", "understanding"))
    print(samples.summary())

Rows are read by `pairuni.data.io.iter_source_rows`, the project's one reader, so every error
names the file, the line (JSONL, CSV; 1-based) or row (parquet, datasets; 0-based) and the
field. Every image is read and decoded once here: a missing or corrupt image is an error (or,
with `on_bad_record: skip`, a reject with its reason) and never reaches an annotator. Image
paths are made absolute (relative ones resolve from the file's folder), so records can be
written anywhere afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from pairuni.data.errors import DataError, SkippedRecord, data_error_from_validation
from pairuni.data.images import image_problem, read_image_file
from pairuni.data.io import (
    MISSING,
    Location,
    atomic_output,
    iter_source_rows,
    source_base_dir,
    source_columns,
)
from pairuni.data.schema import OPTION_LETTERS, GenerationSample, ImageRef, UnderstandingSample
from pairuni.pairing.config import SourcesConfig

logger = logging.getLogger(__name__)

Task = Literal["understanding", "generation"]
MODELS: dict[str, type[UnderstandingSample] | type[GenerationSample]] = {
    "understanding": UnderstandingSample,
    "generation": GenerationSample,
}


@dataclass
class Samples:
    """Loaded records with what was left out and why."""

    task: Task
    records: list[Any] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    """Bad records left out in skip mode: file, line/row, field and reason of each."""
    duplicates: list[SkippedRecord] = field(default_factory=list)
    """Exact duplicates left out by `dedup` (the reason names the record kept)."""
    dropped_category: int = 0
    total: int = 0
    rejects_file: Path | None = None
    """Where the skipped records and duplicates were listed (None: not written)."""

    @property
    def dropped_duplicate(self) -> int:
        return len(self.duplicates)

    def summary(self) -> str:
        cats = Counter(r.category or "(none)" for r in self.records)
        top = ", ".join(f"{c} {n}" for c, n in cats.most_common(8))
        line = (
            f"{self.task}: kept {len(self.records)} of {self.total} "
            f"(bad {len(self.skipped)}, category-filtered {self.dropped_category}, "
            f"duplicates {self.dropped_duplicate}); categories: {top or '-'}"
        )
        if self.rejects_file is not None and (self.skipped or self.duplicates):
            line += f"; rejected records listed in {self.rejects_file}"
        return line

    def rejects(self) -> list[dict[str, Any]]:
        """One row per record left out for a problem (bad or duplicate), in file order."""
        rows = [(r, "bad record") for r in self.skipped] + [
            (r, "duplicate") for r in self.duplicates
        ]
        rows.sort(key=lambda item: (str(item[0].path), item[0].index))
        return [
            {
                "task": self.task,
                "file": str(r.path),
                r.index_kind: r.index,
                "field": r.field,
                "reason": r.reason,
                "kind": kind,
            }
            for r, kind in rows
        ]

    def write_rejects(self, path: str | os.PathLike[str]) -> Path | None:
        """Write `rejects()` to `path` as JSONL (atomically); with nothing rejected, remove a
        file left there by an earlier run instead. Returns the path written, or None."""
        target = Path(path)
        rows = self.rejects()
        if not rows:
            target.unlink(missing_ok=True)
            return None
        with atomic_output(target) as temp:
            temp.write_text(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                encoding="utf-8",
            )
        self.rejects_file = target
        return target


def rejects_path(out: str | os.PathLike[str], task: Task) -> Path:
    """`<out>.rejects.<task>.jsonl`: where a command writing `out` lists the rejected records."""
    target = Path(out)
    return target.with_name(f"{target.name}.rejects.{task}.jsonl")


def load_samples(
    paths: Sequence[str | os.PathLike[str]],
    task: Task,
    cfg: SourcesConfig,
    *,
    rejects: str | os.PathLike[str] | None = None,
) -> Samples:
    """Read, map, validate, filter, check the images of and de-duplicate every source in `paths`.

    Args:
        rejects: where to list the records left out for a problem (see `Samples.rejects`); they
            are also counted in `summary()`, which is logged when anything was left out.
    """
    model = MODELS[task]
    out = Samples(task=task)
    root = _common_root([Path(p) for p in paths])
    columns_of = _ColumnCache()
    # 1. read, map and validate every row (in error mode: up to the first bad one)
    parsed: list[tuple[Location, Any]] = []  # (where, record or the DataError against it)
    for location, row, base in _rows(paths, cfg.split):
        out.total += 1
        try:
            if isinstance(row, DataError):
                raise row
            default_id = f"{_relative(location.path, root)}:{location.index}"
            record = to_record(row, model, cfg.columns, base, location, default_id, columns_of)
        except DataError as err:
            parsed.append((location, err))
            if cfg.on_bad_record == "error":
                break  # raised below, after the images of the records before it are checked
            continue
        if keep_category(record.category, task, cfg):
            parsed.append((location, record))
        else:
            out.dropped_category += 1
    # 2. read and decode every image once, in parallel (decoding releases the GIL)
    images = _ImageChecker()
    images.prefetch([r.image for _, r in parsed if not isinstance(r, DataError)])
    # 3. in file order: image problems, duplicates, repeated ids
    first_ids: dict[str, Location] = {}
    kept: dict[tuple[Any, ...], tuple[Location, Any]] = {}
    for location, record in parsed:
        try:
            if isinstance(record, DataError):
                raise record
            digest = images.digest(record.image, location, cfg.columns)
            key = _dedup_key(task, record, digest) if cfg.dedup else None
            if key is not None and key in kept:
                out.duplicates.append(_duplicate(record, location, *kept[key]))
                continue
            _check_unique_id(record, location, first_ids)
        except DataError as err:
            if cfg.on_bad_record == "error" or err.index is None:
                raise
            out.skipped.append(SkippedRecord.from_error(err))
            continue
        if key is not None:
            kept[key] = (location, record)
        first_ids[record.id] = location
        out.records.append(record)
    if rejects is not None:
        out.write_rejects(rejects)
    if out.skipped or out.duplicates:
        logger.warning("%s", out.summary())
    return out


def _rows(
    paths: Sequence[str | os.PathLike[str]], split: str | None
) -> Iterator[tuple[Location, dict[str, Any] | DataError, Path]]:
    """(where, the raw row or its DataError, the folder its image paths resolve from)."""
    for source in paths:
        base = source_base_dir(source)
        for location, row in iter_source_rows(source, split=split):
            yield location, row, base


def keep_category(category: str | None, task: Task, cfg: SourcesConfig) -> bool:
    """Drop (understanding only) categories containing a `drop_categories` entry; then keep only
    `keep_categories` when set. Case-insensitive."""
    name = (category or "").lower()
    if task == "understanding" and any(d.lower() in name for d in cfg.drop_categories if d):
        return False
    if cfg.keep_categories is not None:
        return name in {k.lower() for k in cfg.keep_categories}
    return True


# --------------------------------------------------------------------------- one row


def to_record(
    row: dict[str, Any],
    model: type[UnderstandingSample] | type[GenerationSample],
    columns: dict[str, str],
    base: Path,
    location: Location,
    default_id: str,
    columns_of: Any = None,
) -> Any:
    """One raw row -> a validated record, or a DataError naming file, line/row and field (and,
    for a missing field, the columns the source does have)."""
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
    if payload.get("id") is None:
        payload["id"] = default_id
    payload["id"] = str(payload["id"])

    def error(field_name: str | None, reason: str) -> DataError:
        return DataError(
            location.path, location.index, field_name, reason, index_kind=location.kind
        )

    options = payload.get("options")
    if isinstance(options, str) and options.strip().startswith("["):
        try:
            options = payload["options"] = json.loads(options)
        except json.JSONDecodeError as err:
            raise error("options", f"not a JSON list of options ({err.msg})") from None
    if options is None:
        payload.pop("options", None)
    elif isinstance(options, list) and all(isinstance(o, str) for o in options):
        payload["options"] = strip_option_letters(options)
        if payload["options"] != options and isinstance(payload.get("answer"), str):
            payload["answer"] = _answer_letter(payload["answer"], options)
    if payload.get("image") is not None:
        try:
            payload["image"] = absolute_image(payload["image"], base)
        except ValidationError as err:
            problem = data_error_from_validation(err, None, None).reason
            reason = f"unusable image value: {problem}{_hint('image', columns)}"
            raise error("image", reason) from None
        except (ValueError, TypeError, OSError) as err:
            raise error("image", f"unusable image value: {err}{_hint('image', columns)}") from None
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        found = data_error_from_validation(err, location.path, location.index, location.kind)
        top = (found.field or "").split(".")[0]
        reason = found.reason + _hint(top, columns)
        if found.reason.startswith(MISSING):
            available = (columns_of(location.path) if columns_of else None) or sorted(row)
            reason += (
                f"; the source's columns are: {', '.join(sorted(available)) or 'none'}; map the "
                "right one with pairing.sources.columns"
            )
        else:
            reason += "; fix the data or map the right column with pairing.sources.columns"
        raise error(found.field, reason) from None


def _hint(field_name: str, columns: dict[str, str]) -> str:
    column = columns.get(field_name)
    return f" (source column {column!r})" if column and column != field_name else ""


def absolute_image(value: Any, base: Path) -> ImageRef:
    """An ImageRef whose path (if any) is absolute; PIL images become embedded PNG bytes."""
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return ImageRef(bytes=buffer.getvalue())
    ref = ImageRef.model_validate(value)
    if ref.data is None and ref.path is not None and not Path(ref.path).is_absolute():
        return ImageRef(path=str((base / ref.path).resolve()))
    return ref


# --------------------------------------------------------------------------- option letters

_LETTER_STYLES = (r"{L}\.\s+", r"{L}\)\s+", r"\({L}\)\s*", r"{L}:\s+")


def strip_option_letters(options: Sequence[str]) -> list[str]:
    """The options without the letters they already carry ("A. cat", "A) cat", "(A) cat",
    "A: cat"), when every option carries its own letter (A, B, C, ... in order, upper or lower
    case) in one style; otherwise the options as they are. Readers, writers and prompts then
    letter them once."""
    items = list(options)
    if len(items) < 2 or len(items) > len(OPTION_LETTERS):
        return items
    for style in _LETTER_STYLES:
        for letters in (OPTION_LETTERS, OPTION_LETTERS.lower()):
            stripped = []
            for letter, option in zip(letters, items, strict=False):
                found = re.match(style.format(L=letter), option.lstrip())
                if found is None:
                    break
                stripped.append(option.lstrip()[found.end() :].strip())
            if len(stripped) == len(items) and all(stripped):
                return stripped
    return items


def _answer_letter(answer: str, lettered_options: list[str]) -> str:
    """The answer to lettered options as a plain letter: "(B)", "B)", "b." or the whole option
    text "B. dog" become "B"; anything else is left as it is."""
    text = answer.strip()
    if text in [o.strip() for o in lettered_options]:
        return OPTION_LETTERS[[o.strip() for o in lettered_options].index(text)]
    found = re.fullmatch(r"\(?([A-Ja-j])\)?[.):]?", text)
    return found.group(1).upper() if found else answer


# --------------------------------------------------------------------------- checks


class _ImageChecker:
    """Reads and decodes each image once (a file shared by many records is checked once)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str | None, str | None]] = {}  # path -> (sha256, problem)
        self.embedded: dict[str, str | None] = {}  # sha256 -> problem

    def prefetch(self, refs: list[ImageRef | None]) -> None:
        """Check all these images now, on a thread pool."""
        paths = list(dict.fromkeys(r.path for r in refs if r is not None and r.data is None))
        paths = [p for p in paths if p is not None and p not in self.files]
        blobs = [r.data for r in refs if r is not None and r.data is not None]
        workers = min(16, os.cpu_count() or 1)
        if len(paths) + len(blobs) < 16 or workers == 1:
            verdicts = map(_check_file, paths)
            embedded = map(_check_bytes, blobs)
            self.files.update(zip(paths, verdicts, strict=True))
            self.embedded.update(embedded)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            self.files.update(zip(paths, pool.map(_check_file, paths), strict=True))
            self.embedded.update(pool.map(_check_bytes, blobs))

    def digest(self, ref: ImageRef | None, location: Location, columns: dict[str, str]) -> Any:
        """The sha256 of the image's encoded bytes, or a DataError naming the record's image
        field when it is missing or does not decode."""
        if ref is None:
            return None
        if ref.data is not None:
            digest = hashlib.sha256(ref.data).hexdigest()
            if digest not in self.embedded:
                self.embedded[digest] = image_problem(ref.data)
            problem = self.embedded[digest]
        else:
            assert ref.path is not None
            if ref.path not in self.files:
                self.files[ref.path] = _check_file(ref.path)
            digest, problem = self.files[ref.path]
        if problem is not None:
            raise DataError(
                location.path,
                location.index,
                "image",
                problem + _hint("image", columns),
                index_kind=location.kind,
            )
        return digest


def _check_file(path: str) -> tuple[str | None, str | None]:
    """(sha256 of the file, None) for a good image file, else (None, the problem)."""
    data, problem = read_image_file(Path(path))
    return (hashlib.sha256(data).hexdigest() if data is not None else None), problem


def _check_bytes(data: bytes) -> tuple[str, str | None]:
    """(sha256, the problem or None) of embedded image bytes."""
    return hashlib.sha256(data).hexdigest(), image_problem(data)


class _ColumnCache:
    def __init__(self) -> None:
        self.known: dict[Path, list[str] | None] = {}

    def __call__(self, path: Path) -> list[str] | None:
        if path not in self.known:
            self.known[path] = source_columns(path)
        return self.known[path]


def _dedup_key(task: Task, record: Any, digest: str | None) -> tuple[Any, ...]:
    """Exact duplicates share this key: the same image content and the same question and options
    (understanding) or prompt (generation), whitespace aside."""
    if task == "understanding":
        return (digest, _words(record.question), tuple(_words(o) for o in record.options))
    return (digest, _words(record.prompt))


def _words(text: str) -> str:
    return " ".join(text.split())


def _duplicate(record: Any, location: Location, first: Location, kept: Any) -> SkippedRecord:
    what = "image, question and options" if hasattr(record, "question") else "image and prompt"
    reason = (
        f"duplicate: the same {what} as {first.path}, {first.kind} {first.index} "
        f"(id {kept.id!r}), which is kept"
    )
    answer = getattr(record, "answer", None)
    if answer is not None and answer != kept.answer:
        reason += f", but a different answer {answer!r} (kept {kept.answer!r})"
    return SkippedRecord(location.index, None, reason, location.path, location.kind)


def _check_unique_id(record: Any, location: Location, first_ids: dict[str, Location]) -> None:
    first = first_ids.get(record.id)
    if first is not None:
        raise DataError(
            location.path,
            location.index,
            "id",
            f"duplicate id {record.id!r}, already used at {first.path}, {first.kind} "
            f"{first.index}; every record needs its own id (map an id column with "
            "pairing.sources.columns, or drop the column to number records by file and line)",
            index_kind=location.kind,
        )


def _common_root(paths: list[Path]) -> Path | None:
    """The deepest folder holding every source (a folder source counts with its own name)."""
    parents = [os.path.abspath(p.parent) for p in paths]
    if not parents:
        return None
    try:
        return Path(os.path.commonpath(parents))
    except ValueError:  # different drives
        return None


def _relative(path: Path, root: Path | None) -> str:
    """A record file's path for default ids: relative to the sources' common folder."""
    absolute = os.path.abspath(path)
    return Path(absolute if root is None else os.path.relpath(absolute, root)).as_posix()
