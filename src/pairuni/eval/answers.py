"""What a reply answers, before a benchmark's own parser reads it.

A model trained by pairuni writes the paper's format, `<think>…</think><answer>X</answer>`
(Fig. 9). The official parsers read the whole reply, so they would look for "yes" or an option
letter in the reasoning, or find nothing. With `eval.answer_span: auto` (the default) every
scorer first reduces a reply to its answer:

- the last complete `<answer>…</answer>` span, when there is one;
- else, after an opening `<answer>` that never closed (the reply was cut by max_new_tokens),
  the text after it;
- else the reply with its `<think>…</think>` blocks (and an unclosed final `<think>`) removed.

A plain reply ("B", "Yes, there is.") passes unchanged, so plain answers score exactly as before.
`off` hands the reply to the parser as it is (the official scripts' behaviour).
"""

from __future__ import annotations

import re
from typing import Literal

AnswerSpan = Literal["auto", "off"]
ANSWER_SPANS: tuple[str, ...] = ("auto", "off")

_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


def answer_text(reply: str, mode: AnswerSpan = "auto") -> str:
    """The part of `reply` a benchmark's parser should read (see the module docstring)."""
    if mode == "off":
        return reply
    if mode != "auto":
        raise ValueError(f"answer span mode must be one of {', '.join(ANSWER_SPANS)}, got {mode!r}")
    spans = _SPAN.findall(reply)
    if spans:
        return spans[-1].strip()
    opened = list(_OPEN.finditer(reply))
    if opened:
        return reply[opened[-1].end() :].strip()
    return _THINK.sub(" ", reply).strip()


def has_answer_span(reply: str) -> bool:
    """Whether the reply is in the RL format (has an `<answer>` tag)."""
    return _OPEN.search(reply) is not None
