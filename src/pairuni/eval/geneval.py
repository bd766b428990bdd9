"""GenEval: the prompt metadata loader and the official per-image rules, from detections.

The rules follow djghosh13/geneval `evaluation/evaluate_images.py` (commit 16f1681), and the
summary `evaluation/summary_scores.py` (commit d927da8):

- Per class, detections above the confidence threshold (0.3; 0.9 for `counting` prompts) are
  sorted by score, most confident first and, among equal scores, the later-listed first (the
  official reversed argsort); at most 16 are kept, and (when `max_overlap` < 1) greedy NMS drops
  boxes that overlap a kept one by IoU >= max_overlap. By default nothing is dropped, as in the
  official run.
- `include` clauses all must hold: the `count` most confident objects of the class exist; if a
  colour is required, at least `count` of them have that colour; if a position is required, each
  of them stands in that relation to every object matched by the clause it refers to.
- `exclude` clauses: the image fails if the class has `count` or more detections.
- A task's score is the fraction of its images judged correct; the overall score is the mean of
  the task scores present (all six in a full run; only those judged in a partial one).

Departure: the official detector (Mask2Former, COCO's 80 classes) looks for every class at once
and classifies colours with CLIP on masked crops; here the pluggable detector is asked for the
prompt's classes only, and colours come from the detection or a `ColorClassifier` on box crops.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from pairuni.configbase import Section
from pairuni.eval.detectors import COLORS, ColorClassifier, Detection, Detector
from pairuni.eval.layout import data_error, not_found, read_jsonl, require_dir
from pairuni.eval.results import BenchmarkResult, Column

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
"""GenEval's six tasks (the `tag` of each prompt), in the paper's column order."""
TASK_HEADERS = ("Single", "Two", "Counting", "Colors", "Position", "Color Attr.")
RELATIONS = ("left of", "right of", "above", "below")


class GenEvalRules(Section):
    """The thresholds of the GenEval judge (the official `--options` of evaluate_images.py)."""

    threshold: float = Field(0.3, ge=0.0, le=1.0)
    """A detection counts when its confidence is above this (all tasks but counting)."""

    counting_threshold: float = Field(0.9, ge=0.0, le=1.0)
    """The confidence threshold for `counting` prompts. The official values are calibrated for
    Mask2Former; an open-vocabulary detector such as OWLv2 scores lower and may need its own."""

    max_objects: int = Field(16, ge=1)
    """At most this many detections are kept per class (the most confident)."""

    max_overlap: float = Field(1.0, gt=0.0, le=1.0)
    """Greedy NMS: a detection overlapping a kept one of the same class with IoU >= this is
    dropped. 1.0 (the official default) disables NMS."""

    position_threshold: float = Field(0.1, ge=0.0)
    """Relative position margin: each axis offset between the centres is reduced by this times
    the two objects' summed size along that axis before the direction is read."""


@dataclass(frozen=True)
class GenEvalPrompt:
    """One GenEval prompt and its checkable specification."""

    id: str
    tag: str
    prompt: str
    include: tuple[dict[str, Any], ...]
    exclude: tuple[dict[str, Any], ...] = ()

    @property
    def class_names(self) -> list[str]:
        """The classes the judge looks at (included and excluded), without repeats."""
        names = [c["class"] for c in (*self.include, *self.exclude)]
        return list(dict.fromkeys(names))

    def metadata(self) -> dict[str, Any]:
        """The prompt as a metadata record (the official `metadata.jsonl` object)."""
        out: dict[str, Any] = {"tag": self.tag, "include": list(self.include)}
        if self.exclude:
            out["exclude"] = list(self.exclude)
        out["prompt"] = self.prompt
        return out


