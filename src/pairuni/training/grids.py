"""A grid of a step's generated images, each captioned with its prompt and reward."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

CELL = 128  # pixels a side; tiny-model images are upscaled so captions stay readable
CAPTION_LINES = 3


def captioned_grid(
    images: Sequence[Image.Image], prompts: Sequence[str], rewards: Sequence[float]
) -> Image.Image:
    """Tile images (resized to CELL px) with `prompt` and `reward` under each, row by row."""
    from PIL import Image, ImageDraw

    if not images or len(images) != len(prompts) or len(images) != len(rewards):
        raise ValueError(
            f"captioned_grid needs as many prompts and rewards as images, got {len(images)} "
            f"images, {len(prompts)} prompts, {len(rewards)} rewards"
        )
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    line_height = 11
    cell_height = CELL + line_height * (CAPTION_LINES + 1)
    canvas = Image.new("RGB", (columns * CELL, rows * cell_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for index, (image, prompt, reward) in enumerate(zip(images, prompts, rewards, strict=True)):
        row, col = divmod(index, columns)
        x, y = col * CELL, row * cell_height
        canvas.paste(image.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST), (x, y))
        lines = textwrap.wrap(prompt, width=CELL // 6)[:CAPTION_LINES]
        lines.append(f"r = {reward:.3f}")
        for k, text in enumerate(lines):
            draw.text((x + 2, y + CELL + k * line_height), text, fill=(0, 0, 0))
    return canvas
