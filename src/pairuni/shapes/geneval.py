"""A GenEval-style scorer for ShapesWorld: the generation reward and the generation metric.

It applies the rules of GenEval's `evaluate_images.py` (djghosh13/geneval) to the objects our
detector reads from an image, with shapes as the object classes:

- every `include` clause {"class", "count"} needs at least `count` objects of the class;
- with a "color", the first `count` of those objects must have that colour;
- with a "position" [relation, k], each of those objects must hold the relation to every
  object matched by include clause k (GenEval's `relative_position`, threshold 0.1);
- every `exclude` clause {"class", "count"} fails when `count` or more objects of the class are
  present (so counting prompts need the exact number).

Objects of a class are ranked largest first (ties: top-left first), standing in for GenEval's
detector-confidence order; there are no confidence thresholds, no NMS and no CLIP colour
classifier, since our detector is exact on clean renderings. See docs/shapes.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pairuni.shapes.detect import DetectedObject, detect_objects
from pairuni.shapes.prompts import GENEVAL_TAGS
from pairuni.shapes.scene import relations


@dataclass(frozen=True)
class Verdict:
    """The outcome for one image: all clauses hold, how many do, and why any failed."""

    correct: bool
    clauses_met: int
    clauses_total: int
    reasons: tuple[str, ...]


def evaluate_detections(objects: Sequence[DetectedObject], metadata: Mapping[str, Any]) -> Verdict:
    """Judge detected objects (largest first, as `detect_objects` returns them) against
    GenEval metadata {"tag", "include": [...], "exclude": [...]}."""
    by_class: dict[str, list[DetectedObject]] = defaultdict(list)
    for obj in objects:
        by_class[obj.shape].append(obj)
    reasons: list[str] = []
    matched: list[list[DetectedObject] | None] = []
    met = 0
    includes = list(metadata.get("include", []))
    for clause in includes:
        found = _check_include(clause, by_class, matched, reasons)
        matched.append(found)
        met += found is not None
    excludes = list(metadata.get("exclude", []))
    for clause in excludes:
        present = len(by_class.get(clause["class"], []))
        if present >= clause["count"]:
            reasons.append(
                f"expected fewer than {clause['count']} {clause['class']}, found {present}"
            )
        else:
            met += 1
    total = len(includes) + len(excludes)
    return Verdict(
        correct=met == total, clauses_met=met, clauses_total=total, reasons=tuple(reasons)
    )


def _check_include(
    clause: Mapping[str, Any],
    by_class: Mapping[str, list[DetectedObject]],
    matched: Sequence[list[DetectedObject] | None],
    reasons: list[str],
) -> list[DetectedObject] | None:
    """The objects that satisfy one include clause, or None (with the reason appended)."""
    name, count = clause["class"], clause["count"]
    found = list(by_class.get(name, []))[:count]
    if len(found) < count:
        reasons.append(f"expected at least {count} {name}, found {len(found)}")
        return None
    if "color" in clause:
        colors = [obj.color for obj in found]
        if colors.count(clause["color"]) < count:
            reasons.append(f"expected {count} {clause['color']} {name}, found colours {colors}")
            return None
    if "position" in clause:
        relation, target_index = clause["position"]
        targets = matched[target_index] if target_index < len(matched) else None
        if targets is None:
            reasons.append(f"no target for the {name} to be {relation}")
            return None
        for obj in found:
            for target in targets:
                held = relations(obj.bbox, target.bbox)
                if relation not in held:
                    reasons.append(
                        f"expected {name} {relation} {target.shape}, found {sorted(held) or 'none'}"
                    )
                    return None
    return found


def score_image(image: np.ndarray, metadata: Mapping[str, Any]) -> Verdict:
    """Detect the objects of an RGB uint8 image `(H, W, 3)` and judge them."""
    return evaluate_detections(detect_objects(image), metadata)


def _metadata_list(columns: Mapping[str, Any], n: int) -> list[Mapping[str, Any] | None]:
    if "geneval" not in columns:
        raise KeyError(
            'the ShapesWorld GenEval reward needs a "geneval" column with each prompt\'s '
            "metadata; build the data with `pairuni shapes data`"
        )
    metas = list(columns["geneval"])
    if len(metas) != n:
        raise ValueError(f"got {n} images but {len(metas)} geneval metadata entries")
    return [json.loads(m) if isinstance(m, str) else m for m in metas]


def _score_all(
    prompts: Sequence[str], images: Sequence[Any], columns: Mapping[str, Any]
) -> list[Verdict | None]:
    metas = _metadata_list(columns, len(images))
    verdicts: list[Verdict | None] = []
    for image, meta in zip(images, metas, strict=True):
        if meta is None:
            verdicts.append(None)
            continue
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        verdicts.append(score_image(array, meta))
    return verdicts


def geneval_reward(prompts: list[str], images: list[Any], **columns: Any) -> list[float | None]:
    """1.0 when an image satisfies its prompt under the GenEval rules, else 0.0.

    `columns["geneval"]` holds each prompt's metadata (a dict or its JSON text); None for a
    prompt without metadata gives None (the reward does not apply). Images are PIL images or
    RGB uint8 arrays.
    """
    return [None if v is None else float(v.correct) for v in _score_all(prompts, images, columns)]


def geneval_partial_reward(
    prompts: list[str], images: list[Any], **columns: Any
) -> list[float | None]:
    """The fraction of the prompt's include/exclude clauses that hold, in [0, 1].

    A denser signal than `geneval_reward` (e.g. 0.5 when one of two objects is right); it is 1.0
    exactly when `geneval_reward` is 1.0.
    """
    out: list[float | None] = []
    for v in _score_all(prompts, images, columns):
        out.append(None if v is None else v.clauses_met / max(v.clauses_total, 1))
    return out


def summarize(results: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """GenEval's summary from (tag, correct) pairs: accuracy per tag and `overall`, the
    unweighted mean of the per-tag accuracies (tags with no images are left out)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for tag, correct in results:
        hits[tag].append(bool(correct))
    scores = {tag: float(np.mean(hits[tag])) for tag in GENEVAL_TAGS if tag in hits}
    unknown = set(hits) - set(GENEVAL_TAGS)
    if unknown:
        raise ValueError(f"unknown GenEval tags {sorted(unknown)}; use {', '.join(GENEVAL_TAGS)}")
    if scores:
        scores["overall"] = float(np.mean(list(scores.values())))
    return scores