def load_geneval(root: str | Path) -> list[GenEvalPrompt]:
    """The prompts of `evaluation_metadata.jsonl`, with ids `00000`, `00001`, ... in file order
    (the official generation script names each prompt's folder this way)."""
    base = require_dir(root, "geneval")
    candidates = (base / "evaluation_metadata.jsonl", base / "prompts/evaluation_metadata.jsonl")
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise not_found("geneval", base, "no evaluation_metadata.jsonl")
    return [
        parse_prompt(obj, f"{index:05d}", path, f"line {number}")
        for index, (number, obj) in enumerate(read_jsonl(path))
    ]


def parse_prompt(obj: Any, prompt_id: str, path: Path, where: str) -> GenEvalPrompt:
    if not isinstance(obj, dict):
        raise data_error(path, where, "tag", "is missing (the line is not an object)", "")
    tag = obj.get("tag")
    if tag not in TASKS:
        raise data_error(path, where, "tag", f"is {tag!r}", f"expected one of {TASKS}")
    if not isinstance(obj.get("prompt"), str):
        raise data_error(path, where, "prompt", "is missing or not a string", "")
    include = obj.get("include")
    if not isinstance(include, list) or not include:
        raise data_error(path, where, "include", "must be a non-empty list", "")
    for index, clause in enumerate(include):
        check_clause(clause, index, path, f"{where} include[{index}]", allow_extras=True)
    exclude = obj.get("exclude", [])
    if not isinstance(exclude, list):
        raise data_error(path, where, "exclude", "must be a list", "")
    for index, clause in enumerate(exclude):
        check_clause(clause, index, path, f"{where} exclude[{index}]", allow_extras=False)
    return GenEvalPrompt(prompt_id, tag, obj["prompt"], tuple(include), tuple(exclude))


def check_clause(clause: Any, index: int, path: Path, where: str, allow_extras: bool) -> None:
    if not isinstance(clause, dict) or not isinstance(clause.get("class"), str):
        raise data_error(path, where, "class", "is missing or not a string", "")
    count = clause.get("count")
    if not isinstance(count, int) or count < 1:
        raise data_error(path, where, "count", f"is {count!r}", "expected an integer >= 1")
    if not allow_extras:
        return
    if "color" in clause and clause["color"] not in COLORS:
        raise data_error(path, where, "color", f"is {clause['color']!r}", f"expected {COLORS}")
    if "position" in clause:
        pos = clause["position"]
        ok = (
            isinstance(pos, list)
            and len(pos) == 2
            and pos[0] in RELATIONS
            and isinstance(pos[1], int)
            and 0 <= pos[1] < index
        )
        if not ok:
            raise data_error(
                path,
                where,
                "position",
                f"is {pos!r}",
                f"expected [relation, index of an earlier include clause], relation in {RELATIONS}",
            )


