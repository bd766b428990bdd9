"""The error of an evaluation run that cannot start or go on."""

from __future__ import annotations


class EvalSetupError(ValueError):
    """A run that cannot start or go on; the message names the option or config key to fix."""
