"""`pairuni shapes sweep`: the recipe is chosen on validation records the test split never
shares, by the rule its docs state (the largest smallest gain), and the command runs end to end
on the toy sizes."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.shapes.ablate import AblationError
from pairuni.shapes.demo import DemoSettings, heldout
from pairuni.shapes.sweep import (
    check_sweep_overrides,
    choose,
    point_summary,
    render_sweep,
    run_sweep,
)

runner = CliRunner()


def stat(mean: float) -> dict[str, Any]:
    return {"mean": mean, "std": 0.01, "n": 3}


def results(und_sampled: float, und_greedy: float, gen: float) -> dict[str, Any]:
    """The parts of an ablation's results a grid point reads; the base scores 0.3 / 0.4 / 0.1."""
    base = {
        "mc_accuracy_sampled": stat(0.3),
        "mc_accuracy": stat(0.4),
        "geneval_overall": stat(0.1),
    }
    return {
        "base": base,
        "summary": {
            "understanding_only": {
                "mc_accuracy_sampled": stat(und_sampled),
                "mc_accuracy": stat(und_greedy),
            },
            "generation_only": {"geneval_overall": stat(gen)},
        },
    }


def test_the_chosen_point_improves_everything_it_trains() -> None:
    # a: large understanding gains but greedy MC falls; b: smaller gains, all positive
    a = point_summary(2e-4, 0.0, results(0.50, 0.35, 0.30))
    b = point_summary(1e-4, 0.04, results(0.36, 0.43, 0.14))
    assert a["metrics"]["understanding_only/mc_accuracy"]["gain"] == pytest.approx(-0.05)
    assert a["worst_gain"] == pytest.approx(-0.05) and b["worst_gain"] == pytest.approx(0.03)
    assert choose([a, b])["name"] == "lr0.0001_beta0.04"  # not a, whose mean gain is larger
    sweep = {"seeds": 3, "points": [a, b], "chosen": "lr0.0001_beta0.04"}
    table = render_sweep(sweep)
    assert "| **0.0001** | 0.04 |" in table and "0.430 ± 0.010 (+0.030)" in table


def test_gains_carry_a_paired_interval_over_seeds_and_items() -> None:
    data = results(0.875, 0.5, 0.1)
    base_items = [0.0, 1.0, 0.0, 1.0]  # sampled accuracy 0.5 on four items
    seeds = [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]  # 0.75 and 1.0: mean 0.875
    same = [list(base_items), list(base_items)]
    data["base"].update(mc_accuracy_sampled=stat(0.5), mc_accuracy=stat(0.5))
    data["base_evaluation"] = {
        "understanding_sampled": {"items": base_items},
        "understanding": {"items": base_items},
    }
    data["runs"] = {
        "understanding_only": [
            {"evaluation": {"understanding_sampled": {"items": s}, "understanding": {"items": u}}}
            for s, u in zip(seeds, same, strict=True)
        ],
        "generation_only": [{"evaluation": {}}],  # no per-item scores: no interval
    }
    point = point_summary(1e-4, 0.0, data)
    sampled = point["metrics"]["understanding_only/mc_accuracy_sampled"]["gain_interval"]
    assert sampled["estimate"] == pytest.approx(0.375)
    assert sampled["low"] <= 0.375 <= sampled["high"] and sampled["high"] <= 1.0
    assert sampled["low"] >= 0  # every seed is at least as good on every item
    greedy = point["metrics"]["understanding_only/mc_accuracy"]["gain_interval"]
    assert greedy == {"estimate": 0.0, "low": 0.0, "high": 0.0}  # the base model's own items
    assert point["metrics"]["generation_only/geneval_overall"]["gain_interval"] is None
    table = render_sweep({"seeds": 2, "points": [point], "chosen": point["name"]})
    assert f"(+0.375 [{sampled['low']:+.3f}, {sampled['high']:+.3f}])" in table


def test_the_validation_split_shares_no_record_with_the_test_split() -> None:
    test = DemoSettings.quick_run()
    validation = replace(test, eval_split="validation")
    und_t, _, gen_t = heldout(test)
    und_v, _, gen_v = heldout(validation)
    assert len(und_v) == len(und_t) and len(gen_v) == len(gen_t)
    scenes_t = {json.dumps(r["scene"], sort_keys=True) for r in und_t}
    assert not scenes_t & {json.dumps(r["scene"], sort_keys=True) for r in und_v}
    assert {r["prompt"] for r in gen_v} != {r["prompt"] for r in gen_t}
    with pytest.raises(ValueError, match="eval_split"):
        DemoSettings(eval_split="train")


def test_the_recorded_recipe_of_the_test_split_is_the_one_written_before_splits() -> None:
    fields = asdict(DemoSettings())
    for newer in ("eval_split", "backend", "base_overrides"):  # recorded only when not default
        del fields[newer]
    assert DemoSettings().recipe() == fields  # older ablation folders still resume
    assert DemoSettings(eval_split="validation").recipe()["eval_split"] == "validation"


def test_the_swept_keys_cannot_be_set_and_bad_grids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AblationError, match="--lr"):
        check_sweep_overrides(["train.learning_rate=1e-3"])
    with pytest.raises(AblationError, match="> 0"):
        run_sweep(tmp_path, [0.0], [0.0])
    result = runner.invoke(app, ["shapes", "sweep", "--out", str(tmp_path), "--lr", "fast"])
    assert result.exit_code != 0 and "comma-separated numbers" in result.output


@pytest.mark.slow
def test_quick_sweep_cli_scores_on_validation_and_writes_the_table(tmp_path: Path) -> None:
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    args = ["shapes", "sweep", "--out", str(out), "--quick", "--seeds", "1", "--lr", "1e-4,2e-4"]
    result = runner.invoke(app, [*args, "--beta", "0", "--cache-dir", str(cache), "--threads", "1"])
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in sweep["points"]] == ["lr0.0001_beta0", "lr0.0002_beta0"]
    assert sweep["chosen"] in {p["name"] for p in sweep["points"]}
    point = json.loads((out / "lr0.0002_beta0" / "results.json").read_text())
    assert point["recipe"]["demo_settings"]["eval_split"] == "validation"
    assert "train.learning_rate=0.0002" in point["recipe"]["overrides"]
    assert set(point["summary"]) == {"understanding_only", "generation_only"}
    assert "| **" in (out / "sweep.md").read_text()