# --------------------------------------------------------------------------- geometry


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with the official inclusive-pixel convention (+1)."""

    def area(box: Sequence[float]) -> float:
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def relative_position(a: Sequence[float], b: Sequence[float], margin: float) -> set[str]:
    """The relations of box `a` to box `b` ("left of", "right of", "above", "below").

    Per axis, the centre offset a - b shrinks towards 0 by `margin` x (size of a + size of b) on
    that axis; if both shrunk offsets vanish (< 1e-3) the boxes overlap and no relation holds.
    Otherwise each shrunk offset is divided by the length of the original offset vector, and a
    relation holds when that component exceeds 0.5 in its direction (y grows downwards).
    """
    box_a = np.asarray(a[:4], dtype=float)
    box_b = np.asarray(b[:4], dtype=float)
    offset = (box_a[:2] + box_a[2:]) / 2 - (box_b[:2] + box_b[2:]) / 2
    sizes = np.abs(box_a[2:] - box_a[:2]) + np.abs(box_b[2:] - box_b[:2])
    shrunk = np.maximum(np.abs(offset) - margin * sizes, 0.0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


# --------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class GenEvalJudgement:
    """The verdict on one generated image: correct or not, and why not."""

    prompt_id: str
    tag: str
    correct: bool
    reason: str = ""
    detected: dict[str, list[list[float]]] = field(default_factory=dict)


def keep_detections(
    detections: Iterable[Detection], tag: str, rules: GenEvalRules
) -> dict[str, list[Detection]]:
    """Per class: above the threshold, most confident first, at most max_objects, then NMS."""
    threshold = rules.counting_threshold if tag == "counting" else rules.threshold
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for det in detections:
        if det.score > threshold:
            by_class[det.label].append(det)
    kept: dict[str, list[Detection]] = {}
    for name, dets in by_class.items():
        queue = most_confident_first(dets)[: rules.max_objects]
        chosen: list[Detection] = []
        while queue:
            best = queue.pop(0)
            chosen.append(best)
            if rules.max_overlap < 1.0:
                queue = [d for d in queue if box_iou(best.box, d.box) < rules.max_overlap]
        kept[name] = chosen
    return kept


def most_confident_first(dets: list[Detection]) -> list[Detection]:
    """Highest score first; among equal scores the later-listed first.

    The official order is `np.argsort(scores)[::-1]` (evaluate_images.py, commit 16f1681).
    numpy's default argsort keeps equal scores in their order on up to 16 elements (numpy 1.x
    runs insertion sort there) and on all-equal arrays (numpy 2.4, tried up to 64), so the
    reversal lists the last of them first. It decides which objects a clause checks when the
    detector is exact (ShapesWorld: every score is 1.0). Beyond that numpy leaves the order of
    equal scores unspecified (its SIMD sorts are not stable); this rule then stays the same.
    Python's sort is stable, so sorting the reversed list descending gives exactly this order."""
    return sorted(reversed(dets), key=lambda d: d.score, reverse=True)


def object_colors(
    found: list[Detection],
    class_name: str,
    image: Image.Image | None,
    classifier: ColorClassifier | None,
) -> list[str]:
    if all(d.color is not None for d in found):
        return [d.color for d in found if d.color is not None]
    if classifier is None or image is None:
        raise ValueError(
            f"GenEval needs the colour of each {class_name!r} but the detector gave none; use a "
            "detector that reports colours or pass a colour classifier and the image"
        )
    return classifier.classify(image, [d.box for d in found], class_name)


def judge_image(
    prompt: GenEvalPrompt,
    detections: Iterable[Detection],
    rules: GenEvalRules | None = None,
    image: Image.Image | None = None,
    color_classifier: ColorClassifier | None = None,
) -> GenEvalJudgement:
    """Judge one generated image of `prompt` from its detections, by the official rules."""
    rules = rules or GenEvalRules()
    objects = keep_detections(detections, prompt.tag, rules)
    correct = True
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []
    for clause in prompt.include:
        ok, why = check_include(clause, objects, matched, rules, image, color_classifier)
        correct &= ok
        reasons.extend(why)
    for clause in prompt.exclude:
        present = len(objects.get(clause["class"], []))
        if present >= clause["count"]:
            correct = False
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {present}")
    detected = {k: [list(d.box) for d in v] for k, v in objects.items()}
    return GenEvalJudgement(prompt.id, prompt.tag, correct, "\n".join(reasons), detected)


def check_include(
    clause: Mapping[str, Any],
    objects: Mapping[str, list[Detection]],
    matched: list[list[Detection] | None],
    rules: GenEvalRules,
    image: Image.Image | None,
    classifier: ColorClassifier | None,
) -> tuple[bool, list[str]]:
    """Check one include clause; appends its matched objects (or None) to `matched`."""
    name, count = clause["class"], clause["count"]
    found = list(objects.get(name, []))[:count]
    if len(found) < count:
        matched.append(None)
        return False, [f"expected {name}>={count}, found {len(found)}"]
    if "color" in clause:
        colors = object_colors(found, name, image, classifier)
        if colors.count(clause["color"]) < count:
            matched.append(None)
            seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
            return False, [f"expected {clause['color']} {name}>={count}, found {seen}"]
    if "position" in clause:
        relation, target = clause["position"]
        targets = matched[target]
        if targets is None:
            matched.append(None)
            return False, [f"no target for {name} to be {relation}"]
        for obj in found:
            for other in targets:
                actual = relative_position(obj.box, other.box, rules.position_threshold)
                if relation not in actual:
                    matched.append(None)
                    got = " and ".join(sorted(actual)) or "no relation to"
                    return False, [f"expected {name} {relation} target, found {got} target"]
    matched.append(found)
    return True, []


