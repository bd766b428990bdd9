"""`pairuni demo`: the report pieces (fast) and the whole quick pipeline (slow, CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pairuni.shapes.demo import DemoSettings, DemoState, demo_training_config, run_demo
from pairuni.shapes.report import before_after_rows, plot_curves, read_metrics


def test_embedded_training_config_loads_and_takes_overrides() -> None:
    cfg = demo_training_config(["train.max_steps=3"])
    assert cfg.train.max_steps == 3
    assert cfg.algo.pair_weighting == "sqrt"
    assert [r.name for r in cfg.rewards.generation] == ["shapes_geneval_partial"]


def test_state_skips_finished_stages(tmp_path: Path) -> None:
    calls = []
    state = DemoState(tmp_path)
    assert state.run("a", lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    again = DemoState(tmp_path)  # a new process reads what the first one saved
    assert again.run("a", lambda: calls.append(2) or {"x": 2}) == {"x": 1}
    assert calls == [1]


def test_before_after_rows() -> None:
    before = {
        "understanding": {"accuracy": 0.25, "per_category": {"color": 0.5}},
        "generation": {"overall": 0.1, "cfg_scale": 5.0, "counting": 0.2},
    }
    after = {
        "understanding": {"accuracy": 0.5, "per_category": {"color": 0.75}},
        "generation": {"overall": 0.3, "cfg_scale": 5.0, "counting": 0.4},
    }
    assert before_after_rows(before, after) == [
        ("MC accuracy (greedy)", 0.25, 0.5),
        ("GenEval-style overall", 0.1, 0.3),
        ("understanding: color", 0.5, 0.75),
        ("generation: counting", 0.2, 0.4),
    ]
    sampled = {"understanding_sampled": {"accuracy": 0.3}}
    rows = before_after_rows(
        {**before, **sampled}, {**after, "understanding_sampled": {"accuracy": 0.4}}
    )
    assert rows[:3] == [
        ("MC accuracy (greedy)", 0.25, 0.5),
        ("MC accuracy (sampled, T=1, mean of 3)", 0.3, 0.4),
        ("GenEval-style overall", 0.1, 0.3),
    ]


def test_curves_plot_from_metrics(tmp_path: Path) -> None:
    rows = [
        {"step": s, "und/reward": s / 10, "gen/reward": 0.2, "grad_cosine": 0.1} for s in range(5)
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_curves(read_metrics(path), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 5000


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    state = run_demo(
        out, DemoSettings.quick_run(), cache_dir=tmp_path / "cache", echo=lambda _: None
    )
    assert state["pairs"]["result"]["aligned"] > 0
    for name in ("index.html", "curves.png", "samples.png", "metrics.jsonl", "results.json"):
        assert (out / "report" / name).is_file(), name
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["steps"] == 2
    html = (out / "report" / "index.html").read_text()
    assert "MC accuracy (greedy)" in html
    # a second run finds every stage done and changes nothing
    before = (out / "demo-state.json").read_text()
    run_demo(out, DemoSettings.quick_run(), cache_dir=tmp_path / "cache", echo=lambda _: None)
    assert (out / "demo-state.json").read_text() == before
