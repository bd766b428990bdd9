"""The PairGRPO trainer in one process on the tiny random Janus: parameters that move (and those
that must not), metrics, old log-probs with num_iterations > 1, KL to the reference, gradient
accumulation and the gradient-agreement cosine."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.policy.tiny import build_tiny_janus
from pairuni.rl.objective import TaskBatch, pairgrpo_loss
from pairuni.training.trainer import PairGRPOTrainer


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("demo")
    model = build_tiny_janus(root / "model")
    pairs = demo.write_demo_pairs(root, num_pairs=8)
    return {"model": model, "pairs": pairs, "root": root}


def make_config(assets: dict[str, Path], out: Path, **sections: Any) -> PairUniConfig:
    raw = demo.demo_config(assets["model"], assets["pairs"], out, **sections)
    return PairUniConfig.model_validate(raw)


def named_params(trainer: PairGRPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters()}


def test_steps_move_trainable_parameters_only_and_log_every_metric(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    cfg = make_config(
        assets,
        tmp_path,
        logging={"grad_agreement_every": 1, "image_grid_every": 2, "report_to": ["tensorboard"]},
    )
    trainer = PairGRPOTrainer(cfg)
    before = named_params(trainer)
    trainer.train()
    after = named_params(trainer)
    trainable = {id(p) for g in trainer.policy.parameter_groups().values() for p in g}
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    for name, param in trainer.policy.model.named_parameters():
        if id(param) not in trainable:
            assert name not in moved, f"frozen parameter {name} changed"
    assert any(n.startswith("model.language_model") for n in moved)
    assert any(n.startswith("model.generation_head") for n in moved)

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    expected = {
        "loss",
        "learning_rate",
        "grad_norm",
        "grad_cosine",
        "epoch",
        "time/rollout",
        "time/step",
        "pair/weight_mean",
        "pair/frac_aligned",
    }
    for task in ("und", "gen"):
        expected |= {
            f"{task}/{k}"
            for k in (
                "reward",
                "reward_std",
                "frac_reward_zero_std",
                "loss",
                "entropy",
                "clip_ratio/low_mean",
                "clip_ratio/high_mean",
                "clip_ratio/region_mean",
                "completions/mean_length",
                "pair_weight_mean",
            )
        }
    expected |= {"und/rewards/toy_letter_fraction/mean", "gen/rewards/toy_redness/mean"}
    assert expected <= set(lines[0])
    assert lines[0]["gen/completions/mean_length"] == 16  # the tiny model's image tokens
    assert (tmp_path / "samples" / "step-2.png").is_file()
    assert (tmp_path / "config.yaml").is_file()
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoint-2" / "model" / "model.safetensors").is_file()


def test_second_iteration_uses_rollout_logprobs_as_old_and_clips(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    cfg = make_config(
        assets,
        tmp_path,
        algo={"num_iterations": 2, "epsilon_low": 1e-3, "epsilon_high": 1e-3},
        train={"max_steps": 1, "learning_rate": 5e-2, "max_grad_norm": None},
    )
    trainer = PairGRPOTrainer(cfg)
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    assert trainer._old_logprobs(rollouts["und"]) is rollouts["und"].rollout.logprobs
    first = trainer._update(rollouts, advantages, 0)
    second = trainer._update(rollouts, advantages, 1)
    # first update: teacher forcing reproduces the sampling log-probs, so the ratio is ~1
    assert first["und/ratio/max"] == pytest.approx(1.0, abs=1e-4)
    assert first["gen/ratio/min"] == pytest.approx(1.0, abs=1e-4)
    # second update: the policy moved, the old log-probs did not
    assert abs(second["gen/ratio/max"] - 1.0) > 1e-3 or abs(second["gen/ratio/min"] - 1.0) > 1e-3
    assert second["gen/clip_ratio/region_mean"] > 0


def test_single_iteration_is_exactly_on_policy(assets: dict[str, Path], tmp_path: Path) -> None:
    trainer = PairGRPOTrainer(make_config(assets, tmp_path))
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    assert trainer._old_logprobs(rollouts["gen"]) is None
    metrics = trainer._update(rollouts, advantages, 0)
    assert metrics["und/ratio/min"] == metrics["und/ratio/max"] == 1.0


def test_kl_to_the_initial_model_is_zero_first_then_positive(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    cfg = make_config(
        assets, tmp_path, algo={"beta": 0.1, "num_iterations": 2}, train={"max_steps": 1}
    )
    trainer = PairGRPOTrainer(cfg)
    assert trainer.ref_policy is not None
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    first = trainer._update(rollouts, advantages, 0)
    second = trainer._update(rollouts, advantages, 1)
    assert first["und/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is still the reference
    assert second["und/kl"] > 1e-6 and second["gen/kl"] > 1e-6
    # the reference stayed frozen while the policy moved
    ref = dict(trainer.ref_policy.model.named_parameters())
    moved = named_params(trainer)
    name = "model.generation_head.proj_out.weight"
    assert name in ref and not torch.equal(ref[name].detach(), moved[name])


def test_a_kl_on_understanding_only_scores_pi_ref_for_that_task_alone(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    cfg = make_config(
        assets,
        tmp_path,
        algo={"beta_und": 0.1, "num_iterations": 2},
        train={"max_steps": 1},
    )
    trainer = PairGRPOTrainer(cfg)
    assert trainer.ref_policy is not None
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    trainer._update(rollouts, advantages, 0)
    second = trainer._update(rollouts, advantages, 1)
    assert rollouts["und"].ref_logp is not None and rollouts["gen"].ref_logp is None
    assert second["und/kl"] > 1e-6 and "gen/kl" not in second


def one_step(
    assets: dict[str, Path], out: Path, micro: int, aggregation: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One training step; returns the accumulated gradient it stepped with and the parameters
    before and after it."""
    # No clipping: clip_grad_norm_ maps g and c * g to the same update, so a wrong loss
    # normaliser (a per-micro-batch count) would leave the update unchanged. adam_epsilon 1 makes
    # the first AdamW update ~ lr * g for small g rather than lr * sign(g), which would hide a
    # rescaled gradient too (and blow float noise in near-zero gradients up to a full step).
    train = {"max_steps": 1, "micro_batch_size": micro, "adam_epsilon": 1.0, "max_grad_norm": None}
    algo = {"loss_aggregation": aggregation}
    trainer = PairGRPOTrainer(make_config(assets, out, train=train, algo=algo))
    grads: list[torch.Tensor] = []
    real_step = trainer._optimizer_step

    def record_then_step() -> dict[str, float]:
        grads.append(torch.cat([p.grad.detach().reshape(-1).clone() for p in trainer.params]))
        return real_step()

    trainer._optimizer_step = record_then_step  # type: ignore[method-assign]
    start = named_params(trainer)
    trainer.train()
    assert len(grads) == 1
    return grads[0], start, named_params(trainer)


