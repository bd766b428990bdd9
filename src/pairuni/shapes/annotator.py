"""The ShapesWorld oracle as a `pairuni pairs complete` annotator (`pairing.complete.backend:
oracle`): it completes each record exactly from its `scene`, with no requests.

The pairing core names it by module path (`pairing.annotators.ANNOTATORS`) and never imports the
miniature.
"""

from __future__ import annotations

from typing import Any

from pairuni.pairing.annotators import Outcome, RequestStats, Task
from pairuni.shapes.oracle import OracleAnnotator


class OracleAdapter:
    """The ShapesWorld oracle (`pairuni.shapes.oracle.OracleAnnotator`) as an Annotator."""

    def __init__(self, seed: int = 0) -> None:
        self.oracle = OracleAnnotator(seed=seed)
        self.name = "shapes-oracle"
        self.version = "oracle-2"
        self.stats = RequestStats()  # no requests
        self.endpoint = "the ShapesWorld oracle"

    def template_version(self, task: Task) -> str:
        return self.version

    def settings(self, task: Task) -> dict[str, Any]:
        return {"annotator": self.name, "version": self.version}

    async def complete(self, task: Task, record: dict[str, Any], image: bytes | None) -> Outcome:
        try:
            if task == "understanding":
                done = self.oracle.complete_understanding(record)
            else:
                done = self.oracle.complete_generation(record)
        except (KeyError, ValueError, TypeError) as err:
            return Outcome(fields=None, reason=f"oracle cannot complete the record: {err}")
        # the caption's GenEval metadata lets the generation reward score images drawn for it
        keys = (
            ("prompt", "geneval") if task == "understanding" else ("question", "options", "answer")
        )
        return Outcome(fields={k: done[k] for k in keys})
