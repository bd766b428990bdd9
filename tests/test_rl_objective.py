"""The PairGRPO objective and the rewards -> pair-weighted advantages convenience."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from pairuni.rl.advantages import group_advantages
from pairuni.rl.config import AlgoConfig
from pairuni.rl.objective import TaskBatch, pairgrpo_loss, task_advantages

F64 = torch.float64


def naive_task_loss(batch: TaskBatch, cfg: AlgoConfig, beta: float | None = None) -> torch.Tensor:
    """Token-level PPO-clip (+ optional k3 KL, coefficient `beta`, default cfg.beta) and the
    three aggregations, by Python loops."""
    beta = cfg.beta if beta is None else beta
    seq_terms, token_sum, token_count = [], 0.0, 0
    old = batch.logp.detach() if batch.old_logp is None else batch.old_logp
    for i in range(batch.mask.shape[0]):
        losses = []
        for t in range(batch.mask.shape[1]):
            if not batch.mask[i, t]:
                continue
            a = float(batch.advantages[i])
            ratio = torch.exp(batch.logp[i, t] - old[i, t])
            clipped = torch.clamp(ratio, 1 - cfg.epsilon_low, 1 + cfg.epsilon_high)
            loss = -torch.minimum(ratio * a, clipped * a)
            if beta > 0:
                x = batch.ref_logp[i, t] - batch.logp[i, t]
                loss = loss + beta * (torch.exp(x) - x - 1)
            losses.append(loss)
        total = sum(losses) if losses else torch.zeros((), dtype=F64)
        token_sum = token_sum + total
        token_count += len(losses)
        if cfg.loss_aggregation == "seq-mean-token-mean":
            seq_terms.append(total / max(len(losses), 1))
        else:
            seq_terms.append(total / (batch.norm_length or batch.mask.shape[1]))
    if cfg.loss_aggregation == "token-mean":
        return token_sum / (batch.num_tokens or token_count)
    return sum(seq_terms) / (batch.num_sequences or batch.mask.shape[0])


def test_each_task_may_have_its_own_kl_coefficient() -> None:
    und, gen = make_batch(4, 6, seed=11), make_batch(4, 5, seed=12)
    cfg = AlgoConfig(beta=0.3, beta_und=0.2, beta_gen=0.0)
    out = pairgrpo_loss(und, gen, cfg)
    expected = naive_task_loss(und, cfg, beta=0.2) + naive_task_loss(gen, cfg, beta=0.0)
    torch.testing.assert_close(out.loss, expected)
    assert cfg.task_beta("und") == 0.2 and cfg.task_beta("gen") == 0.0 and cfg.uses_reference
    unset = AlgoConfig(beta=0.04)
    assert unset.task_beta("und") == unset.task_beta("gen") == 0.04
    assert not AlgoConfig(beta=0.1, beta_und=0.0, beta_gen=0.0).uses_reference
    assert AlgoConfig(beta_gen=0.1).uses_reference


def make_batch(batch: int, length: int, seed: int, *, full: bool = False, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(batch, length, generator=g, dtype=F64) * 3).requires_grad_()
    old = logp.detach() + spread * torch.randn(batch, length, generator=g, dtype=F64)
    ref = logp.detach() + spread * torch.randn(batch, length, generator=g, dtype=F64)
    lengths = (
        torch.full((batch,), length)
        if full
        else torch.randint(1, length + 1, (batch,), generator=g)
    )
    mask = torch.arange(length)[None, :] < lengths[:, None]
    adv = torch.randn(batch, generator=g, dtype=F64)
    return TaskBatch(logp=logp, mask=mask, advantages=adv, old_logp=old, ref_logp=ref)


MODES = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_weighted_sum_of_per_task_losses(mode: str, beta: float) -> None:
    cfg = AlgoConfig(loss_aggregation=mode, gen_loss_weight=0.5, beta=beta, epsilon_high=0.28)
    und = make_batch(3, 5, seed=0)  # text: lengths vary
    gen = make_batch(2, 16, seed=1, full=True)  # image: every token valid
    und.num_sequences, und.num_tokens, und.norm_length = 6, 20, 7
    gen.num_sequences, gen.num_tokens, gen.norm_length = 4, 64, 16
    out = pairgrpo_loss(und, gen, cfg)
    expected = naive_task_loss(und, cfg) + 0.5 * naive_task_loss(gen, cfg)
    torch.testing.assert_close(out.loss, expected)
    grads = torch.autograd.grad(out.loss, [und.logp, gen.logp])
    naive_grads = torch.autograd.grad(expected, [und.logp, gen.logp])
    for ours, naive in zip(grads, naive_grads, strict=True):
        torch.testing.assert_close(ours, naive)
    torch.testing.assert_close(out.metrics["und/loss"], naive_task_loss(und, cfg).detach())
    torch.testing.assert_close(out.metrics["loss"], expected.detach())


def test_tasks_do_not_share_a_token_mean() -> None:
    cfg = AlgoConfig(loss_aggregation="token-mean")
    und = make_batch(2, 4, seed=2)
    gen = make_batch(2, 24, seed=3, full=True)
    separate = pairgrpo_loss(und, gen, cfg).loss
    expected = naive_task_loss(und, cfg) + naive_task_loss(gen, cfg)
    torch.testing.assert_close(separate, expected)
    # one joint token mean would let the 48 image tokens drown the few text tokens
    joint_sum = naive_task_loss(und, cfg) * und.mask.sum() + naive_task_loss(gen, cfg) * 48
    joint = joint_sum / (und.mask.sum() + 48)
    assert not torch.allclose(separate, joint)


def test_absent_task_and_metric_names() -> None:
    cfg = AlgoConfig(beta=0.04, dual_clip=3.0)
    und = make_batch(3, 5, seed=4)
    out = pairgrpo_loss(und, None, cfg)
    torch.testing.assert_close(out.loss, naive_task_loss(und, cfg))
    assert not any(name.startswith("gen/") for name in out.metrics)
    for name in (
        "loss",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "clip_ratio/dual_mean",
        "kl",
        "ratio/mean",
        "ratio/min",
        "ratio/max",
    ):
        assert f"und/{name}" in out.metrics, name
        assert not out.metrics[f"und/{name}"].requires_grad
    gen_only = pairgrpo_loss(None, make_batch(2, 6, seed=5, full=True), AlgoConfig())
    assert "gen/loss" in gen_only.metrics and "und/loss" not in gen_only.metrics
    with pytest.raises(ValueError, match="neither"):
        pairgrpo_loss(None, None, cfg)


def test_zero_weight_task_gets_no_gradient() -> None:
    cfg = AlgoConfig(und_loss_weight=0.0)
    und, gen = make_batch(2, 4, seed=6), make_batch(2, 8, seed=7, full=True)
    pairgrpo_loss(und, gen, cfg).loss.backward()
    assert (und.logp.grad == 0).all()
    assert gen.logp.grad.abs().sum() > 0


def test_on_policy_when_old_logp_is_none() -> None:
    batch = make_batch(3, 5, seed=8)
    batch.old_logp = None
    out = pairgrpo_loss(batch, None, AlgoConfig())
    # ratio 1: loss = -sum_i A_i / B; gradient -A_i / (|y_i| B) on each valid token
    adv, mask = batch.advantages, batch.mask
    torch.testing.assert_close(out.loss, -adv.sum() / 3)
    out.loss.backward()
    expected = -(adv / mask.sum(-1))[:, None] / 3 * mask
    torch.testing.assert_close(batch.logp.grad, expected)
    assert float(out.metrics["und/ratio/mean"]) == 1.0


def test_config_settings_reach_the_surrogate() -> None:
    # ratio 1.25, A > 0: clipped by epsilon_high 0.2, not by 0.28
    logp = torch.full((1, 2), math.log(1.25), dtype=F64)
    batch = TaskBatch(
        logp=logp,
        mask=torch.ones(1, 2, dtype=torch.bool),
        advantages=torch.ones(1, dtype=F64),
        old_logp=torch.zeros(1, 2, dtype=F64),
    )
    assert float(pairgrpo_loss(batch, None, AlgoConfig(epsilon_high=0.2)).loss) == pytest.approx(
        -1.2
    )
    assert float(pairgrpo_loss(batch, None, AlgoConfig(epsilon_high=0.28)).loss) == pytest.approx(
        -1.25
    )
    batch.advantages = -torch.ones(1, dtype=F64)
    batch.logp = torch.full((1, 2), math.log(5.0), dtype=F64)
    assert float(pairgrpo_loss(batch, None, AlgoConfig(dual_clip=3.0)).loss) == pytest.approx(3.0)
    assert float(pairgrpo_loss(batch, None, AlgoConfig()).loss) == pytest.approx(5.0)


# ------------------------------------------------------------------------------ advantages


def test_task_advantages_hand_example() -> None:
    # pair 0 retrieved with s = 0.64 (w = 0.8), pair 1 aligned (w = 1); K = 2 per pair
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0], dtype=F64)
    group_ids = torch.tensor([0, 0, 1, 1])
    pair_index = torch.tensor([0, 0, 1, 1])
    out = task_advantages(
        rewards,
        group_ids,
        pair_index,
        torch.tensor([0.64, 0.2]),
        torch.tensor([False, True]),
        AlgoConfig(advantage_epsilon=0.0),
    )
    r2 = 1 / math.sqrt(2)  # (r - mean) / sample std for two distinct rewards
    torch.testing.assert_close(
        out.advantages, torch.tensor([0.8 * r2, -0.8 * r2, r2, -r2], dtype=F64)
    )
    torch.testing.assert_close(out.weights, torch.tensor([0.8, 0.8, 1.0, 1.0], dtype=F64))
    metrics = out.metrics("und")
    assert float(metrics["und/reward"]) == pytest.approx(1.25)
    assert float(metrics["und/pair_weight_mean"]) == pytest.approx(0.9)
    assert float(metrics["und/frac_reward_zero_std"]) == 0.0
    with pytest.raises(ValueError, match="one entry per trajectory"):
        task_advantages(
            rewards,
            group_ids,
            pair_index[:3],
            torch.tensor([0.64, 0.2]),
            torch.tensor([False, True]),
            AlgoConfig(),
        )


def _rollout(seed: int):
    """Two pairs x K = 3 per task, rewards, and off-policy log-probs (clipping active)."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (6,), generator=g).to(F64) + 0.1 * torch.arange(6, dtype=F64)
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    return rewards, group_ids, group_ids.clone()


