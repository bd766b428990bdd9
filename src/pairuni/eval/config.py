"""The `eval` section: where the benchmarks live and how the generation judges work."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pairuni.configbase import Section
from pairuni.eval.answers import AnswerSpan
from pairuni.eval.geneval import GenEvalRules
from pairuni.eval.imgedit_judge import ImgEditConfig
from pairuni.eval.mmstar import MMStarMatching
from pairuni.eval.wise import JudgeConfig
from pairuni.policy.config import DEFAULT_UND_TEMPLATE, RolloutConfig

BenchmarkName = Literal["mmmu", "mmstar", "mme", "pope", "geneval", "wise", "imgedit"]
BENCHMARK_NAMES: tuple[str, ...] = ("mmmu", "mmstar", "mme", "pope", "geneval", "wise", "imgedit")
"""Every benchmark `pairuni eval` knows, in the paper's order."""
DEFAULT_BENCHMARKS: tuple[str, ...] = BENCHMARK_NAMES[:6]
"""What `pairuni eval` runs by default: the six that every backend can answer (ImgEdit needs a
backend that edits images, so it is asked for by name)."""


class EvalRolloutConfig(RolloutConfig):
    """The training `rollout` section's keys with evaluation defaults where they differ."""

    max_new_tokens: int = Field(512, ge=1)
    """Longest understanding answer, in tokens (a batch stops when every answer has ended).
    The benchmark prompts ask for a letter or a short phrase; VLMEvalKit allows Janus 2048, the
    default under `eval.protocol: vlmevalkit`."""

    system_prompt: str | None = ""
    """System prompt of understanding questions. `""` (VLMEvalKit's Janus setting) uses none;
    `null` keeps the checkpoint processor's default (what training uses)."""

    und_prompt_template: str = "{question}"
    """The user turn: the benchmark prompt as it is (it already says how to answer). Under
    `eval.answer_format: rl` the runner uses `eval.rl_prompt_template` instead."""


Protocol = Literal["official", "vlmevalkit"]
VLMEVALKIT_MAX_NEW_TOKENS = 2048
"""VLMEvalKit's answer length for Janus (vlmeval/vlm/janus.py)."""

MOVED_TO_ROLLOUT = (
    "max_new_tokens",
    "text_temperature",
    "system_prompt",
    "cfg_scale",
    "image_temperature",
)


