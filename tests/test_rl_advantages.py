"""Group-relative advantages and pair weights against hand numbers and a naive loop."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pairuni.rl.advantages import (
    apply_pair_weights,
    group_advantages,
    pair_weights,
    trajectory_weights,
)

NAN = float("nan")


def naive_advantages(
    rewards: list[float], groups: list[int], scale: str, eps: float
) -> list[float]:
    """A deliberately plain reimplementation: Python loops and the statistics module."""
    members: dict[int, list[float]] = {}
    for reward, group in zip(rewards, groups, strict=True):
        if not math.isnan(reward):
            members.setdefault(group, []).append(reward)
    valid = [r for r in rewards if not math.isnan(r)]
    batch_std = statistics.stdev(valid) if len(valid) >= 2 else NAN
    out = []
    for reward, group in zip(rewards, groups, strict=True):
        values = members.get(group, [])
        if math.isnan(reward) or len(values) < 2 or max(values) == min(values):
            out.append(0.0)
            continue
        centred = reward - statistics.fmean(values)
        if scale == "group":
            out.append(centred / (statistics.stdev(values) + eps))
        elif scale == "batch":
            out.append(centred / (batch_std + eps))
        else:
            out.append(centred)
    return out


# ------------------------------------------------------------------------------ hand examples

REWARDS = torch.tensor([1.0, 0.0, 1.0, 3.0, 1.0], dtype=torch.float64)
GROUPS = torch.tensor([0, 0, 0, 1, 1])


def test_group_scale_hand_example() -> None:
    # group 0: mean 2/3, sample std sqrt(1/3); group 1: mean 2, sample std sqrt(2)
    out = group_advantages(REWARDS, GROUPS, scale="group", epsilon=0.0)
    s3, s2 = math.sqrt(3), math.sqrt(2)
    expected = [s3 / 3, -2 * s3 / 3, s3 / 3, 1 / s2, -1 / s2]
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out.group_mean, torch.tensor([2 / 3, 2.0], dtype=torch.float64))
    torch.testing.assert_close(out.group_std, torch.tensor([1 / s3, s2], dtype=torch.float64))
    assert out.group_count.tolist() == [3, 2]
    assert out.group_zero_std.tolist() == [False, False]
    assert float(out.frac_zero_std) == 0.0


def test_epsilon_is_added_to_the_std() -> None:
    out = group_advantages(REWARDS, GROUPS, scale="group", epsilon=0.5)
    s2 = math.sqrt(2)
    assert float(out.advantages[3]) == pytest.approx(1 / (s2 + 0.5))
    assert float(out.advantages[1]) == pytest.approx((-2 / 3) / (1 / math.sqrt(3) + 0.5))


def test_batch_scale_hand_example() -> None:
    # batch: mean 1.2, squared deviations sum 4.8, sample variance 1.2
    out = group_advantages(REWARDS, GROUPS, scale="batch", epsilon=0.0)
    std = math.sqrt(1.2)
    expected = [1 / 3 / std, -2 / 3 / std, 1 / 3 / std, 1 / std, -1 / std]
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64))


def test_none_scale_hand_example() -> None:
    out = group_advantages(REWARDS, GROUPS, scale="none", epsilon=1e-4)
    expected = [1 / 3, -2 / 3, 1 / 3, 1.0, -1.0]
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64))


# Ties whose mean does not round back to the value (three float32 0.9s average to 0.89999992,
# not 0.89999998; three float64 0.1s to 0.10000000000000002): r - mean is a rounding residue,
# not 0, so only the zero-variance rule, not the fewer-than-two count, makes these advantages 0.
INEXACT_TIES = [(torch.float32, 0.9), (torch.float64, 0.1)]


@pytest.mark.parametrize(("dtype", "tie"), INEXACT_TIES, ids=["float32", "float64"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_group_is_exactly_zero(scale: str, dtype: torch.dtype, tie: float) -> None:
    rewards = torch.tensor([tie, tie, tie, 0.7, 0.2, 0.3], dtype=dtype)
    tied = rewards[:3]
    assert (tied - tied.sum() / 3 != 0).all(), "the tie must have an inexact mean"
    groups = torch.tensor([5, 5, 5, 9, 9, 9])
    out = group_advantages(rewards, groups, scale=scale, epsilon=1e-4)
    assert out.advantages[:3].tolist() == [0.0, 0.0, 0.0]
    assert (out.advantages[3:] != 0).all()
    assert out.group_zero_std.tolist() == [True, False]
    assert float(out.frac_zero_std) == 0.5


def test_nan_rewards_get_zero_and_are_excluded() -> None:
    rewards = torch.tensor([1.0, NAN, 0.0, 1.0, NAN, NAN, 4.0, NAN], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    out = group_advantages(rewards, groups, scale="group", epsilon=0.0)
    s3 = math.sqrt(3)
    expected = [s3 / 3, 0.0, -2 * s3 / 3, s3 / 3, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64))
    assert out.group_count.tolist() == [3, 0, 1]
    assert float(out.group_mean[0]) == pytest.approx(2 / 3)
    assert math.isnan(float(out.group_mean[1]))  # all-NaN group: no mean
    assert float(out.group_mean[2]) == 4.0
    assert math.isnan(float(out.group_std[2]))  # one valid reward: sample std undefined
    assert out.group_zero_std.tolist() == [False, True, True]
    assert not torch.isnan(out.advantages).any()


def test_group_ids_need_not_be_contiguous_or_sorted() -> None:
    rewards = torch.tensor([1.0, 3.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([42, -7, 42, 42, -7])  # group 42 = [1, 0, 1], group -7 = [3, 1]
    out = group_advantages(rewards, groups, scale="group", epsilon=0.0)
    s3, s2 = math.sqrt(3), math.sqrt(2)
    expected = [s3 / 3, 1 / s2, -2 * s3 / 3, s3 / 3, -1 / s2]
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64))
    assert out.group_ids.tolist() == [-7, 42]
    assert out.group_index.tolist() == [1, 0, 1, 1, 0]


def test_advantages_are_detached() -> None:
    rewards = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    assert not group_advantages(rewards, torch.tensor([0, 0, 0])).advantages.requires_grad


@pytest.mark.parametrize(
    ("rewards", "groups", "kwargs", "match"),
    [
        (torch.ones(3), torch.zeros(4, dtype=torch.long), {}, "same length"),
        (torch.ones(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), {}, "float"),
        (torch.ones(3), torch.zeros(3), {}, "integer"),
        (torch.tensor([1.0, math.inf]), torch.zeros(2, dtype=torch.long), {}, r"rewards\[1\]"),
        (torch.ones(2), torch.zeros(2, dtype=torch.long), {"scale": "std"}, "choose one of"),
        (torch.ones(2), torch.zeros(2, dtype=torch.long), {"epsilon": -1.0}, "epsilon"),
    ],
)
def test_bad_input_errors(rewards, groups, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, groups, **kwargs)


# ------------------------------------------------------------------------------ properties

reward_values = st.one_of(
    st.sampled_from([0.0, 1.0, NAN]),  # binary accuracy rewards and unscorable ones: many ties
    st.floats(min_value=-10, max_value=10, allow_nan=False, width=32),
)


@st.composite
def reward_batches(draw):
    n = draw(st.integers(min_value=1, max_value=24))
    rewards = draw(st.lists(reward_values, min_size=n, max_size=n))
    groups = draw(st.lists(st.integers(min_value=-3, max_value=5), min_size=n, max_size=n))
    return rewards, groups


@settings(max_examples=150, deadline=None)
@given(batch=reward_batches(), scale=st.sampled_from(["group", "batch", "none"]))
def test_matches_naive_loop(batch, scale) -> None:
    rewards, groups = batch
    out = group_advantages(
        torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups), scale=scale, epsilon=1e-4
    )
    expected = naive_advantages(rewards, groups, scale, 1e-4)
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64))
    assert torch.isfinite(out.advantages).all()


@settings(max_examples=100, deadline=None)
@given(
    batch=reward_batches(),
    scale=st.sampled_from(["group", "batch", "none"]),
    seed=st.integers(0, 999),
)
def test_permutation_equivariance(batch, scale, seed) -> None:
    rewards = torch.tensor(batch[0], dtype=torch.float64)
    groups = torch.tensor(batch[1])
    perm = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(seed))
    plain = group_advantages(rewards, groups, scale=scale).advantages
    permuted = group_advantages(rewards[perm], groups[perm], scale=scale).advantages
    torch.testing.assert_close(permuted, plain[perm])


def test_mean_advantage_of_a_scored_group_is_zero() -> None:
    rewards = torch.randn(40, dtype=torch.float64)
    groups = torch.arange(40) % 5
    out = group_advantages(rewards, groups, scale="group")
    sums = torch.zeros(5, dtype=torch.float64).index_add_(0, groups, out.advantages)
    torch.testing.assert_close(sums, torch.zeros(5, dtype=torch.float64))


# ------------------------------------------------------------------------------ pair weights

SIM = torch.tensor([0.64, 0.81, 0.5, 0.2])
ALIGNED = torch.tensor([False, False, True, False])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", [1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.64, 0.81, 1.0, 0.2]),
        ("sqrt", [0.8, 0.9, 1.0, math.sqrt(0.2)]),
    ],
)
def test_pair_weight_numbers(mode: str, expected: list[float]) -> None:
    torch.testing.assert_close(pair_weights(SIM, ALIGNED, mode), torch.tensor(expected))


@pytest.mark.parametrize("mode", ["none", "linear", "sqrt"])
def test_aligned_pairs_weigh_one_whatever_their_similarity(mode: str) -> None:
    sim = torch.tensor([NAN, 0.3, -5.0])
    aligned = torch.tensor([True, True, True])
    assert pair_weights(sim, aligned, mode).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("bad", [1.2, -0.1, NAN])
@pytest.mark.parametrize("mode", ["linear", "sqrt"])
def test_invalid_similarity_names_the_pair(bad: float, mode: str) -> None:
    sim = torch.tensor([0.7, 0.9, bad, 0.8])
    with pytest.raises(ValueError, match=r"pair 2: similarity"):
        pair_weights(sim, torch.zeros(4, dtype=torch.bool), mode)


def test_none_weighting_does_not_read_similarity() -> None:
    # random-pair ablations may have negative cosine similarities
    sim = torch.tensor([-0.3, NAN])
    assert pair_weights(sim, torch.zeros(2, dtype=torch.bool), "none").tolist() == [1.0, 1.0]


def test_pair_weight_errors() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        pair_weights(SIM, ALIGNED, "softmax")
    with pytest.raises(ValueError, match="bool"):
        pair_weights(SIM, ALIGNED.long(), "sqrt")
    with pytest.raises(ValueError, match="same length"):
        pair_weights(SIM, ALIGNED[:2], "sqrt")


def test_trajectory_weights_and_application() -> None:
    weights = torch.tensor([0.5, 1.0, 0.25])
    pair_index = torch.tensor([2, 2, 0, 1, 0])  # K trajectories per pair, any order
    traj = trajectory_weights(weights, pair_index)
    assert traj.tolist() == [0.25, 0.25, 0.5, 1.0, 0.5]
    adv = torch.tensor([4.0, -4.0, 2.0, -1.0, 0.0])
    assert apply_pair_weights(adv, traj).tolist() == [1.0, -1.0, 1.0, -1.0, 0.0]
    adv_2d = torch.ones(5, 3)
    torch.testing.assert_close(apply_pair_weights(adv_2d, traj), traj[:, None].expand(5, 3))


def test_trajectory_weights_errors() -> None:
    with pytest.raises(ValueError, match=r"trajectory 1: pair_index 3"):
        trajectory_weights(torch.ones(3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer"):
        trajectory_weights(torch.ones(3), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="weights must be"):
        apply_pair_weights(torch.ones(4), torch.ones(3))
