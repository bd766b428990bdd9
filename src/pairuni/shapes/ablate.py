"""`pairuni shapes ablate`: the paper's data and weighting ablations (Tables 5-9, Fig. 8) in
miniature on ShapesWorld.

Every run trains the demo's recipe (`demo.yaml`) from the same base model on the same data and
pairs; a setting changes one key (`data.mode` or `algo.pair_weighting`) and a seed changes the
RL `seed` (rollout sampling, shuffles). The pairing arms (Tables 8-9: the retrieval threshold,
random selection of the aligned pairs) build their own pairs from the same data, once each.
The shared stages and each finished run are saved in `<out>/ablate-state.json` as soon as they
are done, so a re-run skips them and an interrupted training resumes from its last checkpoint.
Outputs: `results.json`, `table.md`, `grad_agreement.png` and `curves.png` in `<out>/`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pairuni.shapes.demo import (
    DemoSettings,
    DemoState,
    demo_training_config,
    evaluate_model,
    make_base_model,
    make_data,
    make_pairs,
    train_model,
)

STATE_FILE = "ablate-state.json"
COMMON_OVERRIDES: tuple[str, ...] = ("logging.grad_agreement_every=2",)
"""Applied to every run (the same for all settings): a denser gradient-agreement log than the
demo's every 5 steps, so that each run gives enough cosines for a median."""
ABLATED_KEYS = ("seed", "data.mode", "algo.pair_weighting")
"""Keys the ablation sets itself; `--set` may not touch them."""
UNDERSTANDING_TASK_METRIC = "und/reward"
GENERATION_TASK_METRIC = "gen/reward"


@dataclass(frozen=True)
class Setting:
    """One ablation arm: its overrides of the demo config and the paper row it mirrors."""

    name: str
    overrides: tuple[str, ...]
    paper_row: str
    two_tasks: bool = True
    """Whether a step holds both tasks (only then does the trainer measure `grad_cosine`)."""
    pairing: tuple[str, ...] = ()
    """`pairs build` settings of this arm's own pairs (`retrieve.threshold=0.5`), as
    "key=value" items of the `pairing` section; empty: the shared pairs."""

    @property
    def pairs_stage(self) -> str:
        """The state key of the pairs this arm trains on."""
        return f"pairs/{self.name}" if self.pairing else "pairs"


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("unpaired", ("data.mode=unpaired",), "Unpair (Table 5)"),
        Setting("random_pairs", ("data.mode=random_pairs",), "Random Pair (Table 5)"),
        Setting(
            "pairgrpo_no_weight",
            ("data.mode=pairs", "algo.pair_weighting=none"),
            "PairUni w/o sim (Table 6)",
        ),
        Setting(
            "pairgrpo_sqrt",
            ("data.mode=pairs", "algo.pair_weighting=sqrt"),
            "PairUni, sqrt(s_p) (Tables 5-6)",
        ),
        Setting(
            "pairgrpo_linear",
            ("data.mode=pairs", "algo.pair_weighting=linear"),
            "PairUni, linear s_p (Table 7)",
        ),
        Setting(
            "threshold_0.5",
            ("data.mode=pairs", "algo.pair_weighting=sqrt"),
            "PairUni, threshold 0.5 (Table 8)",
            pairing=("retrieve.threshold=0.5",),
        ),
        Setting(
            "threshold_0.7",
            ("data.mode=pairs", "algo.pair_weighting=sqrt"),
            "PairUni, threshold 0.7 (Table 8)",
            pairing=("retrieve.threshold=0.7",),
        ),
        Setting(
            "random_selection",
            ("data.mode=pairs", "algo.pair_weighting=sqrt"),
            "PairUni, aligned pairs drawn at random (Table 9)",
            pairing=("select.method=random",),
        ),
        Setting(
            "cfg_logprob_off",
            ("data.mode=pairs", "algo.pair_weighting=sqrt", "rollout.cfg_in_logprob=false"),
            "ours: image log-probs on the conditional branch, as the anchors do",
        ),
        Setting(
            "understanding_only",
            ("data.mode=understanding_only",),
            "understanding-only (Fig. 8)",
            two_tasks=False,
        ),
        Setting(
            "generation_only",
            ("data.mode=generation_only",),
            "generation-only (Fig. 8)",
            two_tasks=False,
        ),
    )
}


