"""GenEval: the metadata loader and the official per-image rules, against hand-worked cases."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from pairuni.eval.detectors import Box, Detection
from pairuni.eval.geneval import (
    GenEvalJudgement,
    GenEvalPrompt,
    GenEvalRules,
    box_iou,
    evaluate_images,
    judge_image,
    keep_detections,
    load_geneval,
    relative_position,
    score_geneval,
)
from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # centres (5,5) and (25,5): offset (-20,0); shrunk x = -(20 - 0.1*20) = -18; dx = -0.9
        ((0, 0, 10, 10), (20, 0, 30, 10), {"left of"}),
        ((20, 0, 30, 10), (0, 0, 10, 10), {"right of"}),
        # offset (-12,-12), shrunk (-10,-10), / |offset| 16.97 -> (-0.59, -0.59): both
        ((0, 0, 10, 10), (12, 12, 22, 22), {"left of", "above"}),
        ((0, 20, 10, 30), (0, 0, 10, 10), {"below"}),
        # offset (-1, 0): the margin 0.1 * 20 = 2 swallows it -> no relation
        ((0, 0, 10, 10), (1, 0, 11, 10), set()),
        # offset (-30,-5), shrunk (-28,-3), / 30.41 -> dx -0.92, dy -0.10: left only
        ((0, 0, 10, 10), (30, 5, 40, 15), {"left of"}),
    ],
)
def test_relative_position(a: Box, b: Box, expected: set[str]) -> None:
    assert relative_position(a, b, margin=0.1) == expected


def test_iou_uses_inclusive_pixels() -> None:
    # Each box covers 10 x 10 pixels; they share columns 5..9 -> 50 / (100 + 100 - 50).
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0


def prompt(tag: str, include: list[dict], exclude: list[dict] | None = None) -> GenEvalPrompt:
    return GenEvalPrompt("00000", tag, "a prompt", tuple(include), tuple(exclude or ()))


def det(label: str, score: float, box: Box = (0, 0, 10, 10), color: str | None = None):
    return Detection(label, box, score, color)


def test_single_object_threshold_is_strict() -> None:
    p = prompt("single_object", [{"class": "dog", "count": 1}])
    assert judge_image(p, [det("dog", 0.35)]).correct
    verdict = judge_image(p, [det("dog", 0.3)])  # not above 0.3
    assert not verdict.correct and verdict.reason == "expected dog>=1, found 0"


def test_counting_uses_its_own_threshold_and_the_exclude_clause() -> None:
    p = prompt("counting", [{"class": "cat", "count": 3}], [{"class": "cat", "count": 4}])
    three = [det("cat", s) for s in (0.95, 0.92, 0.91)]
    assert judge_image(p, [*three, det("cat", 0.5)]).correct  # 0.5 is below 0.9
    four = judge_image(p, [*three, det("cat", 0.93)])
    assert not four.correct and "expected cat<4, found 4" in four.reason
    assert not judge_image(p, three[:2]).correct


def test_colour_is_checked_on_the_most_confident_objects() -> None:
    p = prompt("colors", [{"class": "car", "count": 1, "color": "blue"}])
    assert judge_image(p, [det("car", 0.8, color="blue")]).correct
    # The top-1 car is red, so the blue one further down does not count.
    verdict = judge_image(p, [det("car", 0.9, color="red"), det("car", 0.8, color="blue")])
    assert not verdict.correct and "found 1 red" in verdict.reason


class FixedColours:
    """A colour classifier that answers from a table, recording what it was asked."""

    def __init__(self, colours: list[str]) -> None:
        self.colours = colours
        self.calls: list[tuple[int, str]] = []

    def classify(self, image: Image.Image, boxes: Sequence[Box], class_name: str) -> list[str]:
        self.calls.append((len(boxes), class_name))
        return self.colours[: len(boxes)]


def test_colour_classifier_is_asked_when_detections_have_no_colour() -> None:
    p = prompt("color_attr", [{"class": "bus", "count": 1, "color": "yellow"}])
    with pytest.raises(ValueError, match="colour classifier"):
        judge_image(p, [det("bus", 0.9)])
    image = Image.new("RGB", (20, 20))
    classifier = FixedColours(["yellow"])
    assert judge_image(p, [det("bus", 0.9)], image=image, color_classifier=classifier).correct
    assert classifier.calls == [(1, "bus")]


POSITION = prompt(
    "position",
    [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}],
)


def test_position_relative_to_an_earlier_clause() -> None:
    dog, cat_right, cat_left = (0, 0, 10, 10), (20, 0, 30, 10), (-20, 0, -10, 10)
    assert judge_image(POSITION, [det("dog", 0.9, dog), det("cat", 0.9, cat_right)]).correct
    wrong = judge_image(POSITION, [det("dog", 0.9, dog), det("cat", 0.9, cat_left)])
    assert not wrong.correct and "expected cat right of target, found left of" in wrong.reason
    no_dog = judge_image(POSITION, [det("cat", 0.9, cat_right)])
    assert "no target for cat to be right of" in no_dog.reason


def test_equal_scores_keep_the_later_listed_first() -> None:
    # The official np.argsort(scores)[::-1]: scores (a .5, b .9, c .5, d .9) -> d, b, c, a.
    dets = [det("cup", s, (20 * i, 0, 20 * i + 10, 10)) for i, s in enumerate((0.5, 0.9, 0.5, 0.9))]
    kept = keep_detections(dets, "single_object", GenEvalRules())["cup"]
    assert [d.box[0] for d in kept] == [60, 20, 40, 0]


def test_tied_exact_detections_judge_the_later_listed_object() -> None:
    # An exact detector (ShapesWorld) scores everything 1.0: the later car is the one checked.
    p = prompt("colors", [{"class": "car", "count": 1, "color": "blue"}])
    red, blue = det("car", 1.0, color="red"), det("car", 1.0, color="blue")
    assert judge_image(p, [red, blue]).correct
    verdict = judge_image(p, [blue, red])
    assert not verdict.correct and "found 1 red" in verdict.reason
    # Position: of two tied dogs the later one is the target, so the cat is right of it or not.
    dog_left, dog_right, cat = (0, 0, 10, 10), (60, 0, 70, 10), (30, 0, 40, 10)
    tied = [det("dog", 1.0, dog_right), det("dog", 1.0, dog_left), det("cat", 1.0, cat)]
    assert judge_image(POSITION, tied).correct
    tied[:2] = tied[1::-1]
    assert "expected cat right of target, found left of" in judge_image(POSITION, tied).reason


def test_max_objects_keeps_the_later_listed_of_tied_detections() -> None:
    # 17 tied cups, at most 16 kept: the first-listed one is dropped, so it does not count.
    p = prompt("colors", [{"class": "cup", "count": 16, "color": "red"}])
    cups = [det("cup", 0.95, (20 * i, 0, 20 * i + 10, 10), "red") for i in range(16)]
    assert judge_image(p, [det("cup", 0.95, color="green"), *cups]).correct
    assert not judge_image(p, [*cups, det("cup", 0.95, color="green")]).correct


def test_max_objects_and_nms() -> None:
    many = prompt("counting", [{"class": "cup", "count": 17}])
    cups = [det("cup", 0.95, (20 * i, 0, 20 * i + 10, 10)) for i in range(20)]
    assert not judge_image(many, cups).correct  # at most 16 are kept
    assert judge_image(many, cups, GenEvalRules(max_objects=20)).correct

    two = prompt("two_object", [{"class": "dog", "count": 2}])
    overlapping = [det("dog", 0.9, (0, 0, 9, 9)), det("dog", 0.8, (1, 0, 10, 9))]  # IoU 0.82
    assert judge_image(two, overlapping).correct  # NMS off by default
    assert not judge_image(two, overlapping, GenEvalRules(max_overlap=0.5)).correct


def test_score_per_task_and_overall() -> None:
    verdicts = [
        ("p0", "single_object", True),
        ("p0", "single_object", False),
        ("p1", "two_object", True),
        ("p2", "counting", False),
        ("p3", "colors", True),
        ("p4", "position", True),
        ("p4", "position", True),
        ("p5", "color_attr", False),
    ]
    result = score_geneval(GenEvalJudgement(p, t, c) for p, t, c in verdicts)
    m = result.metrics
    # Tasks: 0.5, 1, 0, 1, 1, 0 -> overall 3.5 / 6.
    assert m["overall"] == pytest.approx(3.5 / 6)
    assert m["correct_images"] == pytest.approx(5 / 8)
    assert m["correct_prompts"] == pytest.approx(4 / 6)
    assert result.markdown_row("m") == "| m | 0.50 | 1.00 | 0.00 | 1.00 | 1.00 | 0.00 | 0.58 |"
    assert result.details["missing_tasks"] == []


def test_partial_run_overall_is_the_mean_of_the_tasks_present() -> None:
    # summary_scores.py averages the tags its results file holds: colors 1/2, position 1.
    verdicts = [("p0", "colors", True), ("p0", "colors", False), ("p1", "position", True)]
    partial = score_geneval(GenEvalJudgement(p, t, c) for p, t, c in verdicts)
    assert partial.metrics["overall"] == pytest.approx(0.75)  # not the mean over images, 2/3
    missing = ["single_object", "two_object", "counting", "color_attr"]
    assert partial.details["missing_tasks"] == missing
    assert partial.markdown_row("m") == "| m | – | – | – | 0.50 | 1.00 | – | 0.75 |"
    assert "overall" not in score_geneval([]).metrics


METADATA = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"},
    {
        "tag": "position",
        "include": [
            {"class": "dog", "count": 1},
            {"class": "cat", "count": 1, "position": ["left of", 0]},
        ],
        "prompt": "a cat left of a dog",
    },
]


def write_metadata(root: Path, rows: list[dict]) -> None:
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    (root / "prompts" / "evaluation_metadata.jsonl").write_text(text, encoding="utf-8")


def test_loader(tmp_path: Path) -> None:
    write_metadata(tmp_path, METADATA)
    prompts = load_geneval(tmp_path)
    assert [p.id for p in prompts] == ["00000", "00001"]
    assert prompts[1].class_names == ["dog", "cat"]
    assert prompts[1].metadata() == METADATA[1]


def test_loader_errors_name_line_and_field(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match="djghosh13/geneval"):
        load_geneval(tmp_path)
    bad = [METADATA[0], {**METADATA[0], "tag": "colour"}]
    write_metadata(tmp_path, bad)
    with pytest.raises(BenchmarkDataError, match=r"line 2: field 'tag' is 'colour'"):
        load_geneval(tmp_path)
    forward = {
        "tag": "position",
        "include": [{"class": "cat", "count": 1, "position": ["left of", 1]}],
        "prompt": "x",
    }
    write_metadata(tmp_path, [forward])
    with pytest.raises(BenchmarkDataError, match=r"line 1 include\[0\]: field 'position'"):
        load_geneval(tmp_path)


class CountingDetector:
    """Finds one confident object of every class asked for, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: Image.Image, class_names: Sequence[str]) -> list[Detection]:
        self.calls += 1
        return [det(name, 0.9, (30 * i, 0, 30 * i + 10, 10)) for i, name in enumerate(class_names)]


def test_evaluate_images_writes_incrementally_and_resumes(tmp_path: Path) -> None:
    write_metadata(tmp_path, METADATA)
    prompts = load_geneval(tmp_path)
    images = {p.id: [Image.new("RGB", (64, 64))] * 2 for p in prompts}
    out = tmp_path / "results.jsonl"
    detector = CountingDetector()
    first = evaluate_images(prompts, images, detector, out)
    # single_object right; position wrong: the cat (x 30..40) is right of the dog, not left.
    assert [j.correct for j in first] == [True, True, False, False]
    assert detector.calls == 4 and len(out.read_text().splitlines()) == 4
    again = evaluate_images(prompts, images, detector, out)
    assert detector.calls == 4  # everything was already judged
    assert [j.correct for j in again] == [j.correct for j in first]
