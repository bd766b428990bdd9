"""`pairuni shapes sweep`: choose the ShapesWorld RL recipe (learning rate x KL) on a validation
split, before any setting is compared on the test split.

Each grid point is one `pairuni shapes ablate` of the single-task settings (understanding-only,
generation-only) with `train.learning_rate` and `algo.beta` set, evaluated on the VALIDATION
records (`DemoSettings.eval_split`), in its own folder `OUT/lr<x>_beta<y>/` (resumable like any
ablation). The chosen point is the one whose smallest gain over the base model, among what
each task trains (MC accuracy of the sampled and of the greedy answers for understanding-only,
the GenEval-style overall for generation-only), is largest: a recipe that improves everything
it trains, greedy answers included, rather than one task at the other's expense.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pairuni.shapes.ablate import AblationError, Stat, _atomic_write, run_ablation
from pairuni.shapes.demo import DemoSettings

SWEEP_SETTINGS = ("understanding_only", "generation_only")
SWEPT_KEYS = ("train.learning_rate", "algo.beta")
"""Keys the sweep sets itself; `--set` may not touch them."""
TRAINED_METRICS: dict[str, tuple[str, ...]] = {
    "understanding_only": ("mc_accuracy_sampled", "mc_accuracy"),
    "generation_only": ("geneval_overall",),
}
"""What each single-task setting trains, as `summarize_runs` names it."""


def point_name(learning_rate: float, beta: float) -> str:
    return f"lr{learning_rate:g}_beta{beta:g}"


def check_grid(learning_rates: Sequence[float], betas: Sequence[float]) -> None:
    if not learning_rates or not betas:
        raise AblationError("the sweep needs at least one learning rate and one beta")
    if any(lr <= 0 for lr in learning_rates):
        raise AblationError(f"learning rates must be > 0 (got {list(learning_rates)})")
    if any(b < 0 for b in betas):
        raise AblationError(f"betas must be >= 0 (got {list(betas)})")


def check_sweep_overrides(overrides: Sequence[str]) -> None:
    swept = [item for item in overrides if item.split("=", 1)[0].strip() in SWEPT_KEYS]
    if swept:
        raise AblationError(
            f"--set {swept[0]}: the sweep sets {' and '.join(SWEPT_KEYS)} itself; give them "
            "with --lr / --beta"
        )


def point_summary(learning_rate: float, beta: float, results: dict[str, Any]) -> dict[str, Any]:
    """One grid point: each trained metric's mean ± std over seeds and its gain over the base
    model (validation split), and the smallest gain (what the choice maximises)."""
    base = results["base"]
    metrics: dict[str, Any] = {}
    for setting, keys in TRAINED_METRICS.items():
        for key in keys:
            stat = results["summary"][setting][key]
            metrics[f"{setting}/{key}"] = {
                **stat,
                "base": base[key]["mean"],
                "gain": stat["mean"] - base[key]["mean"],
                "gain_interval": gain_interval(results, setting, key),
            }
    return {
        "name": point_name(learning_rate, beta),
        "learning_rate": learning_rate,
        "beta": beta,
        "metrics": metrics,
        "worst_gain": min(m["gain"] for m in metrics.values()),
    }


def gain_interval(results: dict[str, Any], setting: str, metric: str) -> dict[str, Any] | None:
    """The gain of `setting` over the base model on `metric` with its 95 % interval: the same
    held-out items drawn for both, the setting's seeds drawn apart (`paired_difference`; the
    base model is one run). None when an evaluation lacks per-item scores (older folders)."""
    from pairuni.shapes.ablate import INTERVAL_METRICS, item_runs
    from pairuni.shapes.ablate_stats import paired_difference

    key, group_key = INTERVAL_METRICS[metric]
    runs = results.get("runs", {}).get(setting)
    if not runs or "base_evaluation" not in results:
        return None
    items = item_runs(runs, key)
    base = item_runs([{"evaluation": results["base_evaluation"]}], key)
    if items is None or base is None:
        return None
    groups = runs[0]["evaluation"][key].get(group_key) if group_key else None
    return asdict(paired_difference(items, base, groups))


def choose(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The point with the largest smallest gain (ties: the first in grid order)."""
    return max(points, key=lambda p: p["worst_gain"])


def run_sweep(
    out_dir: str | Path,
    learning_rates: Sequence[float],
    betas: Sequence[float],
    seeds: int = 3,
    demo_settings: DemoSettings | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | Path = ".cache/pairuni",
    echo: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Every grid point's single-task ablation on the validation split; writes `sweep.json` and
    `sweep.md` into `out_dir` and returns what sweep.json holds."""
    check_grid(learning_rates, betas)
    check_sweep_overrides(overrides)
    validation = replace(demo_settings or DemoSettings(), eval_split="validation")
    out = Path(out_dir)
    points = []
    grid = list(itertools.product(learning_rates, betas))
    for number, (lr, beta) in enumerate(grid, 1):
        echo(f"== grid point {number}/{len(grid)}: learning rate {lr:g}, beta {beta:g}")
        sets = [*overrides, f"train.learning_rate={lr!r}", f"algo.beta={beta!r}"]
        results = run_ablation(
            out / point_name(lr, beta), SWEEP_SETTINGS, seeds, validation, sets, cache_dir, echo
        )
        points.append(point_summary(lr, beta, results))
    sweep = {
        "command": command,
        "split": "validation",
        "seeds": seeds,
        "overrides": list(overrides),
        "points": points,
        "chosen": choose(points)["name"],
    }
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "sweep.json", json.dumps(sweep, indent=2) + "\n")
    _atomic_write(out / "sweep.md", render_sweep(sweep))
    return sweep


def render_sweep(sweep: dict[str, Any]) -> str:
    """Markdown: one row per grid point, each trained metric as mean ± std (gain over base)."""
    keys = list(sweep["points"][0]["metrics"])
    lines = [
        "# ShapesWorld recipe sweep (`pairuni shapes sweep`)",
        "",
        f"Validation split, {sweep['seeds']} seeds per point; mean ± sample std over seeds, "
        "(gain over the base model [its 95 % interval: percentile bootstrap over seeds and "
        "the same held-out items]). Chosen: the point whose smallest gain is largest "
        f"(**{sweep['chosen']}**).",
        "",
        "| learning rate | beta | " + " | ".join(keys) + " | smallest gain |",
        "|---|---|" + "---|" * len(keys) + "---|",
    ]
    for point in sweep["points"]:
        cells = [
            f"{Stat(m['mean'], m['std'], m['n']).format()} ({m['gain']:+.3f}{_bracket(m)})"
            for m in (point["metrics"][k] for k in keys)
        ]
        mark = "**" if point["name"] == sweep["chosen"] else ""
        lines.append(
            f"| {mark}{point['learning_rate']:g}{mark} | {point['beta']:g} | "
            + " | ".join(cells)
            + f" | {point['worst_gain']:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def _bracket(metric: dict[str, Any]) -> str:
    interval = metric.get("gain_interval")
    return f" [{interval['low']:+.3f}, {interval['high']:+.3f}]" if interval else ""
