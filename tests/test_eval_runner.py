"""The `pairuni eval` runner: generation through a policy, caching, resume, rescoring, the result
files, compare, and the ShapesWorld detector adapter.

Two kinds of end-to-end runs on tiny benchmarks written by the tests:
- a scripted policy with known answers and known drawings, so every score is worked out by hand;
- the tiny random Janus checkpoint, for the real generation path, determinism and resume.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from pairuni.eval.benchmarks import parse_benchmarks
from pairuni.eval.config import EvalConfig
from pairuni.eval.errors import EvalSetupError
from pairuni.eval.generation import batch_seed
from pairuni.eval.geneval import most_confident_first
from pairuni.eval.layout import BenchmarkNotFoundError
from pairuni.eval.mmstar import load_mmstar
from pairuni.eval.prompts import compose_images, mmstar_question
from pairuni.eval.runner import run_eval
from pairuni.eval.tables import compare_markdown, compare_results
from pairuni.shapes.geneval_detector import ShapesDetector
from pairuni.shapes.render import draw_shape
from pairuni.shapes.scene import BACKGROUND, COLORS

# --------------------------------------------------------------------------- tiny benchmarks


def png(color: tuple[int, int, int] = (0, 90, 0), size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MMSTAR_ROWS = [  # (index, options, gold)
    (0, "A: red, B: blue, C: green, D: white", "B"),
    (1, "A: cat, B: dog, C: bird, D: fish", "C"),
    (2, "A: 12, B: 13, C: 14, D: 15", "A"),
    (3, "A: 12, B: 13, C: 14, D: 15", "D"),
    (4, "A: one, B: two, C: three, D: four", "B"),
]
POPE_ROWS = [  # (question_id, split, gold)
    (1, "random", "yes"),
    (2, "random", "no"),
    (3, "adversarial", "yes"),
    (4, "adversarial", "no"),
    (5, "popular", "yes"),
]
GENEVAL_ROWS = [
    {"tag": "single_object", "include": [{"class": "square", "count": 1}],
     "prompt": "a photo of a square"},
    {"tag": "two_object",
     "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
     "prompt": "a photo of a circle and a square"},
    {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}],
     "prompt": "a photo of a red square"},
    {"tag": "counting", "include": [{"class": "circle", "count": 2}],
     "exclude": [{"class": "circle", "count": 3}], "prompt": "a photo of two circles"},
]  # fmt: skip


def write_mmstar(root: Path) -> None:
    rows = [
        {
            "index": index,
            "question": f"What is shown?\nOptions: {options}",
            "image": {"bytes": png((index * 40, 0, 0)), "path": None},
            "answer": gold,
            "category": "coarse perception",
            "l2_category": "coarse perception / sub",
        }
        for index, options, gold in MMSTAR_ROWS
    ]
    schema = pa.schema(
        [("index", pa.int64()), ("question", pa.string()), ("image", IMAGE_TYPE),
         ("answer", pa.string()), ("category", pa.string()), ("l2_category", pa.string())]
    )  # fmt: skip
    root.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "mmstar.parquet")


def write_pope(root: Path) -> None:
    rows = [
        {
            "question_id": str(qid),
            "question": "Is there a dog in the image? Please answer yes or no.",
            "answer": gold,
            "image": {"bytes": png((0, 0, qid * 30)), "path": None},
            "category": split,
        }
        for qid, split, gold in POPE_ROWS
    ]
    (root / "Full").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "Full" / "test-0.parquet")


def write_mme(root: Path) -> None:
    """existence: 2 images x (Yes, No); count: 1 image x (Yes, No)."""
    for subtask, names in (("existence", ["000", "001"]), ("count", ["000"])):
        for name in names:
            (root / subtask).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 6), (9, 9, 9)).save(root / subtask / f"{name}.png")
            (root / subtask / f"{name}.txt").write_text(
                "Is there a dog? Please answer yes or no.\tYes\n"
                "Is there a cat? Please answer yes or no.\tNo\n",
                encoding="utf-8",
            )


def write_geneval(root: Path) -> None:
    root.mkdir(parents=True)
    text = "".join(json.dumps(row) + "\n" for row in GENEVAL_ROWS)
    (root / "evaluation_metadata.jsonl").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    write_mmstar(root / "mmstar")
    write_pope(root / "pope")
    write_mme(root / "mme")
    write_geneval(root / "geneval")
    return root


BENCHMARKS = "mmstar,pope,mme,geneval"


def eval_config(data_root: Path, **overrides: Any) -> EvalConfig:
    settings: dict[str, Any] = {
        "data_root": data_root,
        "detector": "shapes",
        "und_batch_size": 2,
        "gen_batch_size": 2,
        "geneval_images_per_prompt": 2,
        "rollout": {"max_new_tokens": 4},
    }
    return EvalConfig(**{**settings, **overrides})


# --------------------------------------------------------------------------- a scripted policy


def draw(objects: Sequence[tuple[str, str, tuple[int, int, int, int]]]) -> Image.Image:
    """A 64 px ShapesWorld-style image: (shape, colour, exclusive pixel box) on the grey ground."""
    image = Image.new("RGB", (64, 64), BACKGROUND)
    for shape, color, box in objects:
        draw_shape(ImageDraw.Draw(image), shape, box, COLORS[color])
    return image


LEFT, RIGHT = (4, 20, 24, 40), (36, 20, 56, 40)


def scripted_drawing(prompt: str, k: int) -> Image.Image:
    """What the scripted policy draws for sample k of a prompt (judged by hand below)."""
    if prompt == "a photo of a square":
        return draw([("square", "green", LEFT)])  # right
    if prompt == "a photo of a circle and a square":
        return draw([("circle", "blue", LEFT)])  # no square: wrong
    if prompt == "a photo of a red square":
        return draw([("square", "red" if k % 2 == 0 else "blue", LEFT)])  # right, then wrong
    if prompt == "a photo of two circles":
        return draw([("circle", "yellow", LEFT), ("circle", "yellow", RIGHT)])  # right
    return draw([])


class ScriptedPolicy:
    """Answers every question with `answer`, draws `scripted_drawing`; records each call."""

    device = "cpu"

    def __init__(self, answer: str | Callable[[str], str] = "B") -> None:
        self.answer = answer if callable(answer) else lambda question: answer
        self.text_calls: list[tuple[list[str], int]] = []
        self.image_calls: list[tuple[list[str], int]] = []
        self.sizes: list[tuple[int, int]] = []

    def rollout_text(self, images, questions, num_samples=1, *, options=None, greedy=False,
                     generator=None):  # fmt: skip
        self.sizes += [im.size for im in images]
        self.text_calls.append((list(questions), generator.initial_seed()))
        return SimpleNamespace(
            texts=[self.answer(q) for q in questions for _ in range(num_samples)]
        )

    def rollout_image(self, prompts, num_samples=1, *, greedy=False, generator=None, decode=True):
        self.image_calls.append((list(prompts), generator.initial_seed()))
        images = [scripted_drawing(p, k) for p in prompts for k in range(num_samples)]
        return SimpleNamespace(images=images)


def sha_seed(seed: int, benchmark: str, first_id: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{benchmark}\x00{first_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def test_scripted_run_scores_are_the_hand_computed_ones(data_root: Path, tmp_path: Path) -> None:
    cfg = eval_config(data_root, seed=7)
    # "B" to the multiple-choice questions, "Yes" to the yes/no ones
    policy = ScriptedPolicy(lambda q: "B" if q.endswith("choices directly.") else "Yes")
    out = tmp_path / "run"
    outcome = run_eval(
        cfg, model_path=None, out_dir=out, benchmarks=BENCHMARKS, policy=policy, name="m"
    )
    assert not outcome.stopped and outcome.batches == 3 + 3 + 3 + 2
    results = json.loads((out / "results.json").read_text())
    bench = results["benchmarks"]
    # MMStar: "B" is right for questions 0 and 4 of 5
    assert bench["mmstar"]["metrics"]["acc"] == pytest.approx(2 / 5)
    # POPE, all "yes": random and adversarial have tp 1, fp 1 -> P 1/2, R 1, F1 2/3; popular F1 1
    assert bench["pope"]["metrics"]["mean/f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert bench["pope"]["metrics"]["all/yes_ratio"] == 1.0
    # MME, all yes: per subtask acc 1/2, acc+ 0 -> score 50
    assert bench["mme"]["metrics"]["existence/score"] == pytest.approx(50.0)
    assert bench["mme"]["metrics"]["count/score"] == pytest.approx(50.0)
    assert "perception_total" not in bench["mme"]["metrics"]  # 2 of 10 subtasks
    # GenEval, 2 images a prompt: single 2/2, two 0/2, colors 1/2, counting 2/2
    geneval = bench["geneval"]["metrics"]
    assert geneval["single_object"] == 1.0 and geneval["two_object"] == 0.0
    assert geneval["colors"] == 0.5 and geneval["counting"] == 1.0
    assert geneval["correct_images"] == pytest.approx(5 / 8)
    assert geneval["correct_prompts"] == pytest.approx(3 / 4)
    # the official overall is the mean of the tasks present (position and color_attr were not
    # asked), and results.md says it is partial
    assert geneval["overall"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)

    # the prompts sent: VLMEvalKit's formats
    questions = [q for qs, _ in policy.text_calls for q in qs]
    assert questions[0] == (
        "What is shown?\nA. red\nB. blue\nC. green\nD. white\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    pope_question = (
        "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    )
    assert questions[5:10] == [pope_question] * 5
    # batches of 2 in loader order, each with the generator seeded from its first sample id
    assert [len(qs) for qs, _ in policy.text_calls] == [2, 2, 1, 2, 2, 1, 2, 2, 2]
    assert policy.text_calls[1][1] == sha_seed(7, "mmstar", "2")
    assert policy.image_calls[1] == (
        ["a photo of a red square", "a photo of two circles"],
        sha_seed(7, "geneval", "00002"),
    )

    # files: predictions, images in GenEval's official layout, tables
    lines = (out / "pope" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [
        "random/1", "random/2", "adversarial/3", "adversarial/4", "popular/5"
    ]  # fmt: skip
    folder = out / "geneval" / "images" / "00002"
    assert json.loads((folder / "metadata.jsonl").read_text()) == GENEVAL_ROWS[2]
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    markdown = (out / "results.md").read_text()
    assert (
        "| Model | MMStar | MME(P) | POPE |\n|---|---|---|---|\n| m | 40.0 | – | 77.8 |" in markdown
    )
    assert "| m | 1.00 | 0.00 | 1.00 | 0.50 | – | – | 0.62 |" in markdown
    assert "Overall over 4 of 6 tasks (missing: position, color_attr)" in markdown
    assert "Protocol: `official`" in markdown  # which protocol made the understanding table
    assert "| CFG | `5.0` |" in markdown and "| Seed | `7` |" in markdown
    assert '| System prompt | `""` |' in markdown  # none, as VLMEvalKit runs Janus


def test_rescore_needs_no_model_and_reads_edited_outputs(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = eval_config(data_root)
    out = tmp_path / "run"
    run_eval(
        cfg, model_path=None, out_dir=out, benchmarks="mmstar,geneval", policy=ScriptedPolicy()
    )
    first = json.loads((out / "results.json").read_text())
    assert first["benchmarks"]["mmstar"]["metrics"]["acc"] == pytest.approx(2 / 5)  # gold B twice

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("--rescore must not load a model")

    monkeypatch.setattr("pairuni.eval.generation.load_policy", no_model)
    monkeypatch.setattr("pairuni.policy.janus.JanusPolicy.load", no_model)
    # answer question 1 (gold C) right by hand; GenEval is re-detected from the saved PNGs
    predictions = out / "mmstar" / "predictions.jsonl"
    edited = predictions.read_text().replace(
        '"id": "1", "response": "B"', '"id": "1", "response": "C"'
    )
    predictions.write_text(edited)
    judgements = out / "geneval" / "judgements.jsonl"
    verdicts = [json.loads(line) for line in judgements.read_text().splitlines()]
    assert sum(v["correct"] for v in verdicts) == 5  # 5 of the 8 images are right
    # stale verdicts (every image right) that a rescore must not reuse
    judgements.write_text("".join(json.dumps({**v, "correct": True}) + "\n" for v in verdicts))
    outcome = run_eval(cfg, model_path=None, out_dir=out, rescore=True)
    again = outcome.results["benchmarks"]
    assert again["mmstar"]["metrics"]["acc"] == pytest.approx(3 / 5)
    assert again["geneval"]["metrics"] == first["benchmarks"]["geneval"]["metrics"]
    assert len(judgements.read_text().splitlines()) == 8


def fake_checkpoint(root: Path) -> Path:
    """The files `check_checkpoint_dir` asks for, empty (for runs that must not load them)."""
    root.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json"):  # fmt: skip
        (root / name).write_text("{}")
    return root


def test_a_finished_run_loads_no_model_and_a_subset_is_flagged(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = eval_config(data_root, limit=2)
    out = tmp_path / "run"
    checkpoint = fake_checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr("pairuni.eval.generation.load_policy", lambda *a: ScriptedPolicy())
    run_eval(cfg, model_path=checkpoint, out_dir=out, benchmarks="mmstar,geneval")
    assert len((out / "mmstar" / "predictions.jsonl").read_text().splitlines()) == 2
    assert len((out / "geneval" / "predictions.jsonl").read_text().splitlines()) == 2
    assert "**Subset:** only the first 2 samples" in (out / "results.md").read_text()

    def no_model(*args: object) -> None:
        raise AssertionError("nothing is missing, so no model may be loaded")

    monkeypatch.setattr("pairuni.eval.generation.load_policy", no_model)
    again = run_eval(cfg, model_path=checkpoint, out_dir=out, benchmarks="mmstar,geneval")
    assert again.batches == 0 and set(again.results["benchmarks"]) == {"mmstar", "geneval"}


def test_changed_settings_refuse_to_resume(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_eval(eval_config(data_root), model_path=None, out_dir=out, benchmarks="mmstar",
             policy=ScriptedPolicy())  # fmt: skip
    policy = ScriptedPolicy()
    with pytest.raises(EvalSetupError, match=r"eval\.seed: 0 in the run, 3 now"):
        run_eval(eval_config(data_root, seed=3), model_path=None, out_dir=out,
                 benchmarks="mmstar", policy=policy)  # fmt: skip
    assert policy.text_calls == []


def mmmu_row(sample_id: str, images: int, answer: str) -> dict:
    row: dict[str, Any] = {
        "id": sample_id,
        "question": "Compare <image 1> and <image 2>." if images == 2 else "What is <image 1>?",
        "options": "['red', 'blue']",
        "answer": answer,
        "question_type": "multiple-choice",
    }
    for k in range(1, 8):
        size = (10 * k, 20)  # image 1 is 10 x 20, image 2 is 20 x 20
        row[f"image_{k}"] = {"bytes": png(size=size), "path": None} if k <= images else None
    return row


def test_mmmu_questions_with_several_images_get_one_composed_image(tmp_path: Path) -> None:
    rows = [mmmu_row("validation_Art_1", 2, "B"), mmmu_row("validation_Art_2", 1, "A")]
    folder = tmp_path / "mmmu" / "Art"
    folder.mkdir(parents=True)
    fields = [(k, pa.string()) for k in rows[0] if not k.startswith("image_")]
    fields += [(f"image_{k}", IMAGE_TYPE) for k in range(1, 8)]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)),
                   folder / "validation-00000-of-00001.parquet")  # fmt: skip

    policy = ScriptedPolicy(answer="(B)")
    outcome = run_eval(eval_config(tmp_path), model_path=None, out_dir=tmp_path / "run",
                       benchmarks="mmmu", policy=policy)  # fmt: skip
    assert policy.sizes == [(10 + 20, 20), (10, 20)]  # side by side; a single image as it is
    question = policy.text_calls[0][0][0]
    # the official llava1.5 template: no blank line between the question and the options
    assert question == (
        "Compare <image 1> and <image 2>.\n(A) red\n(B) blue\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert outcome.results["benchmarks"]["mmmu"]["metrics"]["acc"] == 0.5  # "(B)": right, wrong


class FixedJudge:
    """A WISE judge that scores by prompt id: (consistency, realism, aesthetic quality)."""

    def __init__(self, scores: dict[int, tuple[int, int, int]]) -> None:
        self.scores = scores
        self.images: list[bytes] = []

    def judge(self, prompt: Any, image: Any) -> Any:
        from pairuni.eval.wise import WiseJudgement

        self.images.append(image)
        c, r, a = self.scores[prompt.prompt_id]
        return WiseJudgement(prompt.prompt_id, prompt.category, c, r, a, "scripted")


def test_wise_images_are_judged_once_and_scored(tmp_path: Path) -> None:
    items = [
        {"prompt_id": 1, "Prompt": "a photo of a square", "Explanation": "e", "Subcategory": "s"},
        {"prompt_id": 950, "Prompt": "a photo of two circles", "Explanation": "e",
         "Subcategory": "s"},
    ]  # fmt: skip
    (tmp_path / "wise" / "data").mkdir(parents=True)
    (tmp_path / "wise" / "data" / "natural_science.json").write_text(json.dumps(items))
    judge = FixedJudge({1: (2, 1, 0), 950: (0, 2, 2)})
    cfg = eval_config(tmp_path, judge={"model": "local-vlm"})
    run = dict(model_path=None, out_dir=tmp_path / "run", benchmarks="wise", judge=judge)
    outcome = run_eval(cfg, policy=ScriptedPolicy(), **run)  # type: ignore[arg-type]
    metrics = outcome.results["benchmarks"]["wise"]["metrics"]
    assert metrics["CULTURE"] == pytest.approx((0.7 * 2 + 0.2 * 1 + 0.1 * 0) / 2)
    assert metrics["CHEMISTRY"] == pytest.approx((0.7 * 0 + 0.2 * 2 + 0.1 * 2) / 2)
    assert all(image.startswith(b"\x89PNG") for image in judge.images)  # the saved files
    assert (tmp_path / "run" / "wise" / "images" / "950.png").is_file()
    assert "Published WISE scores use gpt-4o-2024-05-13" in outcome.paths.results_md.read_text()
    run_eval(cfg, policy=ScriptedPolicy(), rescore=True, **run)  # type: ignore[arg-type]
    assert len(judge.images) == 2  # judgements are paid calls: a rescore reuses them


# ------------------------------------------------------------------ errors before generation


def test_unknown_benchmark_lists_the_valid_ones() -> None:
    with pytest.raises(EvalSetupError) as info:
        parse_benchmarks("mmstar,mmbench")
    assert "'mmbench'" in str(info.value)
    assert "mmmu, mmstar, mme, pope, geneval, wise" in str(info.value)
    assert parse_benchmarks(" MME, pope,mme ") == ["mme", "pope"]


def test_missing_directory_error_surfaces_unchanged(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError) as expected:
        list(load_mmstar(tmp_path / "mmstar"))
    policy = ScriptedPolicy()
    with pytest.raises(BenchmarkNotFoundError) as info:
        run_eval(eval_config(tmp_path), model_path=None, out_dir=tmp_path / "run",
                 benchmarks="mmstar", policy=policy)  # fmt: skip
    assert str(info.value) == str(expected.value)
    assert policy.text_calls == [] and not (tmp_path / "run").exists()


def test_missing_detector_or_judge_is_named_before_generation(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = ScriptedPolicy()
    cfg = eval_config(data_root, detector="owlv2")
    with pytest.raises(EvalSetupError, match=r"eval\.detector_dir is not set"):
        run_eval(cfg, model_path=None, out_dir=tmp_path / "a", benchmarks="mmstar,geneval",
                 policy=policy)  # fmt: skip
    wise = tmp_path / "wise-only"
    (wise / "wise").mkdir(parents=True)
    item = {"prompt_id": 1, "Prompt": "p", "Explanation": "e", "Subcategory": "s"}
    (wise / "wise" / "cultural_common_sense.json").write_text(json.dumps([item]))
    monkeypatch.delenv("PAIRUNI_TEST_KEY", raising=False)
    cfg = eval_config(wise, judge={"api_key_env": "PAIRUNI_TEST_KEY"})
    with pytest.raises(EvalSetupError, match=r"PAIRUNI_TEST_KEY \(eval\.judge\.api_key_env\)"):
        run_eval(cfg, model_path=None, out_dir=tmp_path / "b", benchmarks="wise", policy=policy)
    assert policy.text_calls == [] and policy.image_calls == []


# --------------------------------------------------------------------------- the tiny Janus


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from pairuni.policy.tiny import build_tiny_janus

    torch.set_num_threads(2)
    return build_tiny_janus(tmp_path_factory.mktemp("tiny") / "janus")


class CountingPolicy:
    """Forwards to a real policy and counts the samples each call generates."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.device = policy.device
        self.generated: list[str] = []

    def rollout_text(self, images, questions, num_samples=1, **kwargs):
        self.generated += list(questions)
        return self.policy.rollout_text(images, questions, num_samples, **kwargs)

    def rollout_image(self, prompts, num_samples=1, **kwargs):
        self.generated += list(prompts)
        return self.policy.rollout_image(prompts, num_samples, **kwargs)


