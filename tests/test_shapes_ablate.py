"""`pairuni shapes ablate`: aggregation, table, per-setting configs (fast); the quick ablation end
to end through the CLI, its skip-on-re-run and its resume after an interruption (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.pairing.config import PairingConfig
from pairuni.shapes import ablate
from pairuni.shapes.ablate import (
    DEFAULT_SETTINGS,
    SETTINGS,
    AblationError,
    Stat,
    check_user_overrides,
    grad_cosines,
    mean_curve,
    mean_std,
    render_table,
    run_ablation,
    run_config,
    summarize_runs,
)
from pairuni.shapes.demo import DemoSettings, DemoState, demo_training_config

runner = CliRunner()

# ----------------------------------------------------------------------------- aggregation


def test_mean_std_is_the_sample_std_on_hand_computed_numbers() -> None:
    stat = mean_std([0.2, 0.4, 0.6])  # deviations -0.2, 0, 0.2: (0.04 + 0.04) / 2 = 0.04
    assert stat.mean == pytest.approx(0.4)
    assert stat.std == pytest.approx(0.2)
    assert stat.n == 3
    # 1..4: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / (n - 1) = 5/3
    assert mean_std([1.0, 2.0, 3.0, 4.0]).std == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([0.5]) == Stat(0.5, None, 1)  # one seed: no spread to report
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_stat_format() -> None:
    assert Stat(0.4, 0.2, 3).format() == "0.400 ± 0.200"
    assert Stat(0.25, None, 1).format() == "0.250"


def test_grad_cosines_skip_steps_without_a_measurement() -> None:
    rows = [
        {"step": 1, "grad_cosine": 0.1},
        {"step": 2},
        {"step": 3, "grad_cosine": None},  # the tracker writes non-finite values as null
        {"step": 4, "grad_cosine": float("nan")},
        {"step": 5, "grad_cosine": -0.2},
    ]
    assert grad_cosines(rows) == [0.1, -0.2]


def test_mean_curve_averages_seeds_step_by_step() -> None:
    seed0 = [[1, 0.2], [2, 0.4]]
    seed1 = [[1, 0.4], [2, 0.8], [3, 1.0]]  # step 3 only in one seed: its own value
    assert mean_curve([seed0, seed1]) == [
        (1, pytest.approx(0.3)),
        (2, pytest.approx(0.6)),
        (3, pytest.approx(1.0)),
    ]


def _run(mc: float, overall: float, cosines: list[float], color: float = 0.5) -> dict[str, Any]:
    return {
        "evaluation": {
            "understanding": {"accuracy": mc, "per_category": {"color": color}},
            "understanding_sampled": {"accuracy": mc / 2},
            "generation": {"cfg_scale": 5.0, "overall": overall, "counting": overall / 2},
        },
        "grad_cosine": cosines,
    }


def test_summarize_runs_on_hand_computed_numbers() -> None:
    runs = [_run(0.2, 0.1, [0.1, 0.3, 0.2], 0.5), _run(0.4, 0.3, [0.0, 0.6], 1.0)]
    summary = summarize_runs(runs)
    assert summary["n"] == 2
    # two values a, b: mean (a + b) / 2, sample std |a - b| / sqrt(2)
    assert summary["mc_accuracy"]["mean"] == pytest.approx(0.3)
    assert summary["mc_accuracy"]["std"] == pytest.approx(0.2 / math.sqrt(2))
    assert summary["geneval_overall"]["mean"] == pytest.approx(0.2)
    # run medians 0.2 and 0.3 (the mean of the middle two of an even count)
    assert summary["grad_cosine"]["mean"] == pytest.approx(0.25)
    assert summary["grad_cosine"]["std"] == pytest.approx(0.1 / math.sqrt(2))
    assert summary["grad_cosine_pooled_median"] == pytest.approx(0.2)  # of 0 .1 .2 .3 .6
    assert summary["per_category"]["color"]["mean"] == pytest.approx(0.75)
    assert summary["per_tag"]["counting"]["mean"] == pytest.approx(0.1)
    assert set(summary["per_tag"]) == {"counting"}  # cfg_scale and overall are not tags


def _itemised(correct: list[float], images: list[float], tags: list[str]) -> dict[str, Any]:
    run = _run(sum(correct) / len(correct), 0.0, [])
    run["evaluation"]["understanding"]["items"] = correct
    run["evaluation"]["generation"].update(items=images, item_tags=tags)
    return run


def test_intervals_and_paired_differences_against_unpaired() -> None:
    from pairuni.shapes.ablate_stats import bootstrap_interval, paired_difference

    tags = ["single", "single", "two", "two"]
    runs = {
        "unpaired": [_itemised([1, 0, 0, 0], [1, 0, 0, 0], tags)] * 2,
        "pairgrpo_sqrt": [_itemised([1, 1, 1, 0], [1, 1, 1, 0], tags)] * 2,
    }
    intervals = ablate.score_intervals(runs)
    ours = intervals["pairgrpo_sqrt"]
    assert ours["mc_accuracy"]["interval"]["estimate"] == pytest.approx(0.75)
    assert ours["mc_accuracy"]["vs_unpaired"]["estimate"] == pytest.approx(0.5)
    # GenEval-style overall: the mean of the tags' means, (1 + 0.5) / 2 against (0.5 + 0) / 2
    assert ours["geneval_overall"]["interval"]["estimate"] == pytest.approx(0.75)
    assert ours["geneval_overall"]["vs_unpaired"]["estimate"] == pytest.approx(0.5)
    items = [[1, 1, 1, 0]] * 2
    assert ours["mc_accuracy"]["interval"] == asdict_interval(bootstrap_interval(items))
    assert ours["geneval_overall"]["vs_unpaired"] == asdict_interval(
        paired_difference(items, [[1, 0, 0, 0]] * 2, tags)
    )
    assert "vs_unpaired" not in intervals["unpaired"]["mc_accuracy"]
    # runs scored before the items were kept have no intervals (and no sampled items here)
    assert "mc_accuracy_sampled" not in ours
    assert ablate.score_intervals({"unpaired": [_run(0.5, 0.5, [])]}) == {"unpaired": {}}


def asdict_interval(interval: Any) -> dict[str, float]:
    from dataclasses import asdict

    return asdict(interval)


def test_the_interval_table_bolds_differences_that_exclude_zero() -> None:
    results = {
        "intervals": {
            "unpaired": {"mc_accuracy": {"interval": {"estimate": 0.4, "low": 0.3, "high": 0.5}}},
            "pairgrpo_sqrt": {
                "mc_accuracy": {
                    "interval": {"estimate": 0.6, "low": 0.5, "high": 0.7},
                    "vs_unpaired": {"estimate": 0.2, "low": 0.05, "high": 0.35},
                }
            },
            "random_pairs": {
                "mc_accuracy": {
                    "interval": {"estimate": 0.45, "low": 0.35, "high": 0.55},
                    "vs_unpaired": {"estimate": 0.05, "low": -0.1, "high": 0.2},
                }
            },
        }
    }
    lines = ablate._interval_table(results)
    row = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert "**0.200 [0.050, 0.350]**" in row["pairgrpo_sqrt"]
    assert "0.050 [-0.100, 0.200]" in row["random_pairs"] and "**" not in row["random_pairs"]
    assert row["unpaired"].endswith("| 0.400 [0.300, 0.500] | — |")
    assert ablate._interval_table({"intervals": {"unpaired": {}}}) == []


def test_sampled_accuracy_is_summarised_only_when_every_run_has_it() -> None:
    runs = [_run(0.2, 0.1, []), _run(0.4, 0.3, [])]
    assert summarize_runs(runs)["mc_accuracy_sampled"]["mean"] == pytest.approx(0.15)
    del runs[1]["evaluation"]["understanding_sampled"]  # a result from before it was measured
    assert summarize_runs(runs)["mc_accuracy_sampled"] is None


def test_single_task_runs_have_no_cosine() -> None:
    summary = summarize_runs([_run(0.2, 0.1, []), _run(0.4, 0.3, [])])
    assert summary["grad_cosine"] is None
    assert summary["grad_cosine_pooled_median"] is None


# ----------------------------------------------------------------------------- the table


def _results() -> dict[str, Any]:
    both = summarize_runs([_run(0.2, 0.1, [0.1]), _run(0.4, 0.3, [0.3])])
    return {
        "steps": 40,
        "seeds": [0, 1],
        "base": summarize_runs([_run(0.25, 0.05, [])]),
        "summary": {
            "random_pairs": both,
            "generation_only": summarize_runs([_run(0.2, 0.1, []), _run(0.2, 0.2, [])]),
        },
    }


def test_table_has_one_row_per_setting_with_mean_std_and_footnote() -> None:
    text = render_table(_results())
    lines = text.splitlines()
    assert "| base model | the model before RL | 1 | 0.250 | 0.125 | 0.050 | n/a | n/a |" in lines
    # 0.2, 0.4 -> 0.300 ± 0.141; cosine medians 0.1, 0.3 -> 0.200 ± 0.141
    assert (
        "| random_pairs | Random Pair (Table 5) | 2 | 0.300 ± 0.141 | 0.150 ± 0.071 "
        "| 0.200 ± 0.141 | 0.200 ± 0.141 | not logged |"
    ) in lines
    assert (
        "| generation_only | generation-only (Fig. 8) | 2 | 0.200 ± 0.000 | 0.100 ± 0.000 "
        "| 0.150 ± 0.071 | n/a¹ | n/a¹ |"
    ) in lines
    assert any(line.startswith("¹ single-task settings have no gradient cosine") for line in lines)
    assert "²" not in text  # no two-task setting lacks a cosine
    # the breakdown tables: per question category and per GenEval tag
    assert "| random_pairs | 0.500 ± 0.000 |" in lines
    assert "| random_pairs | 0.100 ± 0.071 |" in lines


def test_two_task_setting_without_cosine_gets_its_own_footnote() -> None:
    results = _results()
    results["summary"]["random_pairs"] = summarize_runs([_run(0.2, 0.1, [])])
    text = render_table(results)
    assert "| n/a² |" in text
    assert "² not logged" in text


# ----------------------------------------------------------------------------- configs


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return out


EXPECTED_CHANGES = {
    # what each setting changes in demo.yaml (seed 0, data.mode pairs, pair_weighting sqrt)
    "unpaired": {"data.mode": "unpaired"},
    "random_pairs": {"data.mode": "random_pairs"},
    "pairgrpo_no_weight": {"algo.pair_weighting": "none"},
    "pairgrpo_sqrt": {},
    "understanding_only": {"data.mode": "understanding_only"},
    "generation_only": {"data.mode": "generation_only"},
    "pairgrpo_linear": {"algo.pair_weighting": "linear"},
    "cfg_logprob_off": {"rollout.cfg_in_logprob": False},
    # the pairing arms train with pairgrpo_sqrt's config, on pairs of their own
    "threshold_0.5": {},
    "threshold_0.7": {},
    "random_selection": {},
}
OPTIONAL_SETTINGS = {
    "pairgrpo_linear",
    "cfg_logprob_off",
    "threshold_0.5",
    "threshold_0.7",
    "random_selection",
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_each_setting_changes_only_its_key(setting: str) -> None:
    demo = _flat(demo_training_config().model_dump(mode="json"))
    run = _flat(run_config(setting, seed=2).model_dump(mode="json"))
    changed = {key: run[key] for key in run if run[key] != demo[key]}
    assert changed == {
        **EXPECTED_CHANGES[setting],
        "seed": 2,
        "logging.grad_agreement_every": 2,  # the same for every setting
    }


def test_settings_cover_the_six_paper_arms() -> None:
    assert set(SETTINGS) == set(EXPECTED_CHANGES)
    assert set(DEFAULT_SETTINGS) == set(EXPECTED_CHANGES) - OPTIONAL_SETTINGS
    assert {n for n, s in SETTINGS.items() if s.pairing} == {
        "threshold_0.5",
        "threshold_0.7",
        "random_selection",
    }
    assert {s.pairs_stage for s in SETTINGS.values() if not s.pairing} == {"pairs"}
    assert [s.name for s in SETTINGS.values() if not s.two_tasks] == [
        "understanding_only",
        "generation_only",
    ]


def test_pairing_arms_build_their_own_pairs_from_the_shared_data(tmp_path: Path) -> None:
    from pairuni.shapes.demo import make_data, make_pairs

    settings = DemoSettings.quick_run()
    make_data(tmp_path, settings, 0)
    built = {}
    for name in ("pairgrpo_sqrt", "threshold_0.5", "threshold_0.7", "random_selection"):
        folder = tmp_path / f"pairs-{name}"
        built[name] = make_pairs(
            tmp_path, settings, 0, tmp_path / "cache", folder, SETTINGS[name].pairing
        )
        assert Path(built[name]["path"]).parent == folder and (folder / "report").is_dir()

    def records(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(built[name]["path"]).read_text().splitlines()]

    def similarities(name: str) -> list[float]:
        return [r["similarity"] for r in records(name) if r["kind"] == "retrieved"]

    assert min(similarities("threshold_0.7")) >= 0.7 and min(similarities("threshold_0.5")) >= 0.5
    retrieved = {n: built[n]["retrieved"] for n in built}
    assert retrieved["threshold_0.5"] >= retrieved["pairgrpo_sqrt"] >= retrieved["threshold_0.7"]
    assert retrieved["threshold_0.5"] > retrieved["threshold_0.7"]  # the threshold binds
    # random selection keeps k aligned pairs but picks other instances than k-means' medoids
    assert built["random_selection"]["aligned"] == built["pairgrpo_sqrt"]["aligned"]

    def aligned(name: str) -> set[str]:
        return {r["und_source_id"] for r in records(name) if r["kind"] == "aligned"}

    assert aligned("random_selection") != aligned("pairgrpo_sqrt")


def test_a_bad_pairing_key_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from pairuni.shapes.demo import _with_pairing_overrides

    with pytest.raises(ValidationError, match="thresold"):
        _with_pairing_overrides(PairingConfig(), ["retrieve.thresold=0.5"])


def test_user_overrides_apply_to_every_run_but_not_to_ablated_keys() -> None:
    cfg = run_config("unpaired", 0, ["train.learning_rate=0.001"], max_steps=3)
    assert cfg.train.learning_rate == 0.001 and cfg.train.max_steps == 3
    for bad in ("seed=3", "data.mode=pairs", " algo.pair_weighting =none"):
        with pytest.raises(AblationError, match="what the ablation varies"):
            check_user_overrides([bad])


def test_bad_requests_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(AblationError, match="valid settings: unpaired, random_pairs"):
        run_ablation(tmp_path / "a", ["unpaired", "paired"], seeds=1)
    with pytest.raises(AblationError, match="seeds must be at least 1"):
        run_ablation(tmp_path / "a", ["unpaired"], seeds=0)
    assert not (tmp_path / "a").exists()


def test_a_folder_of_another_recipe_is_refused(tmp_path: Path) -> None:
    state = DemoState(tmp_path, ablate.STATE_FILE)
    state.run("recipe", lambda: {"demo_settings": {}, "common_overrides": [], "overrides": []})
    with pytest.raises(AblationError, match=r"another recipe .*--fresh"):
        run_ablation(tmp_path, ["unpaired"], seeds=1, demo_settings=DemoSettings.quick_run())


def test_cli_errors_name_the_fix(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["shapes", "ablate", "--out", str(tmp_path), "--settings", "unpaired,nope"]
    )
    assert result.exit_code == 2
    assert "unknown setting(s) nope" in result.output
    assert "pairgrpo_sqrt" in result.output  # the valid names are listed
    result = runner.invoke(app, ["shapes", "ablate", "--out", str(tmp_path), "--seeds", "0"])
    assert result.exit_code == 2 and "--seeds 0 must be at least 1" in result.output
    result = runner.invoke(
        app, ["shapes", "ablate", "--out", str(tmp_path), "--set", "data.mode=pairs"]
    )
    assert result.exit_code == 2 and "what the ablation varies" in result.output
    result = runner.invoke(
        app, ["shapes", "ablate", "--out", str(tmp_path / "x"), "--set", "train.nope=1"]
    )
    assert result.exit_code == 2 and "train.nope: unknown key" in result.output
    assert not (tmp_path / "x").exists()  # refused before any work


def test_plots_are_drawn(tmp_path: Path) -> None:
    runs = {
        "pairgrpo_sqrt": [
            {"grad_cosine": [0.1, 0.2], "rewards": {"und": [[1, 0.2]], "gen": [[1, 0.3]]}}
        ],
        "understanding_only": [{"grad_cosine": [], "rewards": {"und": [[1, 0.1]], "gen": []}}],
    }
    ablate.plot_grad_agreement(runs, tmp_path / "g.png")
    ablate.plot_reward_curves(runs, tmp_path / "c.png")
    assert (tmp_path / "g.png").stat().st_size > 5000
    assert (tmp_path / "c.png").stat().st_size > 5000


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (quick base model, features, completions) for the slow tests."""
    return tmp_path_factory.mktemp("ablate-cache")


