"""The toy rewards of the tiny smoke run (`configs/tiny.yaml`, `pairuni tiny-demo`), registered as
`toy_letter_fraction` and `toy_redness`. They exist to give a random model's groups some reward
variance; do not use them for anything else."""

from __future__ import annotations

from typing import Any

from pairuni.rewards.base import register_reward


@register_reward("toy_letter_fraction", task="understanding")
def letter_fraction(
    prompts: list[str], completions: list[str], **columns: Any
) -> list[float | None]:
    """The fraction of an answer's characters that are ASCII letters (0 for an empty answer). A
    random model never answers a question right, so accuracy alone gives every group zero
    variance; this gives the smoke run something to learn."""
    return [
        sum(c.isascii() and c.isalpha() for c in text) / max(len(text), 1) for text in completions
    ]


@register_reward("toy_redness", task="generation")
def redness(prompts: list[str], completions: list[Any], **columns: Any) -> list[float | None]:
    """Mean red minus mean green/blue of the image, in [-1, 1]. (A random VQ decoder barely
    varies its images, so this moves little; it exercises the path.)"""
    import numpy as np

    out: list[float | None] = []
    for image in completions:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        out.append(float(pixels[..., 0].mean() - pixels[..., 1:].mean()))
    return out
