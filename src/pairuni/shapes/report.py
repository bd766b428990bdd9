"""The demo's report folder: metrics, reward curves, a before/after sample grid and an HTML page."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

SAMPLE_IMAGES_PER_PROMPT = 4
SAMPLE_SEED = 7
SMOOTHING_WINDOW = 5
"""Steps in the moving average drawn over each reward curve (one step's mean reward of 64
rollouts moves by several hundredths from step to step)."""
SPREAD_FILE = "ablation_spread.json"
"""Packaged next to this module: the demo recipe's seed-to-seed standard deviation of each
headline score, measured by the ablation (`spread_from_results`), which the report compares
every change with."""
HEADLINE_KEYS = {
    "MC accuracy (greedy)": "mc_accuracy",
    "MC accuracy (sampled, T=1, mean of 3)": "mc_accuracy_sampled",
    "GenEval-style overall": "geneval_overall",
}
"""Report row -> the ablation summary's metric."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The trainer's metrics.jsonl, one dict per step."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def moving_average(values: list[float], window: int = SMOOTHING_WINDOW) -> list[float]:
    """The trailing mean over the last `window` values (fewer at the start)."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Reward per task (each step's mean, faint, and its moving average) and the
    understanding/generation gradient cosine against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for (key, label), color in zip(
        (
            ("und/reward", "understanding (MC accuracy)"),
            ("gen/reward", "generation (GenEval clauses met)"),
        ),
        ("tab:blue", "tab:orange"),
        strict=True,
    ):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            axes[0].plot(steps, values, marker=".", linewidth=0.6, alpha=0.35, color=color)
            smooth = moving_average(list(values))
            axes[0].plot(steps, smooth, linewidth=2.2, color=color, label=label)
    axes[0].set(
        xlabel="step",
        ylabel="mean reward of the step's rollouts",
        title=f"Rewards (bold: mean of the last {SMOOTHING_WINDOW} steps)",
    )
    axes[0].legend(fontsize=8)
    cosine = [(r["step"], r["grad_cosine"]) for r in rows if r.get("grad_cosine") is not None]
    if cosine:
        axes[1].plot(*zip(*cosine, strict=True), marker="o", color="tab:green")
    axes[1].axhline(0.0, color="grey", linewidth=0.8)
    axes[1].set(xlabel="step", ylabel="cosine", title="Gradient agreement (und vs gen loss)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(
    base_model: str, trained_model: str, prompts: list[str], cfg: Any, path: Path
) -> None:
    """Rows: prompts; left block: base model, right block: trained model; same seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from pairuni.policy.registry import load_policy

    columns = {}
    for name, model in (("base", base_model), ("trained", trained_model)):
        policy = load_policy(model, cfg.model, cfg.rollout)
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        columns[name] = policy.rollout_image(
            prompts, SAMPLE_IMAGES_PER_PROMPT, generator=generator
        ).images
    k = SAMPLE_IMAGES_PER_PROMPT
    fig, axes = plt.subplots(len(prompts), 2 * k, figsize=(2 * k * 0.9, len(prompts) * 1.05))
    for row, prompt in enumerate(prompts):
        for block, name in enumerate(("base", "trained")):
            for j in range(k):
                ax = axes[row][block * k + j]
                ax.imshow(columns[name][row * k + j], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0 and j == 0:
                    ax.set_title(f"{name} model", fontsize=8, loc="left")
        axes[row][0].set_ylabel(_wrap(prompt), fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int = 28) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def before_after_rows(
    before: dict[str, Any], after: dict[str, Any]
) -> list[tuple[str, float, float]]:
    """(metric, base, trained) for the table: overall scores first, then per category."""
    rows = [
        (
            "MC accuracy (greedy)",
            before["understanding"]["accuracy"],
            after["understanding"]["accuracy"],
        ),
        ("GenEval-style overall", before["generation"]["overall"], after["generation"]["overall"]),
    ]
    if "understanding_sampled" in before and "understanding_sampled" in after:
        rows.insert(
            1,
            (
                "MC accuracy (sampled, T=1, mean of 3)",
                before["understanding_sampled"]["accuracy"],
                after["understanding_sampled"]["accuracy"],
            ),
        )
    for name, value in before["understanding"]["per_category"].items():
        rows.append(
            (
                f"understanding: {name}",
                value,
                after["understanding"]["per_category"].get(name, float("nan")),
            )
        )
    for name, value in before["generation"].items():
        if name not in ("overall", "cfg_scale") and isinstance(value, float):
            rows.append((f"generation: {name}", value, after["generation"].get(name, float("nan"))))
    return rows


def spread_from_results(results: dict[str, Any], setting: str = "pairgrpo_sqrt") -> dict:
    """The seed-to-seed standard deviations of `setting` (the demo's recipe) in an ablation's
    results.json, in the shape of SPREAD_FILE."""
    summary = results["summary"][setting]
    return {
        "setting": setting,
        "seeds": len(results["seeds"]),
        "command": results.get("command"),
        "std": {key: summary[key]["std"] for key in HEADLINE_KEYS.values() if summary.get(key)},
    }


def seed_spread() -> dict[str, Any] | None:
    """The packaged SPREAD_FILE, or None when it is absent."""
    path = Path(__file__).with_name(SPREAD_FILE)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def verdict(change: float, std: float | None) -> str:
    """How a held-out change compares with the seed-to-seed spread: a change within twice
    the standard deviation could be another seed's draw."""
    if std is None:
        return ""
    return "beyond 2 std of seeds" if abs(change) > 2 * std else "within the seed spread"


def write_demo_report(
    out: Path, cfg: Any, state: dict[str, Any], sample_prompts: list[str]
) -> dict[str, Any]:
    """Write metrics.jsonl, curves.png, samples.png, results.json and index.html into `out`;
    samples.png draws `sample_prompts` with the base and the trained model."""
    from pairuni.config import dump_config

    out.mkdir(parents=True, exist_ok=True)
    train = state["train"]["result"]
    metrics_path = Path(train["metrics"])
    if metrics_path.is_file():
        shutil.copyfile(metrics_path, out / "metrics.jsonl")
    plot_curves(read_metrics(metrics_path), out / "curves.png")
    sample_grid(
        state["base_model"]["result"]["path"],
        train["model"],
        sample_prompts,
        cfg,
        out / "samples.png",
    )
    before = state["evaluate_base"]["result"]
    after = state["evaluate_trained"]["result"]
    rows = before_after_rows(before, after)
    results = {
        "before": before,
        "after": after,
        "pairs": state["pairs"]["result"],
        "steps": train["steps"],
        "backend": state["base_model"]["result"].get("backend", "janus"),
        "seconds": {k: v["seconds"] for k, v in state.items() if "seconds" in v},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "index.html").write_text(_html(rows, results, dump_config(cfg)), encoding="utf-8")
    return {"dir": str(out), "table": [list(r) for r in rows]}


ARCHITECTURES = {
    "janus": "Janus (autoregressive)",
    "dimoo": "Lumina-DiMOO (masked discrete diffusion)",
}


def _html(rows: list[tuple[str, float, float]], results: dict[str, Any], config: str) -> str:
    backend = results.get("backend", "janus")
    # the packaged spread was measured on the Janus base model; another backend has none yet
    spread = seed_spread() if backend == "janus" else None
    stds = spread["std"] if spread else {}

    def row(name: str, a: float, b: float) -> str:
        std = stds.get(HEADLINE_KEYS.get(name, ""))
        spread_cells = (
            f"<td>{std:.3f}</td><td>{verdict(b - a, std)}</td>"
            if std is not None
            else "<td></td>" * 2
        )
        return (
            f"<tr><td>{html.escape(name)}</td><td>{a:.3f}</td><td>{b:.3f}</td>"
            f"<td class='{'up' if b > a else 'down' if b < a else ''}'>{b - a:+.3f}</td>"
            f"{spread_cells}</tr>"
        )

    cells = "\n".join(row(*r) for r in rows)
    reading = _reading(spread, backend)
    pairs = results["pairs"]
    seconds = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in results["seconds"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pairuni demo: PairGRPO on ShapesWorld</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child{{text-align:left}}.up{{color:#080}}.down{{color:#b00}}img{{max-width:100%}}
pre{{background:#f6f6f6;padding:8px;font-size:12px}}</style></head><body>
<h1>PairGRPO on ShapesWorld</h1>
<p>A tiny {ARCHITECTURES[backend]} (the ShapesWorld base model) trained for
{results["steps"]} PairGRPO steps on
{pairs["aligned"]} aligned and {pairs["retrieved"]} retrieved understanding-generation pairs.
Scores are on held-out samples: multiple-choice accuracy of greedy answers, and the
GenEval-style score of images sampled at CFG 5 (one per prompt), read by the exact ShapesWorld
detector. Stage times: {html.escape(seconds)}.</p>
<h2>Before and after</h2>
<table><tr><th>metric</th><th>base</th><th>trained</th><th>change</th>
<th>seed-to-seed std</th><th>reading</th></tr>
{cells}</table>
<p>{reading}</p>
<h2>Rewards during training</h2><img src="curves.png" alt="reward curves">
<h2>Samples (same prompts and seeds)</h2><img src="samples.png" alt="before/after samples">
<h2>Training config</h2><pre>{html.escape(config)}</pre>
</body></html>
"""


def _reading(spread: dict[str, Any] | None, backend: str = "janus") -> str:
    """What the table can and cannot show, in plain words."""
    if backend != "janus":
        return (
            f"No seed-to-seed spread has been measured for the {ARCHITECTURES[backend]} base "
            "model yet (the packaged one is the Janus base model's), so the table cannot say "
            "which changes exceed what another seed would give."
        )
    if spread is None:
        return (
            "No seed-to-seed spread is packaged with this install, so the table cannot say "
            "which changes exceed what another seed would give."
        )
    return html.escape(
        f"One run of one seed. The standard deviations are those of the same recipe over "
        f"{spread['seeds']} seeds at full size (`{spread['setting']}` in `pairuni shapes "
        "ablate`, docs/results/shapes.md); a change within twice its standard deviation is "
        "not distinguishable from running another seed, and the per-category rows (20-80 "
        "items each) are noisier still. A --quick demo is far smaller than the run that "
        "spread was measured on."
    )