def score_geneval(judgements: Iterable[GenEvalJudgement]) -> BenchmarkResult:
    """Per-task accuracy over images, the overall score (mean of the tasks present, as the
    official summary_scores.py: all six in a full run), and the shares of correct images and of
    prompts with at least one correct image. `details["missing_tasks"]` names absent tasks: an
    overall over fewer than six is not comparable with published ones."""
    judgements = list(judgements)
    by_task: dict[str, list[bool]] = defaultdict(list)
    by_prompt: dict[str, list[bool]] = defaultdict(list)
    for j in judgements:
        by_task[j.tag].append(j.correct)
        by_prompt[j.prompt_id].append(j.correct)
    metrics: dict[str, float] = {t: sum(v) / len(v) for t, v in by_task.items()}
    present = [t for t in TASKS if t in by_task]
    if present:
        # summary_scores.py averages over the tags its results file holds (commit d927da8).
        metrics["overall"] = float(np.mean([metrics[t] for t in present]))
    if judgements:
        metrics["correct_images"] = sum(j.correct for j in judgements) / len(judgements)
        metrics["correct_prompts"] = sum(any(v) for v in by_prompt.values()) / len(by_prompt)
    columns = [Column(h, t, digits=2) for h, t in zip(TASK_HEADERS, TASKS, strict=True)]
    return BenchmarkResult(
        "GenEval",
        metrics,
        [*columns, Column("Overall", "overall", digits=2)],
        {
            "num_images": len(judgements),
            "num_prompts": len(by_prompt),
            "missing_tasks": [t for t in TASKS if t not in by_task],
        },
    )


# --------------------------------------------------------------------------- running a detector


def evaluate_images(
    prompts: Sequence[GenEvalPrompt],
    images: Mapping[str, Sequence[Image.Image]],
    detector: Detector,
    out_path: str | Path,
    rules: GenEvalRules | None = None,
    color_classifier: ColorClassifier | None = None,
) -> list[GenEvalJudgement]:
    """Detect and judge every image of every prompt, appending one JSON line per image to
    `out_path`; images already judged there (same prompt id and sample index) are skipped, so an
    interrupted run resumes. `images` maps prompt id -> that prompt's generated images."""
    from tqdm import tqdm

    out = Path(out_path)
    done = {(j.prompt_id, index): j for index, j in read_judgements(out)}
    todo = [(p, i, img) for p in prompts for i, img in enumerate(images.get(p.id, []))]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        for prompt, index, image in tqdm(todo, desc="GenEval", unit="image"):
            if (prompt.id, index) in done:
                continue
            detections = detector.detect(image, prompt.class_names)
            verdict = judge_image(prompt, detections, rules, image, color_classifier)
            done[(prompt.id, index)] = verdict
            handle.write(json.dumps(judgement_record(verdict, index)) + "\n")
            handle.flush()
    return [done[(p.id, i)] for p, i, _ in todo]


def judgement_record(j: GenEvalJudgement, index: int) -> dict[str, Any]:
    return {
        "prompt_id": j.prompt_id,
        "sample": index,
        "tag": j.tag,
        "correct": j.correct,
        "reason": j.reason,
        "details": j.detected,
    }


def read_judgements(path: Path) -> Iterator[tuple[int, GenEvalJudgement]]:
    if not path.is_file():
        return
    for number, obj in read_jsonl(path):
        try:
            yield (
                int(obj["sample"]),
                GenEvalJudgement(obj["prompt_id"], obj["tag"], bool(obj["correct"]), obj["reason"]),
            )
        except (KeyError, TypeError, ValueError):
            raise data_error(
                path, f"line {number}", "prompt_id", "record is incomplete", "delete the line"
            ) from None
