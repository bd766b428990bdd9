"""Read the objects of a ShapesWorld image back: colour segmentation, components, shape class.

1. Foreground: pixels whose chroma (max - min of R, G, B) is at least `chroma_fraction` of the
   palette's chroma. The background is grey (chroma 0), every palette colour is saturated.
2. Connected components of the foreground (8-connectivity, by iterated min-label propagation
   in numpy); components smaller than `min_area_fraction` of the image are noise and dropped,
   and so are components wider or taller than `max_extent_fraction` of the image: no
   ShapesWorld object is that big, and counting a canvas-filling blob as "a red square" would
   let a generator hack the GenEval reward.
3. Colour: the palette hue nearest to each pixel's hue, majority vote over the component.
4. Shape: the component's mask, resampled exactly (area coverage) onto a G x G grid spanning its
   bounding box, is compared with each shape's ideal mask (sharp, and slightly blurred) on the
   same grid; the nearest (mean squared difference) wins. Bounding-box normalisation makes this
   scale-free.
5. Size class: the bounding box side against the midpoint of the small and large sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageFilter

from pairuni.shapes.render import shape_mask
from pairuni.shapes.scene import COLOR_HUES, COLOR_SATURATION, COLOR_VALUE, SHAPES, SIZES

GRID = 8
"""Side of the grid a component's mask is resampled to before template matching."""


@dataclass(frozen=True)
class DetectorParams:
    """Thresholds of the detector (defaults tuned on clean, noisy and blurred renderings)."""

    chroma_fraction: float = 0.4
    """A pixel is foreground when its chroma is at least this fraction of the palette chroma."""

    min_area_fraction: float = 0.004
    """Components with fewer pixels than this fraction of the image are noise (4 px at 32 px;
    the smallest object, a small triangle, covers about 0.02 of the image)."""

    max_extent_fraction: float = 0.45
    """Components whose bounding box is wider or taller than this fraction of the image side are
    not objects (the largest object spans 0.3; the margin absorbs blur)."""


@dataclass(frozen=True)
class DetectedObject:
    """One object read from an image; coordinates in pixels, bbox (x0, y0, x1, y1) exclusive."""

    color: str
    shape: str
    size: str
    center: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: int


PALETTE_CHROMA = 255 * COLOR_VALUE * COLOR_SATURATION
_HUE_NAMES = list(COLOR_HUES)
_HUE_CENTRES = np.array([COLOR_HUES[n] for n in _HUE_NAMES])


def detect_objects(image: np.ndarray, params: DetectorParams | None = None) -> list[DetectedObject]:
    """All objects in an RGB image `(H, W, 3)` uint8, largest first (ties: top-left first)."""
    params = params or DetectorParams()
    rgb = _check_image(image).astype(np.float32)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    foreground = chroma >= params.chroma_fraction * PALETTE_CHROMA
    labels = label_components(foreground)
    hue_index = nearest_hue(rgb)
    min_area = params.min_area_fraction * foreground.size
    max_extent = params.max_extent_fraction * max(foreground.shape)
    found = []
    for label in np.unique(labels[labels >= 0]):
        mask = labels == label
        if mask.sum() >= min_area and _extent(mask) <= max_extent:
            found.append(_describe(mask, hue_index, image.shape[1]))
    return sorted(found, key=lambda o: (-o.area, o.bbox[1], o.bbox[0]))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}; "
            "convert with np.asarray(pil_image.convert('RGB'))"
        )
    return image


