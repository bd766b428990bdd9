"""Precision modes at the paper's learning rate (1e-6): every mode's update must track the float32
run's, not round away; old log-probs under bf16; `CompensatedAdamW` against torch's AdamW.

The trainer-level tests apply three updates of each mode to the SAME rollouts (sampled once in
float32), so that the only difference between modes is the arithmetic of the update."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.training.precision import (
    CompensatedAdamW,
    compute_dtype,
    master_value,
    stochastic_round_to_bf16,
)
from pairuni.training.trainer import PairGRPOTrainer
from trainer_helpers import make_assets

LR = 1e-6
STEPS = 3


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    return make_assets(tmp_path_factory.mktemp("precision"))


def make_trainer(assets: dict[str, Path], out: Path, **train: Any) -> PairGRPOTrainer:
    raw = demo.demo_config(
        assets["model"],
        assets["pairs"],
        out,
        # no clipping: a clipped gradient would hide a wrong update (see test_trainer_loop)
        train={"learning_rate": LR, "max_grad_norm": None, **train},
    )
    return PairGRPOTrainer(PairUniConfig.model_validate(raw))


@pytest.fixture(scope="module")
def fp32_run(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: float32 compute and weights; its rollouts are reused by every mode."""
    trainer = make_trainer(assets, tmp_path_factory.mktemp("fp32"), precision="fp32")
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    start = flat_master(trainer)
    update = apply_updates(trainer, rollouts, advantages) - start
    return {"rollouts": rollouts, "advantages": advantages, "start": start, "update": update}


def flat_master(trainer: PairGRPOTrainer) -> torch.Tensor:
    return torch.cat([master_value(p, trainer.optimizer).flatten() for p in trainer.params])


def apply_updates(trainer: PairGRPOTrainer, rollouts: Any, advantages: Any) -> torch.Tensor:
    for iteration in range(STEPS):
        trainer._update(rollouts, advantages, iteration)
    return flat_master(trainer)


def mode_update(assets: dict[str, Path], out: Path, run: dict[str, Any], **train: Any) -> Any:
    trainer = make_trainer(assets, out, **train)
    start = flat_master(trainer)
    # a bf16 mode starts from the bf16-rounded weights: its update is measured from there
    assert torch.equal(start, run["start"].to(start.dtype)) or train.get("master_weights")
    return apply_updates(trainer, run["rollouts"], run["advantages"]) - start, trainer


def tracking(update: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    return {
        "moved": float((update != 0).float().mean()),
        "relative_difference": float((update - reference).norm() / reference.norm()),
        # the share of the reference update the mode carried out (1 = all of it)
        "projection": float((update * reference).sum() / (reference * reference).sum()),
        "l1_ratio": float(update.abs().sum() / reference.abs().sum()),
    }


def test_fp32_reference_moves_nearly_every_element(fp32_run: dict[str, Any]) -> None:
    assert tracking(fp32_run["update"], fp32_run["update"])["moved"] >= 0.99


def test_bf16_compute_with_fp32_master_weights_tracks_fp32(
    assets: dict[str, Path], tmp_path: Path, fp32_run: dict[str, Any]
) -> None:
    update, trainer = mode_update(assets, tmp_path, fp32_run, precision="bf16")
    assert trainer.compute_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.params)
    stats = tracking(update, fp32_run["update"])
    assert stats["moved"] >= 0.99, stats
    # what remains is bf16 rounding of the gradients (sign flips of near-zero ones)
    assert stats["relative_difference"] < 0.25, stats
    assert 0.95 < stats["projection"] < 1.05, stats


def test_bf16_weights_with_kahan_update_track_fp32(
    assets: dict[str, Path], tmp_path: Path, fp32_run: dict[str, Any]
) -> None:
    update, trainer = mode_update(assets, tmp_path, fp32_run, master_weights="bf16")
    assert all(p.dtype == torch.bfloat16 for p in trainer.params)
    assert isinstance(trainer.optimizer, CompensatedAdamW)
    stats = tracking(update, fp32_run["update"])
    assert stats["moved"] >= 0.99, stats  # weight + compensation: nothing rounded away
    assert stats["relative_difference"] < 0.25, stats
    assert 0.95 < stats["projection"] < 1.05, stats


def test_bf16_weights_with_stochastic_rounding_track_fp32_in_expectation(
    assets: dict[str, Path], tmp_path: Path, fp32_run: dict[str, Any]
) -> None:
    update, _ = mode_update(
        assets, tmp_path, fp32_run, master_weights="bf16", bf16_update="stochastic_rounding"
    )
    stats = tracking(update, fp32_run["update"])
    # each element moves by whole bf16 steps with the right probability: few move, but the
    # total movement and its direction are those of the float32 update
    assert 0.9 < stats["projection"] < 1.1, stats
    assert 0.9 < stats["l1_ratio"] < 1.1, stats


def test_plain_adamw_on_bf16_weights_loses_the_update(
    assets: dict[str, Path], tmp_path: Path, fp32_run: dict[str, Any]
) -> None:
    """The bug this file guards against, reproduced: the tests above must not pass for it."""
    trainer = make_trainer(assets, tmp_path, master_weights="bf16")
    trainer.optimizer = torch.optim.AdamW(trainer.optimizer.param_groups, lr=LR)
    trainer.scheduler = trainer._build_scheduler()
    start = flat_master(trainer)
    stats = tracking(
        apply_updates(trainer, fp32_run["rollouts"], fp32_run["advantages"]) - start,
        fp32_run["update"],
    )
    assert stats["moved"] < 0.05 and stats["projection"] < 0.1, stats


