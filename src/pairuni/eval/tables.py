"""Results: the entry of each benchmark in results.json, the Markdown of the paper's tables with
the run's settings (results.md), and `pairuni eval compare`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pairuni.eval.benchmarks import BENCHMARKS, FAMILY_TITLES, UNDERSTANDING, family_members
from pairuni.eval.config import BENCHMARK_NAMES
from pairuni.eval.errors import EvalSetupError
from pairuni.eval.outputs import read_json_file
from pairuni.eval.results import BenchmarkResult, Column
from pairuni.eval.settings import GENERATION_KEYS

RESULTS_FORMAT = 2
SCORING_KEYS = (
    "detector",
    "judge_model",
    "mmmu_seed",
    "answer_span",
    "mmstar_matching",
    "judge_missing_scores",
    "imgedit_judge_model",
    "imgedit_judge_prompts",
)
"""Settings that change only how outputs are scored (`--rescore` may change them)."""


def result_entry(name: str, result: BenchmarkResult, count: int) -> dict[str, Any]:
    """A benchmark's entry in results.json (the per-sample details go to details.json)."""
    family = BENCHMARKS[name].family
    entry: dict[str, Any] = {
        "benchmark": result.benchmark,
        "family": family,
        "num_samples": count,
        "metrics": dict(result.metrics),
        "columns": [dataclasses.asdict(c) for c in result.columns],
    }
    if "official_overall" in result.details:  # WISE: is Overall the official script's number?
        entry["official_overall"] = bool(result.details["official_overall"])
    if "judge_prompts" in result.details:  # ImgEdit: official, pairuni's or custom prompts
        entry["judge_prompts"] = str(result.details["judge_prompts"])
    return entry


def columns_of(entry: Mapping[str, Any]) -> list[Column]:
    return [Column(**c) for c in entry["columns"]]


def format_value(value: float | None, column: Column) -> str:
    return "–" if value is None else f"{value * column.scale:.{column.digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    top = "| " + " | ".join(headers) + " |"
    rule = "|" + "|".join("---" for _ in headers) + "|"
    return "\n".join([top, rule, *("| " + " | ".join(r) + " |" for r in rows)])


def family_table(results: Mapping[str, Any], members: Sequence[str], model: str) -> str | None:
    """One row for `model`: understanding benchmarks give their headline column (the paper's
    Table 1 has one per benchmark), GenEval and WISE all of theirs."""
    entries = [(b, results["benchmarks"][b]) for b in members if b in results["benchmarks"]]
    if not entries:
        return None
    headers, cells = ["Model"], [model]
    for name, entry in entries:
        columns = columns_of(entry)
        shown = columns[:1] if name in UNDERSTANDING else columns
        for column in shown:
            headers.append(column.header)
            cells.append(format_value(entry["metrics"].get(column.key), column))
    return markdown_table(headers, [cells])


SETTING_LABELS = (
    ("model", "Model checkpoint"),
    ("dtype", "dtype"),
    ("seed", "Seed"),
    ("greedy_understanding", "Greedy understanding decoding"),
    ("answer_format", "Answer format asked for"),
    ("geneval_images_per_prompt", "Images per GenEval prompt"),
    ("und_batch_size", "Understanding batch"),
    ("gen_batch_size", "Generation batch (prompts)"),
    ("limit", "Samples per benchmark (limit)"),
    ("answer_span", "Replies scored on their <answer> span"),
    ("mmstar_matching", "MMStar matching rules"),
    ("protocol", "Protocol (official scripts or VLMEvalKit)"),
    ("detector", "GenEval detector"),
    ("judge_model", "WISE judge"),
    ("judge_missing_scores", "WISE: a reply missing a score"),
    ("wise_set", "WISE prompt set"),
    ("imgedit_judge_model", "ImgEdit judge"),
    ("imgedit_judge_prompts", "ImgEdit judge prompts"),
    ("pairuni_version", "pairuni"),
    ("commit", "Commit"),
)
"""results.md's settings table: these first, then every `rollout.*` sampling key as named."""