class EvalConfig(Section):
    """Benchmark evaluation (docs/eval.md). Benchmark data never ships with pairuni: download
    each benchmark once and point its directory here; a missing directory is an error that says
    where to get it and how to lay it out."""

    # A str default (validated into a Path) so that the docs renderer can print it.
    data_root: Path = Field("data/benchmarks")
    """Directory holding one folder per benchmark (mmmu, mmstar, mme, pope, geneval, wise,
    imgedit). Each `*_dir` below that is `null` means `<data_root>/<benchmark>`."""

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
    """WISE: a clone of PKU-YuanGroup/WISE, or the folder holding the chosen set's JSON files
    (`eval.wise_set`). `null`: `<data_root>/wise`."""

    imgedit_dir: Path | None = None
    """ImgEdit Basic bench: a folder holding basic_edit.json (or a clone of PKU-YuanGroup/ImgEdit)
    and the source images of the release's Benchmark.tar (`singleturn/`). `null`:
    `<data_root>/imgedit`."""

    wise_set: Literal["original", "rewrite", "verified"] = "original"
    """Which WISE prompts to load from `wise_dir`: `original` (the paper's and the GPT-4o
    leaderboard's: WISE_legacy/data/<stem>.json, data/ before 2026-04-19), `rewrite` (the
    simplified `<stem>_rewrite.json` beside them) or `verified` (WISE_Verified's
    data_verified/<stem>_verified.json, judged here with the original three-score protocol,
    so comparable with neither leaderboard). See docs/eval.md."""

    mmmu_seed: int = 42
    """Seed of the random letter given to multiple-choice answers that cannot be parsed
    (the official MMMU script seeds 42; `protocol: official` only, VLMEvalKit draws none)."""

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

    imgedit: ImgEditConfig = Field(default_factory=ImgEditConfig)
    """ImgEdit's judge (an OpenAI-compatible endpoint of its own), its prompts and how many
    unreadable verdicts a run may leave out."""

    # ----------------------------------------------------------------- the runner (`pairuni eval`)

    benchmarks: list[BenchmarkName] = Field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    """Benchmarks `pairuni eval` runs when `--benchmarks` is not given, in the paper's order:
    mmmu, mmstar, mme, pope (Table 1), geneval (Table 3), wise (Table 2). `imgedit` (Table 4,
    image editing) is run only when named, since it needs a backend that edits images."""

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
    of Janus-Pro's MMMU, MMStar, MME and POPE numbers). `false` samples at
    `rollout.text_temperature`."""

    rollout: EvalRolloutConfig = Field(default_factory=EvalRolloutConfig)
    """How the policy samples during evaluation: the training `rollout` section's keys, with
    evaluation defaults: at most 512 new tokens (VLMEvalKit allows Janus 2048), no system
    prompt (VLMEvalKit's Janus setting; `null` keeps the checkpoint processor's default), the
    question as the whole user turn (`und_prompt_template: "{question}"`: the benchmark prompt
    already says how to answer), CFG 5 and temperature 1 for images (Janus-Pro and the paper).
    Every key here is recorded in run.json and checked on resume."""

    answer_format: Literal["benchmark", "rl"] = "benchmark"
    """What the understanding prompt asks for. `benchmark`: each benchmark's own instruction
    (e.g. "Answer with the option's letter from the given choices directly."), as published
    numbers use. `rl`: the question and its options under `rl_prompt_template`, the
    `<think>…</think><answer>X</answer>` format pairuni trains (use it to evaluate a model in the
    format it was trained to write)."""

    rl_prompt_template: str = DEFAULT_UND_TEMPLATE
    """The user turn under `answer_format: rl`: `{question}` is replaced by the question and its
    options, one per line. The default is the training default (`rollout.und_prompt_template`);
    if the run trained with another template, put that one here."""

    mmstar_matching: MMStarMatching = "vlmevalkit-v0.2"
    """Which VLMEvalKit version's multiple-choice rules score MMStar: `vlmevalkit-v0.2` (tags
    v0.2-v0.3rc1, what published numbers used), `vlmevalkit-2025-08` (PR #1175) or
    `vlmevalkit-2026-06` (PR #1552, current main). See docs/eval.md. Scoring only: `--rescore`
    can change it without the model."""

    protocol: Protocol = "official"
    """Which evaluation the understanding numbers reproduce (docs/eval.md, "Protocols").
    `official`: each benchmark's official scoring script, MMMU's official prompt on its
    validation split, POPE's headline the mean F1 of its three splits. `vlmevalkit`: VLMEvalKit
    end to end, the harness behind the Janus-Pro and Lumina-DiMOO numbers people compare
    against: MMMU as `MMMU_DEV_VAL` (dev + validation) asked and scored as multiple choice with
    its prompt, POPE's headline the F1 pooled over all questions, at most 2048 new tokens
    (unless `rollout.max_new_tokens` is set). MMStar, MME and POPE get VLMEvalKit's Janus prompts
    in both. results.md names the protocol under each table."""

    answer_span: AnswerSpan = "auto"
    """How scorers read a reply. `auto`: a reply holding `<answer>…</answer>` is scored on that
    span (the last one), a reasoning-only reply on what is outside its `<think>` blocks, a plain
    reply as it is; `off`: the whole reply, as the official scripts do. Either way, replies with
    no parsable answer are counted (metric `unparsed`)."""

    geneval_images_per_prompt: int = Field(4, ge=1)
    """Images generated per GenEval prompt (the official protocol: 4; scores average over all of
    them). WISE uses one image per prompt, as its official protocol."""

    limit: int | None = Field(None, ge=1)
    """Run only the first `limit` samples of each benchmark (a smoke test). Scores of a subset are
    not comparable with the paper's; results.md says so."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        moved = [k for k in MOVED_TO_ROLLOUT if isinstance(data, dict) and k in data]
        if moved:
            raise ValueError(
                "; ".join(f"eval.{k} is now eval.rollout.{k}" for k in moved)
                + " (the evaluation's sampling settings are a rollout section); move them there"
            )
        return data

    @field_validator("rl_prompt_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("rl_prompt_template has no `{question}` placeholder; add it")
        return value

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