def _boom(*_: Any, **__: Any) -> Any:
    raise AssertionError("a finished run was trained or evaluated again")


@pytest.mark.slow
def test_quick_ablation_cli_writes_outputs_and_skips_finished_runs(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ablate"
    args = ["shapes", "ablate", "--out", str(out), "--quick", "--seeds", "2"]
    args += ["--settings", "pairgrpo_sqrt,understanding_only", "--cache-dir", str(cache)]
    result = runner.invoke(app, [*args, "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "[4/4] understanding_only seed 1" in result.output
    for name in ("results.json", "table.md", "grad_agreement.png", "curves.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2 and results["seeds"] == [0, 1]
    assert "--settings pairgrpo_sqrt,understanding_only --quick" in results["command"]
    for seed in (0, 1):
        paired = results["runs"]["pairgrpo_sqrt"][seed]
        # the first step holds both tasks and is measured (the cosine itself is NaN, and left
        # out of the summary, when the toy model's answers all score 0: a zero gradient)
        metrics = Path(paired["model"]).parents[1] / "metrics.jsonl"
        logged = [json.loads(line) for line in metrics.read_text().splitlines()]
        assert "grad_cosine" in logged[0]
        assert paired["rewards"]["gen"] and paired["rewards"]["und"]
        single = results["runs"]["understanding_only"][seed]
        assert single["grad_cosine"] == [] and single["rewards"]["gen"] == []
        assert Path(paired["model"]).is_dir()
        assert f"seed{seed}" in paired["model"]
    table = (out / "table.md").read_text()
    for row in ("| base model |", "| pairgrpo_sqrt |", "| understanding_only |"):
        assert row in table
    assert "n/a¹" in table
    # a re-run finds every run done: nothing trains or evaluates, the results do not change
    before = (out / "results.json").read_text(), (out / ablate.STATE_FILE).read_text()
    monkeypatch.setattr(ablate, "train_model", _boom)
    monkeypatch.setattr(ablate, "evaluate_model", _boom)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[1/4] pairgrpo_sqrt seed 0 (done earlier, skipped)" in result.output
    assert ((out / "results.json").read_text(), (out / ablate.STATE_FILE).read_text()) == before
    # --reevaluate evaluates the saved models again and trains nothing
    evaluated: list[str] = []

    def fake_evaluate(model: str, cfg: Any, settings: Any) -> dict[str, Any]:
        evaluated.append(model)
        return _run(0.9, 0.8, [])["evaluation"]

    monkeypatch.setattr(ablate, "evaluate_model", fake_evaluate)
    result = runner.invoke(app, [*args, "--reevaluate"])
    assert result.exit_code == 0, result.output
    models = [r["model"] for runs in results["runs"].values() for r in runs]
    assert evaluated[1:] == models and len(evaluated) == 5  # the base model first
    again = json.loads((out / "results.json").read_text())
    assert again["summary"]["pairgrpo_sqrt"]["mc_accuracy"]["mean"] == pytest.approx(0.9)
    assert again["summary"]["pairgrpo_sqrt"]["mc_accuracy_sampled"]["mean"] == pytest.approx(0.45)
    assert again["runs"]["pairgrpo_sqrt"][1]["grad_cosine"] == paired["grad_cosine"]


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_interrupted_ablation_resumes_without_redoing_runs(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ablate"
    real_train = ablate.train_model
    trained: list[str] = []

    def train_then_stop_on_second(
        run_dir: Path, cfg: Any, state: Any, pairs_stage: str = "pairs"
    ) -> Any:
        trained.append(run_dir.name)
        result = real_train(run_dir, cfg, state, pairs_stage)
        if len(trained) == 2:  # killed after the second run's training, before its evaluation
            raise Interrupted
        return result

    monkeypatch.setattr(ablate, "train_model", train_then_stop_on_second)
    kwargs: dict[str, Any] = {
        "demo_settings": DemoSettings.quick_run(),
        "cache_dir": cache,
        "echo": lambda _: None,
    }
    with pytest.raises(Interrupted):
        run_ablation(out, ["random_pairs"], seeds=2, **kwargs)
    saved = json.loads((out / ablate.STATE_FILE).read_text())
    assert "run/random_pairs/seed0" in saved and "run/random_pairs/seed1" not in saved
    checkpoint = out / "runs" / "random_pairs" / "seed1" / "train" / "checkpoint-2"
    weights = sorted((checkpoint / "model").glob("*.safetensors"))
    assert weights, "the interrupted run saved its final checkpoint"
    stamps = [w.stat().st_mtime_ns for w in weights]

    trained.clear()

    def counting_train(run_dir: Path, cfg: Any, state: Any, pairs_stage: str = "pairs") -> Any:
        trained.append(run_dir.name)
        return real_train(run_dir, cfg, state, pairs_stage)

    monkeypatch.setattr(ablate, "train_model", counting_train)
    results = run_ablation(out, ["random_pairs"], seeds=2, **kwargs)
    assert trained == ["seed1"], "seed 0 was finished and is not trained again"
    # seed 1 resumed from its checkpoint at the last step: no step ran, nothing was re-saved
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert [r["seed"] for r in results["runs"]["random_pairs"]] == [0, 1]
    assert results["runs"]["random_pairs"][1]["steps"] == 2


def test_the_shared_parameter_cosine_is_summarised_beside_the_all_parameter_one() -> None:
    runs = [
        {**_run(0.2, 0.1, [0.01, 0.02]), "grad_cosine_shared": [0.3, 0.5, 0.4]},
        {**_run(0.4, 0.3, [0.0]), "grad_cosine_shared": [0.2]},
    ]
    summary = summarize_runs(runs)
    assert summary["grad_cosine_shared"]["mean"] == pytest.approx(0.3)  # medians 0.4, 0.2
    rows = [
        {"step": 1, "grad_cosine": 0.1, "grad_cosine_shared": 0.4},
        {"step": 2, "grad_cosine": None},
    ]
    assert grad_cosines(rows, "grad_cosine_shared") == [0.4]


@pytest.mark.slow
def test_quick_ablation_runs_on_the_masked_diffusion_base_model(tmp_path: Path) -> None:
    """`--backend dimoo`: the same ablation on a DiMOO base model, in the released layout,
    trained through the same trainer; the recipe records the backend and its overrides."""
    from pairuni.policy.dimoo.model import backend_of

    out = tmp_path / "ablate"
    args = ["shapes", "ablate", "--out", str(out), "--quick", "--seeds", "1", "--threads", "1"]
    args += ["--settings", "pairgrpo_sqrt", "--backend", "dimoo"]
    result = runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["demo_settings"]["backend"] == "dimoo"
    assert "model.backend=dimoo" in results["recipe"]["overrides"]
    assert results["command"].endswith("--backend dimoo")
    assert backend_of(results["base_model"]["path"]) == "dimoo"
    run = results["runs"]["pairgrpo_sqrt"][0]
    assert backend_of(run["model"]) == "dimoo"
    assert run["rewards"]["und"] and run["rewards"]["gen"]
    # the Janus ablation of the same folder is another recipe: refused, not mixed in
    again = runner.invoke(app, [*args[:-2], "--cache-dir", str(tmp_path / "cache")])
    assert again.exit_code == 2 and "another recipe" in again.output
