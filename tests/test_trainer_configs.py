"""The shipped configs: the tiny smoke config trains end to end through `pairuni train`, and the
Janus-Pro recipes carry the paper's settings (arXiv 2510.25682 §3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_tiny_config_trains_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the config's paths are relative to the repository root, as in the documented one-liners
    monkeypatch.chdir(CONFIGS.parent)
    made = CliRunner().invoke(app, ["tiny-demo", str(tmp_path / "demo"), "--num-pairs", "8"])
    assert made.exit_code == 0, made.output
    overrides = [
        f"model.path={tmp_path / 'demo' / 'model'}",
        f"data.path={tmp_path / 'demo' / 'pairs.jsonl'}",
        f"train.out_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "algo.num_generations_und=2",  # lighter than the config, to keep the test fast
        "algo.num_generations_gen=2",
        "rollout.max_new_tokens=6",
        "train.save_every=2",
        "logging.image_grid_every=2",
    ]
    args = ["train", "--config", str(CONFIGS / "tiny.yaml")]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert (tmp_path / "run" / "checkpoint-2" / "model" / "config.json").is_file()
    assert (tmp_path / "run" / "samples" / "step-2.png").is_file()


@pytest.mark.parametrize(("name", "k"), [("janus-pro-1b.yaml", 8), ("janus-pro-7b.yaml", 4)])
def test_janus_pro_recipes_carry_the_paper_settings(name: str, k: int) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.algo.num_generations_und == cfg.algo.num_generations_gen == k
    assert cfg.train.learning_rate == 1e-6
    # at lr 1e-6 the update must not be rounded away: float32 master weights, bf16 compute
    assert cfg.train.master_weights == "fp32"
    assert cfg.train.precision == "bf16"
    assert cfg.train.pairs_per_step == 16
    assert cfg.train.max_steps == 1200
    assert cfg.rollout.cfg_scale == 5.0
    assert cfg.rollout.text_temperature == cfg.rollout.image_temperature == 1.0
    assert cfg.algo.beta == 0.0
    assert cfg.algo.pair_weighting == "sqrt"
    assert cfg.data.min_similarity == 0.6
    assert [r.name for r in cfg.rewards.understanding] == ["mc_accuracy"]
    assert [r.name for r in cfg.rewards.generation] == ["hps_v21"]
