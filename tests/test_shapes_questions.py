"""ShapesWorld questions and the oracle annotator, checked by a naive independent answerer."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pairuni.shapes.build import generation_record, understanding_record
from pairuni.shapes.oracle import (
    OracleAnnotator,
    answer_is_correct,
    caption_for_scene,
    qa_for_scene,
)
from pairuni.shapes.questions import UND_CATEGORIES
from pairuni.shapes.scene import Scene, SceneObject, sample_scene

SIZE_WORDS = {"small", "large"}
COLOR_WORDS = {"red", "yellow", "green", "cyan", "blue", "magenta"}
SHAPE_WORDS = {"circle", "square", "triangle", "cross"}


def resolve(scene: Scene, phrase: str) -> SceneObject:
    """The one object whose attributes match every word of a phrase like 'large red circle'."""
    words = phrase.split()
    matches = [
        o
        for o in scene.objects
        if all(w in (o.size, o.color, o.shape) for w in words if w != "object")
    ]
    assert len(matches) == 1, f"{phrase!r} names {len(matches)} objects in {scene}"
    return matches[0]


def naive_relations(a: SceneObject, b: SceneObject, threshold: float, cutoff: float) -> set[str]:
    """GenEval's relative_position rewritten with numpy vectors: a's relation to b."""
    ca, cb = np.array([a.x, a.y]), np.array([b.x, b.y])
    dims = np.array([a.extent + b.extent] * 2)
    offset = ca - cb
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    unit = revised / np.linalg.norm(offset)
    names = [("left of", unit[0] < -cutoff), ("right of", unit[0] > cutoff),
             ("above", unit[1] < -cutoff), ("below", unit[1] > cutoff)]  # fmt: skip
    return {name for name, holds in names if holds}


def naive_answer(scene: Scene, question: str, options: list[str]) -> str:
    """The true option text, computed from the question's words and the scene alone."""
    objs = scene.objects
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o.color == m.group(1) for o in objs))
    if question == "How many objects are there?":
        return str(len(objs))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        plural = m.group(1)
        singular = plural[:-2] if plural.endswith("sses") else plural[:-1]
        return str(sum(o.shape == singular for o in objs))
    if m := re.fullmatch(r"What color is the ([\w ]+)\?", question):
        return resolve(scene, m.group(1)).color
    if m := re.fullmatch(r"What shape is the ([\w ]+)\?", question):
        return resolve(scene, m.group(1)).shape
    if m := re.fullmatch(r"Where is the ([\w ]+) relative to the ([\w ]+)\?", question):
        a, b = resolve(scene, m.group(1)), resolve(scene, m.group(2))
        held = naive_relations(a, b, 0.2, 0.5)
        assert held == naive_relations(a, b, 0.0, 0.45) and len(held) == 1
        words = {"left of": "to the left", "right of": "to the right", "above": "above"}
        return words.get(held.pop(), "below")
    if question == "Which of these objects is in the image?":
        present = [t for t in options if any(f"{o.color} {o.shape}" == t for o in objs)]
        assert len(present) == 1
        return present[0]
    raise AssertionError(f"unexpected question {question!r}")


def check(scene: Scene, question: str, options: list[str], letter: str) -> None:
    assert len(options) == 4 and len(set(options)) == 4
    assert letter in "ABCD" and len(letter) == 1
    assert options["ABCD".index(letter)] == naive_answer(scene, question, options)


def test_every_dataset_question_is_answered_correctly_and_categories_are_balanced() -> None:
    seen = []
    for i in range(1000):
        record = understanding_record(i, seed=4)
        check(
            Scene.from_dict(record["scene"]),
            record["question"],
            record["options"],
            record["answer"],
        )
        seen.append(record["category"])
    assert {c: seen.count(c) for c in UND_CATEGORIES} == dict.fromkeys(UND_CATEGORIES, 200)


@pytest.mark.parametrize("category", UND_CATEGORIES)
def test_each_category_on_random_scenes(category: str) -> None:
    asked = 0
    for i in range(150):
        rng = np.random.default_rng([5, i])
        scene = sample_scene(rng)
        try:
            question, options, letter, got = qa_for_scene(scene, rng, category)
        except ValueError:
            continue  # the scene cannot support this category (e.g. no unique object)
        assert got == category
        check(scene, question, options, letter)
        asked += 1
    assert asked >= 40


def test_answer_letters_are_spread_over_a_to_d() -> None:
    letters = [understanding_record(i, seed=6)["answer"] for i in range(400)]
    assert all(letters.count(x) > 60 for x in "ABCD")


def test_infeasible_category_is_an_error() -> None:
    lone = Scene((SceneObject("circle", "red", "small", 0.5, 0.5),))
    with pytest.raises(ValueError, match="position"):
        qa_for_scene(lone, np.random.default_rng(0), "position")
    with pytest.raises(ValueError, match="unknown question category"):
        qa_for_scene(lone, np.random.default_rng(0), "colour")


