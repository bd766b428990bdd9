"""Evaluation during training (`train.eval_every`): the benchmarks run on the current policy at
the chosen steps through `pairuni eval`'s runner, their scores are logged beside the rewards,
an evaluation interrupted by a kill is finished on resume, and a missing benchmark folder fails
before the first step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.training.trainer import PairGRPOTrainer, TrainingSetupError
from trainer_helpers import make_assets

GENEVAL_ROWS = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a circle"},
    {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}],
     "prompt": "a red square"},
    {"tag": "counting", "include": [{"class": "circle", "count": 2}], "prompt": "two circles"},
]  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("train-eval")
    assets = make_assets(root)
    geneval = root / "benchmarks" / "geneval"
    geneval.mkdir(parents=True)
    lines = "".join(json.dumps(row) + "\n" for row in GENEVAL_ROWS)
    (geneval / "evaluation_metadata.jsonl").write_text(lines, encoding="utf-8")
    mme = root / "benchmarks" / "mme" / "color"
    mme.mkdir(parents=True)
    from PIL import Image

    for name in ("a", "b"):
        Image.new("RGB", (16, 16), (200, 0, 0)).save(mme / f"{name}.png")
        (mme / f"{name}.txt").write_text(
            "Is the image red? Please answer yes or no.\tYes\n"
            "Is the image blue? Please answer yes or no.\tNo\n",
            encoding="utf-8",
        )
    return {**assets, "benchmarks": root / "benchmarks"}


def config(assets: dict[str, Path], out: Path, **train: Any) -> PairUniConfig:
    raw = demo.demo_config(
        assets["model"],
        assets["pairs"],
        out,
        train={
            "max_steps": 2,
            "save_every": 1,
            "eval_every": 1,
            "eval_benchmarks": ["geneval", "mme"],
            "eval_limit": 2,
            **train,
        },
    )
    raw["eval"] = {
        "data_root": str(assets["benchmarks"]),
        "detector": "shapes",
        "geneval_images_per_prompt": 2,
        "rollout": {"max_new_tokens": 3},
    }
    return PairUniConfig.model_validate(raw)


def eval_lines(out: Path) -> dict[int, dict[str, Any]]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line for line in lines if "eval/geneval/overall" in line}


def test_scores_are_logged_at_each_evaluated_step(assets: dict[str, Path], tmp_path: Path):
    trainer = PairGRPOTrainer(config(assets, tmp_path))
    sampling = trainer.policy.rollout_config
    trainer.train()
    assert trainer.policy.rollout_config is sampling  # the eval settings were only borrowed
    logged = eval_lines(tmp_path)
    assert sorted(logged) == [0, 1, 2]  # step 0: the model before training, the baseline
    assert "eval/mme/unparsed" in logged[1] or "eval/mme/perception" in logged[1]
    for step in (0, 1, 2):
        results = json.loads((tmp_path / "eval" / f"step-{step}" / "results.json").read_text())
        assert set(results["benchmarks"]) == {"geneval", "mme"}
        assert results["benchmarks"]["geneval"]["num_samples"] == 2  # eval_limit
        run = json.loads((tmp_path / "eval" / f"step-{step}" / "run.json").read_text())
        assert run["rollout.max_new_tokens"] == 3  # eval.rollout, not the training rollout's 5


def test_an_evaluation_cut_by_a_kill_is_finished_on_resume(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    PairGRPOTrainer(config(assets, tmp_path)).train()
    before = eval_lines(tmp_path)[2]
    # as if killed while evaluating step 2, after checkpoint-2 was written
    (tmp_path / "eval" / "step-2" / "results.json").unlink()
    shutil.rmtree(tmp_path / "eval" / "step-2" / "mme")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    resumed = PairGRPOTrainer(config(assets, tmp_path), resume=True)
    assert resumed.step == 2
    resumed.train()
    after = eval_lines(tmp_path)[2]
    assert after == before  # the same policy, the same seeded batches: the same scores


def test_a_missing_benchmark_folder_fails_before_training(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    cfg = config(assets, tmp_path, eval_benchmarks=["geneval", "pope"])
    with pytest.raises(TrainingSetupError, match=r"train\.eval_benchmarks: .*pope"):
        PairGRPOTrainer(cfg)


def test_eval_every_without_benchmarks_is_refused() -> None:
    from pairuni.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="eval_benchmarks is empty"):
        load_config(None, ["train.eval_every=5"])
