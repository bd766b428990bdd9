"""The `eval` section: where the benchmarks live and how the generation judges work."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from pairuni.configbase import Section
from pairuni.eval.geneval import GenEvalRules
from pairuni.eval.wise import JudgeConfig

BenchmarkName = Literal["mmmu", "mmstar", "mme", "pope", "geneval", "wise"]
BENCHMARK_NAMES: tuple[str, ...] = ("mmmu", "mmstar", "mme", "pope", "geneval", "wise")
"""Every benchmark `pairuni eval` knows, in the paper's order."""


class EvalConfig(Section):
    """Benchmark evaluation (docs/eval.md). Benchmark data never ships with pairuni: download
    each benchmark once and point its directory here; a missing directory is an error that says
    where to get it and how to lay it out."""

    # A str default (validated into a Path) so that the docs renderer can print it.
    data_root: Path = Field("data/benchmarks")
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

    # ----------------------------------------------------------------- the runner (`pairuni eval`)

    benchmarks: list[BenchmarkName] = Field(default_factory=lambda: list(BENCHMARK_NAMES))
    """Benchmarks `pairuni eval` runs when `--benchmarks` is not given, in the paper's order:
    mmmu, mmstar, mme, pope (Table 1), geneval (Table 3), wise (Table 2)."""

    out_dir: Path | None = None
    """Where a run writes its outputs (`--out`): `<benchmark>/predictions.jsonl`, generated images,
    `results.json`, `results.md`. `null`: `runs/eval/<name of the model directory>`."""

    seed: int = 0
    """Seed of generation sampling. Each batch gets its own generator, seeded from this seed, the
    benchmark and the batch's first sample id, so a resumed run repeats an uninterrupted one
    exactly (for the same batch sizes)."""

    und_batch_size: int = Field(16, ge=1)
    """Understanding questions answered per forward batch."""

    gen_batch_size: int = Field(4, ge=1)
    """Generation prompts per batch; a batch holds `gen_batch_size x images per prompt` images
    (twice the rows with CFG)."""

    greedy_understanding: bool = True
    """Decode understanding answers greedily (VLMEvalKit's `do_sample=False`, the usual protocol
    of Janus-Pro's MMMU, MMStar, MME and POPE numbers). `false` samples at `text_temperature`."""

    max_new_tokens: int = Field(512, ge=1)
    """Longest understanding answer, in tokens (a batch stops when every answer has ended). The
    prompts ask for a letter or a short phrase; VLMEvalKit allows Janus 2048."""

    text_temperature: float = Field(1.0, gt=0.0)
    """Temperature of understanding sampling, used only when `greedy_understanding` is false."""

    system_prompt: str | None = ""
    """System prompt of understanding questions. `""` (VLMEvalKit's Janus setting) uses none;
    `null` keeps the checkpoint processor's default."""

    cfg_scale: float = Field(5.0, ge=1.0)
    """Classifier-free guidance weight of image generation (5, as Janus-Pro and the paper)."""

    image_temperature: float = Field(1.0, gt=0.0)
    """Temperature of image-token sampling (1, as Janus-Pro and the paper)."""

    geneval_images_per_prompt: int = Field(4, ge=1)
    """Images generated per GenEval prompt (the official protocol: 4; scores average over all of
    them). WISE uses one image per prompt, as its official protocol."""

    limit: int | None = Field(None, ge=1)
    """Run only the first `limit` samples of each benchmark (a smoke test). Scores of a subset are
    not comparable with the paper's; results.md says so."""

    @field_validator("benchmarks")
    @classmethod
    def _check_benchmarks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(
                "benchmarks is empty, so nothing would run; list some of "
                + ", ".join(BENCHMARK_NAMES)
            )
        return list(dict.fromkeys(value))

    def benchmark_dir(self, name: str) -> Path:
        """The directory of benchmark `name` (its `*_dir` field, else `<data_root>/<name>`)."""
        explicit = getattr(self, f"{name}_dir")
        return Path(explicit) if explicit is not None else self.data_root / name
