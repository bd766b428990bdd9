"""Generation prompts in GenEval's six categories, with GenEval metadata and a scene that fits.

The metadata has GenEval's own layout (its prompts/evaluation_metadata.jsonl), with ShapesWorld
shapes as the object classes:

    {"tag": "position", "prompt": "a photo of a circle left of a square",
     "include": [{"class": "square", "count": 1},
                 {"class": "circle", "count": 1, "position": ["left of", 0]}]}

Counting prompts also carry GenEval's `exclude` clause ({"class", "count": N + 1}) so that the
count must be exact. The scene drawn for a prompt contains exactly the objects it names, with
every attribute the prompt leaves open drawn at random; for position prompts the relation holds
beyond doubt (`clear_relation`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pairuni.shapes.scene import (
    COLORS,
    RELATIONS,
    SHAPE_PLURALS,
    SHAPES,
    ObjectSpec,
    Scene,
    clear_relation,
    place_objects,
)

GENEVAL_TAGS: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
PROMPT_PREFIX = "a photo of"
"""GenEval's template ("a photo of a cow"), kept so prompts read like the real benchmark's."""

GenerationSample = tuple[str, dict[str, Any], Scene]
"""(prompt, GenEval metadata, a scene that satisfies the prompt)."""


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _two_shapes(rng: np.random.Generator) -> tuple[str, str]:
    first, second = rng.choice(SHAPES, size=2, replace=False)
    return str(first), str(second)


def single_object(rng: np.random.Generator) -> GenerationSample:
    shape = str(rng.choice(SHAPES))
    meta = {"include": [{"class": shape, "count": 1}]}
    return f"{PROMPT_PREFIX} {_a(shape)}", meta, place_objects([ObjectSpec(shape)], rng)


def two_object(rng: np.random.Generator) -> GenerationSample:
    first, second = _two_shapes(rng)
    meta = {"include": [{"class": first, "count": 1}, {"class": second, "count": 1}]}
    scene = place_objects([ObjectSpec(first), ObjectSpec(second)], rng)
    return f"{PROMPT_PREFIX} {_a(first)} and {_a(second)}", meta, scene


def counting(rng: np.random.Generator) -> GenerationSample:
    shape = str(rng.choice(SHAPES))
    count = int(rng.choice(list(NUMBER_WORDS)))
    meta = {
        "include": [{"class": shape, "count": count}],
        "exclude": [{"class": shape, "count": count + 1}],
    }
    scene = place_objects([ObjectSpec(shape)] * count, rng)
    return f"{PROMPT_PREFIX} {NUMBER_WORDS[count]} {SHAPE_PLURALS[shape]}", meta, scene


def colors(rng: np.random.Generator) -> GenerationSample:
    shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
    meta = {"include": [{"class": shape, "count": 1, "color": color}]}
    scene = place_objects([ObjectSpec(shape, color)], rng)
    return f"{PROMPT_PREFIX} {_a(f'{color} {shape}')}", meta, scene


def position(rng: np.random.Generator, max_tries: int = 1000) -> GenerationSample:
    """'a photo of a A <relation> a B': B is include[0], A carries ["<relation>", 0]."""
    subject, target = _two_shapes(rng)
    relation = str(rng.choice(RELATIONS))
    meta = {
        "include": [
            {"class": target, "count": 1},
            {"class": subject, "count": 1, "position": [relation, 0]},
        ]
    }
    for _ in range(max_tries):
        scene = place_objects([ObjectSpec(subject), ObjectSpec(target)], rng)
        a, b = scene.objects
        if clear_relation(a.box, b.box) == relation:
            prompt = f"{PROMPT_PREFIX} {_a(subject)} {relation} {_a(target)}"
            return prompt, meta, scene
    raise RuntimeError(f"no scene with a {subject} clearly {relation} a {target} in {max_tries}")


def color_attr(rng: np.random.Generator) -> GenerationSample:
    first, second = _two_shapes(rng)
    color_a, color_b = (str(c) for c in rng.choice(list(COLORS), size=2, replace=False))
    meta = {
        "include": [
            {"class": first, "count": 1, "color": color_a},
            {"class": second, "count": 1, "color": color_b},
        ]
    }
    scene = place_objects([ObjectSpec(first, color_a), ObjectSpec(second, color_b)], rng)
    prompt = f"{PROMPT_PREFIX} {_a(f'{color_a} {first}')} and {_a(f'{color_b} {second}')}"
    return prompt, meta, scene


_MAKERS = {
    "single_object": single_object,
    "two_object": two_object,
    "counting": counting,
    "colors": colors,
    "position": position,
    "color_attr": color_attr,
}


def sample_generation(rng: np.random.Generator, tag: str) -> GenerationSample:
    """A prompt of GenEval category `tag`, its metadata (with "tag" and "prompt") and a scene."""
    if tag not in _MAKERS:
        raise ValueError(f"unknown GenEval tag {tag!r}; use one of {', '.join(GENEVAL_TAGS)}")
    prompt, meta, scene = _MAKERS[tag](rng)
    return prompt, {"tag": tag, **meta, "prompt": prompt}, scene
