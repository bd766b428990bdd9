"""ShapesWorld scenes and rendering: determinism, no overlaps, JSON, relations, pixels."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest

from pairuni.shapes.render import render_scene
from pairuni.shapes.scene import (
    BACKGROUND,
    BORDER,
    COLORS,
    MIN_GAP,
    SHAPES,
    SIZES,
    ObjectSpec,
    Scene,
    SceneError,
    SceneObject,
    clear_relation,
    place_objects,
    relations,
    sample_scene,
)


def scenes(n: int, seed: int = 0) -> list[Scene]:
    return [sample_scene(np.random.default_rng([seed, i])) for i in range(n)]


def test_same_seed_same_scene_and_different_seed_different_scene() -> None:
    first = [sample_scene(np.random.default_rng(s)) for s in range(20)]
    again = [sample_scene(np.random.default_rng(s)) for s in range(20)]
    other = [sample_scene(np.random.default_rng(s + 100)) for s in range(20)]
    assert first == again
    assert first != other


def test_scenes_have_1_to_4_objects_from_the_vocabulary_and_every_count_occurs() -> None:
    counts = set()
    for scene in scenes(300):
        counts.add(len(scene.objects))
        for obj in scene.objects:
            assert obj.shape in SHAPES and obj.color in COLORS and obj.size in SIZES
    assert counts == {1, 2, 3, 4}


def test_objects_never_overlap_and_stay_inside_the_border() -> None:
    for scene in scenes(500, seed=1):
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert min(x0, y0) >= BORDER - 1e-9 and max(x1, y1) <= 1 - BORDER + 1e-9
        for a, b in itertools.combinations(scene.objects, 2):
            # The gap between two boxes is the largest of the four one-sided separations.
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box, b.box
            gap = max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)
            assert gap >= MIN_GAP - 1e-9


def test_four_large_objects_can_always_be_placed() -> None:
    for seed in range(20):
        scene = place_objects([ObjectSpec(size="large")] * 4, np.random.default_rng(seed))
        assert len(scene.objects) == 4


def test_scene_json_round_trip() -> None:
    for scene in scenes(50):
        text = json.dumps(scene.to_dict())
        assert Scene.from_dict(json.loads(text)) == scene


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"objects": [{"shape": "star", "color": "red", "size": "small", "x": 0.5, "y": 0.5}]},
         "scene.objects[0].shape"),
        ({"objects": [{"shape": "circle", "color": "red", "size": "small", "x": 1.5, "y": 0.5}]},
         "scene.objects[0].x"),
        ({"objects": [{"shape": "circle", "color": "red", "size": "small", "x": 0.5, "y": 0.5,
                       "z": 1}]}, "unknown keys"),
        ({"items": []}, '"objects"'),
    ],
)  # fmt: skip
def test_bad_scene_dicts_name_the_field(data: dict, fragment: str) -> None:
    with pytest.raises(SceneError, match=re.escape(fragment)):
        Scene.from_dict(data)


def box(cx: float, cy: float, side: float = 10.0) -> tuple[float, float, float, float]:
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def test_relations_on_hand_computed_cases() -> None:
    # Straight left: offset (-30, 0).
    assert relations(box(5, 5), box(35, 5)) == {"left of"}
    assert relations(box(35, 5), box(5, 5)) == {"right of"}
    # y grows downwards: a smaller y is above.
    assert relations(box(5, 5), box(5, 40)) == {"above"}
    # Far diagonal (-30, -30): shrunk by 0.1 * 20 = 2 to (-28, -28); 28 > 0.5 * 42.4.
    assert relations(box(5, 5), box(35, 35)) == {"left of", "above"}
    # Near diagonal (-4, -4): shrunk to (-2, -2); 2 < 0.5 * 5.66, so no relation...
    assert relations(box(5, 5), box(9, 9)) == set()
    # ...but with no threshold (-4 < -2.83 on both axes) it is diagonal.
    assert relations(box(5, 5), box(9, 9), threshold=0.0) == {"left of", "above"}
    # Mostly vertical (-3, -5.5): shrunk (-1, -3.5); only |-3.5| > 0.5 * 6.26.
    assert relations(box(5, 5), box(8, 10.5)) == {"above"}


def test_relations_are_scale_free() -> None:
    a, b = box(3, 7, 4), box(20, 9, 6)
    scaled = [tuple(v * 37.0 for v in bx) for bx in (a, b)]
    assert relations(a, b) == relations(*scaled)


def test_clear_relation_needs_a_single_unambiguous_direction() -> None:
    assert clear_relation(box(5, 5), box(35, 6)) == "left of"
    assert clear_relation(box(5, 5), box(35, 35)) is None  # diagonal
    assert clear_relation(box(5, 5), box(9, 5)) is None  # too close for a doubled threshold


@pytest.mark.parametrize("size", [32, 64])
def test_render_puts_palette_colours_at_object_centres_and_background_elsewhere(size: int) -> None:
    for scene in scenes(30, seed=2):
        image = render_scene(scene, size)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert tuple(image[0, 0]) == BACKGROUND
        for obj in scene.objects:
            # The triangle's box centre is inside it (its width there is half the base).
            px = image[int(obj.y * size), int(obj.x * size)]
            assert np.abs(px.astype(int) - COLORS[obj.color]).max() <= 2


@pytest.mark.parametrize(
    ("shape", "fill"),
    [("square", 1.0), ("circle", math.pi / 4), ("triangle", 0.5), ("cross", 5 / 9)],
)
def test_rendered_area_matches_the_shape_geometry(shape: str, fill: float) -> None:
    side_px = SIZES["large"] * 64
    scene = Scene((SceneObject(shape, "blue", "large", 0.5, 0.5),))
    image = render_scene(scene, 64).astype(float)
    coverage = (image[..., 2] - image[..., 0]) / (COLORS["blue"][2] - COLORS["blue"][0])
    # Anti-aliased edge pixels carry partial coverage, so the sum is the drawn area.
    assert coverage.sum() == pytest.approx(fill * side_px**2, rel=0.08)


def test_same_scene_renders_alike_at_32_and_64() -> None:
    scene = scenes(1, seed=3)[0]
    small = render_scene(scene, 32).astype(float)
    big = render_scene(scene, 64).astype(float)
    downsampled = big.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(downsampled - small).mean() < 4.0