def run_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_tiny_janus_run_resumes_to_identical_files(
    data_root: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    from pairuni.eval.generation import load_policy
    from pairuni.policy.config import ModelConfig

    # sampled answers (seeds matter); batches of 3 questions and of all 4 prompts
    cfg = eval_config(data_root, greedy_understanding=False, und_batch_size=3, gen_batch_size=4)
    policy = load_policy(str(tiny_dir), ModelConfig(device="cpu"), cfg)
    whole, parts = tmp_path / "whole", tmp_path / "parts"

    full = CountingPolicy(policy)
    run_eval(cfg, model_path=tiny_dir, out_dir=whole, benchmarks=BENCHMARKS, policy=full)
    assert len(full.generated) == 5 + 5 + 6 + 4  # every question and prompt once

    first = CountingPolicy(policy)
    stopped = run_eval(cfg, model_path=tiny_dir, out_dir=parts, benchmarks=BENCHMARKS,
                       policy=first, max_batches=3)  # fmt: skip
    assert stopped.stopped and stopped.batches == 3  # mmstar's 2 batches, pope's first
    pope = parts / "pope" / "predictions.jsonl"
    lines = pope.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    # a kill in the middle of a batch: two of its lines written, the third one torn
    pope.write_text("".join(lines[:2]) + lines[2][:20])

    second = CountingPolicy(policy)
    resumed = run_eval(cfg, model_path=tiny_dir, out_dir=parts, benchmarks=BENCHMARKS,
                       policy=second)  # fmt: skip
    assert not resumed.stopped
    # only what was missing: pope's two batches (the torn one again), then MME and GenEval
    assert second.generated[:5] == [first.generated[5]] * 5  # pope questions are all alike
    assert len(second.generated) == 5 + 6 + 4
    assert run_files(whole) == run_files(parts)

    # the tables of a real run
    md = (whole / "results.md").read_text()
    assert "## Understanding (paper Table 1)" in md and "## GenEval (paper Table 3)" in md
    manifest = json.loads((whole / "run.json").read_text())
    assert manifest["model"] == str(tiny_dir.resolve()) and manifest["rollout.cfg_scale"] == 5.0


def test_tiny_janus_answers_are_the_policy_greedy_answers(
    data_root: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    from pairuni.eval.generation import load_policy
    from pairuni.policy.config import ModelConfig

    cfg = eval_config(data_root)  # greedy understanding by default
    policy = load_policy(str(tiny_dir), ModelConfig(device="cpu"), cfg)
    outcome = run_eval(cfg, model_path=tiny_dir, out_dir=tmp_path / "a", benchmarks="mmstar",
                       policy=policy)  # fmt: skip
    samples = list(load_mmstar(data_root / "mmstar"))[:2]  # the first batch
    images = [Image.open(io.BytesIO(s.image)).convert("RGB") for s in samples]
    questions = [mmstar_question(s.question, s.options) for s in samples]
    direct = policy.rollout_text(images, questions, greedy=True).texts
    lines = outcome.paths.predictions("mmstar").read_text().splitlines()
    assert [json.loads(x)["response"] for x in lines[:2]] == direct


# --------------------------------------------------------------------------- pieces


def test_batch_seed_is_a_stable_hash() -> None:
    assert batch_seed(0, "mmstar", "1") == sha_seed(0, "mmstar", "1")
    assert len({batch_seed(0, "mmstar", "1"), batch_seed(1, "mmstar", "1"),
                batch_seed(0, "pope", "1"), batch_seed(0, "mmstar", "2")}) == 4  # fmt: skip


def test_mmstar_question_without_options_keeps_the_text() -> None:
    assert mmstar_question("Which?", {}) == (
        "Which?\nAnswer with the option's letter from the given choices directly."
    )


def test_compose_images_side_by_side_at_the_tallest_height() -> None:
    red, blue = Image.new("RGB", (10, 20), (255, 0, 0)), Image.new("RGB", (5, 5), (0, 0, 255))
    combined = compose_images([red, blue])
    assert combined.size == (10 + 20, 20)  # blue scaled 5x5 -> 20x20
    assert combined.getpixel((0, 0)) == (255, 0, 0) and combined.getpixel((29, 19)) == (0, 0, 255)
    assert compose_images([red]) is red


def test_shapes_detector_boxes_are_inclusive_and_colours_pass_through() -> None:
    image = draw([("square", "red", (4, 8, 24, 28)), ("circle", "cyan", (36, 20, 56, 40))])
    found = ShapesDetector().detect(image, ["square", "circle", "cross"])
    # listed smallest first, so that GenEval's official tie order (the later-listed of equal
    # scores first) checks them largest first, as ShapesWorld's own scorer does
    assert [(d.label, d.color, d.score) for d in found] == [
        ("circle", "cyan", 1.0), ("square", "red", 1.0)
    ]  # fmt: skip
    assert [d.label for d in most_confident_first(found)] == ["square", "circle"]
    assert found[1].box == (4.0, 8.0, 23.0, 27.0)  # the last pixel, not one past it
    assert [d.label for d in ShapesDetector().detect(image, ["circle"])] == ["circle"]


def compared(a_acc: float | None, b_acc: float | None) -> tuple[dict, dict]:
    def results(acc: float | None, f1: float) -> dict:
        metrics = {"mean/f1": f1, "all/acc": 0.5}
        entry = {
            "benchmark": "POPE",
            "metrics": metrics,
            "columns": [{"header": "POPE", "key": "mean/f1", "digits": 1, "scale": 100.0}],
        }
        benchmarks: dict[str, Any] = {"pope": entry}
        if acc is not None:
            benchmarks["mmstar"] = {
                "benchmark": "MMStar",
                "metrics": {"acc": acc},
                "columns": [{"header": "MMStar", "key": "acc", "digits": 1, "scale": 100.0}],
            }
        return {"settings": {"name": "x"}, "benchmarks": benchmarks}

    return results(a_acc, 0.862), results(b_acc, 0.864)


def test_compare_shows_both_runs_and_the_delta() -> None:
    a, b = compared(0.461, 0.495)
    rows = compare_results(a, b)
    table = compare_markdown(rows, "A1", "B1").splitlines()
    assert table[0] == "| Benchmark | Metric | A: A1 | B: B1 | B − A |"
    assert table[2] == "| MMStar | MMStar | 46.1 | 49.5 | +3.4 |"
    assert table[3] == "| POPE | POPE | 86.2 | 86.4 | +0.2 |"
    only_b = compare_results(*compared(None, 0.4))
    assert only_b[0].cells() == ["MMStar", "MMStar", "–", "40.0", "–"]
    everything = compare_results(a, b, all_metrics=True)
    assert everything[-1].cells() == ["POPE", "all/acc", "0.5000", "0.5000", "+0.0000"]


# --------------------------------------------------------------------------- trained models


def plain_answer(question: str) -> str:
    """The scripted answers of the hand-computed run: B to MC questions, Yes to yes/no."""
    return "B" if "A. " in question else "Yes"


def rl_wrapped(question: str) -> str:
    """The same answers in the format the trainer teaches, with reasoning that names the other
    answers (a parser reading the whole reply would be misled)."""
    return (
        "<think>It is not A, and no, not C either; maybe yes, maybe no.</think>"
        f"<answer>{plain_answer(question)}</answer>"
    )


def test_rl_format_replies_score_exactly_as_plain_ones(data_root: Path, tmp_path: Path) -> None:
    """Every understanding benchmark of the runner, end to end: a trained model's replies."""
    runs = {}
    for name, answer in (("plain", plain_answer), ("rl", rl_wrapped)):
        outcome = run_eval(
            eval_config(data_root), model_path=None, out_dir=tmp_path / name,
            benchmarks="mmstar,pope,mme", policy=ScriptedPolicy(answer),
        )  # fmt: skip
        runs[name] = outcome.results["benchmarks"]
    for bench in ("mmstar", "pope", "mme"):
        assert runs["rl"][bench]["metrics"] == runs["plain"][bench]["metrics"], bench
        assert runs["rl"][bench]["metrics"]["unparsed"] == 0
    # and read whole (the official scripts' way) the same replies score differently
    whole = run_eval(
        eval_config(data_root, answer_span="off"), model_path=None, out_dir=tmp_path / "off",
        benchmarks="mmstar,pope,mme", policy=ScriptedPolicy(rl_wrapped),
    ).results["benchmarks"]  # fmt: skip
    assert any(whole[b]["metrics"] != runs["plain"][b]["metrics"] for b in whole)


def test_rl_answer_format_asks_in_the_training_format(data_root: Path, tmp_path: Path) -> None:
    from pairuni.policy.config import DEFAULT_UND_TEMPLATE

    policy = ScriptedPolicy(rl_wrapped)
    cfg = eval_config(data_root, answer_format="rl")
    run_eval(cfg, model_path=None, out_dir=tmp_path / "run", benchmarks="mmstar,mme",
             policy=policy)  # fmt: skip
    questions = [q for qs, _ in policy.text_calls for q in qs]
    # the benchmark instructions are gone: the training template (applied by the policy, from
    # the rollout config the runner gives it) asks for <think>/<answer>
    assert questions[0] == "What is shown?\nA. red\nB. blue\nC. green\nD. white"
    assert not any("Answer" in q for q in questions)
    from pairuni.eval.generation import rollout_config_for

    assert rollout_config_for(cfg).und_prompt_template == DEFAULT_UND_TEMPLATE


class SamplingPolicy(ScriptedPolicy):
    """A scripted policy with a rollout config, as JanusPolicy has."""

    def __init__(self) -> None:
        super().__init__()
        from pairuni.policy.config import RolloutConfig

        self.rollout_config = RolloutConfig(max_new_tokens=99)
        self.seen: list[int] = []

    def rollout_text(self, images, questions, num_samples=1, **kwargs):  # type: ignore[override]
        self.seen.append(self.rollout_config.max_new_tokens)
        return super().rollout_text(images, questions, num_samples, **kwargs)


def test_a_handed_policy_samples_with_the_runs_settings(data_root: Path, tmp_path: Path) -> None:
    policy = SamplingPolicy()
    cfg = eval_config(data_root, protocol="vlmevalkit", rollout={})
    run_eval(cfg, model_path=None, out_dir=tmp_path / "run", benchmarks="mmstar", policy=policy)
    assert set(policy.seen) == {2048}  # VLMEvalKit's answer length, recorded in run.json
    assert policy.rollout_config.max_new_tokens == 99  # given back afterwards
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["rollout.max_new_tokens"] == 2048 and manifest["protocol"] == "vlmevalkit"


def test_vlmevalkit_protocol_asks_mmmu_dev_and_validation_with_its_prompt(tmp_path: Path) -> None:
    folder = tmp_path / "mmmu" / "Art"
    folder.mkdir(parents=True)
    for split, rows in (("dev", [mmmu_row("dev_Art_1", 1, "B")]),
                        ("validation", [mmmu_row("validation_Art_1", 1, "A")])):  # fmt: skip
        fields = [(k, pa.string()) for k in rows[0] if not k.startswith("image_")]
        fields += [(f"image_{k}", IMAGE_TYPE) for k in range(1, 8)]
        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)),
                       folder / f"{split}-00000-of-00001.parquet")  # fmt: skip
    policy = ScriptedPolicy(answer="B")
    outcome = run_eval(eval_config(tmp_path, protocol="vlmevalkit"), model_path=None,
                       out_dir=tmp_path / "run", benchmarks="mmmu", policy=policy)  # fmt: skip
    questions = [q for qs, _ in policy.text_calls for q in qs]
    assert len(questions) == 2  # dev + validation (MMMU_DEV_VAL)
    assert "\nA. red\nB. blue\n" in questions[0]  # VLMEvalKit's option lines, not "(A) red"
    metrics = outcome.results["benchmarks"]["mmmu"]["metrics"]
    # "B": right on dev, wrong on validation; the MMMU column is the validation accuracy
    assert metrics["split/dev/acc"] == 1.0 and metrics["acc"] == 0.0