ROLLOUT_LABELS = {
    "rollout.max_new_tokens": "Max new tokens",
    "rollout.text_temperature": "Understanding temperature (if sampled)",
    "rollout.system_prompt": "System prompt",
    "rollout.cfg_scale": "CFG",
    "rollout.image_temperature": "Image temperature",
}


def setting_rows(settings: Mapping[str, Any]) -> list[list[str]]:
    rollout = [
        (k, ROLLOUT_LABELS.get(k, f"`eval.{k}`")) for k in settings if k.startswith("rollout.")
    ]
    labels = [*SETTING_LABELS, *rollout]
    return [[label, f"`{json.dumps(settings[key])}`"] for key, label in labels if key in settings]


OFFICIAL_WISE_JUDGE = "gpt-4o-2024-05-13"


def family_note(family: str, results: Mapping[str, Any]) -> list[str]:
    """A warning under a table whose numbers are not comparable with published ones."""
    settings = results["settings"]
    if family == "geneval":
        from pairuni.eval.geneval import TASKS

        lines = [
            f"Detector: `{settings.get('detector')}`. Published GenEval scores use the official "
            "Mask2Former detector; other detectors give numbers that are not comparable with "
            "them (docs/eval.md).",
            "",
        ]
        metrics = results["benchmarks"].get("geneval", {}).get("metrics", {})
        missing = [t for t in TASKS if t not in metrics]
        if missing:
            lines += [
                f"Overall over {len(TASKS) - len(missing)} of {len(TASKS)} tasks (missing: "
                f"{', '.join(missing)}), as the official summary averages the tasks present; "
                "not comparable with a full run.",
                "",
            ]
        return lines
    if family == "wise":
        return wise_notes(results)
    if family == "imgedit":
        from pairuni.eval.imgedit import imgedit_notes

        return imgedit_notes(results)
    if family == "understanding":
        protocol = settings.get("protocol", "official")
        source = {
            "official": "each benchmark's official scoring script; MMMU's official prompt on "
            "its validation split; POPE = mean F1 of the splits",
            "vlmevalkit": "VLMEvalKit's (MMMU_DEV_VAL as multiple choice; POPE = pooled F1), "
            "as behind published Janus-Pro numbers",
        }.get(protocol, protocol)
        return [f"Protocol: `{protocol}`: {source} (docs/eval.md).", ""]
    return []


def wise_notes(results: Mapping[str, Any]) -> list[str]:
    """Why a WISE table may not be the official number: judge, prompt set, partial run."""
    settings, lines = results["settings"], []
    if settings.get("judge_model") != OFFICIAL_WISE_JUDGE:
        lines += [
            f"Judge: `{settings.get('judge_model')}`. Published WISE scores use "
            f"{OFFICIAL_WISE_JUDGE}; another judge gives numbers that are not comparable.",
            "",
        ]
    if settings.get("wise_set", "original") != "original":
        lines += [
            f"Prompt set `{settings.get('wise_set')}`, judged with the original three-score "
            "protocol: comparable with neither WISE leaderboard.",
            "",
        ]
    if not results["benchmarks"].get("wise", {}).get("official_overall", True):
        lines += [
            "Overall from a partial run: the official weights renormalised over the categories "
            "present, not the number the official script prints.",
            "",
        ]
    return lines


