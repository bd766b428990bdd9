"""ShapesWorld scene graphs: the vocabulary, seeded scene sampling and spatial relations.

A scene is a list of objects (shape, colour, size class, centre) in *normalised* coordinates:
x and y run from 0 to 1 across the image, y downwards, so one scene renders at any resolution.
Objects never overlap: their bounding boxes keep at least `MIN_GAP` apart (rejection sampling),
which makes counting and detection well defined.

Spatial relations follow GenEval's rule (`relative_position` in its evaluate_images.py): the
centre offset of A from B is shrunk on each axis by `threshold * (dim_A + dim_B)`; A is
"left of" B when the shrunk x offset, divided by the length of the unshrunk offset, is below
-0.5 (and likewise "right of", "above", "below"). A diagonal pair can hold two relations; a
pair whose centres are too close holds none.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Six hues 60 degrees apart (the maximum separation for six), at one saturation and value, so
# that colour is read from hue alone and survives blur and mild colour shifts.
COLOR_HUES: dict[str, float] = {
    "red": 0.0,
    "yellow": 60.0,
    "green": 120.0,
    "cyan": 180.0,
    "blue": 240.0,
    "magenta": 300.0,
}
COLOR_SATURATION = 0.85
COLOR_VALUE = 0.9


def _hsv_to_rgb(hue_degrees: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue_degrees / 360.0, COLOR_SATURATION, COLOR_VALUE)
    return round(r * 255), round(g * 255), round(b * 255)


COLORS: dict[str, tuple[int, int, int]] = {name: _hsv_to_rgb(h) for name, h in COLOR_HUES.items()}
"""Colour name -> RGB used by the renderer."""

BACKGROUND: tuple[int, int, int] = (220, 220, 220)
"""A neutral light grey: zero chroma, so every saturated pixel belongs to an object."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "cross": "crosses",
}

SIZES: dict[str, float] = {"small": 0.2, "large": 0.3}
"""Size class -> side of the object's (square) bounding box as a fraction of the image side."""

MIN_GAP = 0.06
"""Smallest gap between two objects' bounding boxes (fraction of the image side; 2 px at 32)."""

BORDER = 0.03
"""Smallest gap between an object's bounding box and the image edge."""

POSITION_THRESHOLD = 0.1
"""GenEval's default `position_threshold`: the centre offset is shrunk by this times the summed
box sizes before the direction test."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
MAX_OBJECTS = 4


class SceneError(ValueError):
    """A scene dictionary that cannot be read; the message names the field and the fix."""


@dataclass(frozen=True)
class SceneObject:
    """One drawn object. `x`, `y` are its centre in [0, 1] image coordinates (y downwards)."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    @property
    def extent(self) -> float:
        """Side of the bounding box, as a fraction of the image side."""
        return SIZES[self.size]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in [0, 1] image coordinates."""
        half = self.extent / 2
        return (self.x - half, self.y - half, self.x + half, self.y + half)

    def describe(self) -> str:
        """`small red circle`: every attribute but the position."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A ShapesWorld scene: 1-4 non-overlapping objects on a plain background."""

    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary: {"objects": [{"shape", "color", "size", "x", "y"}, ...]}."""
        return {"objects": [asdict(obj) for obj in self.objects]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scene:
        """Read `to_dict`'s output back, checking every field against the vocabulary."""
        if not isinstance(data, Mapping) or not isinstance(data.get("objects"), list):
            raise SceneError(
                'a scene must be a mapping with a list under "objects", '
                f"got {type(data).__name__}: {str(data)[:80]!r}"
            )
        return cls(tuple(_object_from_dict(i, obj) for i, obj in enumerate(data["objects"])))


def _object_from_dict(index: int, data: Any) -> SceneObject:
    where = f"scene.objects[{index}]"
    if not isinstance(data, Mapping):
        raise SceneError(f"{where}: expected a mapping, got {type(data).__name__}")
    vocab: dict[str, Iterable[str]] = {"shape": SHAPES, "color": COLORS, "size": SIZES}
    for key, allowed in vocab.items():
        if data.get(key) not in allowed:
            raise SceneError(
                f"{where}.{key}: {data.get(key)!r} is not one of {', '.join(allowed)}; "
                "use a ShapesWorld name"
            )
    for key in ("x", "y"):
        value = data.get(key)
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise SceneError(f"{where}.{key}: {value!r} must be a number in [0, 1]")
    extra = set(data) - {"shape", "color", "size", "x", "y"}
    if extra:
        raise SceneError(f"{where}: unknown keys {sorted(extra)}; remove them")
    return SceneObject(
        data["shape"], data["color"], data["size"], float(data["x"]), float(data["y"])
    )


