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


def test_the_report_compares_each_change_with_the_seed_spread() -> None:
    from pairuni.shapes.report import moving_average, spread_from_results, verdict

    assert moving_average([0.0, 1.0, 2.0, 3.0], window=2) == [0.0, 0.5, 1.5, 2.5]
    assert verdict(0.05, 0.02) == "beyond 2 std of seeds"
    assert verdict(-0.03, 0.02) == "within the seed spread"  # 1.5 std: another seed's draw
    assert verdict(0.05, None) == ""
    summary = {
        "mc_accuracy": {"mean": 0.4, "std": 0.01, "n": 10},
        "mc_accuracy_sampled": None,
        "geneval_overall": {"mean": 0.1, "std": 0.03, "n": 10},
    }
    results = {"summary": {"pairgrpo_sqrt": summary}, "seeds": list(range(10)), "command": "x"}
    spread = spread_from_results(results)
    assert spread == {
        "setting": "pairgrpo_sqrt",
        "seeds": 10,
        "command": "x",
        "std": {"mc_accuracy": 0.01, "geneval_overall": 0.03},
    }


def test_the_report_page_says_what_the_spread_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    from pairuni.shapes import report

    rows = [("MC accuracy (greedy)", 0.40, 0.45), ("GenEval-style overall", 0.10, 0.11)]
    results = {"pairs": {"aligned": 3, "retrieved": 4}, "steps": 40, "seconds": {"train": 1.0}}
    spread = {"setting": "pairgrpo_sqrt", "seeds": 10, "std": {"mc_accuracy": 0.01}}
    monkeypatch.setattr(report, "seed_spread", lambda: spread)
    page = report._html(rows, results, "cfg")
    assert "<td>0.010</td><td>beyond 2 std of seeds</td>" in page
    assert "over 10 seeds" in page and "another seed" in page
    monkeypatch.setattr(report, "seed_spread", lambda: None)
    assert "cannot say which changes exceed" in report._html(rows, results, "cfg")
