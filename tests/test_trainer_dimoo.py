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


def dimoo_config(
    checkpoint: Path, tmp_path: Path, estimator: str, dimoo: dict | None = None, **sections: Any
):
    pairs = demo.write_demo_pairs(tmp_path / "data", num_pairs=4)
    settings = {"image_size": 32, "image_steps": 2, "text_steps": 2, "logprob": estimator}
    raw = demo.demo_config(
        checkpoint,
        pairs,
        tmp_path / "run",
        model={"backend": "auto", "trainable": ["language_model"], "dtype": "float32"},
        rollout={"max_new_tokens": 4, "cfg_scale": 3.0, "dimoo": {**settings, **(dimoo or {})}},
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


@pytest.mark.parametrize(
    ("override", "named"), [("model.trainable=[language_model, vision_model]", "vision_model")]
)
def test_settings_dimoo_lacks_fail_with_a_message_not_a_traceback(
    checkpoint, tmp_path, override, named
):
    from typer.testing import CliRunner

    from pairuni.cli import app

    config = tmp_path / "dimoo.yaml"
    raw = dimoo_config(checkpoint, tmp_path, "mean_field").model_dump(mode="json")
    config.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--set", override])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


def gradients_of_one_update(trainer: PairGRPOTrainer, rollouts, advantages, groups):
    """Both tasks' losses backpropagated with `trajectory_backward_groups = groups`: the
    parameters' gradients and the loss metrics."""
    trainer.policy.settings.trajectory_backward_groups = groups
    for param in trainer.params:
        param.grad = None
    metrics: dict[str, Any] = {}
    for task in rollouts:
        spec = task.spec
        adv = advantages[spec.key].advantages[trainer._local_rows(spec)]
        mask = spec.loss_mask(task.rollout)
        whole = slice(0, len(task.rollout))
        named, _ = trainer._loss(task, whole, adv, mask, float(mask.shape[0]), float(mask.sum()))
        metrics.update({k: float(v) for k, v in named.items()})
    return [param.grad.clone() for param in trainer.params], metrics


@pytest.mark.parametrize(("level", "iterations"), [("token", 1), ("token", 2), ("sequence", 2)])
def test_backward_by_trajectory_group_gives_the_gradient_of_one_backward(
    checkpoint, tmp_path, level, iterations
):
    """One backward per replay group (one forward's graph alive at a time, the default) adds up
    to the gradient of one backward through the whole replay, off policy and with the KL term
    too; under sequence-level ratios the other groups' exact log-probs enter the ratio."""
    algo = {"num_iterations": iterations, "importance_sampling_level": level, "beta": 0.1}
    cfg = dimoo_config(checkpoint, tmp_path, "trajectory", {"image_steps": 3}, algo=algo)
    trainer = PairGRPOTrainer(cfg)
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    for task in rollouts:
        trainer._old_logprobs(task)
        trainer._ref_logprobs(task)
        assert trainer._logprob_stages(task.spec, task.rollout) > 1
    with torch.no_grad():  # off policy: the weights move after pi_old was recorded
        generator = torch.Generator().manual_seed(0)
        for param in trainer.params:
            param.add_(0.05 * param.std() * torch.randn(param.shape, generator=generator))
    whole, whole_metrics = gradients_of_one_update(trainer, rollouts, advantages, None)
    staged, staged_metrics = gradients_of_one_update(trainer, rollouts, advantages, 1)
    assert any(g.abs().max() > 0 for g in whole)
    for a, b in zip(whole, staged, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert staged_metrics.keys() == whole_metrics.keys()
    for key, value in whole_metrics.items():
        assert staged_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
