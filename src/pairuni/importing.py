"""Objects named by `"module:attribute"` paths, imported on first use.

The registries (policy backends, the GenEval detectors, the annotators) name their entries this
way, so that `pairuni --help` stays instant and the core never imports an optional part (the
ShapesWorld miniature, a backend's heavy dependencies) until a config selects it.
"""

from __future__ import annotations

import importlib
from typing import Any


def import_object(spec: str) -> Any:
    """The attribute `attribute` of module `module` for `spec` = "module:attribute"."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{spec!r} is not a 'module:attribute' path")
    return getattr(importlib.import_module(module), name)
