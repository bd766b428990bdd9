"""Pixel tensors to PIL images, and image grids for the `generate` command."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, H, W, 3) values in [-1, 1] (the VQ decoder's range) -> B RGB images.

    The mapping is (x + 1) * 127.5, rounded and clamped, the same as DeepSeek's (x + 1) / 2 * 255.
    """
    from PIL import Image

    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) pixels, got shape {tuple(pixels.shape)}")
    data = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to("cpu").byte().numpy()
    return [Image.fromarray(row, mode="RGB") for row in data]


def make_grid(
    images: Sequence[Image.Image], columns: int | None = None, gap: int = 2
) -> Image.Image:
    """Tile images (all the size of the first) row by row on a white canvas.

    `columns` defaults to ceil(sqrt(n)), so 8 images make a 3 x 3 grid with one empty cell.
    """
    from PIL import Image

    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    canvas = Image.new(
        "RGB",
        (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap),
        (255, 255, 255),
    )
    for i, image in enumerate(images):
        row, col = divmod(i, columns)
        canvas.paste(
            image.convert("RGB").resize((width, height)),
            (col * (width + gap), row * (height + gap)),
        )
    return canvas
