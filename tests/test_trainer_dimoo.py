"""PairGRPO on the masked-diffusion backend through the same trainer: the tiny Lumina-DiMOO
checkpoint in the released layout trains two steps, the first update of a step is exactly
on-policy under every estimator, and the checkpoint loads back through the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.policy import registry
from pairuni.policy.dimoo.policy import DimooPolicy
from pairuni.policy.dimoo.tiny import write_tiny_dimoo
from pairuni.training.trainer import PairGRPOTrainer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dimoo(tmp_path_factory.mktemp("dimoo") / "tiny")


def dimoo_config(checkpoint: Path, tmp_path: Path, estimator: str, **sections: Any):
    pairs = demo.write_demo_pairs(tmp_path / "data", num_pairs=4)
    raw = demo.demo_config(
        checkpoint,
        pairs,
        tmp_path / "run",
        model={"backend": "auto", "trainable": ["language_model"], "dtype": "float32"},
        rollout={
            "max_new_tokens": 4,
            "cfg_scale": 3.0,
            "dimoo": {"image_size": 32, "image_steps": 2, "text_steps": 2, "logprob": estimator},
        },
        **sections,
    )
    return PairUniConfig.model_validate(raw)


@pytest.mark.parametrize("estimator", ["trajectory", "mean_field"])
def test_the_first_update_is_on_policy_and_the_second_moves(checkpoint, tmp_path, estimator):
    trainer = PairGRPOTrainer(
        dimoo_config(checkpoint, tmp_path, estimator, algo={"num_iterations": 2})
    )
    assert isinstance(trainer.policy, DimooPolicy)  # `auto` found model_type: llada
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    first = trainer._update(rollouts, advantages, 0)
    for task in ("und", "gen"):
        assert first[f"{task}/ratio/min"] == pytest.approx(1.0, abs=1e-6)
        assert first[f"{task}/ratio/max"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_dimoo_trains_two_steps_and_its_checkpoint_loads_back(checkpoint, tmp_path):
    cfg = dimoo_config(checkpoint, tmp_path, "trajectory", train={"save_every": 2})
    trainer = PairGRPOTrainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.policy.module.named_parameters()}
    metrics = trainer.train()
    assert trainer.step == 2 and torch.isfinite(torch.tensor(metrics["loss"]))
    moved = [not torch.equal(p, before[n]) for n, p in trainer.policy.module.named_parameters()]
    assert all(moved)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    saved = tmp_path / "run" / "checkpoint-2" / "model"
    again = registry.load_policy(saved, cfg.model, cfg.rollout)
    assert isinstance(again, DimooPolicy)
    for name, param in again.module.named_parameters():
        assert torch.equal(param, dict(trainer.policy.module.named_parameters())[name])


@pytest.mark.parametrize(("override", "named"), [("model.lora={rank: 4}", "model.lora")])
def test_settings_dimoo_lacks_fail_with_a_message_not_a_traceback(
    checkpoint, tmp_path, override, named
):
    # (train.sharding: fsdp raises the same error, under more than one process only)
    from typer.testing import CliRunner

    from pairuni.cli import app

    config = tmp_path / "dimoo.yaml"
    raw = dimoo_config(checkpoint, tmp_path, "mean_field").model_dump(mode="json")
    config.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--set", override])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