def test_master_weights_fp32_upcasts_a_bf16_checkpoint(assets: dict[str, Path], tmp_path: Path):
    raw = demo.demo_config(assets["model"], assets["pairs"], tmp_path, train={"precision": "bf16"})
    raw["model"]["dtype"] = "bfloat16"  # the old recipes' setting
    trainer = PairGRPOTrainer(PairUniConfig.model_validate(raw))
    assert all(p.dtype == torch.float32 for p in trainer.params)
    frozen = trainer.policy.model.model.vision_model  # not trainable: stays in model.dtype
    assert next(frozen.parameters()).dtype == torch.bfloat16
    assert isinstance(trainer.optimizer, torch.optim.AdamW)


def test_auto_precision_is_fp32_on_the_cpu() -> None:
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("bf16", torch.device("cpu")) == torch.bfloat16


# ------------------------------------------------------------------------------ old log-probs


@pytest.mark.parametrize("train", [{"precision": "bf16"}, {"master_weights": "bf16"}])
def test_first_update_ratio_is_exactly_one_under_bf16(
    assets: dict[str, Path], tmp_path: Path, train: dict[str, str]
) -> None:
    raw = demo.demo_config(
        assets["model"],
        assets["pairs"],
        tmp_path,
        algo={"num_iterations": 2},
        train={"max_grad_norm": None, **train},
    )
    trainer = PairGRPOTrainer(PairUniConfig.model_validate(raw))
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    # the sampler's bf16 log-probs are not the teacher-forced ones (what the recompute fixes)
    recomputed = trainer._old_logprobs(rollouts["gen"])
    assert recomputed is not rollouts["gen"].rollout.logprobs
    assert not torch.equal(recomputed, rollouts["gen"].rollout.logprobs)
    first = trainer._update(rollouts, advantages, 0)
    for task in ("und", "gen"):
        assert first[f"{task}/ratio/min"] == first[f"{task}/ratio/max"] == 1.0, first
    second = trainer._update(rollouts, advantages, 1)
    assert second["gen/ratio/min"] != 1.0 or second["gen/ratio/max"] != 1.0


# ------------------------------------------------------------------------------ the optimizer


def grads(shape: tuple[int, ...], steps: int, scale: float) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=generator) * scale for _ in range(steps)]


def run_optimizer(make: Any, weights: torch.Tensor, gradients: list[torch.Tensor]) -> Any:
    param = torch.nn.Parameter(weights.clone())
    optimizer = make([param])
    for grad in gradients:
        param.grad = grad.to(param.dtype)
        optimizer.step()
        optimizer.zero_grad()
    return master_value(param, optimizer), param, optimizer


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_compensated_adamw_is_torch_adamw_bitwise_on_float32(weight_decay: float) -> None:
    weights = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    gradients = grads((64, 32), 5, 1.0)
    kwargs = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": weight_decay}
    ours, _, _ = run_optimizer(lambda p: CompensatedAdamW(p, **kwargs), weights, gradients)
    torch_, _, _ = run_optimizer(
        lambda p: torch.optim.AdamW(p, foreach=False, **kwargs), weights, gradients
    )
    assert torch.equal(ours, torch_)


def test_kahan_master_value_matches_float32_adamw_at_tiny_steps() -> None:
    weights = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    gradients = grads((256, 256), 20, 1e-3)
    reference, _, _ = run_optimizer(
        lambda p: torch.optim.AdamW(p, lr=LR, foreach=False), weights, gradients
    )
    start = weights.bfloat16().float()
    master, param, optimizer = run_optimizer(
        lambda p: CompensatedAdamW(p, lr=LR), weights.bfloat16(), gradients
    )
    assert param.dtype == torch.bfloat16
    assert optimizer.state[param]["exp_avg_sq"].dtype == torch.float32
    update, expected = master - start, reference - weights
    assert float((update - expected).norm() / expected.norm()) < 0.01


def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours() -> None:
    # the bf16 spacing at 1 is 2^-7, so 1 + 2^-10 lies 1/8 of the way from 1 to its upper
    # neighbour: it must round up 1 time in 8 (round-to-nearest would always give 1)
    value = 1.0 + 2.0**-10
    x = torch.full((200_000,), value)
    rounded = stochastic_round_to_bf16(x, torch.Generator().manual_seed(0)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    assert float(rounded.mean()) == pytest.approx(value, abs=3 * 2.0**-7 / 200_000**0.5)
    negative = stochastic_round_to_bf16(-x, torch.Generator().manual_seed(0)).float()
    assert float(negative.mean()) == pytest.approx(-value, abs=3 * 2.0**-7 / 200_000**0.5)
    special = torch.tensor([float("inf"), -float("inf"), 0.0])
    assert torch.equal(stochastic_round_to_bf16(special).float(), special)


def test_stochastic_rounding_is_reproducible_from_the_step() -> None:
    weights = torch.randn(32, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    gradients = grads((32, 32), 3, 1.0)

    def make(p: Any) -> CompensatedAdamW:
        return CompensatedAdamW(p, lr=1e-3, rounding="stochastic_rounding", seed=7)

    first, _, _ = run_optimizer(make, weights, gradients)
    second, _, _ = run_optimizer(make, weights, gradients)
    assert torch.equal(first, second)
