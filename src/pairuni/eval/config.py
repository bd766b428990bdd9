"""The `eval` section: where the benchmarks live and how the generation judges work."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pairuni.configbase import Section
from pairuni.eval.geneval import GenEvalRules
from pairuni.eval.wise import JudgeConfig


class EvalConfig(Section):
    """Benchmark evaluation (docs/eval.md). Benchmark data never ships with pairuni: download
    each benchmark once and point its directory here; a missing directory is an error that says
    where to get it and how to lay it out."""

    data_root: Path = Path("data/benchmarks")
    """Directory holding one folder per benchmark (mmmu, mmstar, mme, pope, geneval, wise).
    Each `*_dir` below that is `null` means `<data_root>/<benchmark>`."""

    mmmu_dir: Path | None = None
    """MMMU parquet release (one folder per subject). `null`: `<data_root>/mmmu`."""

    mmstar_dir: Path | None = None
    """MMStar parquet release. `null`: `<data_root>/mmstar`."""

    mme_dir: Path | None = None
    """MME: lmms-lab/MME parquet or the official release folders. `null`: `<data_root>/mme`."""

    pope_dir: Path | None = None
    """POPE: lmms-lab/POPE parquet or the official question files with val2014/.
    `null`: `<data_root>/pope`."""

    geneval_dir: Path | None = None
    """GenEval: the folder holding evaluation_metadata.jsonl. `null`: `<data_root>/geneval`."""

    wise_dir: Path | None = None
    """WISE: the folder holding data/*.json. `null`: `<data_root>/wise`."""

    mmmu_seed: int = 42
    """Seed of the random letter given to multiple-choice answers that cannot be parsed
    (the official MMMU script seeds 42)."""

    geneval: GenEvalRules = Field(default_factory=GenEvalRules)
    """Thresholds of the GenEval judge."""

    detector: Literal["owlv2", "shapes"] = "owlv2"
    """GenEval object detector: `owlv2` (transformers OWLv2 with weights from `detector_dir`) or
    `shapes` (the exact ShapesWorld detector of the miniature, which reports colours)."""

    detector_dir: Path | None = None
    """Local directory of the detector's weights, e.g. google/owlv2-base-patch16-ensemble saved
    with `save_pretrained` (weights are never downloaded at run time)."""

    color_classifier_dir: Path | None = None
    """Local directory of a transformers CLIP model that names object colours for GenEval when
    the detector does not (the official evaluation uses ViT-L/14). `null`: the detector must
    report colours itself."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """The OpenAI-compatible judge of WISE."""

    def benchmark_dir(self, name: str) -> Path:
        """The directory of benchmark `name` (its `*_dir` field, else `<data_root>/<name>`)."""
        explicit = getattr(self, f"{name}_dir")
        return Path(explicit) if explicit is not None else self.data_root / name