DEFAULT_SETTINGS = (
    "unpaired",
    "random_pairs",
    "pairgrpo_no_weight",
    "pairgrpo_sqrt",
    "understanding_only",
    "generation_only",
)
"""What `pairuni shapes ablate` runs without --settings (the paper's Tables 5-6 and Fig. 8);
the others (Table 7's linear weighting, Table 8's thresholds 0.5 and 0.7 beside the default
0.6 of `pairgrpo_sqrt`, Table 9's random selection, our cfg_in_logprob) are one --settings
away."""


class AblationError(ValueError):
    """A request the ablation cannot run; the message says what to change."""


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1 in the denominator; None when n < 2)."""

    mean: float
    std: float | None
    n: int

    def format(self, digits: int = 3) -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


# ----------------------------------------------------------------------------- configs


def check_settings(names: Sequence[str]) -> list[str]:
    """The names, in order and without repeats; AblationError naming the valid ones."""
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise AblationError(
            f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(SETTINGS)}"
        )
    if not names:
        raise AblationError(f"no setting given; valid settings: {', '.join(SETTINGS)}")
    return list(dict.fromkeys(names))


def check_user_overrides(overrides: Sequence[str]) -> None:
    """Refuse `--set` on the keys the ablation varies itself."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in ABLATED_KEYS:
            raise AblationError(
                f"--set {item}: `{key}` is what the ablation varies (settings set data.mode and "
                f"algo.pair_weighting, --seeds sets seed); drop this --set"
            )


def run_overrides(setting: str, seed: int, user_overrides: Sequence[str] = ()) -> list[str]:
    """The `--set` list of one run, applied in order on top of `demo.yaml`."""
    return [*COMMON_OVERRIDES, *user_overrides, *SETTINGS[setting].overrides, f"seed={seed}"]


def run_config(
    setting: str, seed: int, user_overrides: Sequence[str] = (), max_steps: int | None = None
) -> Any:
    """The PairUniConfig of one run (model, data and output paths are filled in by training)."""
    cfg = demo_training_config(run_overrides(setting, seed, user_overrides))
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    return cfg


# ----------------------------------------------------------------------------- aggregation


