"""Group-relative advantages and PairGRPO pair weights (pure tensor functions).

Shapes: N trajectories (one task), G groups (one group = one (task, prompt)), P pairs.

The paper (arXiv 2510.25682, §2.2) normalises rewards within groups that share a task and a
prompt, then multiplies every advantage of a pair's trajectories, on both sides, by the pair
weight w_p (1 for aligned pairs, sqrt(s_p) for retrieved ones). See docs/algorithm.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

AdvantageScale = Literal["group", "batch", "none"]
PairWeighting = Literal["none", "linear", "sqrt"]

ADVANTAGE_SCALES: tuple[str, ...] = ("group", "batch", "none")


@dataclass(frozen=True)
class GroupAdvantages:
    """Advantages of one task batch and the group statistics behind them (all detached).

    Attributes:
        advantages: (N,) float, 0 for NaN rewards and for zero-variance groups.
        group_ids: (G,) long, the distinct ids of `group_ids` in ascending order; row g of the
            statistics below belongs to group `group_ids[g]`.
        group_index: (N,) long, the row in the statistics of each trajectory's group.
        group_mean: (G,) float, mean of the group's non-NaN rewards (NaN if it has none).
        group_std: (G,) float, sample (unbiased, n - 1) std of the group's non-NaN rewards
            (NaN if it has fewer than two).
        group_count: (G,) long, number of non-NaN rewards in the group.
        group_zero_std: (G,) bool, True when the group's non-NaN rewards are all equal (or there
            are fewer than two of them): such a group carries no learning signal.
        frac_zero_std: () float, fraction of groups with `group_zero_std` (TRL's
            `frac_reward_zero_std`, counted over groups rather than trajectories).
    """

    advantages: torch.Tensor
    group_ids: torch.Tensor
    group_index: torch.Tensor
    group_mean: torch.Tensor
    group_std: torch.Tensor
    group_count: torch.Tensor
    group_zero_std: torch.Tensor
    frac_zero_std: torch.Tensor


def _check_rewards_and_ids(rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
    if rewards.dim() != 1 or group_ids.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards and group_ids must both be 1-D of the same length, got shapes "
            f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}; pass one reward and one group "
            "id per trajectory"
        )
    if not rewards.is_floating_point():
        raise ValueError(
            f"rewards must be a float tensor, got {rewards.dtype}; call .float() first"
        )
    if group_ids.is_floating_point() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if torch.isinf(rewards).any():
        index = int(torch.nonzero(torch.isinf(rewards))[0])
        raise ValueError(
            f"rewards[{index}] is infinite; a reward function must return a finite number or None "
            "(NaN), which excludes the trajectory"
        )


def _segment_sum(values: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of `values` (N,) per segment `index` (N,) -> (num_segments,)."""
    out = torch.zeros(num_segments, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


def _segment_extreme(
    values: torch.Tensor, index: torch.Tensor, num_segments: int, reduce: Literal["amax", "amin"]
) -> torch.Tensor:
    """Max or min of `values` (N,) per segment (segments without values get -inf / +inf)."""
    fill = float("-inf") if reduce == "amax" else float("inf")
    out = torch.full((num_segments,), fill, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index, values, reduce=reduce, include_self=True)


def _sample_std(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Unbiased std of `values[valid]` as a () tensor (NaN with fewer than two values)."""
    count = valid.sum()
    if count < 2:
        return torch.tensor(float("nan"), dtype=values.dtype, device=values.device)
    return values[valid].std(unbiased=True)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scale: AdvantageScale = "group",
    epsilon: float = 1e-4,
) -> GroupAdvantages:
    """GRPO advantages of one task batch: reward minus its group mean, optionally scaled.

    `A_i = (r_i - mean_g) / (std + epsilon)`, where std is the group's sample std (`scale="group"`),
    the sample std of all the batch's rewards (`"batch"`), or the division is skipped (`"none"`,
    Dr. GRPO). Sample (n - 1) std as in TRL's `nanstd` and torch's `.std()`.

    Exactly zero advantage for: a NaN reward (also excluded from every statistic) and every
    trajectory of a zero-variance group (all its valid rewards equal, or fewer than two of them),
    whatever `scale` is. Without the second rule float rounding in the mean would give
    `(r - mean) / epsilon` noise of order 1e-4 instead of 0.

    Args:
        rewards: (N,) float; NaN marks an unscorable trajectory.
        group_ids: (N,) integer; equal ids share a group (one (task, prompt)). Any values and
            any order: groups may be interleaved.
        scale: "group" | "batch" | "none".
        epsilon: added to the std before dividing (TRL and CoRL use 1e-4).

    Returns:
        GroupAdvantages with (N,) advantages and (G,) group statistics, all detached.
    """
    _check_rewards_and_ids(rewards, group_ids)
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of {ADVANTAGE_SCALES}")
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    rewards = rewards.detach()
    unique_ids, index = torch.unique(group_ids, return_inverse=True)
    num_groups = unique_ids.numel()

    valid = ~torch.isnan(rewards)
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))
    count = _segment_sum(valid.long(), index, num_groups)
    count_f = count.to(rewards.dtype)
    mean = _segment_sum(filled, index, num_groups) / count_f  # NaN (0/0) for all-NaN groups

    centred = torch.where(valid, rewards - mean[index], torch.zeros_like(rewards))
    sq_sum = _segment_sum(centred.square(), index, num_groups)
    std = torch.where(count >= 2, (sq_sum / (count_f - 1).clamp(min=1)).sqrt(), float("nan"))

    # Zero variance is decided exactly (max == min) rather than by std < tol.
    high = _segment_extreme(torch.where(valid, rewards, float("-inf")), index, num_groups, "amax")
    low = _segment_extreme(torch.where(valid, rewards, float("inf")), index, num_groups, "amin")
    zero_std = (count < 2) | (high == low)

    if scale == "group":
        divisor = std[index] + epsilon
    elif scale == "batch":
        divisor = _sample_std(rewards, valid) + epsilon
    else:
        divisor = torch.ones_like(rewards)
    has_signal = valid & ~zero_std[index]
    safe_divisor = torch.where(has_signal, divisor, torch.ones_like(divisor))
    advantages = torch.where(has_signal, centred / safe_divisor, torch.zeros_like(rewards))
    return GroupAdvantages(
        advantages=advantages,
        group_ids=unique_ids,
        group_index=index,
        group_mean=mean,
        group_std=std,
        group_count=count,
        group_zero_std=zero_std,
        frac_zero_std=zero_std.to(rewards.dtype).mean(),
    )


# --------------------------------------------------------------------------------------------
# Pair weights


def _weight_none(similarity: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(similarity)


def _weight_linear(similarity: torch.Tensor) -> torch.Tensor:
    return similarity.clone()


def _weight_sqrt(similarity: torch.Tensor) -> torch.Tensor:
    return similarity.sqrt()


PAIR_WEIGHTINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": _weight_none,
    "linear": _weight_linear,
    "sqrt": _weight_sqrt,
}
"""Weight of a retrieved pair from its similarity s_p; aligned pairs always get 1."""


def _check_similarity(similarity: torch.Tensor, retrieved: torch.Tensor) -> None:
    bad = retrieved & ~((similarity >= 0) & (similarity <= 1))  # NaN fails both comparisons
    if bad.any():
        index = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"pair {index}: similarity s_p = {float(similarity[index])} is outside [0, 1] (or NaN) "
            "for a retrieved pair; fix the pair's `similarity` field in the PairUG file (it is the "
            "cosine of L2-normalised image features, and retrieval keeps only s_p >= threshold)"
        )


def pair_weights(
    similarity: torch.Tensor, aligned: torch.Tensor, mode: PairWeighting = "sqrt"
) -> torch.Tensor:
    """PairGRPO weight per pair: 1 for aligned pairs, f(s_p) for retrieved ones.

    f is 1 (`none`), s_p (`linear`) or sqrt(s_p) (`sqrt`, the paper's Eq. 3). With `linear` or
    `sqrt`, a retrieved pair's s_p must lie in [0, 1]; aligned pairs' s_p is ignored (may be
    NaN). With `none` s_p is not read at all, so random-pair ablations may carry any value.

    Args:
        similarity: (P,) float, s_p.
        aligned: (P,) bool, True for aligned (self-referential) pairs.
        mode: "none" | "linear" | "sqrt".

    Returns:
        (P,) float weights in [0, 1].
    """
    if mode not in PAIR_WEIGHTINGS:
        raise ValueError(f"unknown pair weighting {mode!r}; choose one of {tuple(PAIR_WEIGHTINGS)}")
    if similarity.dim() != 1 or similarity.shape != aligned.shape:
        raise ValueError(
            f"similarity and aligned must both be 1-D of the same length, got shapes "
            f"{tuple(similarity.shape)} and {tuple(aligned.shape)}"
        )
    if aligned.dtype != torch.bool:
        raise ValueError(f"aligned must be a bool tensor, got {aligned.dtype}")
    similarity = similarity.detach().to(torch.get_default_dtype())
    if mode == "none":
        return torch.ones_like(similarity)
    _check_similarity(similarity, ~aligned)
    safe = torch.where(aligned, torch.ones_like(similarity), similarity)
    return torch.where(aligned, torch.ones_like(similarity), PAIR_WEIGHTINGS[mode](safe))


def trajectory_weights(weights: torch.Tensor, pair_index: torch.Tensor) -> torch.Tensor:
    """Give each trajectory the weight of the pair it was sampled for.

    Args:
        weights: (P,) float, one weight per pair (from `pair_weights`).
        pair_index: (N,) integer, the pair (row of `weights`) of each trajectory; a pair with K_u
            understanding trajectories appears K_u times in the understanding batch.

    Returns:
        (N,) float.
    """
    if pair_index.dim() != 1 or pair_index.is_floating_point():
        raise ValueError(
            f"pair_index must be a 1-D integer tensor, got {pair_index.dtype} "
            f"of shape {tuple(pair_index.shape)}"
        )
    out_of_range = (pair_index < 0) | (pair_index >= weights.numel())
    if out_of_range.any():
        position = int(torch.nonzero(out_of_range)[0])
        raise ValueError(
            f"trajectory {position}: pair_index {int(pair_index[position])} is outside "
            f"[0, {weights.numel()}); it must index the pairs of this batch"
        )
    return weights[pair_index]


def apply_pair_weights(advantages: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multiply normalised advantages by per-trajectory pair weights (after normalisation).

    Args:
        advantages: (N,) or (N, T) float.
        weights: (N,) float, from `trajectory_weights`.

    Returns:
        Same shape as `advantages`.
    """
    if weights.shape != advantages.shape[:1] or weights.dim() != 1:
        raise ValueError(
            f"weights must be (N,) with N = advantages.shape[0] = {advantages.shape[0]}, got "
            f"{tuple(weights.shape)}"
        )
    if advantages.dim() == 2:
        return advantages * weights.unsqueeze(1)
    if advantages.dim() == 1:
        return advantages * weights
    raise ValueError(f"advantages must be (N,) or (N, T), got {tuple(advantages.shape)}")
