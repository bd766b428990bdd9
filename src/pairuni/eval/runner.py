"""The `pairuni eval` run: load the benchmarks and check everything that can fail, generate what
is missing, score, write results.json / results.md.

Outputs are append-only and flushed line by line, so a killed run resumes where it stopped;
`run.json` guards this: resuming with settings that change the outputs is refused.
`rescore=True` re-runs only the scoring, without the model. The rooms: `benchmarks` (the table),
`prompts`, `outputs` (the run folder), `settings`, `generation`, `scoring`, `tables`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairuni.eval.benchmarks import Benchmark, load_benchmarks, parse_benchmarks
from pairuni.eval.config import BENCHMARK_NAMES, EvalConfig
from pairuni.eval.errors import EvalSetupError
from pairuni.eval.generation import (
    BatchBudget,
    LazyPolicy,
    device_name,
    eval_sampling,
    generate,
    policy_factory,
)
from pairuni.eval.outputs import RunPaths, read_json_file, write_json_atomic, write_text_atomic
from pairuni.eval.scoring import Judges, ScoringRun, build_judges
from pairuni.eval.settings import check_same_settings, generation_settings, source_commit
from pairuni.eval.tables import RESULTS_FORMAT, render_markdown, result_entry

if TYPE_CHECKING:
    from pairuni.eval.detectors import Detector
    from pairuni.eval.wise import WiseJudge
    from pairuni.policy.base import UnifiedPolicy
    from pairuni.policy.config import ModelConfig


@dataclasses.dataclass
class EvalOutcome:
    """What a run did: the results (as in results.json), whether it stopped early, and how many
    generation batches it ran."""

    results: dict[str, Any]
    stopped: bool
    batches: int
    paths: RunPaths


def default_out_dir(cfg: EvalConfig, model_path: str | None) -> Path:
    if cfg.out_dir is not None:
        return Path(cfg.out_dir)
    if model_path is None:
        raise EvalSetupError("no output directory: pass --out (or set eval.out_dir)")
    return Path("runs/eval") / Path(model_path).expanduser().resolve().name


def run_eval(
    cfg: EvalConfig,
    *,
    model_path: str | Path | None,
    model_config: ModelConfig | None = None,
    out_dir: str | Path | None = None,
    benchmarks: str | Sequence[str] | None = None,
    rescore: bool = False,
    name: str | None = None,
    policy: UnifiedPolicy | None = None,
    detector: Detector | None = None,
    judge: WiseJudge | None = None,
    max_batches: int | None = None,
) -> EvalOutcome:
    """Generate what is missing, score, and write results.json / results.md.

    Every check that can fail (benchmark names and directories, GenEval detector, WISE judge key,
    checkpoint, settings of an existing run) runs before the first generation. `policy`,
    `detector` and `judge` replace the ones built from the config (tests, notebooks);
    `max_batches` stops after that many generation batches, as a kill would.
    """
    from pairuni.policy.config import ModelConfig

    model_config = model_config or ModelConfig()
    path_text = str(model_path) if model_path is not None else model_config.path
    root = Path(out_dir) if out_dir is not None else default_out_dir(cfg, path_text)
    paths = RunPaths(root)
    if rescore:
        settings = read_json_file(paths.manifest, "run to rescore (run.json is missing)")
        # what was generated decides what is scored
        kept = ("limit", "geneval_images_per_prompt")
        cfg = cfg.model_copy(update={k: settings[k] for k in kept if k in settings})
        chosen = parse_benchmarks(benchmarks) if benchmarks else present_benchmarks(paths)
    else:
        settings = generation_settings(cfg, path_text, model_config.dtype)
        chosen = parse_benchmarks(benchmarks if benchmarks else cfg.benchmarks)
    loaded = load_benchmarks(chosen, cfg)
    judges = build_judges(loaded, cfg, device_name(model_config), detector, judge)
    lazy = LazyPolicy(policy_factory(policy, path_text, model_config, cfg))
    if not rescore:
        start_run(paths, settings, path_text, policy is not None, model_config.backend)
        check_policy(loaded, paths, lazy)
    budget = BatchBudget(max_batches)
    results = read_results(paths, settings)
    finish_settings(results, paths, cfg, name)
    with eval_sampling(policy, cfg):
        for bench in loaded:
            make = bench.spec.generate or generate
            if not rescore and not make(bench, paths, lazy, cfg, budget):
                return EvalOutcome(results, True, budget.used, paths)
            record_result(bench, paths, cfg, judges, rescore, results)
            write_results(paths, results)
    return EvalOutcome(results, False, budget.used, paths)


def check_policy(loaded: Sequence[Benchmark], paths: RunPaths, lazy: LazyPolicy) -> None:
    """The benchmarks' own checks of the policy (ImgEdit: it must edit images), before any
    benchmark generates."""
    for bench in loaded:
        if bench.spec.check_policy is not None:
            bench.spec.check_policy(bench, paths, lazy)


def record_result(
    bench: Benchmark,
    paths: RunPaths,
    cfg: EvalConfig,
    judges: Judges,
    rescore: bool,
    results: dict[str, Any],
) -> None:
    result = bench.spec.score(ScoringRun(bench, paths, cfg, judges, rescore))
    write_json_atomic(paths.details(bench.name), result.details)
    results["benchmarks"][bench.name] = result_entry(bench.name, result, len(bench.items))
    # keep the paper's order whatever order benchmarks were run in
    ordered = sorted(results["benchmarks"].items(), key=lambda kv: BENCHMARK_NAMES.index(kv[0]))
    results["benchmarks"] = dict(ordered)


def present_benchmarks(paths: RunPaths) -> list[str]:
    found = [b for b in BENCHMARK_NAMES if paths.predictions(b).is_file()]
    if not found:
        raise EvalSetupError(f"{paths.root}: no <benchmark>/predictions.jsonl to rescore")
    return found


def start_run(
    paths: RunPaths,
    settings: dict[str, Any],
    model_path: str | None,
    injected: bool,
    backend: str = "auto",
) -> None:
    """Check the checkpoint (with its backend's checker) and the settings of an existing run,
    then write run.json."""
    if not injected:
        if model_path is None:
            raise EvalSetupError("no checkpoint given: pass --model DIR (or set model.path)")
        from pairuni.policy.registry import check_checkpoint

        check_checkpoint(backend, model_path)
    if paths.manifest.is_file():
        saved = read_json_file(paths.manifest, "run.json")
        check_same_settings(saved, settings, paths.manifest)
        return
    from pairuni import __version__

    manifest = {**settings, "pairuni_version": __version__, "commit": source_commit()}
    paths.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.manifest, manifest)


def read_results(paths: RunPaths, settings: Mapping[str, Any]) -> dict[str, Any]:
    """results.json of the run so far (benchmarks scored earlier stay), else a new one."""
    if paths.results_json.is_file():
        results = read_json_file(paths.results_json, "results.json")
        return {
            "format": RESULTS_FORMAT,
            "settings": results.get("settings", {}),
            "benchmarks": results.get("benchmarks", {}),
        }
    return {"format": RESULTS_FORMAT, "settings": dict(settings), "benchmarks": {}}


def finish_settings(
    results: dict[str, Any], paths: RunPaths, cfg: EvalConfig, name: str | None
) -> None:
    """The settings block of results.json: run.json plus what scoring used."""
    manifest = read_json_file(paths.manifest, "run.json") if paths.manifest.is_file() else {}
    settings = {**results.get("settings", {}), **manifest}
    model = settings.get("model")
    settings["name"] = name or settings.get("name") or (Path(model).name if model else "model")
    settings["detector"] = cfg.detector
    settings["judge_model"] = cfg.judge.model
    settings["judge_missing_scores"] = cfg.judge.missing_scores
    settings["imgedit_judge_model"] = cfg.imgedit.judge.model
    prompts = cfg.imgedit.judge_prompts
    settings["imgedit_judge_prompts"] = str(prompts) if prompts is not None else "pairuni"
    settings["mmmu_seed"] = cfg.mmmu_seed
    settings["answer_span"] = cfg.answer_span
    settings["mmstar_matching"] = cfg.mmstar_matching
    results["settings"] = settings


def write_results(paths: RunPaths, results: dict[str, Any]) -> None:
    write_json_atomic(paths.results_json, results)
    write_text_atomic(paths.results_md, render_markdown(results))