def mean_std(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation of `values` (at least one)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def grad_cosines(rows: Sequence[dict[str, Any]], key: str = "grad_cosine") -> list[float]:
    """The finite `key` values (`grad_cosine`: all parameters; `grad_cosine_shared`: the
    parameters both losses reach) of a metrics.jsonl, in step order."""
    values = [r.get(key) for r in rows]
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def reward_curve(rows: Sequence[dict[str, Any]], key: str) -> list[list[float]]:
    """[[step, mean reward of the step's rollouts], ...] for one task's metric key."""
    return [[r["step"], float(r[key])] for r in rows if r.get(key) is not None]


def mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> list[tuple[float, float]]:
    """Average several [[step, value], ...] curves step by step (over the curves having it)."""
    by_step: dict[float, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    return [(step, statistics.fmean(by_step[step])) for step in sorted(by_step)]


def generation_tags(generation: dict[str, Any]) -> dict[str, float]:
    """The per-tag GenEval-style scores of an `evaluate_generation` result."""
    return {k: v for k, v in generation.items() if k not in ("overall", "cfg_scale") and _is_num(v)}


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample std over seeds of one setting's run results.

    `grad_cosine` is the mean ± std of each run's median cosine (None when no run logged one);
    `grad_cosine_pooled_median` is the median over all logged steps of all seeds."""
    understanding = [r["evaluation"]["understanding"] for r in runs]
    generation = [r["evaluation"]["generation"] for r in runs]
    sampled = [r["evaluation"].get("understanding_sampled") for r in runs]
    medians = [statistics.median(r["grad_cosine"]) for r in runs if r["grad_cosine"]]
    pooled = [c for r in runs for c in r["grad_cosine"]]
    shared = [statistics.median(c) for r in runs if (c := r.get("grad_cosine_shared"))]
    return {
        "n": len(runs),
        "mc_accuracy": asdict(mean_std([u["accuracy"] for u in understanding])),
        # older results lack the sampled accuracy: `--reevaluate` adds it
        "mc_accuracy_sampled": (
            asdict(mean_std([s["accuracy"] for s in sampled])) if all(sampled) else None
        ),
        "geneval_overall": asdict(mean_std([g["overall"] for g in generation])),
        "grad_cosine": asdict(mean_std(medians)) if medians else None,
        "grad_cosine_pooled_median": statistics.median(pooled) if pooled else None,
        # runs before the shared-parameter cosine existed lack it
        "grad_cosine_shared": asdict(mean_std(shared)) if shared else None,
        "per_category": {
            name: asdict(mean_std([u["per_category"][name] for u in understanding]))
            for name in understanding[0]["per_category"]
        },
        "per_tag": {
            name: asdict(mean_std([generation_tags(g)[name] for g in generation]))
            for name in generation_tags(generation[0])
        },
    }


BASELINE_SETTING = "unpaired"
"""The setting the paired differences are taken against (the paper's "Unpair" row)."""
INTERVAL_METRICS = {
    "mc_accuracy": ("understanding", None),
    "mc_accuracy_sampled": ("understanding_sampled", None),
    "geneval_overall": ("generation", "item_tags"),
}
"""metric -> (evaluation key holding per-item `items`, the key of its group labels or None)."""


def item_runs(runs: Sequence[dict[str, Any]], key: str) -> list[list[float]] | None:
    """Per-run item scores of one evaluation, or None when a run lacks them (older results:
    `--reevaluate` adds them)."""
    found = [r["evaluation"].get(key, {}).get("items") for r in runs]
    return found if all(f is not None for f in found) else None  # type: ignore[return-value]


def score_intervals(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per setting and metric: the 95 % interval over seeds and items, and the paired
    difference against `unpaired` with its interval (`ablate_stats`)."""
    from pairuni.shapes.ablate_stats import bootstrap_interval, paired_difference

    baselines = {
        key: item_runs(runs.get(BASELINE_SETTING, []), key) for key, _ in INTERVAL_METRICS.values()
    }
    out: dict[str, Any] = {}
    for name, setting_runs in runs.items():
        out[name] = {}
        for metric, (key, group_key) in INTERVAL_METRICS.items():
            items = item_runs(setting_runs, key)
            if items is None:
                continue
            groups = setting_runs[0]["evaluation"][key].get(group_key) if group_key else None
            entry: dict[str, Any] = {"interval": asdict(bootstrap_interval(items, groups))}
            baseline = baselines[key]
            if name != BASELINE_SETTING and baseline:
                entry["vs_" + BASELINE_SETTING] = asdict(paired_difference(items, baseline, groups))
            out[name][metric] = entry
    return out


def base_summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The base model's single evaluation in the shape of `summarize_runs`."""
    return summarize_runs([{"evaluation": evaluation, "grad_cosine": []}])


# ----------------------------------------------------------------------------- the table


def _cell(stat: dict[str, Any] | None, missing: str) -> str:
    return missing if stat is None else Stat(**stat).format()


def render_table(results: dict[str, Any]) -> str:
    """Markdown: the main table (one row per setting) and the per-category breakdown."""
    summary, names = results["summary"], list(results["summary"])
    lines = [
        "# ShapesWorld ablation (`pairuni shapes ablate`)",
        "",
        f"{results['steps']} PairGRPO steps per run from the same base model, data and pairs; "
        f"seeds {', '.join(map(str, results['seeds']))}. Held-out scores (greedy MC accuracy, "
        "MC accuracy of the policy's samples at temperature 1, averaged over 3 draws; "
        "GenEval-style overall of one CFG image per prompt) as mean ± sample std over seeds; "
        "grad_cosine is the median over a run's logged steps, then mean ± std over seeds: over "
        "all trainable parameters, and over the shared ones (the tensors both losses reach; "
        "the heads only one loss reaches add zero to the dot product and dilute the "
        "all-parameter cosine toward 0).",
        "",
        "| setting | paper row | n | MC accuracy (greedy) | MC accuracy (T=1) "
        "| GenEval-style overall | median grad_cosine | median grad_cosine (shared) |",
        "|---|---|---|---|---|---|---|---|",
        _row("base model", "the model before RL", results["base"], "n/a"),
    ]
    notes: set[int] = set()
    for name in names:
        setting = SETTINGS[name]
        note = 2 if setting.two_tasks else 1
        if summary[name]["grad_cosine"] is None:
            notes.add(note)
        lines.append(_row(name, setting.paper_row, summary[name], f"n/a{'¹²'[note - 1]}"))
    for note in sorted(notes):
        lines += ["", _FOOTNOTES[note]]
    lines += _pair_counts(results)
    lines += _interval_table(results)
    lines += ["", *_breakdown(results)]
    return "\n".join(lines) + "\n"


def _interval_table(results: dict[str, Any]) -> list[str]:
    """Each setting's scores with 95 % intervals (bootstrap over seeds and items) and its
    paired difference against `unpaired`; empty when the runs lack per-item scores."""
    from pairuni.shapes.ablate_stats import Interval

    intervals = results.get("intervals") or {}
    if not any(intervals.values()):
        return []
    metrics = [m for m in INTERVAL_METRICS if any(m in v for v in intervals.values())]
    titles = {
        "mc_accuracy": "MC greedy",
        "mc_accuracy_sampled": "MC T=1",
        "geneval_overall": "GenEval-style",
    }
    header = [f"{titles[m]} [95 % CI] | Δ vs {BASELINE_SETTING} [95 % CI]" for m in metrics]
    lines = [
        "",
        "## 95 % intervals and paired differences",
        "",
        "Percentile bootstrap, 2,000 draws, over seeds and held-out items at once; a "
        f"difference against `{BASELINE_SETTING}` draws the items once for both settings (the "
        "same held-out items) and the seeds of each apart. **Bold**: the interval of the "
        "difference excludes 0.",
        "",
        "| setting | " + " | ".join(header) + " |",
        "|---" * (2 * len(metrics) + 1) + "|",
    ]
    for name, entry in intervals.items():
        cells = []
        for metric in metrics:
            found = entry.get(metric, {})
            cells.append(_interval_cell(found.get("interval"), bold=False))
            diff = found.get(f"vs_{BASELINE_SETTING}")
            bold = diff is not None and Interval(**diff).excludes_zero()
            cells.append(_interval_cell(diff, bold=bold))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _interval_cell(interval: dict[str, float] | None, bold: bool) -> str:
    """An `ablate_stats.Interval` saved as a dict, written as "estimate [low, high]"."""
    from pairuni.shapes.ablate_stats import Interval

    if interval is None:
        return "—"
    text = Interval(**interval).format()
    return f"**{text}**" if bold else text


def _pair_counts(results: dict[str, Any]) -> list[str]:
    """What each arm trained on: the shared pairs, and the arms that built their own."""
    arms = results.get("arm_pairs") or {}
    if not arms:
        return []

    def counts(pairs: dict[str, Any]) -> str:
        return f"{pairs['aligned']} aligned + {pairs['retrieved']} retrieved"

    parts = [f"{counts(results['pairs'])} (shared)"] + [
        f"{name} ({', '.join(SETTINGS[name].pairing)}): {counts(pairs)}"
        for name, pairs in arms.items()
    ]
    return ["", f"Pairs: {'; '.join(parts)}."]


_FOOTNOTES = {
    1: (
        "¹ single-task settings have no gradient cosine: the trainer measures it only on steps "
        "that hold both an understanding and a generation loss."
    ),
    2: ("² not logged: `logging.grad_agreement_every` is 0 or larger than the number of steps."),
}


def _row(name: str, paper: str, summary: dict[str, Any], missing_cosine: str) -> str:
    cells = [
        name,
        paper,
        str(summary["n"]),
        _cell(summary["mc_accuracy"], "n/a"),
        _cell(summary.get("mc_accuracy_sampled"), "n/a"),
        _cell(summary["geneval_overall"], "n/a"),
        _cell(summary["grad_cosine"], missing_cosine),
        # results written before the shared cosine existed have only the all-parameter one
        _cell(
            summary.get("grad_cosine_shared"),
            missing_cosine if summary["grad_cosine"] is None else "not logged",
        ),
    ]
    return "| " + " | ".join(cells) + " |"


def _breakdown(results: dict[str, Any]) -> list[str]:
    """Two tables: understanding accuracy per question category, generation score per tag."""
    rows = {"base model": results["base"], **results["summary"]}
    lines: list[str] = []
    for key, title in (
        ("per_category", "Understanding: greedy MC accuracy per question category"),
        ("per_tag", "Generation: GenEval-style score per tag"),
    ):
        columns = list(results["base"][key])
        lines += [
            f"## {title}",
            "",
            "| setting | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for name, summary in rows.items():
            cells = [_cell(summary[key].get(c), "n/a") for c in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines[:-1]


# ----------------------------------------------------------------------------- plots


def plot_grad_agreement(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Per setting: box plot of grad_cosine over all logged steps and seeds, median marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * max(3, len(runs)) + 1, 4))
    for x, (name, results) in enumerate(runs.items(), 1):
        values = [c for r in results for c in r["grad_cosine"]]
        if not values:
            reason = "one task\nper step" if not SETTINGS[name].two_tasks else "not logged"
            ax.text(x, 0.0, f"n/a\n({reason})", ha="center", va="center", fontsize=8)
            continue
        ax.boxplot([values], positions=[x], widths=0.5, showfliers=True)
        ax.plot([x], [statistics.median(values)], marker="D", color="tab:red", markersize=5)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(1, len(runs) + 1), list(runs), rotation=20, fontsize=8)
    ax.set_xlim(0.4, len(runs) + 0.6)
    ax.set(ylabel="cosine(grad und, grad gen)", title="Gradient agreement (red: median)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward_curves(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Mean reward per task against the step, one line per setting averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, task, title in (
        (axes[0], "und", "Understanding reward (MC accuracy)"),
        (axes[1], "gen", "Generation reward (GenEval clauses met)"),
    ):
        for name, results in runs.items():
            curve = mean_curve([r["rewards"][task] for r in results if r["rewards"][task]])
            if curve:
                # one colour per setting in both panels (single-task settings skip one panel)
                color = f"C{list(SETTINGS).index(name)}"
                ax.plot(*zip(*curve, strict=True), marker=".", label=name, color=color)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="step", ylabel="mean reward of the step's rollouts", title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- the runs


def run_ablation(
    out_dir: str | Path,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    seeds: int = 3,
    demo_settings: DemoSettings | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | Path = ".cache/pairuni",
    echo: Callable[[str], None] = print,
    command: str | None = None,
    reevaluate: bool = False,
) -> dict[str, Any]:
    """Train and evaluate every (setting, seed) into `out_dir`; returns what results.json holds.

    `reevaluate` evaluates the base model and every finished run's saved model again (after the
    evaluation changed) and keeps everything else, training included.

    `demo_settings` gives the data, pair and held-out sizes and `max_steps` (None: demo.yaml's);
    `overrides` are `--set` items applied to every run. Finished runs are skipped on a re-run."""
    names = check_settings(settings)
    if seeds < 1:
        raise AblationError(f"seeds must be at least 1 (got {seeds})")
    check_user_overrides(overrides)
    demo_settings = demo_settings or DemoSettings()
    overrides = [*demo_settings.training_overrides(), *overrides]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = DemoState(out, STATE_FILE)
    _check_recipe(state, out, demo_settings, overrides)
    base_cfg = demo_training_config([*COMMON_OVERRIDES, *overrides])
    _shared_stages(state, out, demo_settings, base_cfg, Path(cache_dir), echo)
    _pairing_arms(state, out, names, demo_settings, base_cfg.seed, Path(cache_dir), echo)
    jobs = [(name, seed) for name in names for seed in range(seeds)]
    if reevaluate:
        keys = [f"run/{n}/seed{s}" for n, s in jobs]
        _reevaluate(state, keys, base_cfg, demo_settings, overrides, echo)
    for number, (name, seed) in enumerate(jobs, 1):
        key = f"run/{name}/seed{seed}"
        done = " (done earlier, skipped)" if key in state.data else " ..."
        echo(f"[{number}/{len(jobs)}] {name} seed {seed}{done}")
        state.run(key, lambda n=name, s=seed: _run(out, n, s, state, demo_settings, overrides))
    results = _results(state, names, seeds, overrides, command)
    _write_outputs(out, results)
    return results


def _check_recipe(
    state: DemoState, out: Path, demo_settings: DemoSettings, overrides: Sequence[str]
) -> None:
    """Finished runs are only comparable under one recipe: refuse to mix two in one folder."""
    recipe = {
        "demo_settings": demo_settings.recipe(),
        "common_overrides": list(COMMON_OVERRIDES),
        "overrides": list(overrides),
    }
    saved = state.data.get("recipe", {}).get("result")
    if saved is not None and saved != recipe:
        changed = sorted(k for k in recipe if saved.get(k) != recipe[k])
        raise AblationError(
            f"{out} holds an ablation with another recipe ({', '.join(changed)} differ: "
            f"saved {json.dumps({k: saved.get(k) for k in changed})}); pass --fresh to start "
            "over, use another --out, or repeat the saved options"
        )
    state.run("recipe", lambda: recipe)


def _shared_stages(
    state: DemoState,
    out: Path,
    settings: DemoSettings,
    cfg: Any,
    cache: Path,
    echo: Callable[[str], None],
) -> None:
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("data", lambda: make_data(out, settings, cfg.seed)),
        ("pairs", lambda: make_pairs(out, settings, cfg.seed, cache)),
        ("base_model", lambda: make_base_model(cache, settings)),
        (
            "evaluate_base",
            lambda: evaluate_model(state.data["base_model"]["result"]["path"], cfg, settings),
        ),
    ]
    for name, fn in stages:
        if name not in state.data:
            echo(f"[shared] {name.replace('_', ' ')}")
        state.run(name, fn)


def _pairing_arms(
    state: DemoState,
    out: Path,
    names: Sequence[str],
    settings: DemoSettings,
    seed: int,
    cache: Path,
    echo: Callable[[str], None],
) -> None:
    """The pairs of every arm with pairing settings of its own, from the shared data (the
    oracle's completions and the image features are cached, so only selection and retrieval
    run again)."""
    for name in names:
        setting = SETTINGS[name]
        if not setting.pairing:
            continue
        key = setting.pairs_stage
        if key not in state.data:
            echo(f"[pairs] {name}: {', '.join(setting.pairing)}")
        folder = out / f"pairs-{name}"
        state.run(
            key, lambda f=folder, s=setting: make_pairs(out, settings, seed, cache, f, s.pairing)
        )


def _reevaluate(
    state: DemoState,
    run_keys: Sequence[str],
    base_cfg: Any,
    settings: DemoSettings,
    overrides: Sequence[str],
    echo: Callable[[str], None],
) -> None:
    """Evaluate the base model and the finished runs among `run_keys` again, saving each."""
    base = state.data["base_model"]["result"]["path"]
    echo("[reevaluate] base model")
    state.replace("evaluate_base", evaluate_model(base, base_cfg, settings))
    for key in run_keys:
        if key not in state.data:
            continue
        result = state.data[key]["result"]
        echo(f"[reevaluate] {key}")
        cfg = run_config(result["setting"], result["seed"], overrides)
        state.replace(key, {**result, "evaluation": evaluate_model(result["model"], cfg, settings)})


def _run(
    out: Path,
    setting: str,
    seed: int,
    state: DemoState,
    demo_settings: DemoSettings,
    overrides: Sequence[str],
) -> dict[str, Any]:
    """Train one (setting, seed) into `out/runs/<setting>/seed<k>/train`, evaluate, read logs."""
    from pairuni.shapes.report import read_metrics

    cfg = run_config(setting, seed, overrides, demo_settings.max_steps)
    trained = train_model(
        out / "runs" / setting / f"seed{seed}", cfg, state, SETTINGS[setting].pairs_stage
    )
    evaluation = evaluate_model(trained["model"], cfg, demo_settings)
    rows = read_metrics(Path(trained["metrics"]))
    return {
        "setting": setting,
        "seed": seed,
        "overrides": run_overrides(setting, seed, overrides),
        "model": trained["model"],
        "steps": trained["steps"],
        "evaluation": evaluation,
        "grad_cosine": grad_cosines(rows),
        "grad_cosine_shared": grad_cosines(rows, "grad_cosine_shared"),
        "rewards": {
            "und": reward_curve(rows, UNDERSTANDING_TASK_METRIC),
            "gen": reward_curve(rows, GENERATION_TASK_METRIC),
        },
    }


def _results(
    state: DemoState,
    names: list[str],
    seeds: int,
    overrides: Sequence[str],
    command: str | None,
) -> dict[str, Any]:
    runs = {n: [state.data[f"run/{n}/seed{s}"]["result"] for s in range(seeds)] for n in names}
    seconds = {n: [state.data[f"run/{n}/seed{s}"]["seconds"] for s in range(seeds)] for n in names}
    steps = {r["steps"] for rs in runs.values() for r in rs}
    return {
        "command": command,
        "recipe": state.data["recipe"]["result"],
        "settings": {
            n: {
                "overrides": list(SETTINGS[n].overrides),
                "pairing": list(SETTINGS[n].pairing),
                "paper_row": SETTINGS[n].paper_row,
            }
            for n in names
        },
        "seeds": list(range(seeds)),
        "steps": steps.pop() if len(steps) == 1 else sorted(steps),
        "pairs": state.data["pairs"]["result"],
        "arm_pairs": {
            n: state.data[SETTINGS[n].pairs_stage]["result"] for n in names if SETTINGS[n].pairing
        },
        "base_model": state.data["base_model"]["result"],
        "base": base_summary(state.data["evaluate_base"]["result"]),
        "base_evaluation": state.data["evaluate_base"]["result"],
        "summary": {n: summarize_runs(runs[n]) for n in names},
        "intervals": score_intervals(runs),
        "runs": runs,
        "seconds": seconds,
    }


def _write_outputs(out: Path, results: dict[str, Any]) -> None:
    _atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
    _atomic_write(out / "table.md", render_table(results))
    plot_grad_agreement(results["runs"], out / "grad_agreement.png")
    plot_reward_curves(results["runs"], out / "curves.png")


def _atomic_write(path: Path, text: str) -> None:
    from pairuni.data.io import atomic_output

    with atomic_output(path) as temp:
        temp.write_text(text, encoding="utf-8")