def dimoo_cli_settings(data_root: Path) -> list[str]:
    """`--set` arguments that keep the tiny DiMOO's generation short."""
    settings = {
        "eval.data_root": data_root,
        "eval.detector": "shapes",
        "eval.und_batch_size": 2,
        "eval.gen_batch_size": 2,
        "eval.geneval_images_per_prompt": 1,
        "eval.rollout.max_new_tokens": 4,
        "eval.rollout.dimoo.image_size": 32,
        "eval.rollout.dimoo.image_steps": 2,
        "eval.rollout.dimoo.text_steps": 2,
        "model.device": "cpu",
    }
    return [part for key, value in settings.items() for part in ("--set", f"{key}={value}")]


def test_pairuni_eval_runs_the_tiny_dimoo_checkpoint_from_the_command_line(
    data_root: Path, tmp_path: Path
) -> None:
    """`pairuni eval --model DIMOO_DIR`: the checkpoint is checked by its own backend (it used
    to be refused as 'not Janus') and the understanding and GenEval benchmarks run through
    the same runner as Janus's."""
    from typer.testing import CliRunner

    from pairuni.cli import app
    from pairuni.policy.dimoo.tiny import write_tiny_dimoo

    checkpoint = write_tiny_dimoo(tmp_path / "tiny-dimoo")
    sets = dimoo_cli_settings(data_root)
    out = tmp_path / "run"
    args = ["eval", "--model", str(checkpoint), "--benchmarks", BENCHMARKS, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *sets])
    assert result.exit_code == 0, result.output
    scored = json.loads((out / "results.json").read_text())["benchmarks"]
    assert set(scored) == set(BENCHMARKS.split(","))
    for name in scored:
        assert (out / name / "predictions.jsonl").read_text().strip()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llada"}))
    again = ["eval", "--model", str(broken), "--benchmarks", "mmstar", "--out", str(broken)]
    refused = CliRunner().invoke(app, [*again, *sets])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "config.json" in refused.output, refused.output


