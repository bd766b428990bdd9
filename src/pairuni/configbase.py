"""The base class of every config section.

Each room of the code defines its own section (`rl/config.py`, `policy/config.py`, ...) and
`pairuni.config` composes them into the root config. A field's docstring is its reference
documentation: `pairuni config docs` renders them to docs/config.md.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A group of config keys. Unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        validate_default=True,
    )
