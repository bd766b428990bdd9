"""Four-option multiple-choice questions about a scene, answerable by construction.

Categories: counting ("How many circles are there?"), color ("What color is the large
square?"), shape ("What shape is the red object?"), position ("Where is the red circle
relative to the blue square?") and existence ("Which of these objects is in the image?").
An object is only asked about when a phrase names it uniquely without giving the answer away,
and a position is only asked when exactly one relation holds beyond doubt (`clear_relation`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pairuni.shapes.scene import COLORS, SHAPE_PLURALS, SHAPES, Scene, clear_relation

UND_CATEGORIES: tuple[str, ...] = ("counting", "color", "shape", "position", "existence")
LETTERS = "ABCD"
MAX_COUNT_OPTION = 5
POSITION_OPTIONS: dict[str, str] = {
    "left of": "to the left",
    "right of": "to the right",
    "above": "above",
    "below": "below",
}
"""Relation -> the option text that answers 'Where is A relative to B?'."""

Question = tuple[str, list[str], str, str]
"""(question, four options, answer letter, category)."""


def referring_phrase(scene: Scene, index: int, attributes: Sequence[str]) -> str | None:
    """The shortest phrase built from `attributes` that names object `index` uniquely, or None.

    With "shape" allowed the phrase always ends in the shape ("circle", "red circle", "large
    circle", "large red circle"); without it, in "object" ("red object", "small red object").
    """
    allowed = set(attributes)
    combos = [
        c for c in _PHRASE_COMBOS if set(c) <= allowed and ("shape" in c) == ("shape" in allowed)
    ]
    target = scene.objects[index]
    for combo in combos:
        same = [o for o in scene.objects if all(getattr(o, a) == getattr(target, a) for a in combo)]
        if len(same) == 1:
            words = [getattr(target, a) for a in ("size", "color", "shape") if a in combo]
            return " ".join(words if "shape" in combo else [*words, "object"])
    return None


_PHRASE_COMBOS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color"),
    ("size", "color", "shape"),
)


def _shuffle_options(
    correct: str, distractors: Sequence[str], rng: np.random.Generator
) -> tuple[list[str], str]:
    options = [correct, *distractors]
    if len(set(options)) != 4:
        raise AssertionError(f"options must be four distinct strings, got {options}")
    order = rng.permutation(4)
    shuffled = [options[i] for i in order]
    return shuffled, LETTERS[shuffled.index(correct)]


def counting_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    """How many objects / objects of a shape / objects of a colour."""
    kind = rng.choice(["all", "shape", "color"])
    if kind == "all":
        text, count = "How many objects are there?", len(scene.objects)
    elif kind == "shape":
        shape = str(rng.choice(SHAPES))
        count = sum(o.shape == shape for o in scene.objects)
        text = f"How many {SHAPE_PLURALS[shape]} are there?"
    else:
        color = str(rng.choice(list(COLORS)))
        count = sum(o.color == color for o in scene.objects)
        text = f"How many {color} objects are there?"
    others = [n for n in range(MAX_COUNT_OPTION + 1) if n != count]
    distractors = [str(n) for n in rng.choice(others, size=3, replace=False)]
    options, letter = _shuffle_options(str(count), distractors, rng)
    return text, options, letter, "counting"


def color_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    """What colour is an object named by its shape (and size)."""
    candidates = _named(scene, ("shape", "size"))
    if not candidates:
        return None
    index, phrase = candidates[int(rng.integers(len(candidates)))]
    correct = scene.objects[index].color
    others = [c for c in COLORS if c != correct]
    distractors = [str(c) for c in rng.choice(others, size=3, replace=False)]
    options, letter = _shuffle_options(correct, distractors, rng)
    return f"What color is the {phrase}?", options, letter, "color"


def shape_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    """What shape is an object named by its colour (and size)."""
    candidates = _named(scene, ("color", "size"))
    if not candidates:
        return None
    index, phrase = candidates[int(rng.integers(len(candidates)))]
    correct = scene.objects[index].shape
    options, letter = _shuffle_options(correct, [s for s in SHAPES if s != correct], rng)
    return f"What shape is the {phrase}?", options, letter, "shape"


def position_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    """Where one uniquely named object is relative to another (one clear relation)."""
    names = dict(_named(scene, ("shape", "color", "size")))
    pairs = [
        (i, j, rel)
        for i in names
        for j in names
        if i != j and (rel := clear_relation(scene.objects[i].box, scene.objects[j].box))
    ]
    if not pairs:
        return None
    i, j, rel = pairs[int(rng.integers(len(pairs)))]
    correct = POSITION_OPTIONS[rel]
    distractors = [text for r, text in POSITION_OPTIONS.items() if r != rel]
    options, letter = _shuffle_options(correct, distractors, rng)
    return f"Where is the {names[i]} relative to the {names[j]}?", options, letter, "position"


def existence_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    """Which of four colour-shape pairs is in the image (exactly one is)."""
    present = sorted({(o.color, o.shape) for o in scene.objects})
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    if not present or len(absent) < 3:
        return None
    color, shape = present[int(rng.integers(len(present)))]
    picks = rng.choice(len(absent), size=3, replace=False)
    distractors = [f"{absent[k][0]} {absent[k][1]}" for k in picks]
    options, letter = _shuffle_options(f"{color} {shape}", distractors, rng)
    return "Which of these objects is in the image?", options, letter, "existence"


QUESTION_MAKERS: dict[str, Callable[[Scene, np.random.Generator], Question | None]] = {
    "counting": counting_question,
    "color": color_question,
    "shape": shape_question,
    "position": position_question,
    "existence": existence_question,
}


def _named(scene: Scene, attributes: Sequence[str]) -> list[tuple[int, str]]:
    found = []
    for index in range(len(scene.objects)):
        phrase = referring_phrase(scene, index, attributes)
        if phrase is not None:
            found.append((index, phrase))
    return found


def qa_for_scene(scene: Scene, rng: np.random.Generator, category: str | None = None) -> Question:
    """A question about `scene`: (question, options A-D, answer letter, category).

    With `category=None` a category is drawn uniformly among those the scene can support
    (counting and existence always can). A named category the scene cannot support raises
    ValueError.
    """
    if category is not None:
        if category not in QUESTION_MAKERS:
            raise ValueError(f"unknown question category {category!r}; use one of {UND_CATEGORIES}")
        question = QUESTION_MAKERS[category](scene, rng)
        if question is None:
            raise ValueError(f"this scene supports no {category!r} question")
        return question
    for name in rng.permutation(UND_CATEGORIES):
        question = QUESTION_MAKERS[str(name)](scene, rng)
        if question is not None:
            return question
    raise AssertionError("counting questions always exist")