def label_components(mask: np.ndarray) -> np.ndarray:
    """Connected components of a boolean mask `(H, W)` with 8-connectivity.

    Returns int64 labels `(H, W)`: -1 off the mask, otherwise the smallest flat index in the
    component. Each pass replaces a label by the minimum over its 3x3 neighbourhood; passes stop
    when nothing changes (at most the longest path in a component, a few dozen for our shapes).
    """
    height, width = mask.shape
    big = np.iinfo(np.int64).max
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbourhood = np.stack(
            [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        )
        updated = np.where(mask, neighbourhood.min(axis=0), big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return np.where(mask, labels, -1)


def nearest_hue(rgb: np.ndarray) -> np.ndarray:
    """Index into the palette (COLOR_HUES order) of the hue nearest each pixel `(H, W)`."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # The standard hue angle from RGB via its projection on the chromaticity plane.
    hue = np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)) % 360.0
    diff = np.abs(hue[..., None] - _HUE_CENTRES)
    return np.minimum(diff, 360.0 - diff).argmin(axis=-1)


def _extent(mask: np.ndarray) -> int:
    """The larger side, in pixels, of the bounding box of a non-empty mask."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)


def _describe(mask: np.ndarray, hue_index: np.ndarray, image_side: int) -> DetectedObject:
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    votes = np.bincount(hue_index[mask], minlength=len(_HUE_NAMES))
    extent = max(x1 - x0, y1 - y0) / image_side
    size = "small" if extent < (SIZES["small"] + SIZES["large"]) / 2 else "large"
    return DetectedObject(
        color=_HUE_NAMES[int(votes.argmax())],
        shape=classify_shape(mask[y0:y1, x0:x1]),
        size=size,
        center=((x0 + x1) / 2, (y0 + y1) / 2),
        bbox=(x0, y0, x1, y1),
        area=int(mask.sum()),
    )


def coverage_grid(mask: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Fraction of each cell of a `grid x grid` partition of `mask` `(h, w)` that is set.

    Pixels are unit squares and cells are h/grid x w/grid rectangles, so the result is the exact
    area coverage whatever h and w are (upsampling small masks included).
    """
    rows = _overlap_matrix(mask.shape[0], grid)
    cols = _overlap_matrix(mask.shape[1], grid)
    return rows @ mask.astype(np.float64) @ cols.T


def _overlap_matrix(pixels: int, cells: int) -> np.ndarray:
    """`(cells, pixels)`: share of each cell's length covered by each pixel (rows sum to 1)."""
    edges = np.linspace(0.0, pixels, cells + 1)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixel = np.arange(pixels)[None, :]
    overlap = np.clip(np.minimum(ends, pixel + 1) - np.maximum(starts, pixel), 0.0, None)
    return overlap / (ends - starts)


TEMPLATE_BLURS: tuple[float, ...] = (0.0, 0.04)
"""Gaussian blurs (sigma as a fraction of the object's side) of the shape templates. The blurred
set lets a slightly blurred square (rounded corners once thresholded) still match a square;
a larger blur starts to take clean circles for blurred squares (measured, docs/shapes.md)."""


@cache
def shape_templates(grid: int = GRID) -> tuple[tuple[str, np.ndarray], ...]:
    """(shape, coverage `(grid, grid)`) for each shape and blur in `TEMPLATE_BLURS`, made from a
    256 px ideal mask blurred, thresholded like the detector's foreground and cropped."""
    templates = []
    for shape in SHAPES:
        ideal = shape_mask(shape, 256)
        for blur in TEMPLATE_BLURS:
            mask = ideal if blur == 0 else _blur_and_threshold(ideal, blur * 256)
            templates.append((shape, coverage_grid(mask, grid)))
    return tuple(templates)


def _blur_and_threshold(mask: np.ndarray, sigma: float) -> np.ndarray:
    pad = int(4 * sigma) + 1
    image = Image.fromarray(np.pad(mask, pad).astype(np.uint8) * 255)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)))
    kept = blurred >= DetectorParams().chroma_fraction * 255
    rows, cols = np.nonzero(kept)
    return kept[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def classify_shape(mask: np.ndarray) -> str:
    """The shape of the nearest template (mean squared coverage difference) to a component mask
    cropped to its bounding box `(h, w)`."""
    cover = coverage_grid(mask)
    best = min(shape_templates(), key=lambda item: float(((cover - item[1]) ** 2).mean()))
    return best[0]