@pytest.mark.parametrize(
    "aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
)
def test_micro_batching_does_not_change_the_update(
    assets: dict[str, Path], tmp_path: Path, aggregation: str
) -> None:
    # micro 64 holds each task's 4 rows at once, so its normalisers are the step's whatever the
    # code does; micro 1 and 3 (3 + 1 rows) only match it with step-wide normalisers
    grad, start, whole = one_step(assets, tmp_path / "a", 64, aggregation)
    changed = [n for n in whole if not torch.equal(whole[n], start[n])]
    assert grad.norm() > 0 and changed, "a zero step would make the comparison empty"
    for micro in (1, 3):
        grad_m, _, pieces = one_step(assets, tmp_path / f"m{micro}", micro, aggregation)
        torch.testing.assert_close(grad_m, grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()))
        for name in changed:
            torch.testing.assert_close(pieces[name] - start[name], whole[name] - start[name])


def test_grad_cosine_matches_separately_computed_task_gradients(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    cfg = make_config(
        assets, tmp_path, logging={"grad_agreement_every": 1}, train={"micro_batch_size": 3}
    )
    trainer = PairGRPOTrainer(cfg)
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    params = trainer.params

    def task_grad(task: str) -> torch.Tensor:
        # the whole task batch at once, with no accumulation, normalisers or the trainer's loop
        if task == "und":
            ro = rollouts["und"].rollout
            logp, mask = trainer.policy.text_logprobs(ro), ro.completion_mask.bool()
        else:
            ro = rollouts["gen"].rollout
            logp = trainer.policy.image_logprobs(ro)
            mask = torch.ones_like(logp, dtype=torch.bool)
        tb = TaskBatch(logp, mask, advantages[task].advantages)
        out = pairgrpo_loss(tb if task == "und" else None, tb if task == "gen" else None, cfg.algo)
        grads = torch.autograd.grad(out.loss, params, allow_unused=True)
        return torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(grads, params, strict=True)
            ]
        )

    g_und, g_gen = task_grad("und"), task_grad("gen")
    expected = float(g_und @ g_gen / (g_und.norm() * g_gen.norm()))
    assert g_und.norm() > 0 and g_gen.norm() > 0
    # where the tasks meet: the language-model trunk (lm_head is reached by understanding
    # only, the generation head by generation only), picked by name, independently of the code
    names = {id(p): n for n, p in trainer.policy.model.named_parameters()}
    trunk = torch.cat(
        [torch.full((p.numel(),), names[id(p)].startswith("model.language_model.")) for p in params]
    )
    shared = float(g_und[trunk] @ g_gen[trunk] / (g_und[trunk].norm() * g_gen[trunk].norm()))
    metrics = trainer._update(rollouts, advantages, 0)
    assert metrics["grad_cosine"] == pytest.approx(expected, abs=1e-4)
    assert metrics["grad_cosine_shared"] == pytest.approx(shared, abs=1e-4)
    assert abs(metrics["grad_cosine_shared"]) > abs(metrics["grad_cosine"])  # undiluted
    assert math.isnan(metrics["grad_cosine/generation_head"])  # understanding never reaches it
    assert metrics["grad_norm"] == pytest.approx(float((g_und + g_gen).norm()), rel=1e-4)
