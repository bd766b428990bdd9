"""Errors about data files that say where the problem is: file, line (or row) and field.

JSONL records are numbered by 1-based line (what an editor shows), parquet records by 0-based
row (what pyarrow and pandas show); the message says which ("line 7" / "row 6"). Records handed
to a writer in memory are numbered by 0-based position ("record 3").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

IndexKind = Literal["line", "row", "record"]

_MAX_INPUT_REPR = 60


class DataError(ValueError):
    """A data file (or record) that cannot be used, and where.

    Attributes:
        path: the file the record came from (or is written to).
        index: 1-based line for JSONL, 0-based row for parquet, 0-based position for in-memory
            records (`index_kind` says which); None for a whole-file problem.
        field: dotted field path, e.g. ``und_options.2``; None when the record as a whole is bad
            (invalid JSON, not an object).
        reason: the message without the location prefix.
    """

    def __init__(
        self,
        path: Path | str | None,
        index: int | None,
        field: str | None,
        reason: str,
        *,
        index_kind: IndexKind = "line",
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.index = index
        self.field = field
        self.reason = reason
        self.index_kind = index_kind
        super().__init__(format_location(self.path, index, field, index_kind) + reason)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle by their args; ours has more state (multiprocessing, pytest-xdist).
        return (
            _rebuild_data_error,
            (self.path, self.index, self.field, self.reason, self.index_kind),
        )


def _rebuild_data_error(
    path: Path | None, index: int | None, field: str | None, reason: str, index_kind: IndexKind
) -> DataError:
    return DataError(path, index, field, reason, index_kind=index_kind)


def format_location(
    path: Path | None, index: int | None, field: str | None, index_kind: IndexKind = "line"
) -> str:
    """``"pairs.jsonl, line 7, field und_answer: "`` (parts that are None are left out)."""
    parts = [] if path is None else [str(path)]
    if index is not None:
        parts.append(f"{index_kind} {index}")
    if field is not None:
        parts.append(f"field {field}")
    return ", ".join(parts) + ": " if parts else ""


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out because the caller asked to skip bad records.

    `index` is numbered like `DataError.index` (line for JSONL, row for parquet); `path` is the
    file (useful for a directory of shards); `field` is None for record-level problems.
    """

    index: int
    field: str | None
    reason: str
    path: Path | None = None
    index_kind: IndexKind = "line"

    @classmethod
    def from_error(cls, error: DataError) -> SkippedRecord:
        assert error.index is not None, "whole-file errors cannot be skipped"
        return cls(error.index, error.field, error.reason, error.path, error.index_kind)

    def __str__(self) -> str:
        return format_location(self.path, self.index, self.field, self.index_kind) + self.reason


def field_errors(error: ValidationError) -> list[tuple[str | None, str]]:
    """(dotted field, readable message) for each error pydantic found in one record.

    Errors raised by whole-record checks carry their field on the exception
    (`pairuni.data.schema.FieldValueError`); pydantic's own location is used otherwise.
    """
    found: list[tuple[str | None, str]] = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, BaseException) and isinstance(getattr(cause, "field", None), str):
            loc.append(cause.field)  # type: ignore[attr-defined]
        field = ".".join(loc) or None
        found.append((field, _readable(item, cause)))
    return found


def _readable(item: Any, cause: object) -> str:
    kind = item["type"]
    if kind == "missing":
        return "required field is missing"
    if kind in ("value_error", "assertion_error") and isinstance(cause, BaseException):
        return str(cause)
    value = item.get("input")
    shown = repr(value)
    if len(shown) > _MAX_INPUT_REPR:
        shown = shown[: _MAX_INPUT_REPR - 3] + "..."
    return f"{item['msg']}, got {shown} ({type(value).__name__})"


def data_error_from_validation(
    error: ValidationError, path: Path | None, index: int | None, index_kind: IndexKind = "line"
) -> DataError:
    """One DataError for a record: the first problem, and how many more there are."""
    errors = field_errors(error)
    field, reason = errors[0]
    if len(errors) > 1:
        others = ", ".join(str(f) for f, _ in errors[1:4]) + (", ..." if len(errors) > 4 else "")
        reason += f" (and {len(errors) - 1} more problem(s), in: {others})"
    return DataError(path, index, field, reason, index_kind=index_kind)
