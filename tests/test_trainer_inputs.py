"""The trainer's inputs on the tiny random Janus: data modes that leave a task out, bad pair
files (error with file/line/field, or skipped and counted), rewards that raise, missing paths and
the `pairuni train` command."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.data.errors import DataError
from pairuni.policy.tiny import build_tiny_janus
from pairuni.training.trainer import PairGRPOTrainer, TrainingSetupError


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("demo")
    model = build_tiny_janus(root / "model")
    pairs = demo.write_demo_pairs(root, num_pairs=8)
    return {"model": model, "pairs": pairs, "root": root}


def make_config(assets: dict[str, Path], out: Path, **sections: Any) -> PairUniConfig:
    return PairUniConfig.model_validate(
        demo.demo_config(assets["model"], assets["pairs"], out, **sections)
    )


def test_understanding_only_mode_rolls_out_no_images(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    cfg = make_config(assets, tmp_path, data={"mode": "understanding_only"})
    trainer = PairGRPOTrainer(cfg)
    calls: list[str] = []
    original = trainer.policy.rollout_image

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("image")
        return original(*args, **kwargs)

    trainer.policy.rollout_image = spy  # type: ignore[method-assign]
    metrics = trainer.train()
    assert calls == []
    assert "und/reward" in metrics and not any(k.startswith("gen/") for k in metrics)


def test_bad_pair_file_stops_before_training_with_file_line_and_field(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    lines = assets["pairs"].read_text().splitlines()
    broken = json.loads(lines[2])
    del broken["und_question"]
    bad = assets["root"] / "bad.jsonl"
    bad.write_text("\n".join([*lines[:2], json.dumps(broken), *lines[3:]]) + "\n")
    cfg = make_config(assets, tmp_path, data={"path": str(bad)})
    with pytest.raises(DataError) as info:
        PairGRPOTrainer(cfg)
    assert "bad.jsonl" in str(info.value) and "line 3" in str(info.value)
    assert "und_question" in str(info.value)


def test_unreadable_image_is_skipped_and_counted_in_skip_mode(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    lines = assets["pairs"].read_text().splitlines()
    broken = json.loads(lines[0])
    broken["und_image"] = "images/missing.png"
    bad = assets["root"] / "missing-image.jsonl"
    bad.write_text("\n".join([json.dumps(broken), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"line 1.*und_image"):
        PairGRPOTrainer(make_config(assets, tmp_path, data={"path": str(bad)}))
    cfg = make_config(assets, tmp_path, data={"path": str(bad), "on_bad_record": "skip"})
    trainer = PairGRPOTrainer(cfg)
    assert len(trainer.sampler.pairs) == len(lines) - 1
    assert "skipped 1 of" in trainer.data_summary


def test_reward_that_raises_is_named_or_turned_into_nan(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    reward_file = tmp_path / "boom.py"
    reward_file.write_text(
        "def boom(prompts, completions, **columns):\n    raise RuntimeError('x')\n"
    )
    rewards = {
        "understanding": [{"name": f"{reward_file}:boom"}],
        "generation": [{"name": "toy_redness"}],
    }
    from pairuni.rewards.base import RewardError

    with pytest.raises(RewardError, match="'boom' failed"):
        PairGRPOTrainer(make_config(assets, tmp_path / "a", rewards=rewards)).train()
    lenient = {**rewards, "on_reward_error": "nan"}
    metrics = PairGRPOTrainer(make_config(assets, tmp_path / "b", rewards=lenient)).train()
    assert math.isnan(metrics["und/reward"]) and metrics["und/loss"] == 0.0
    assert math.isfinite(metrics["gen/reward"])


def test_missing_data_path_fails_with_the_fix(assets: dict[str, Path], tmp_path: Path) -> None:
    cfg = make_config(assets, tmp_path, data={"path": str(tmp_path / "nope.jsonl")})
    with pytest.raises(TrainingSetupError, match="pairuni pairs build"):
        PairGRPOTrainer(cfg)


def test_train_command_runs_and_reports_a_missing_model(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    from pairuni.cli import app

    config = tmp_path / "run.yaml"
    cfg = make_config(assets, tmp_path / "run", train={"max_steps": 1})
    config.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "done: 1 steps" in result.output
    missing = runner.invoke(
        app, ["train", "--config", str(config), "--set", f"model.path={tmp_path / 'none'}"]
    )
    assert missing.exit_code == 2
    assert "model.path" in missing.output and "does not exist" in missing.output


def test_resume_continues_from_the_latest_checkpoint_and_warns_on_a_changed_data_order(
    assets: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_config(assets, tmp_path, train={"max_steps": 1, "save_every": 1})
    PairGRPOTrainer(first).train()
    assert (tmp_path / "checkpoint-1" / "optimizer.pt").is_file()
    again = make_config(assets, tmp_path, train={"max_steps": 2, "save_every": 1})
    trainer = PairGRPOTrainer(again, resume=True)
    assert trainer.step == 1
    assert trainer.optimizer.state_dict()["state"], "the AdamW moments were not restored"
    trainer.train()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    changed = make_config(assets, tmp_path, seed=99, train={"max_steps": 3})
    with caplog.at_level("WARNING", logger="pairuni.training.trainer"):
        PairGRPOTrainer(changed, resume=True)
    assert "seed: 3 -> 99" in caplog.text
