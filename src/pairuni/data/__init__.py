"""Records (understanding / generation samples, quadruples, UG pairs) and their files.

See docs/data-format.md for the format and `pairuni.data.io` for reading and writing.
"""

from pairuni.data.errors import DataError, SkippedRecord
from pairuni.data.images import check_images, image_fields
from pairuni.data.io import (
    JsonlAppender,
    Location,
    RecordSet,
    atomic_output,
    read_records,
    write_records,
)
from pairuni.data.schema import (
    OPTION_LETTERS,
    FieldValueError,
    GenerationSample,
    ImageRef,
    Pair,
    Quadruple,
    Record,
    UnderstandingSample,
)

__all__ = [
    "OPTION_LETTERS",
    "DataError",
    "FieldValueError",
    "GenerationSample",
    "ImageRef",
    "JsonlAppender",
    "Location",
    "Pair",
    "Quadruple",
    "Record",
    "RecordSet",
    "SkippedRecord",
    "UnderstandingSample",
    "atomic_output",
    "check_images",
    "image_fields",
    "read_records",
    "write_records",
]
