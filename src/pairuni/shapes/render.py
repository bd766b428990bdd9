"""Draw a ShapesWorld scene to a small RGB image (numpy / PIL only).

Shapes are drawn at `supersample` times the target resolution and box-filtered down, so edges
are anti-aliased the same way at 32 and 64 px. Every shape fills its square bounding box:
the circle is inscribed, the triangle points up with its base on the bottom edge, the cross's
arms are a third of the side wide.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pairuni.shapes.scene import BACKGROUND, COLORS, Scene

CROSS_ARM = 1 / 3
"""Width of the cross's arms as a fraction of its side."""


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """The outline of a polygonal shape filling `box` (x0, y0, x1, y1), in drawing order."""
    x0, y0, x1, y1 = box
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    if shape == "cross":
        w, h = x1 - x0, y1 - y0
        ax0, ax1 = x0 + w * (1 - CROSS_ARM) / 2, x0 + w * (1 + CROSS_ARM) / 2
        ay0, ay1 = y0 + h * (1 - CROSS_ARM) / 2, y0 + h * (1 + CROSS_ARM) / 2
        return [
            (ax0, y0), (ax1, y0), (ax1, ay0), (x1, ay0), (x1, ay1), (ax1, ay1),
            (ax1, y1), (ax0, y1), (ax0, ay1), (x0, ay1), (x0, ay0), (ax0, ay0),
        ]  # fmt: skip
    raise ValueError(f"no polygon for shape {shape!r}")


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    box: tuple[float, float, float, float],
    fill: tuple[int, int, int] | int,
) -> None:
    """Fill `shape` into pixel box (x0, y0, x1, y1), x1/y1 exclusive."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        # PIL's ellipse box is inclusive of its last pixel, hence the -1.
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:
        draw.polygon(shape_polygon(shape, (x0, y0, x1 - 1, y1 - 1)), fill=fill)


def render_scene(scene: Scene, size: int = 32, supersample: int = 4) -> np.ndarray:
    """Render `scene` to a `(size, size, 3)` uint8 RGB array.

    Supersampling by 4 and box-filtering gives anti-aliased edges; `supersample=1` draws hard
    pixel edges.
    """
    if size < 16:
        raise ValueError(f"image size {size} is too small to draw shapes; use 32 or more")
    big = size * supersample
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        box = tuple(round(v * big) for v in obj.box)
        draw_shape(draw, obj.shape, box, COLORS[obj.color])  # type: ignore[arg-type]
    if supersample > 1:
        canvas = canvas.reduce(supersample)
    return np.asarray(canvas, dtype=np.uint8).copy()


def render_image(scene: Scene, size: int = 32) -> Image.Image:
    """`render_scene` as a PIL image (for saving and for reward functions)."""
    return Image.fromarray(render_scene(scene, size))


def shape_mask(shape: str, side: int = 64) -> np.ndarray:
    """The ideal binary mask `(side, side)` of `shape` filling the whole square (for templates)."""
    canvas = Image.new("L", (side, side), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, (0, 0, side, side), 255)
    return np.asarray(canvas) > 127
