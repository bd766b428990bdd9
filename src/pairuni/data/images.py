"""Image references in records: finding them, moving them between files, checking them.

A record's images are `ImageRef`s: a path (relative to the folder of the file holding the record,
or absolute) or embedded bytes. Writers re-home relative paths (`keep`), embed the bytes (`embed`)
or copy the files next to the output (`copy`); `check_images` verifies that every referenced
image exists and decodes, naming file, line and field.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union, get_args, get_origin

from pairuni.data.errors import DataError, SkippedRecord
from pairuni.data.schema import ImageRef, Record

if TYPE_CHECKING:
    from pairuni.data.io import RecordSet

ImageMode = Literal["keep", "embed", "copy"]
IMAGE_MODES: tuple[str, ...] = get_args(ImageMode)

# Where record i came from, for error messages: a function of the record's position.
Locate = Callable[[int], tuple[Path | None, int, str]]


def is_image_annotation(annotation: object) -> bool:
    """True for `ImageRef` and `ImageRef | None`."""
    if annotation is ImageRef:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return any(is_image_annotation(arg) for arg in get_args(annotation))
    return False


@functools.cache
def image_fields(model: type[Record]) -> tuple[str, ...]:
    """Names of the model's fields that hold an `ImageRef`, in declaration order (cached: it
    is asked for every record written)."""
    return tuple(
        name for name, info in model.model_fields.items() if is_image_annotation(info.annotation)
    )


def rehome_images(
    records: Iterable[Record],
    mode: ImageMode,
    *,
    base_dir: Path,
    out_dir: Path,
    image_dir: str,
    locate: Locate,
) -> Iterator[Record]:
    """The records with their image references made valid for a file written in `out_dir`.

    `base_dir` is the folder relative paths are taken from now. `keep` rewrites relative paths
    to be relative to `out_dir` (absolute paths and embedded images are unchanged); `embed`
    reads every path-only image into the record (its `path` becomes the file name, as in HF
    datasets); `copy` copies path-only images into ``out_dir / image_dir`` (a name already
    used by a different file there gets a content-hash suffix) and points the records at them.
    Records whose images do not change are yielded as they are (no copy). Lazy: a writer can
    stream records through it.
    """
    if mode not in IMAGE_MODES:
        raise ValueError(f"images={mode!r} is not one of {', '.join(IMAGE_MODES)}")
    if mode == "keep" and os.path.abspath(base_dir) == os.path.abspath(out_dir):
        yield from records  # same folder: every reference already resolves
        return
    copier = _Copier(out_dir, image_dir) if mode == "copy" else None
    for position, record in enumerate(records):
        updates: dict[str, ImageRef] = {}
        for name in image_fields(type(record)):
            ref = getattr(record, name)
            if ref is None or ref.data is not None:
                continue  # nothing to move: embedded bytes travel with the record
            try:
                updates[name] = _rehome(ref, mode, base_dir, out_dir, copier)
            except OSError as err:
                path, index, kind = locate(position)
                source = ref.resolve(base_dir)
                reason = f"cannot read image {source}: {err.strerror or err}"
                raise DataError(path, index, name, reason, index_kind=kind) from err  # type: ignore[arg-type]
        yield record.model_copy(update=updates) if updates else record


def _rehome(
    ref: ImageRef, mode: ImageMode, base_dir: Path, out_dir: Path, copier: _Copier | None
) -> ImageRef:
    source = ref.resolve(base_dir)
    assert source is not None
    if mode == "embed":
        return ImageRef.model_validate({"bytes": source.read_bytes(), "path": source.name})
    if mode == "copy":
        assert copier is not None
        return ImageRef(path=copier.copy(source))
    if Path(ref.path or "").is_absolute():
        return ref
    relative = os.path.relpath(os.path.abspath(source), os.path.abspath(out_dir))
    return ImageRef(path=Path(relative).as_posix())


class _Copier:
    """Copies image files into one folder once each, with collision-free names."""

    def __init__(self, out_dir: Path, image_dir: str) -> None:
        self.out_dir = out_dir
        self.image_dir = Path(image_dir)
        if self.image_dir.is_absolute() or ".." in self.image_dir.parts:
            raise ValueError(
                f"image_dir={image_dir!r} must be a folder inside the output's folder, "
                "e.g. 'images'"
            )
        self.done: dict[Path, str] = {}  # source (absolute) -> path written in records
        self.taken: dict[str, Path] = {}  # destination name -> its source

    def copy(self, source: Path) -> str:
        key = Path(os.path.abspath(source))
        if key in self.done:
            return self.done[key]
        data = source.read_bytes()
        name = source.name
        target = self.out_dir / self.image_dir / name
        if self._clashes(name, key, target, data):
            digest = hashlib.sha256(data).hexdigest()[:12]
            name = f"{source.stem}-{digest}{source.suffix}"
            target = self.out_dir / self.image_dir / name
        if not (target.exists() and target.read_bytes() == data):
            _atomic_write_bytes(target, data)
        self.taken[name] = key
        self.done[key] = (self.image_dir / name).as_posix()
        return self.done[key]

    def _clashes(self, name: str, source: Path, target: Path, data: bytes) -> bool:
        if name in self.taken:
            return self.taken[name] != source
        # A file left there by an earlier write with other content may be used by another file.
        return target.exists() and target.read_bytes() != data


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def check_images(
    recordset: RecordSet,
    fields: Sequence[str] | None = None,
    *,
    on_bad_record: Literal["error", "skip"] = "error",
    progress: bool | None = None,
) -> RecordSet:
    """Verify that every referenced image exists and decodes (fully, not just its header).

    Args:
        recordset: what `read_records` returned; relative paths resolve from its `base_dir`.
        fields: image fields to check; default: every `ImageRef` field of the records.
        on_bad_record: ``"error"`` raises a `DataError` naming file, line/row and field;
            ``"skip"`` drops the record and counts it in the result's `skipped`.
        progress: show a progress bar (None: only on a terminal).

    Returns:
        `recordset` itself when every image is good, else (skip mode) a copy without the bad
        records.
    """
    import dataclasses

    from tqdm.auto import tqdm

    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record={on_bad_record!r} is not 'error' or 'skip'")
    if not recordset.records:
        return recordset
    names = list(fields) if fields is not None else image_fields(type(recordset.records[0]))
    unknown = [n for n in names if n not in type(recordset.records[0]).model_fields]
    if unknown:
        raise ValueError(f"check_images: no field(s) {', '.join(unknown)} in the records")
    verdicts: dict[Path, str | None] = {}  # a file shared by many records is decoded once
    keep: list[int] = []
    skipped: list[SkippedRecord] = []
    bar = tqdm(recordset.records, desc="checking images", unit="rec", disable=_no_bar(progress))
    for position, record in enumerate(bar):
        problem = _first_problem(record, names, recordset.base_dir, verdicts)
        if problem is None:
            keep.append(position)
            continue
        field, reason = problem
        path, index, kind = recordset.locate(position)
        error = DataError(path, index, field, reason, index_kind=kind)  # type: ignore[arg-type]
        if on_bad_record == "error":
            raise error
        skipped.append(SkippedRecord.from_error(error))
    if not skipped:
        return recordset
    return dataclasses.replace(
        recordset,
        records=[recordset.records[i] for i in keep],
        locations=[recordset.locations[i] for i in keep],
        skipped=[*recordset.skipped, *skipped],
    )


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _first_problem(
    record: Record, names: Sequence[str], base_dir: Path, verdicts: dict[Path, str | None]
) -> tuple[str, str] | None:
    for name in names:
        ref = getattr(record, name)
        if ref is None:
            continue
        if ref.data is not None:
            problem = _decode_problem(ref.data, "the embedded image")
        else:
            source = ref.resolve(base_dir)
            assert source is not None
            if source not in verdicts:
                verdicts[source] = _file_problem(source)
            problem = verdicts[source]
        if problem is not None:
            return name, problem
    return None


def _file_problem(source: Path) -> str | None:
    return read_image_file(source)[1]


def read_image_file(source: Path) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None) when it exists and decodes fully as an image, else (None, why
    not): missing, unreadable, or not an image. Readers use it to check an image once."""
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        return None, f"image file {source} does not exist"
    except IsADirectoryError:
        return None, f"image path {source} is a folder, not an image file"
    except OSError as err:
        return None, f"cannot read image file {source}: {err.strerror or err}"
    problem = _decode_problem(data, f"image file {source}")
    return (None, problem) if problem is not None else (data, None)


def image_problem(data: bytes, what: str = "the embedded image") -> str | None:
    """Why encoded image bytes do not decode (fully, not just the header), or None."""
    return _decode_problem(data, what)


def _decode_problem(data: bytes, what: str) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes the pixels: a truncated file fails here, not at open()
    except UnidentifiedImageError:
        return f"{what} cannot be decoded as an image (not a known image format)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{what} cannot be decoded as an image ({err})"
    return None
