"""GenEval-style prompts and scorer: right images pass, deliberately wrong images fail."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from pairuni.shapes.build import generation_record
from pairuni.shapes.detect import DetectedObject
from pairuni.shapes.geneval import (
    evaluate_detections,
    geneval_partial_reward,
    geneval_reward,
    score_image,
    summarize,
)
from pairuni.shapes.prompts import GENEVAL_TAGS, sample_generation
from pairuni.shapes.render import render_scene
from pairuni.shapes.scene import COLORS, SHAPES, Scene, SceneObject, boxes_overlap


def records(n: int, seed: int = 0) -> list[dict]:
    return [generation_record(i, seed) for i in range(n)]


@pytest.mark.parametrize(("size", "n"), [(32, 600), (64, 120)])
def test_every_prompt_is_satisfied_by_its_own_rendering(size: int, n: int) -> None:
    results = []
    for record in records(n):
        verdict = score_image(
            render_scene(Scene.from_dict(record["scene"]), size), record["geneval"]
        )
        assert verdict.correct, (record["prompt"], verdict.reasons)
        results.append((record["category"], verdict.correct))
    assert summarize(results) == dict.fromkeys([*GENEVAL_TAGS, "overall"], 1.0)


def test_prompts_and_metadata_agree_with_geneval_layout() -> None:
    for record in records(60):
        meta = record["geneval"]
        assert meta["tag"] == record["category"] and meta["prompt"] == record["prompt"]
        assert record["prompt"].startswith("a photo of ")
        for clause in meta["include"]:
            assert clause["class"] in SHAPES and clause["class"] in record["prompt"]
            assert clause.get("color", "red") in COLORS
        scene = Scene.from_dict(record["scene"])
        assert len(scene.objects) == sum(c["count"] for c in meta["include"])
    counting = next(r for r in records(6) if r["category"] == "counting")["geneval"]
    assert counting["exclude"] == [
        {"class": counting["include"][0]["class"], "count": counting["include"][0]["count"] + 1}
    ]


def add_object(scene: Scene, obj: SceneObject, rng: np.random.Generator) -> Scene | None:
    for _ in range(500):
        x, y = rng.uniform(0.2, 0.8, size=2)
        moved = dataclasses.replace(obj, x=float(x), y=float(y))
        if not any(boxes_overlap(moved.box, o.box) for o in scene.objects):
            return Scene((*scene.objects, moved))
    return None


def other(values: list[str] | tuple[str, ...], *used: str) -> str:
    return next(v for v in values if v not in used)


def corruptions(tag: str, scene: Scene, rng: np.random.Generator) -> list[Scene]:
    """Scenes that break the prompt of category `tag` in the ways GenEval checks."""
    objs = list(scene.objects)
    shapes = {o.shape for o in objs}
    wrong_shape = [dataclasses.replace(objs[0], shape=other(SHAPES, *shapes)), *objs[1:]]
    out = [Scene(tuple(objs[1:])), Scene(tuple(wrong_shape))]
    if tag == "counting":
        extra = add_object(scene, objs[0], rng)
        out += [extra] if extra is not None else []
    if tag in ("colors", "color_attr"):
        recoloured = dataclasses.replace(
            objs[0], color=other(list(COLORS), *(o.color for o in objs))
        )
        out.append(Scene((recoloured, *objs[1:])))
    if tag == "color_attr":
        a, b = objs
        out.append(
            Scene((dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color)))
        )
    if tag == "position":
        # Mirror the picture across the middle: left <-> right, above <-> below.
        out.append(Scene(tuple(dataclasses.replace(o, x=1 - o.x, y=1 - o.y) for o in objs)))
    return out


def test_deliberately_wrong_images_are_scored_wrong() -> None:
    checked = dict.fromkeys(GENEVAL_TAGS, 0)
    for i, record in enumerate(records(240, seed=1)):
        rng = np.random.default_rng(i)
        for wrong in corruptions(record["category"], Scene.from_dict(record["scene"]), rng):
            verdict = score_image(render_scene(wrong, 32), record["geneval"])
            assert not verdict.correct, (record["prompt"], wrong)
            assert verdict.reasons
            checked[record["category"]] += 1
    assert min(checked.values()) >= 80


def detected(shape: str, color: str, box: tuple[int, int, int, int], area: int) -> DetectedObject:
    x0, y0, x1, y1 = box
    return DetectedObject(color, shape, "small", ((x0 + x1) / 2, (y0 + y1) / 2), box, area)


def test_colour_is_judged_on_the_largest_object_of_the_class_like_geneval_confidence() -> None:
    meta = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    big_blue, small_red = (
        detected("circle", "blue", (0, 0, 10, 10), 78),
        detected("circle", "red", (20, 0, 26, 6), 28),
    )
    assert not evaluate_detections([big_blue, small_red], meta).correct
    big_red = dataclasses.replace(big_blue, color="red")
    small_blue = dataclasses.replace(small_red, color="blue")
    assert evaluate_detections([big_red, small_blue], meta).correct


def test_position_uses_the_target_group_and_counting_uses_exclude() -> None:
    meta = {
        "tag": "position",
        "include": [
            {"class": "square", "count": 1},
            {"class": "circle", "count": 1, "position": ["left of", 0]},
        ],
    }
    square = detected("square", "red", (40, 10, 50, 20), 100)
    left_circle = detected("circle", "blue", (5, 12, 15, 22), 78)
    right_circle = detected("circle", "blue", (55, 12, 65, 22), 78)
    assert evaluate_detections([square, left_circle], meta).correct
    verdict = evaluate_detections([square, right_circle], meta)
    assert not verdict.correct and "right of" in verdict.reasons[0]
    assert not evaluate_detections([left_circle], meta).correct  # no target square
    two = {
        "tag": "counting",
        "include": [{"class": "circle", "count": 2}],
        "exclude": [{"class": "circle", "count": 3}],
    }
    circles = [left_circle, right_circle, detected("circle", "red", (5, 40, 15, 50), 78)]
    assert evaluate_detections(circles[:2], two).correct
    assert not evaluate_detections(circles[:1], two).correct
    assert not evaluate_detections(circles, two).correct


def test_rewards_take_pil_images_and_json_metadata() -> None:
    recs = records(6)
    images = [Image.fromarray(render_scene(Scene.from_dict(r["scene"]), 32)) for r in recs]
    prompts = [r["prompt"] for r in recs]
    metas = [json.dumps(r["geneval"]) for r in recs]
    assert geneval_reward(prompts, images, geneval=metas) == [1.0] * 6
    blank = Image.new("RGB", (32, 32), (220, 220, 220))
    assert geneval_reward(prompts[:2], [blank, images[1]], geneval=[None, metas[1]]) == [None, 1.0]
    assert geneval_reward(prompts[:1], [blank], geneval=metas[:1]) == [0.0]


def test_partial_reward_is_the_share_of_clauses_met() -> None:
    rng = np.random.default_rng(0)
    prompt, meta, scene = sample_generation(rng, "two_object")
    half = Image.fromarray(render_scene(Scene(scene.objects[:1]), 32))
    full = Image.fromarray(render_scene(scene, 32))
    assert geneval_partial_reward([prompt] * 2, [half, full], geneval=[meta, meta]) == [0.5, 1.0]
    assert geneval_reward([prompt], [half], geneval=[meta]) == [0.0]
    prompt, meta, scene = sample_generation(rng, "counting")
    more = add_object(scene, scene.objects[0], rng)
    assert more is not None
    image = Image.fromarray(render_scene(more, 32))
    assert geneval_partial_reward([prompt], [image], geneval=[meta]) == [
        0.5
    ]  # include ok, exclude not


def test_reward_without_metadata_column_says_what_is_missing() -> None:
    with pytest.raises(KeyError, match="geneval"):
        geneval_reward(["a photo of a circle"], [Image.new("RGB", (32, 32))])
    with pytest.raises(ValueError, match="2 images but 1"):
        geneval_reward(["a", "b"], [Image.new("RGB", (32, 32))] * 2, geneval=[{}])


def test_summary_overall_is_the_unweighted_mean_of_categories() -> None:
    results = [("counting", True), ("counting", False), ("counting", False), ("counting", True),
               ("colors", True), ("position", False)]  # fmt: skip
    results.append(("colors", True))
    # counting 2/4, colors 2/2, position 0/1 -> overall (0.5 + 1 + 0) / 3 = 0.5, whereas the
    # share of all images would be 4/7.
    summary = summarize(results)
    assert summary == {"counting": 0.5, "colors": 1.0, "position": 0.0, "overall": 0.5}
    assert summarize([("single_object", True)] * 3 + [("two_object", False)])["overall"] == 0.5
    with pytest.raises(ValueError, match="unknown GenEval tags"):
        summarize([("colour", True)])


def test_unknown_tag_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown GenEval tag"):
        sample_generation(np.random.default_rng(0), "colours")
