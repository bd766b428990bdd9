"""The oracle annotator: exact captions and questions from a record's scene graph.

In PairUni's cross-modal completion an LLM writes a caption for each understanding image and a
question for each generation image. On ShapesWorld the scene graph is known, so this oracle
writes them exactly; `pairuni pairs complete` can use it where it would call an LLM.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from pairuni.shapes.questions import LETTERS, qa_for_scene, referring_phrase
from pairuni.shapes.scene import Scene, SceneError, SceneObject, relations

__all__ = ["OracleAnnotator", "answer_is_correct", "caption_for_scene", "qa_for_scene"]

_COUNT_WORDS = {1: "one object", 2: "two objects", 3: "three objects", 4: "four objects"}
_RELATION_WORDS = {
    "above": "above",
    "below": "below",
    "left of": "to the left of",
    "right of": "to the right of",
}
_ORDINALS = ("leftmost", "second from the left", "third from the left", "fourth from the left")


def location_phrase(obj: SceneObject) -> str:
    """Where in the frame, on a 3 x 3 grid: `in the top left`, `at the top`, `on the right`,
    `in the centre`..."""
    row = "top" if obj.y < 1 / 3 else "bottom" if obj.y > 2 / 3 else ""
    col = "left" if obj.x < 1 / 3 else "right" if obj.x > 2 / 3 else ""
    if row and col:
        return f"in the {row} {col}"
    if row:
        return f"at the {row}"
    return f"on the {col}" if col else "in the centre"


def object_name(scene: Scene, index: int) -> str:
    """A unique name for object `index`: its shortest unique phrase, or, for identical objects,
    the full description with its rank from the left (`leftmost small red circle`)."""
    phrase = referring_phrase(scene, index, ("shape", "color", "size"))
    if phrase is not None:
        return phrase
    target = scene.objects[index]
    twins = sorted(
        (i for i, o in enumerate(scene.objects) if o.describe() == target.describe()),
        key=lambda i: (scene.objects[i].x, scene.objects[i].y),
    )
    rank = twins.index(index)
    ordinal = "rightmost" if rank == len(twins) - 1 else _ORDINALS[rank]
    return f"{ordinal} {target.describe()}"


def caption_for_scene(scene: Scene) -> str:
    """A generation prompt stating everything a question could ask about: how many objects,
    each one's size, colour, shape and place, and the GenEval relations of every pair."""
    objects = scene.objects
    if not objects:
        return "a photo of an empty grey background"
    items = [f"a {o.describe()} {location_phrase(o)}" for o in objects]
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    sentences = [f"a photo of {_COUNT_WORDS[len(objects)]} on a grey background: {listed}."]
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            held = relations(objects[i].box, objects[j].box)
            words = [
                _RELATION_WORDS[r] for r in ("above", "below", "left of", "right of") if r in held
            ]
            relation = " and ".join(words) or "next to"
            sentences.append(
                f"The {object_name(scene, i)} is {relation} the {object_name(scene, j)}."
            )
    return " ".join(sentences)


def scene_of(record: Mapping[str, Any]) -> Scene:
    """The scene graph of a ShapesWorld record, with an error naming the record if it has none."""
    rid = record.get("id", "<no id>")
    if "scene" not in record:
        raise ValueError(
            f"record {rid}: no 'scene' field; the oracle annotator only works on ShapesWorld "
            "records (made by `pairuni shapes data`); use an LLM annotator for real data"
        )
    try:
        return Scene.from_dict(record["scene"])
    except SceneError as err:
        raise ValueError(f"record {rid}: {err}") from None


class OracleAnnotator:
    """Completes ShapesWorld records exactly from their scene graphs (no model, no I/O).

    Questions are drawn with a generator seeded by (seed, record id), so a record always gets
    the same question whatever order records come in.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def complete_understanding(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of an understanding record with a "prompt" (the caption of its scene) and the
        caption's "geneval" metadata, so the generation reward can score images drawn for it."""
        scene = scene_of(record)
        return {**record, "prompt": caption_for_scene(scene), "geneval": scene_geneval(scene)}

    def complete_generation(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a generation record with "question", "options" (4) and "answer" (A-D)."""
        scene = scene_of(record)
        rng = np.random.default_rng([self.seed, zlib.crc32(str(record.get("id", "")).encode())])
        question, options, answer, _ = qa_for_scene(scene, rng)
        return {**record, "question": question, "options": options, "answer": answer}


def scene_geneval(scene: Scene) -> dict[str, Any]:
    """GenEval-style metadata that a faithful drawing of the whole scene satisfies.

    Per shape: exactly its number of objects (an include and an exclude clause), and its colour
    when every object of that shape shares one (GenEval's colour rule looks at the largest
    `count` objects of a class, so a class of mixed colours cannot carry a colour clause).
    Positions are left to the caption's text: the relations of a 3- or 4-object scene do not fit
    GenEval's one-target position clause. The tag is `scene`, outside GenEval's six categories.
    """
    by_shape: dict[str, list[SceneObject]] = {}
    for obj in scene.objects:
        by_shape.setdefault(obj.shape, []).append(obj)
    include, exclude = [], []
    for shape in sorted(by_shape):
        objs = by_shape[shape]
        clause: dict[str, Any] = {"class": shape, "count": len(objs)}
        if len({o.color for o in objs}) == 1:
            clause["color"] = objs[0].color
        include.append(clause)
        exclude.append({"class": shape, "count": len(objs) + 1})
    return {"tag": "scene", "include": include, "exclude": exclude}


def answer_is_correct(letter: str, record: Mapping[str, Any]) -> bool:
    """Whether a reply letter ("B", " b", "(B)", "B.") is the record's answer letter."""
    expected = record.get("answer")
    if expected not in tuple(LETTERS):
        raise ValueError(
            f"record {record.get('id', '<no id>')}: answer {expected!r} is not one of A-D"
        )
    match = re.fullmatch(r"\s*\(?\s*([A-Da-d])\s*[).:]?\s*", letter)
    return match is not None and match.group(1).upper() == expected