def test_mmmu_and_wise_run_on_the_tiny_dimoo_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two benchmarks the test above leaves out, on DiMOO from the CLI: MMMU's composed
    multi-image questions and WISE's images judged by a real loopback OpenAI-compatible server
    (ImgEdit on DiMOO is tested in test_eval_imgedit.py)."""
    from typer.testing import CliRunner

    from pairuni.cli import app
    from pairuni.policy.dimoo.tiny import write_tiny_dimoo
    from test_eval_wise import SECRET, ScriptedServer

    root = tmp_path / "benchmarks"
    folder = root / "mmmu" / "Art"
    folder.mkdir(parents=True)
    rows = [mmmu_row("validation_Art_1", 2, "B"), mmmu_row("validation_Art_2", 1, "A")]
    fields = [(k, pa.string()) for k in rows[0] if not k.startswith("image_")]
    fields += [(f"image_{k}", IMAGE_TYPE) for k in range(1, 8)]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)),
                   folder / "validation-00000-of-00001.parquet")  # fmt: skip
    items = [
        {"prompt_id": 1, "Prompt": "a photo of a square", "Explanation": "e", "Subcategory": "s"},
        {"prompt_id": 950, "Prompt": "two circles", "Explanation": "e", "Subcategory": "s"},
    ]
    (root / "wise" / "data").mkdir(parents=True)
    (root / "wise" / "data" / "natural_science.json").write_text(json.dumps(items))
    server = ScriptedServer([
        (200, "Consistency: 2\nRealism: 1\nAesthetic Quality: 0"),
        (200, "Consistency: 0\nRealism: 2\nAesthetic Quality: 2"),
    ])  # fmt: skip
    server.thread.start()
    monkeypatch.setenv("WISE_TEST_KEY", SECRET)
    try:
        checkpoint = write_tiny_dimoo(tmp_path / "tiny-dimoo")
        judge = [f"eval.judge.base_url={server.base_url}", "eval.judge.model=judge-model",
                 "eval.judge.api_key_env=WISE_TEST_KEY", "eval.judge.retry_delay_s=0"]  # fmt: skip
        sets = dimoo_cli_settings(root) + [a for s in judge for a in ("--set", s)]
        out = tmp_path / "run"
        args = ["eval", "--model", str(checkpoint), "--benchmarks", "mmmu,wise", "--out", str(out)]
        result = CliRunner().invoke(app, [*args, *sets])
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert result.exit_code == 0, result.output
    scored = json.loads((out / "results.json").read_text())["benchmarks"]
    assert set(scored) == {"mmmu", "wise"}
    assert len((out / "mmmu" / "predictions.jsonl").read_text().splitlines()) == 2
    assert len(server.requests) == 2  # one judged image per WISE prompt, as PNG
    content = server.requests[0]["body"]["messages"][-1]["content"]  # after the system message
    urls = [part["image_url"]["url"] for part in content if "image_url" in part]
    assert urls and urls[0].startswith("data:image/png;base64,")
    wise = scored["wise"]["metrics"]
    # the server answers in arrival order: each category got one of the two WiScores
    assert sorted([wise["CULTURE"], wise["CHEMISTRY"]]) == pytest.approx([0.3, 0.8])
