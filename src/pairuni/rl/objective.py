"""The PairGRPO objective: each task's clipped surrogate aggregated over its own tokens, summed.

`J = und_loss_weight * agg(und) + gen_loss_weight * agg(gen)`: the understanding batch (text
answers of varying length) and the generation batch (576 image tokens each for Janus-Pro) never
share one token mean, so neither task's normaliser depends on the other's lengths.
See docs/algorithm.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pairuni.rl.advantages import (
    GroupAdvantages,
    apply_pair_weights,
    group_advantages,
    pair_weights,
    trajectory_weights,
)
from pairuni.rl.config import AlgoConfig
from pairuni.rl.losses import aggregate_loss, clipped_surrogate

TASKS: tuple[str, ...] = ("und", "gen")


@dataclass
class TaskBatch:
    """One task's part of an (accumulation) micro-batch.

    Attributes:
        logp: (B, T) log pi_theta of the sampled tokens (with grad).
        mask: (B, T) bool, valid tokens (text: up to and including the first EOS; image: all).
        advantages: (B,) or (B, T), already pair-weighted (see `task_advantages`).
        old_logp: (B, T) log pi_old from the rollout; None means on-policy (`logp.detach()`), right
            when the batch is used for a single update (num_iterations = 1).
        ref_logp: (B, T) log pi_ref; needed only when beta > 0.
        num_sequences: this task's number of sequences in the whole optimiser batch (all
            micro-batches, all ranks); None uses this micro-batch's B.
        num_tokens: this task's number of valid tokens in the whole optimiser batch (token-mean);
            None uses this micro-batch's count.
        norm_length: the constant of `seq-mean-token-sum-norm` (max new tokens for text, 576 for
            Janus-Pro images); None uses T.
    """

    logp: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    num_sequences: float | int | torch.Tensor | None = None
    num_tokens: float | int | torch.Tensor | None = None
    norm_length: float | int | None = None


@dataclass(frozen=True)
class ObjectiveOutput:
    """`loss`: () tensor to backpropagate. `metrics`: detached () tensors named `und/...`,
    `gen/...` (loss, clip_ratio/{low,high,region}_mean, ratio/{mean,min,max}, kl when a
    reference is given, clip_ratio/dual_mean with dual clip) plus `loss`."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


def task_loss(
    batch: TaskBatch, config: AlgoConfig, task: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Task `task`'s (`und` | `gen`) aggregated loss () and its metrics (unprefixed)."""
    old_logp = batch.logp.detach() if batch.old_logp is None else batch.old_logp
    surrogate = clipped_surrogate(
        batch.logp,
        old_logp,
        batch.advantages,
        batch.mask,
        epsilon_low=config.epsilon_low,
        epsilon_high=config.epsilon_high,
        dual_clip=config.dual_clip,
        level=config.importance_sampling_level,
        ref_logp=batch.ref_logp,
        beta=config.task_beta(task),
        kl_estimator=config.kl_estimator,
    )
    loss = aggregate_loss(
        surrogate.per_token_loss,
        batch.mask,
        config.loss_aggregation,
        num_sequences=batch.num_sequences,
        num_tokens=batch.num_tokens,
        norm_length=batch.norm_length,
    )
    return loss, {"loss": loss.detach(), **surrogate.metrics}


def separable_over_tokens(config: AlgoConfig, on_policy: bool) -> bool:
    """Whether the gradient of `task_loss` with respect to one token's log-prob depends on that
    token's log-prob alone (the others enter only as detached constants or not at all): true
    with token-level ratios (clipping, the KL estimator and every aggregation are per token,
    with constant normalisers), and with sequence-level ratios only on-policy (ratio 1
    whatever the values). A trainer that backpropagates a record's tokens in stages may then
    leave the other stages' log-probs at any finite value."""
    return config.importance_sampling_level == "token" or on_policy


def pairgrpo_loss(
    und: TaskBatch | None, gen: TaskBatch | None, config: AlgoConfig
) -> ObjectiveOutput:
    """`und_loss_weight * agg(und) + gen_loss_weight * agg(gen)`; an absent task contributes 0.

    Args:
        und: the understanding batch, or None (generation-only ablation).
        gen: the generation batch, or None (understanding-only ablation).
        config: the `algo` section.
    """
    weights = {"und": config.und_loss_weight, "gen": config.gen_loss_weight}
    batches = {"und": und, "gen": gen}
    if und is None and gen is None:
        raise ValueError("pairgrpo_loss got neither an understanding nor a generation batch")
    total: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = {}
    for task in TASKS:
        batch = batches[task]
        if batch is None:
            continue
        loss, task_metrics = task_loss(batch, config, task)
        metrics.update({f"{task}/{name}": value for name, value in task_metrics.items()})
        weighted = weights[task] * loss
        total = weighted if total is None else total + weighted
    assert total is not None
    metrics["loss"] = total.detach()
    return ObjectiveOutput(loss=total, metrics=metrics)


@dataclass(frozen=True)
class TaskAdvantages:
    """Pair-weighted advantages of one task and what produced them.

    Attributes:
        advantages: (N,) group-normalised advantages times the trajectory's pair weight.
        weights: (N,) the pair weight of each trajectory.
        groups: the group statistics (unweighted advantages in `groups.advantages`).
        rewards: (N,) the raw rewards (NaN = unscorable).
    """

    advantages: torch.Tensor
    weights: torch.Tensor
    groups: GroupAdvantages
    rewards: torch.Tensor

    def metrics(self, prefix: str) -> dict[str, torch.Tensor]:
        """TRL-style reward metrics, e.g. `und/reward`, `und/reward_std`,
        `und/frac_reward_zero_std`, `und/pair_weight_mean`."""
        valid = ~torch.isnan(self.rewards)
        rewards = self.rewards[valid]
        nan = torch.tensor(float("nan"), device=self.rewards.device)
        return {
            f"{prefix}/reward": rewards.mean() if rewards.numel() else nan,
            f"{prefix}/reward_std": rewards.std() if rewards.numel() > 1 else nan,
            f"{prefix}/frac_reward_zero_std": self.groups.frac_zero_std,
            f"{prefix}/pair_weight_mean": self.weights.mean(),
        }


def task_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    pair_index: torch.Tensor,
    similarity: torch.Tensor,
    aligned: torch.Tensor,
    config: AlgoConfig,
) -> TaskAdvantages:
    """From one task's rewards to its pair-weighted advantages (normalise, then weight).

    Args:
        rewards: (N,) float, NaN for unscorable trajectories.
        group_ids: (N,) integer, one id per (task, prompt) group.
        pair_index: (N,) integer, the pair (row of `similarity`) each trajectory belongs to.
        similarity: (P,) float, s_p of each pair.
        aligned: (P,) bool, aligned pairs (weight 1).
        config: uses advantage_scale, advantage_epsilon, pair_weighting.

    Returns:
        TaskAdvantages with (N,) tensors.
    """
    if pair_index.shape != rewards.shape:
        raise ValueError(
            f"pair_index must have one entry per trajectory: shape {tuple(pair_index.shape)} vs "
            f"rewards {tuple(rewards.shape)}"
        )
    groups = group_advantages(
        rewards, group_ids, scale=config.advantage_scale, epsilon=config.advantage_epsilon
    )
    per_pair = pair_weights(similarity, aligned, mode=config.pair_weighting)
    weights = trajectory_weights(per_pair, pair_index).to(groups.advantages.dtype)
    return TaskAdvantages(
        advantages=apply_pair_weights(groups.advantages, weights),
        weights=weights,
        groups=groups,
        rewards=rewards.detach(),
    )