def test_caption_of_a_hand_made_scene() -> None:
    scene = Scene(
        (
            SceneObject("circle", "red", "large", 0.2, 0.2),
            SceneObject("square", "blue", "small", 0.8, 0.25),
            SceneObject("circle", "green", "small", 0.7, 0.8),
        )
    )
    # By hand, offset shrunk by 0.1 * (sum of sides) per axis vs 0.5 * distance:
    # red - square: (-0.6, -0.05) -> (-0.55, 0), 0.5 * 0.602 = 0.30: left only.
    # red - green: (-0.5, -0.6) -> (-0.45, -0.55), 0.5 * 0.781 = 0.39: left and above.
    # square - green: (0.1, -0.55) -> (0.06, -0.51), 0.5 * 0.559 = 0.28: above only.
    assert caption_for_scene(scene) == (
        "a photo of three objects on a grey background: a large red circle in the top left, "
        "a small blue square in the top right and a small green circle in the bottom right. "
        "The red circle is to the left of the square. "
        "The red circle is above and to the left of the green circle. "
        "The square is above the green circle."
    )


def test_identical_objects_are_told_apart_by_their_rank_from_the_left() -> None:
    twin = [SceneObject("cross", "cyan", "small", x, 0.5) for x in (0.2, 0.5, 0.8)]
    caption = caption_for_scene(Scene(tuple(twin)))
    assert "The leftmost small cyan cross is to the left of the second from the left" in caption
    assert "the rightmost small cyan cross" in caption


def test_caption_names_every_object_with_its_attributes() -> None:
    for i in range(300):
        scene = sample_scene(np.random.default_rng([7, i]))
        caption = caption_for_scene(scene)
        count = ["one object", "two objects", "three objects", "four objects"][
            len(scene.objects) - 1
        ]
        assert caption.startswith(f"a photo of {count}")
        listed = caption.split(": ", 1)[1].split(".")[0]
        for obj in scene.objects:
            assert f"a {obj.size} {obj.color} {obj.shape}" in listed
        pairs = len(scene.objects) * (len(scene.objects) - 1) // 2
        assert caption.count(". The ") == pairs


def test_oracle_completes_records_without_changing_them() -> None:
    oracle = OracleAnnotator(seed=3)
    und = understanding_record(0, seed=1)
    before = dict(und)
    done = oracle.complete_understanding(und)
    assert und == before
    assert done["prompt"] == caption_for_scene(Scene.from_dict(und["scene"]))
    assert done["geneval"]["tag"] == "scene"
    assert {k: v for k, v in done.items() if k not in ("prompt", "geneval")} == und


def test_scene_metadata_accepts_the_scene_and_rejects_changed_scenes() -> None:
    """The caption's GenEval metadata: its own rendering passes, a scene with an object
    removed, added or recoloured fails."""
    import numpy as np

    from pairuni.shapes.geneval import score_image
    from pairuni.shapes.oracle import scene_geneval
    from pairuni.shapes.render import render_scene
    from pairuni.shapes.scene import COLORS as PALETTE

    checked = 0
    for i in range(60):
        scene = Scene.from_dict(understanding_record(i, seed=4)["scene"])
        meta = scene_geneval(scene)
        assert score_image(render_scene(scene, 32), meta).correct, meta
        fewer = Scene(objects=scene.objects[1:]) if len(scene.objects) > 1 else None
        if fewer is not None:
            assert not score_image(render_scene(fewer, 32), meta).correct
        first = scene.objects[0]
        other = next(c for c in PALETTE if c != first.color)
        recoloured = Scene(
            objects=[type(first)(**{**first.__dict__, "color": other}), *scene.objects[1:]]
        )
        if len({o.color for o in scene.objects if o.shape == first.shape}) == 1:
            assert not score_image(render_scene(recoloured, 32), meta).correct
            checked += 1
    assert checked > 20
    assert np.all([c["count"] >= 1 for c in meta["include"]])


def test_oracle_questions_for_generation_records_are_correct_and_stable() -> None:
    oracle = OracleAnnotator(seed=3)
    for i in range(120):
        record = generation_record(i, seed=2)
        done = oracle.complete_generation(record)
        check(Scene.from_dict(record["scene"]), done["question"], done["options"], done["answer"])
        assert oracle.complete_generation(record) == done
        assert set(done) - set(record) == {"question", "options", "answer"}


def test_oracle_question_depends_on_the_record_id_not_the_call_order() -> None:
    oracle = OracleAnnotator()
    records = [generation_record(i, seed=2) for i in range(10)]
    forward = [oracle.complete_generation(r)["question"] for r in records]
    backward = [oracle.complete_generation(r)["question"] for r in reversed(records)]
    assert forward == backward[::-1]


def test_oracle_names_the_record_without_a_scene() -> None:
    with pytest.raises(ValueError, match="record coco-17: no 'scene' field"):
        OracleAnnotator().complete_understanding({"id": "coco-17", "image": "x.png"})
    bad = {"id": "s-1", "scene": {"objects": [{"shape": "star"}]}}
    with pytest.raises(ValueError, match=r"record s-1: scene\.objects\[0\]\.shape"):
        OracleAnnotator().complete_generation(bad)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("B", True), (" b ", True), ("(B)", True), ("B.", True), ("A", False), ("BC", False),
     ("", False), ("The answer is B", False)],
)  # fmt: skip
def test_answer_is_correct(reply: str, expected: bool) -> None:
    assert answer_is_correct(reply, {"id": "x", "answer": "B"}) is expected


def test_answer_is_correct_rejects_a_record_without_a_letter() -> None:
    with pytest.raises(ValueError, match="record x: answer 'E'"):
        answer_is_correct("A", {"id": "x", "answer": "E"})
