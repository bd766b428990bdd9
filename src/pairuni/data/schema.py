"""The records pairuni reads and writes: single-task samples, completed quadruples and UG pairs.

One record is one row of a JSONL or parquet file (see `pairuni.data.io` and docs/data-format.md).
Images are `ImageRef`s: a path relative to the file that holds the record, or embedded bytes.
Fields a schema does not name are kept (``extra="allow"``) and reach reward functions as columns,
e.g. a ShapesWorld scene graph or GenEval metadata.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

OPTION_LETTERS = "ABCDEFGHIJ"


class FieldValueError(ValueError):
    """A validation error found by a whole-record check that belongs to one field.

    Pydantic reports errors raised in a model validator at the record level; readers look up
    `field` (dotted, e.g. ``und_options.2``) so that the message names the field to fix.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ImageRef(BaseModel):
    """An image as a path (relative to the record's file, or absolute) or as embedded bytes.

    The same shape as the `Image` feature of HF datasets ({"bytes", "path"}), so parquet files
    written by `datasets` read as they are.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    data: bytes | None = Field(None, alias="bytes")

    @model_validator(mode="after")
    def _one_of(self) -> ImageRef:
        if self.path is None and self.data is None:
            raise ValueError("an image needs a `path` or `bytes`")
        if self.path == "":
            raise FieldValueError("path", "the image path is empty")
        return self

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return {"path": str(value)}
        if isinstance(value, dict) and isinstance(value.get("bytes"), str):
            try:
                # validate=True: a stray character is an error, not silently dropped bytes.
                data = base64.b64decode(value["bytes"], validate=True)
            except ValueError as err:
                raise FieldValueError(
                    "bytes", f"embedded image bytes are not valid base64 ({err})"
                ) from None
            return {**value, "bytes": data}
        return value

    @field_serializer("data", when_used="json")
    def _base64(self, data: bytes | None) -> str | None:
        """JSON has no bytes: embedded images are written as base64 text (read back above)."""
        return None if data is None else base64.b64encode(data).decode("ascii")

    def resolve(self, base_dir: Path | None) -> Path | None:
        """The file this reference points to, relative paths taken from `base_dir`."""
        if self.path is None:
            return None
        path = Path(self.path)
        return path if path.is_absolute() or base_dir is None else base_dir / path

    def read_bytes(self, base_dir: Path | None = None) -> bytes:
        if self.data is not None:
            return self.data
        path = self.resolve(base_dir)
        assert path is not None
        return path.read_bytes()

    def open(self, base_dir: Path | None = None) -> Any:
        """The image as an RGB `PIL.Image`."""
        from PIL import Image

        with Image.open(io.BytesIO(self.read_bytes(base_dir))) as img:
            return img.convert("RGB")

    def sha256(self, base_dir: Path | None = None) -> str:
        """Content hash of the encoded image file: the key for de-duplication and caches."""
        return hashlib.sha256(self.read_bytes(base_dir)).hexdigest()


class Record(BaseModel):
    """Base of every record: unknown fields are kept as extra columns."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _check_options(
    options: list[str], answer: str | None, options_field: str, answer_field: str
) -> None:
    """Multiple-choice consistency; errors name the offending field (e.g. `und_options.2`)."""
    if len(options) > len(OPTION_LETTERS):
        raise FieldValueError(
            options_field,
            f"{len(options)} options given, at most {len(OPTION_LETTERS)} are supported",
        )
    seen: dict[str, int] = {}
    for index, option in enumerate(options):
        if not option.strip():
            raise FieldValueError(f"{options_field}.{index}", "an option is empty")
        if option in seen:
            raise FieldValueError(
                f"{options_field}.{index}",
                f"option {option!r} repeats option {seen[option]}; options must be distinct",
            )
        seen[option] = index
    if options and answer is not None and answer not in OPTION_LETTERS[: len(options)]:
        letters = OPTION_LETTERS[: len(options)]
        raise FieldValueError(
            answer_field,
            f"answer {answer!r} is not one of the option letters {', '.join(letters)}; "
            "for multiple choice the answer is the letter of the correct option",
        )


class UnderstandingSample(Record):
    """(image, question, answer): a multiple-choice question when `options` is non-empty (the
    answer is then a letter A, B, ...), otherwise an open question with a free-form answer."""

    id: str = Field(min_length=1)
    image: ImageRef
    question: str = Field(min_length=1)
    options: list[str] = Field(default_factory=list)
    answer: str = Field(min_length=1)
    category: str | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _options(self) -> UnderstandingSample:
        _check_options(self.options, self.answer, "options", "answer")
        return self


class GenerationSample(Record):
    """(prompt, image): a text-to-image sample; the image is what the prompt describes."""

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    image: ImageRef | None = None
    category: str | None = None
    source: str | None = None


class Quadruple(Record):
    """(image, prompt, question, answer): a sample completed across modalities.

    `origin` says which half is real: an understanding sample gained a `prompt` (a caption), a
    generation sample gained a `question`/`options`/`answer`.
    """

    id: str = Field(min_length=1)
    origin: Literal["understanding", "generation"]
    image: ImageRef
    prompt: str = Field(min_length=1)
    question: str = Field(min_length=1)
    options: list[str] = Field(default_factory=list)
    answer: str = Field(min_length=1)
    category: str | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _options(self) -> Quadruple:
        _check_options(self.options, self.answer, "options", "answer")
        return self


class Pair(Record):
    """One understanding-generation pair: a generation prompt and an understanding question.

    Aligned pairs are one completed quadruple (same instance on both sides, weight 1); retrieved
    pairs join a generation sample to the most similar remaining understanding sample, with
    cosine similarity `similarity` (s_p) of their image features.
    """

    pair_id: str = Field(min_length=1)
    kind: Literal["aligned", "retrieved"]
    similarity: float | None = None
    """s_p for retrieved pairs (cosine of image features, in [0, 1]); 1.0 for aligned pairs."""
    weight: float | None = None
    """w_p as written by the builder (1 for aligned, sqrt(s_p) for retrieved by default). The
    trainer recomputes it from `similarity` under its `algo.pair_weighting`."""

    gen_prompt: str = Field(min_length=1)
    gen_image: ImageRef | None = None
    """The image of the generation side (the generation sample's own), for inspection only."""
    gen_source_id: str | None = None

    und_image: ImageRef
    und_question: str = Field(min_length=1)
    und_options: list[str] = Field(default_factory=list)
    und_answer: str = Field(min_length=1)
    und_source_id: str | None = None

    category: str | None = None

    @field_validator("similarity", "weight")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Pair:
        _check_options(self.und_options, self.und_answer, "und_options", "und_answer")
        if self.kind == "aligned":
            if self.similarity is None:
                self.similarity = 1.0
            if self.weight is None:
                self.weight = 1.0
            if self.weight != 1.0:
                raise FieldValueError(
                    "weight", f"an aligned pair has weight 1, got {self.weight}; omit `weight`"
                )
        elif self.similarity is None:
            raise FieldValueError(
                "similarity",
                "a retrieved pair needs its `similarity` (s_p, the cosine of the two images' "
                "features, in [0, 1])",
            )
        if not 0.0 <= self.similarity <= 1.0:
            raise FieldValueError(
                "similarity", f"similarity must be in [0, 1], got {self.similarity}"
            )
        if self.weight is None:
            self.weight = math.sqrt(self.similarity)
        if not 0.0 <= self.weight <= 1.0:
            raise FieldValueError("weight", f"weight must be in [0, 1], got {self.weight}")
        return self
