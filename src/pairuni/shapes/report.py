"""The demo's report folder: metrics, reward curves, a before/after sample grid and an HTML page."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

SAMPLE_IMAGES_PER_PROMPT = 4
SAMPLE_SEED = 7


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The trainer's metrics.jsonl, one dict per step."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Reward per task and the understanding/generation gradient cosine against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (
        ("und/reward", "understanding (MC accuracy)"),
        ("gen/reward", "generation (GenEval clauses met)"),
    ):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            axes[0].plot(*zip(*points, strict=True), marker=".", label=label)
    axes[0].set(xlabel="step", ylabel="mean reward of the step's rollouts", title="Rewards")
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

    from pairuni.policy.janus import JanusPolicy

    columns = {}
    for name, model in (("base", base_model), ("trained", trained_model)):
        policy = JanusPolicy.load(model, cfg.model, cfg.rollout)
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
        "seconds": {k: v["seconds"] for k, v in state.items() if "seconds" in v},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "index.html").write_text(_html(rows, results, dump_config(cfg)), encoding="utf-8")
    return {"dir": str(out), "table": [list(r) for r in rows]}


def _html(rows: list[tuple[str, float, float]], results: dict[str, Any], config: str) -> str:
    cells = "\n".join(
        f"<tr><td>{html.escape(name)}</td><td>{a:.3f}</td><td>{b:.3f}</td>"
        f"<td class='{'up' if b > a else 'down' if b < a else ''}'>{b - a:+.3f}</td></tr>"
        for name, a, b in rows
    )
    pairs = results["pairs"]
    seconds = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in results["seconds"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pairuni demo: PairGRPO on ShapesWorld</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child{{text-align:left}}.up{{color:#080}}.down{{color:#b00}}img{{max-width:100%}}
pre{{background:#f6f6f6;padding:8px;font-size:12px}}</style></head><body>
<h1>PairGRPO on ShapesWorld</h1>
<p>A tiny Janus (the ShapesWorld base model) trained for {results["steps"]} PairGRPO steps on
{pairs["aligned"]} aligned and {pairs["retrieved"]} retrieved understanding-generation pairs.
Scores are on held-out samples: multiple-choice accuracy of greedy answers, and the
GenEval-style score of images sampled at CFG 5 (one per prompt), read by the exact ShapesWorld
detector. Stage times: {html.escape(seconds)}.</p>
<h2>Before and after</h2>
<table><tr><th>metric</th><th>base</th><th>trained</th><th>change</th></tr>
{cells}</table>
<h2>Rewards during training</h2><img src="curves.png" alt="reward curves">
<h2>Samples (same prompts and seeds)</h2><img src="samples.png" alt="before/after samples">
<h2>Training config</h2><pre>{html.escape(config)}</pre>
</body></html>
"""
