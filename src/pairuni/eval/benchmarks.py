"""Every benchmark `pairuni eval` knows, one entry each in one table (`BENCHMARKS`): how to load
it, what one sample asks the model, how its outputs are scored, and which of the paper's tables
it belongs to. Adding a benchmark is one loader module and one entry here.

Each entry's functions import their benchmark module when called, so that listing benchmarks
(and `pairuni --help`) stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pairuni.eval.config import BENCHMARK_NAMES, EvalConfig
from pairuni.eval.errors import EvalSetupError
from pairuni.eval.layout import BenchmarkNotFoundError
from pairuni.eval.prompts import (
    GenerationItem,
    UnderstandingItem,
    mme_item,
    mmmu_item,
    mmstar_item,
    pope_item,
)

if TYPE_CHECKING:
    from pairuni.eval.generation import BatchBudget, LazyPolicy
    from pairuni.eval.outputs import RunPaths
    from pairuni.eval.results import BenchmarkResult
    from pairuni.eval.scoring import ScoringRun

Family = Literal["understanding", "geneval", "wise", "imgedit"]
FAMILY_TITLES: dict[str, str] = {
    "understanding": "Understanding (paper Table 1)",
    "geneval": "GenEval (paper Table 3)",
    "wise": "WISE (paper Table 2)",
    "imgedit": "ImgEdit (paper Table 4)",
}


Generate = Callable[["Benchmark", "RunPaths", "LazyPolicy", EvalConfig, "BatchBudget"], bool]
CheckPolicy = Callable[["Benchmark", "RunPaths", "LazyPolicy"], None]


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: `load(root, cfg)` -> samples in loader order; `item(sample, cfg)` -> what
    the model is asked; `score(run)` -> the result; `family`: its table; `output`: what the model
    writes (answers, images, or edited images).

    `generate` replaces the runner's answering / drawing (same arguments and result as
    `generation.generate`); `check_policy(bench, paths, policy)` runs before anything is
    generated and raises when the policy cannot do what the benchmark asks."""

    name: str
    family: Family
    output: Literal["text", "images", "edits"]
    load: Callable[[Path, EvalConfig], list[Any]]
    item: Callable[[Any, EvalConfig], UnderstandingItem | GenerationItem]
    score: Callable[[ScoringRun], BenchmarkResult]
    generate: Generate | None = None
    check_policy: CheckPolicy | None = None


# --------------------------------------------------------------------------- loaders


def _load_mmmu(root: Path, cfg: EvalConfig) -> list[Any]:
    from pairuni.eval.mmmu import load_mmmu, mmmu_splits

    return list(load_mmmu(root, split=mmmu_splits(cfg.protocol)))


def _load_mmstar(root: Path, cfg: EvalConfig) -> list[Any]:
    from pairuni.eval.mmstar import load_mmstar

    return list(load_mmstar(root))


def _load_mme(root: Path, cfg: EvalConfig) -> list[Any]:
    from pairuni.eval.mme import load_mme

    return list(load_mme(root))


def _load_pope(root: Path, cfg: EvalConfig) -> list[Any]:
    from pairuni.eval.pope import load_pope

    return list(load_pope(root))


def _load_geneval(root: Path, cfg: EvalConfig) -> list[Any]:
    from pairuni.eval.geneval import load_geneval

    return list(load_geneval(root))


def _load_wise(root: Path, cfg: EvalConfig) -> list[Any]:
    from pairuni.eval.wise import load_wise

    return list(load_wise(root, cfg.wise_set))


def _load_imgedit(root: Path, cfg: EvalConfig) -> list[Any]:
    from pairuni.eval.imgedit import load_imgedit

    return load_imgedit(root)


def _prompt_item(sample: Any, cfg: EvalConfig) -> GenerationItem:
    return GenerationItem(sample.id, sample.prompt)


# --------------------------------------------------------------------------- scorers


def _score_mmmu(run: ScoringRun) -> BenchmarkResult:
    from pairuni.eval.mmmu import score_mmmu

    return score_mmmu(
        run.bench.samples,
        run.predictions(),
        seed=run.cfg.mmmu_seed,
        answer_span=run.cfg.answer_span,
        protocol=run.cfg.protocol,
    )


def _score_mmstar(run: ScoringRun) -> BenchmarkResult:
    from pairuni.eval.mmstar import score_mmstar

    return score_mmstar(
        run.bench.samples,
        run.predictions(),
        answer_span=run.cfg.answer_span,
        matching=run.cfg.mmstar_matching,
    )


