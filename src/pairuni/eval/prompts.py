"""What the model is asked: one work item per sample, its prompt text and its images.

Understanding prompts follow VLMEvalKit's prompts for Janus (vlmeval/vlm/janus.py), the harness
behind most published Janus-Pro understanding numbers; MMMU keeps its official prompt
(`MMMUSample.prompt`), or VLMEvalKit's (`mmmu_vlmevalkit_prompt`) under `eval.protocol:
vlmevalkit`. With `eval.answer_format: rl` the benchmark's own answer instruction is
left out: the question (with its options, one per line, as in training) goes under
`eval.rl_prompt_template`, which the policy applies (see `generation.rollout_config_for`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from pairuni.eval.layout import ImageRef

if TYPE_CHECKING:
    from pairuni.eval.config import EvalConfig

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
POPE_BUILT_IN_INSTRUCTION = " Please answer yes or no."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass(frozen=True)
class UnderstandingItem:
    """One question to answer: its id, its image(s) and the full prompt text."""

    id: str
    images: tuple[ImageRef, ...]
    question: str


@dataclasses.dataclass(frozen=True)
class GenerationItem:
    """One prompt to draw."""

    id: str
    prompt: str


def rl_format(cfg: EvalConfig | None) -> bool:
    return cfg is not None and cfg.answer_format == "rl"


def with_options(question: str, options: Sequence[str]) -> str:
    """The question and `A. text` lines, as the trainer's policy shows them."""
    if not options:
        return question.strip()
    lines = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))
    return f"{question.strip()}\n{lines}"


def mmmu_item(sample: Any, cfg: EvalConfig | None = None) -> UnderstandingItem:
    """MMMU's official prompt, VLMEvalKit's under `eval.protocol: vlmevalkit`, or the bare
    question and options under `answer_format: rl`."""
    from pairuni.eval.mmmu import mmmu_vlmevalkit_prompt

    if rl_format(cfg):
        question = with_options(sample.question, sample.options)
    elif cfg is not None and cfg.protocol == "vlmevalkit":
        question = mmmu_vlmevalkit_prompt(sample)
    else:
        question = sample.prompt()
    return UnderstandingItem(sample.id, tuple(sample.images), question)


def mmstar_question(question: str, options: Mapping[str, str]) -> str:
    """VLMEvalKit's multiple-choice prompt: the stem, `A. text` lines, the letter instruction.

    MMStar embeds its options in the question (`Options: A: ..., B: ...`); they are parsed out and
    listed one per line, as VLMEvalKit does from its option columns.
    """
    if not options:
        return f"{question.strip()}\n{MC_INSTRUCTION}"
    stem = question.rpartition("Options:")[0].strip()
    lines = "".join(f"{letter}. {text}\n" for letter, text in sorted(options.items()))
    return f"{stem}\n{lines}\n{MC_INSTRUCTION}"


def mmstar_item(sample: Any, cfg: EvalConfig | None = None) -> UnderstandingItem:
    if rl_format(cfg):
        stem = sample.question.rpartition("Options:")[0].strip() or sample.question
        options = [text for _, text in sorted(sample.options.items())]
        return UnderstandingItem(sample.id, (sample.image,), with_options(stem, options))
    question = mmstar_question(sample.question, sample.options)
    return UnderstandingItem(sample.id, (sample.image,), question)


def mme_item(sample: Any, cfg: EvalConfig | None = None) -> UnderstandingItem:
    # MME's questions end with "Please answer yes or no."; VLMEvalKit keeps it for MME.
    if rl_format(cfg):
        return UnderstandingItem(sample.id, (sample.image,), sample.question.strip())
    question = f"{sample.question}\n{SHORT_ANSWER_INSTRUCTION}"
    return UnderstandingItem(sample.id, (sample.image,), question)


def pope_item(sample: Any, cfg: EvalConfig | None = None) -> UnderstandingItem:
    question = sample.question.replace(POPE_BUILT_IN_INSTRUCTION, "")
    if rl_format(cfg):
        return UnderstandingItem(sample.id, (sample.image,), question.strip())
    return UnderstandingItem(sample.id, (sample.image,), f"{question}\n{SHORT_ANSWER_INSTRUCTION}")


def compose_images(images: Sequence[Image.Image]) -> Image.Image:
    """One image for a question with several (MMMU): side by side at the tallest one's height,
    on white. The policy takes one image per question; the `<image k>` tags stay in the text."""
    if len(images) == 1:
        return images[0]
    height = max(im.height for im in images)
    scaled = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height), (255, 255, 255))
    left = 0
    for im in scaled:
        canvas.paste(im.convert("RGB"), (left, 0))
        left += im.width
    return canvas
