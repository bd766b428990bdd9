"""The ShapesWorld detector (`pairuni.shapes.detect`) as a GenEval `Detector`.

ShapesWorld draws exact, flat-coloured shapes, so its detector reads every object with certainty:
each becomes a `Detection` with the shape as its label, score 1 (above every GenEval threshold,
counting's 0.9 included) and the colour it read. Among equal scores the official GenEval sort
puts the later-listed detection first (a reversed ascending argsort), so the adapter lists them
smallest first: GenEval then checks them largest first, the order ShapesWorld's own GenEval-style
scorer uses.

Boxes: the ShapesWorld detector reports (x0, y0, x1, y1) with x1, y1 exclusive (one past the last
pixel). GenEval's box IoU uses the inclusive-pixel convention (width = x1 - x0 + 1), as the
official script, so the adapter returns the last pixel: (x0, y0, x1 - 1, y1 - 1).

Colours: ShapesWorld's six hues are red, yellow, green, cyan, blue and magenta; four of them are
GenEval colour names. Cyan and magenta are passed on as they are, so they never satisfy a GenEval
colour clause (GenEval prompts cannot ask for them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pairuni.eval.detectors import Detection
from pairuni.shapes.detect import DetectedObject, DetectorParams, detect_objects


def to_detection(obj: DetectedObject) -> Detection:
    """One ShapesWorld object as a GenEval detection (inclusive last-pixel box, score 1)."""
    x0, y0, x1, y1 = obj.bbox
    box = (float(x0), float(y0), float(x1 - 1), float(y1 - 1))
    return Detection(label=obj.shape, box=box, score=1.0, color=obj.color)


class ShapesDetector:
    """GenEval `Detector` for ShapesWorld images: exact shapes and colours, score 1."""

    def __init__(self, params: DetectorParams | None = None) -> None:
        self.params = params or DetectorParams()

    def detect(self, image: Image.Image, class_names: Sequence[str]) -> list[Detection]:
        """Every object whose shape is one of `class_names`, smallest first (see above)."""
        wanted = set(class_names)
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        found = [obj for obj in detect_objects(pixels, self.params) if obj.shape in wanted]
        return [to_detection(obj) for obj in reversed(found)]