def _score_mme(run: ScoringRun) -> BenchmarkResult:
    from pairuni.eval.mme import score_mme

    return score_mme(run.bench.samples, run.predictions(), answer_span=run.cfg.answer_span)


def _score_pope(run: ScoringRun) -> BenchmarkResult:
    from pairuni.eval.pope import score_pope

    return score_pope(
        run.bench.samples,
        run.predictions(),
        answer_span=run.cfg.answer_span,
        protocol=run.cfg.protocol,
    )


def _score_geneval(run: ScoringRun) -> BenchmarkResult:
    from pairuni.eval.scoring import score_geneval_run

    return score_geneval_run(run)


def _score_wise(run: ScoringRun) -> BenchmarkResult:
    from pairuni.eval.scoring import score_wise_run

    return score_wise_run(run)


def _score_imgedit(run: ScoringRun) -> BenchmarkResult:
    from pairuni.eval.imgedit import score_imgedit_run

    return score_imgedit_run(run)


def _generate_edits(
    bench: Benchmark, paths: RunPaths, policy: LazyPolicy, cfg: EvalConfig, budget: BatchBudget
) -> bool:
    from pairuni.eval.imgedit import generate_edits

    return generate_edits(bench, paths, policy, cfg, budget)


def _check_editing_policy(bench: Benchmark, paths: RunPaths, policy: LazyPolicy) -> None:
    from pairuni.eval.imgedit import check_editing_policy

    check_editing_policy(bench, paths, policy)


# --------------------------------------------------------------------------- the table

BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("mmmu", "understanding", "text", _load_mmmu, mmmu_item, _score_mmmu),
        BenchmarkSpec("mmstar", "understanding", "text", _load_mmstar, mmstar_item, _score_mmstar),
        BenchmarkSpec("mme", "understanding", "text", _load_mme, mme_item, _score_mme),
        BenchmarkSpec("pope", "understanding", "text", _load_pope, pope_item, _score_pope),
        BenchmarkSpec("geneval", "geneval", "images", _load_geneval, _prompt_item, _score_geneval),
        BenchmarkSpec("wise", "wise", "images", _load_wise, _prompt_item, _score_wise),
        BenchmarkSpec(
            "imgedit",
            "imgedit",
            "edits",
            _load_imgedit,
            _prompt_item,
            _score_imgedit,
            generate=_generate_edits,
            check_policy=_check_editing_policy,
        ),
    )
}
assert tuple(BENCHMARKS) == BENCHMARK_NAMES, "the table and the config's names must agree"

UNDERSTANDING = tuple(n for n, s in BENCHMARKS.items() if s.output == "text")


def family_members(family: str) -> tuple[str, ...]:
    return tuple(n for n, s in BENCHMARKS.items() if s.family == family)


# --------------------------------------------------------------------------- loading


@dataclasses.dataclass
class Benchmark:
    """A benchmark's samples (as its loader returns them, cut to `limit`) and the work items."""

    name: str
    samples: list[Any]
    items: list[UnderstandingItem] | list[GenerationItem]

    @property
    def spec(self) -> BenchmarkSpec:
        return BENCHMARKS[self.name]


def parse_benchmarks(names: str | Sequence[str]) -> list[str]:
    """`"mmmu,mme"` or `["mmmu", "mme"]` -> the names in the given order, without repeats.

    An unknown name is an error that lists the valid ones.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    cleaned = [n.strip().lower() for n in items if n.strip()]
    unknown = [n for n in cleaned if n not in BENCHMARKS]
    if unknown or not cleaned:
        what = f"unknown benchmark {', '.join(map(repr, unknown))}" if unknown else "no benchmark"
        raise EvalSetupError(f"{what}; valid benchmarks: {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(cleaned))


def load_benchmark(name: str, cfg: EvalConfig) -> Benchmark:
    """Load one benchmark from its directory; loader errors propagate unchanged."""
    if name not in BENCHMARKS:
        raise EvalSetupError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    samples = spec.load(cfg.benchmark_dir(name), cfg)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    return Benchmark(name, samples, [spec.item(s, cfg) for s in samples])  # type: ignore[misc]


def load_benchmarks(names: Sequence[str], cfg: EvalConfig) -> list[Benchmark]:
    """Every benchmark, or all their loader errors at once: one error is re-raised as it is, several
    are joined into one `EvalSetupError` (each message unchanged)."""
    loaded, errors = [], []
    for name in names:
        try:
            loaded.append(load_benchmark(name, cfg))
        except (BenchmarkNotFoundError, ValueError) as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise EvalSetupError("\n".join(str(e) for e in errors))
    return loaded