@pytest.mark.parametrize(
    ("weighting", "similarity", "aligned"),
    [
        ("none", [0.61, 0.93], [False, False]),
        ("sqrt", [0.3, 0.7], [True, True]),
        ("linear", [1.0, 1.0], [False, False]),
        ("sqrt", [1.0, 0.5], [False, True]),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_unit_pair_weights_equal_plain_grpo(weighting, similarity, aligned, mode) -> None:
    cfg = AlgoConfig(pair_weighting=weighting, loss_aggregation=mode)
    rewards, group_ids, pair_index = _rollout(seed=9)
    paired = task_advantages(
        rewards, group_ids, pair_index, torch.tensor(similarity), torch.tensor(aligned), cfg
    )
    plain_adv = group_advantages(rewards, group_ids, scale="group", epsilon=1e-4).advantages
    batch = make_batch(6, 5, seed=10)
    paired_batch = TaskBatch(batch.logp, batch.mask, paired.advantages, batch.old_logp)
    plain_batch = TaskBatch(batch.logp, batch.mask, plain_adv, batch.old_logp)
    loss_pair = pairgrpo_loss(paired_batch, None, cfg).loss
    loss_plain = naive_task_loss(plain_batch, cfg)
    torch.testing.assert_close(loss_pair, loss_plain)
    (grad_pair,) = torch.autograd.grad(loss_pair, batch.logp)
    (grad_plain,) = torch.autograd.grad(loss_plain, batch.logp)
    torch.testing.assert_close(grad_pair, grad_plain)


@pytest.mark.parametrize("mode", MODES)
def test_pair_weighting_is_per_pair_loss_reweighting(mode: str) -> None:
    """w > 0 only scales A and clipping acts on the ratio, so the weighted loss is the sum of the
    unweighted per-sequence losses times w (pairuni-paper.md §4.4)."""
    cfg = AlgoConfig(pair_weighting="sqrt", loss_aggregation=mode)
    rewards, group_ids, pair_index = _rollout(seed=11)
    similarity, aligned = torch.tensor([0.64, 0.81]), torch.tensor([False, False])
    paired = task_advantages(rewards, group_ids, pair_index, similarity, aligned, cfg)
    batch = make_batch(6, 5, seed=12, spread=0.5)
    loss = pairgrpo_loss(
        TaskBatch(batch.logp, batch.mask, paired.advantages, batch.old_logp), None, cfg
    ).loss
    plain_adv = group_advantages(rewards, group_ids).advantages
    weights = [0.8, 0.8, 0.8, 0.9, 0.9, 0.9]
    reweighted = 0.0
    for i, w in enumerate(weights):
        one = TaskBatch(
            batch.logp[i : i + 1],
            batch.mask[i : i + 1],
            plain_adv[i : i + 1],
            batch.old_logp[i : i + 1],
            num_sequences=6,
            num_tokens=batch.mask.sum(),
        )
        reweighted = reweighted + w * naive_task_loss(one, cfg)
    torch.testing.assert_close(loss, reweighted)


# ------------------------------------------------------------------------------ package


def test_algorithm_core_has_no_torch_at_import_and_no_loop_dependency() -> None:
    """`pairuni.config` imports `pairuni.rl.config`, so `pairuni.rl` must not import torch; and
    the core never reaches into the training loop, the policies or the rewards."""
    code = (
        "import sys, pairuni.rl, pairuni.rl.config\n"
        "assert 'torch' not in sys.modules, 'pairuni.rl imported torch eagerly'\n"
        "import pairuni.rl.advantages, pairuni.rl.losses, pairuni.rl.objective\n"
        "bad = sorted(m for m in sys.modules if m.startswith(("
        "'pairuni.training', 'pairuni.policy', 'pairuni.rewards')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    code = "import sys, pairuni.config\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("level", "on_policy"),
    [("token", False), ("token", True), ("sequence", False), ("sequence", True)],
)
def test_separable_over_tokens_says_when_other_tokens_values_leave_a_gradient_alone(
    level: str, on_policy: bool
) -> None:
    """The gradient of token (0, 0)'s log-prob, with the other tokens' (detached) values moved:
    unchanged exactly when `separable_over_tokens` says so (what staged backward relies on)."""
    from pairuni.rl.objective import separable_over_tokens, task_loss

    cfg = AlgoConfig(importance_sampling_level=level, beta=0.04, dual_clip=3.0)
    gen = torch.Generator().manual_seed(3)
    values = -torch.rand(3, 5, generator=gen, dtype=F64) * 3
    old = None if on_policy else values + 0.2 * torch.randn(3, 5, generator=gen, dtype=F64)
    ref = values + 0.1 * torch.randn(3, 5, generator=gen, dtype=F64)
    advantages = torch.randn(3, generator=gen, dtype=F64)
    mask = torch.ones(3, 5, dtype=torch.bool)

    def gradient_of_first_token(others: torch.Tensor) -> float:
        first = values[0, 0].clone().requires_grad_(True)
        logp = others.clone()
        logp[0, 0] = first
        batch = TaskBatch(logp=logp, mask=mask, advantages=advantages, old_logp=old, ref_logp=ref)
        task_loss(batch, cfg, "und")[0].backward()
        return float(first.grad)

    moved = values - 0.5 * torch.rand(3, 5, generator=gen, dtype=F64)
    same = gradient_of_first_token(values) == pytest.approx(gradient_of_first_token(moved))
    assert same == separable_over_tokens(cfg, on_policy)