def render_markdown(results: Mapping[str, Any]) -> str:
    """results.md: the paper's tables for this run, every column per benchmark, the settings."""
    settings = results["settings"]
    model = settings.get("name") or "model"
    out = [f"# Evaluation: {model}", ""]
    if settings.get("limit") is not None:
        out += [
            f"**Subset:** only the first {settings['limit']} samples of each benchmark; these "
            "numbers are not comparable with the paper's.",
            "",
        ]
    for family, title in FAMILY_TITLES.items():
        table = family_table(results, family_members(family), model)
        if table is not None:
            out += [f"## {title}", "", table, ""]
            out += family_note(family, results)
    wide = [
        e for b, e in results["benchmarks"].items() if b in UNDERSTANDING and len(e["columns"]) > 1
    ]
    for entry in wide:
        columns = columns_of(entry)
        cells = [model, *(format_value(entry["metrics"].get(c.key), c) for c in columns)]
        out += [f"### {entry['benchmark']}: all columns", ""]
        out += [markdown_table(["Model", *(c.header for c in columns)], [cells]), ""]
    out += ["## Settings", "", markdown_table(["Setting", "Value"], setting_rows(settings)), ""]
    out += ["All metrics: results.json; per-sample verdicts: <benchmark>/details.json.", ""]
    return "\n".join(out)


@dataclasses.dataclass(frozen=True)
class ComparedMetric:
    """One metric of two runs: the values as the table prints them, and B - A."""

    benchmark: str
    metric: str
    a: float | None
    b: float | None
    digits: int
    headline: bool = True
    """A column of the paper's tables (higher is better), not one of the other metrics."""

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    def cells(self) -> list[str]:
        def fmt(value: float | None, sign: bool = False) -> str:
            if value is None:
                return "–"
            if round(value, self.digits) == 0:
                value = 0.0  # no "-0.0"
            return f"{value:+.{self.digits}f}" if sign else f"{value:.{self.digits}f}"

        return [self.benchmark, self.metric, fmt(self.a), fmt(self.b), fmt(self.delta, True)]


def load_results(path: str | Path) -> dict[str, Any]:
    """results.json of a run directory (or the file itself)."""
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
    results = read_json_file(file, "results.json (run `pairuni eval` first)")
    if not isinstance(results, dict) or "benchmarks" not in results:
        raise EvalSetupError(f"{file}: not a pairuni results.json (no `benchmarks` key)")
    return results


def compare_results(
    a: Mapping[str, Any], b: Mapping[str, Any], all_metrics: bool = False
) -> list[ComparedMetric]:
    """The metrics of both runs, benchmark by benchmark in the paper's order: the table columns
    (scaled as printed), then with `all_metrics` every other metric (as stored)."""
    rows: list[ComparedMetric] = []
    names = [n for n in BENCHMARK_NAMES if n in a["benchmarks"] or n in b["benchmarks"]]
    for name in names:
        entry_a, entry_b = a["benchmarks"].get(name), b["benchmarks"].get(name)
        metrics_a = entry_a["metrics"] if entry_a else {}
        metrics_b = entry_b["metrics"] if entry_b else {}
        label = (entry_a or entry_b)["benchmark"]
        columns = columns_of(entry_a or entry_b)
        for column in columns:
            va, vb = metrics_a.get(column.key), metrics_b.get(column.key)
            rows.append(
                ComparedMetric(
                    label,
                    column.header,
                    None if va is None else va * column.scale,
                    None if vb is None else vb * column.scale,
                    column.digits,
                )
            )
        if all_metrics:
            shown = {c.key for c in columns}
            keys = [k for k in dict.fromkeys([*metrics_a, *metrics_b]) if k not in shown]
            rows += [
                ComparedMetric(label, key, metrics_a.get(key), metrics_b.get(key), 4, False)
                for key in keys
            ]
    return rows


def settings_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """`key: A -> B` for each generation or scoring setting the two runs do not share."""
    keys = [*GENERATION_KEYS, *SCORING_KEYS]
    sa, sb = a.get("settings", {}), b.get("settings", {})
    return [f"{k}: {sa.get(k)!r} -> {sb.get(k)!r}" for k in keys if sa.get(k) != sb.get(k)]


def compare_markdown(rows: Sequence[ComparedMetric], name_a: str, name_b: str) -> str:
    headers = ["Benchmark", "Metric", f"A: {name_a}", f"B: {name_b}", "B − A"]
    return markdown_table(headers, [r.cells() for r in rows])
