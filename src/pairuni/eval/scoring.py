"""Scoring a benchmark's outputs: the judges a run needs (built and checked before anything is
generated), and the GenEval / WISE runs over the generated images (resumable judgements)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pairuni.eval.benchmarks import Benchmark
from pairuni.eval.config import EvalConfig
from pairuni.eval.errors import EvalSetupError
from pairuni.eval.generation import images_per_prompt
from pairuni.eval.layout import load_predictions, open_image
from pairuni.eval.outputs import RunPaths, read_generated

if TYPE_CHECKING:
    from pairuni.eval.detectors import ColorClassifier, Detector
    from pairuni.eval.geneval import GenEvalPrompt
    from pairuni.eval.imgedit_judge import ImgEditJudge
    from pairuni.eval.results import BenchmarkResult
    from pairuni.eval.wise import WiseJudge, WisePrompt


@dataclasses.dataclass
class Judges:
    """What scoring the generation benchmarks needs (built before any generation starts)."""

    detector: Detector | None = None
    color_classifier: ColorClassifier | None = None
    judge: WiseJudge | None = None
    editing: ImgEditJudge | None = None
    """ImgEdit's judge (`eval.imgedit.judge`)."""


@dataclasses.dataclass(frozen=True)
class ScoringRun:
    """What a benchmark's scorer gets: the benchmark, the run folder, the settings, the judges,
    and whether to redo every judgement (`--rescore`)."""

    bench: Benchmark
    paths: RunPaths
    cfg: EvalConfig
    judges: Judges
    rescore: bool = False

    def predictions(self) -> dict[str, str]:
        """sample id -> the model's reply (understanding benchmarks)."""
        return load_predictions(self.paths.predictions(self.bench.name))


def generated_files(bench: Benchmark, paths: RunPaths, cfg: EvalConfig) -> dict[str, list[Path]]:
    """prompt id -> its image files, for every prompt of the benchmark; an error names what is
    missing."""
    pred_path = paths.predictions(bench.name)
    if not pred_path.is_file():
        raise EvalSetupError(f"{pred_path}: no generated images yet; run without --rescore first")
    records = read_generated(pred_path)
    missing = [item.id for item in bench.items if item.id not in records]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise EvalSetupError(
            f"{pred_path}: {len(missing)} of {len(bench.items)} prompts have no images (e.g. "
            f"{shown}); run without --rescore to generate them"
        )
    expected = images_per_prompt(bench.name, cfg)
    files: dict[str, list[Path]] = {}
    for item in bench.items:
        paths_of = [paths.folder(bench.name) / rel for rel in records[item.id].images]
        absent = [p for p in paths_of if not p.is_file()]
        if absent or len(paths_of) != expected:
            problem = f"{absent[0]} is missing" if absent else f"has {len(paths_of)} images"
            raise EvalSetupError(
                f"{pred_path}: prompt {item.id}: {problem} (expected {expected}); delete its line "
                "from predictions.jsonl and run again to redraw it"
            )
        files[item.id] = paths_of
    return files


def score_geneval_run(run: ScoringRun) -> BenchmarkResult:
    """Detect and judge every image (resuming judgements.jsonl; --rescore redoes them all)."""
    from pairuni.eval.geneval import evaluate_images, read_judgements, score_geneval

    bench, paths, cfg, judges = run.bench, run.paths, run.cfg, run.judges
    files = generated_files(bench, paths, cfg)
    out = paths.judgements(bench.name)
    if run.rescore:
        out.unlink(missing_ok=True)
    done = {(j.prompt_id, index) for index, j in read_judgements(out)}
    prompts: list[GenEvalPrompt] = bench.samples
    todo = [p for p in prompts if any((p.id, k) not in done for k in range(len(files[p.id])))]
    if judges.detector is None:
        raise EvalSetupError("GenEval needs a detector (eval.detector)")
    chunk = 64  # prompts whose images are decoded at a time (bounds memory)
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        images = {p.id: [open_image(f) for f in files[p.id]] for p in part}
        evaluate_images(part, images, judges.detector, out, cfg.geneval, judges.color_classifier)
    verdicts = {(j.prompt_id, index): j for index, j in read_judgements(out)}
    wanted = [(p.id, k) for p in prompts for k in range(len(files[p.id]))]
    return score_geneval(verdicts[key] for key in wanted)