def boxes_overlap(a: Sequence[float], b: Sequence[float], gap: float = MIN_GAP) -> bool:
    """Whether boxes a and b (x0, y0, x1, y1) come closer than `gap` on both axes."""
    apart_x = a[2] + gap <= b[0] or b[2] + gap <= a[0]
    apart_y = a[3] + gap <= b[1] or b[3] + gap <= a[1]
    return not (apart_x or apart_y)


def relations(
    a: Sequence[float],
    b: Sequence[float],
    threshold: float = POSITION_THRESHOLD,
    cutoff: float = 0.5,
) -> set[str]:
    """The GenEval relations that box `a` holds to box `b` (boxes are x0, y0, x1, y1; y down).

    Scale-free, so it applies to normalised scene boxes and to detected pixel boxes alike.
    `threshold` shrinks the centre offset by threshold * (size_a + size_b) per axis; a relation
    holds when the shrunk offset along its axis exceeds `cutoff` times the unshrunk distance.
    """
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    dist = math.hypot(dx, dy)
    scale = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1], 1e-9)
    if dist <= 1e-9 * scale:
        return set()
    shrunk_x = math.copysign(max(abs(dx) - threshold * ((a[2] - a[0]) + (b[2] - b[0])), 0.0), dx)
    shrunk_y = math.copysign(max(abs(dy) - threshold * ((a[3] - a[1]) + (b[3] - b[1])), 0.0), dy)
    found = set()
    if shrunk_x < -cutoff * dist:
        found.add("left of")
    if shrunk_x > cutoff * dist:
        found.add("right of")
    if shrunk_y < -cutoff * dist:
        found.add("above")
    if shrunk_y > cutoff * dist:
        found.add("below")
    return found


def clear_relation(a: Sequence[float], b: Sequence[float]) -> str | None:
    """The one relation of `a` to `b` that holds beyond doubt, or None.

    Beyond doubt: it holds with twice GenEval's threshold (so a detector's one-pixel jitter
    cannot break it) and it is the only relation even with no threshold and a 0.45 cutoff (so
    no reader could also call the pair diagonal). Used for questions and for generation scenes.
    """
    strict = relations(a, b, threshold=2 * POSITION_THRESHOLD)
    loose = relations(a, b, threshold=0.0, cutoff=0.45)
    if len(strict) == 1 and strict == loose:
        return next(iter(strict))
    return None


@dataclass(frozen=True)
class ObjectSpec:
    """What a scene must contain before positions are drawn; None means 'draw at random'."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None


def fill_spec(spec: ObjectSpec, rng: np.random.Generator) -> tuple[str, str, str]:
    """Draw the unspecified attributes of `spec` uniformly from the vocabulary."""
    shape = spec.shape or str(rng.choice(SHAPES))
    color = spec.color or str(rng.choice(list(COLORS)))
    size = spec.size or str(rng.choice(list(SIZES)))
    return shape, color, size


def place_objects(
    specs: Sequence[ObjectSpec],
    rng: np.random.Generator,
    max_tries: int = 200,
    max_restarts: int = 100,
) -> Scene:
    """Draw attributes and non-overlapping positions for `specs`, one object at a time.

    An object that finds no free spot in `max_tries` draws restarts the whole scene (new sizes
    and positions); after `max_restarts` restarts a RuntimeError says the request is too crowded.
    """
    for _ in range(max_restarts):
        placed: list[SceneObject] = []
        for spec in specs:
            shape, color, size = fill_spec(spec, rng)
            obj = _find_spot(shape, color, size, placed, rng, max_tries)
            if obj is None:
                break
            placed.append(obj)
        else:
            return Scene(tuple(placed))
    raise RuntimeError(
        f"could not place {len(specs)} objects without overlap in {max_restarts} restarts; "
        "ask for fewer or smaller objects"
    )


def _find_spot(
    shape: str,
    color: str,
    size: str,
    placed: Sequence[SceneObject],
    rng: np.random.Generator,
    max_tries: int,
) -> SceneObject | None:
    low = BORDER + SIZES[size] / 2
    high = 1.0 - low
    for _ in range(max_tries):
        x, y = rng.uniform(low, high, size=2)
        obj = SceneObject(shape, color, size, round(float(x), 4), round(float(y), 4))
        if not any(boxes_overlap(obj.box, other.box) for other in placed):
            return obj
    return None


def sample_scene(
    rng: np.random.Generator, min_objects: int = 1, max_objects: int = MAX_OBJECTS
) -> Scene:
    """A random scene of `min_objects`..`max_objects` objects with random attributes."""
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
            f"got {min_objects} and {max_objects}"
        )
    count = int(rng.integers(min_objects, max_objects + 1))
    return place_objects([ObjectSpec()] * count, rng)
