"""The user text of an understanding turn, the same for every backend: the question, its
options lettered A., B., ... one per line, placed into `rollout.und_prompt_template`."""

from __future__ import annotations

from collections.abc import Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def format_question(question: str, options: Sequence[str] | None, template: str) -> str:
    """`template` with `{question}` replaced by the question and its lettered options."""
    if options and len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options for {question!r}; at most 26 get letters")
    if options:
        question += "\n" + "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options))
    return template.replace("{question}", question)