class PngFiles(Mapping[str, bytes]):
    """prompt id -> PNG bytes, read when asked for (so images never all sit in memory)."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)

    def __getitem__(self, key: str) -> bytes:
        return self.files[key].read_bytes()

    def __contains__(self, key: object) -> bool:
        return key in self.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def score_wise_run(run: ScoringRun) -> BenchmarkResult:
    """Ask the judge about every image not yet judged (failed ones again), then WiScore."""
    from pairuni.eval.wise import judge_images, score_wise

    bench, paths, cfg, judges = run.bench, run.paths, run.cfg, run.judges
    files = generated_files(bench, paths, cfg)
    if judges.judge is None:
        raise EvalSetupError("WISE needs a judge (eval.judge)")
    prompts: list[WisePrompt] = bench.samples
    verdicts = judge_images(
        prompts,
        PngFiles({k: v[0] for k, v in files.items()}),
        judges.judge,
        paths.judgements(bench.name),
    )
    return score_wise(verdicts)


def needs_colors(prompts: Sequence[GenEvalPrompt]) -> bool:
    return any("color" in clause for p in prompts for clause in p.include)


def build_judges(
    benchmarks: Sequence[Benchmark],
    cfg: EvalConfig,
    device: str,
    detector: Detector | None = None,
    judge: WiseJudge | None = None,
) -> Judges:
    """The GenEval detector (and colour classifier), the WISE judge and the ImgEdit judge the
    benchmarks need, or an error naming the missing config key. Runs before any generation."""
    names = {b.name for b in benchmarks}
    judges = Judges(detector=detector, judge=judge)
    if "geneval" in names and judges.detector is None:
        judges.detector = build_detector(cfg, device)
        geneval = next(b for b in benchmarks if b.name == "geneval")
        if cfg.detector == "owlv2" and needs_colors(geneval.samples):
            judges.color_classifier = build_color_classifier(cfg, device)
    if "wise" in names and judges.judge is None:
        judges.judge = build_judge(cfg)
    if "imgedit" in names:
        from pairuni.eval.imgedit_judge import build_imgedit_judge

        judges.editing = build_imgedit_judge(cfg)
    return judges


DETECTORS = {"shapes": "pairuni.shapes.geneval_detector:ShapesDetector"}
"""`eval.detector` names whose detector needs no weights -> its "module:class" (the ShapesWorld
detector lives with the miniature, which the evaluation core does not import by name)."""


def build_detector(cfg: EvalConfig, device: str) -> Detector:
    if cfg.detector in DETECTORS:
        from pairuni.importing import import_object

        return import_object(DETECTORS[cfg.detector])()
    if cfg.detector_dir is None:
        raise EvalSetupError(
            "GenEval needs an object detector but eval.detector_dir is not set: save OWLv2 (e.g. "
            "google/owlv2-base-patch16-ensemble) with save_pretrained and set "
            "eval.detector_dir=DIR, or set eval.detector=shapes for ShapesWorld images, or drop "
            "geneval from --benchmarks"
        )
    from pairuni.eval.detectors import Owlv2Detector

    return Owlv2Detector(cfg.detector_dir, device=device)


def build_color_classifier(cfg: EvalConfig, device: str) -> ColorClassifier:
    if cfg.color_classifier_dir is None:
        raise EvalSetupError(
            "GenEval has colour prompts and the OWLv2 detector does not name colours, but "
            "eval.color_classifier_dir is not set: save a CLIP model (the official evaluation "
            "uses ViT-L/14) with save_pretrained and set eval.color_classifier_dir=DIR"
        )
    from pairuni.eval.detectors import ClipColorClassifier

    return ClipColorClassifier(cfg.color_classifier_dir, device=device)


def build_judge(cfg: EvalConfig) -> WiseJudge:
    from pairuni.eval.wise import WiseJudge

    variable = cfg.judge.api_key_env
    if not os.environ.get(variable):
        raise EvalSetupError(
            f"WISE needs its judge's API key in the environment variable {variable} "
            f"(eval.judge.api_key_env), which is not set: export it, or set "
            "eval.judge.api_key_env to the variable that holds it (and eval.judge.base_url / "
            "eval.judge.model for another OpenAI-compatible server), or drop wise from "
            "--benchmarks"
        )
    return WiseJudge(cfg.judge)
