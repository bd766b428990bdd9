"""The reward registry, user reward files and the weighted combination with its metrics."""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from pairuni.rewards.base import (
    BuiltReward,
    RewardError,
    RewardSet,
    build_reward,
    get_reward,
    load_reward,
    register_reward,
    registered_rewards,
)
from pairuni.rewards.config import RewardsConfig


def constant(value: float | None) -> Any:
    def reward(prompts: list[str], completions: list[Any], **columns: Any) -> list[float | None]:
        return [value] * len(prompts)

    return reward


def from_column(prompts: list[str], completions: list[Any], **columns: Any) -> list[float | None]:
    return list(columns["score"])


def test_builtins_are_registered_with_their_task() -> None:
    registry = registered_rewards()
    expected = {
        "mc_accuracy": "understanding",
        "numeric_accuracy": "understanding",
        "exact_match": "understanding",
        "format": "understanding",
        "clip_score": "generation",
        "hps_v21": "generation",
        "http": "any",
    }
    assert {name: registry[name].task for name in expected} == expected


def test_get_reward_unknown_lists_registered() -> None:
    with pytest.raises(KeyError, match=r"mc_accuracy.*file.py:function"):
        get_reward("mc_acuracy")


def test_register_twice_is_an_error() -> None:
    @register_reward("test_only_twice", task="any")
    def first(prompts: list[str], completions: list[Any], **columns: Any) -> list[float]:
        return [0.0] * len(prompts)

    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_only_twice", task="any")(constant(1.0))


def test_build_reward_binds_kwargs_and_rejects_unknown() -> None:
    fn = build_reward("numeric_accuracy", {"abs_tol": 0.5})
    assert fn(["q"], ["<answer>10.4</answer>"], und_answer=["10"]) == [1.0]
    with pytest.raises(RewardError, match=r"unknown kwargs \['tolerance'\].*abs_tol"):
        build_reward("numeric_accuracy", {"tolerance": 0.5})


def test_load_reward_from_user_file(tmp_path: Path) -> None:
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "def length(prompts, completions, **columns):\n"
        "    return [float(len(c)) for c in completions]\n"
        "def scaled(prompts, completions, factor=1.0, **columns):\n"
        "    return [factor * len(c) for c in completions]\n"
        "def bad(prompts):\n"
        "    return []\n"
        "VALUE = 3\n"
    )
    fn = load_reward(f"{path}:length")
    assert fn(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
    scaled = build_reward(f"{path}:scaled", {"factor": 3.0})
    assert scaled(["p"], ["ab"]) == [6.0]
    with pytest.raises(RewardError, match=r"unknown kwargs \['factr'\]; it accepts \['factor'\]"):
        build_reward(f"{path}:scaled", {"factr": 3.0})
    with pytest.raises(RewardError, match=r"has no 'missing'.*length"):
        load_reward(f"{path}:missing")
    with pytest.raises(RewardError, match=r"signature \(prompts\).*\*\*columns"):
        load_reward(f"{path}:bad")
    with pytest.raises(RewardError, match="is a int, not a callable"):
        load_reward(f"{path}:VALUE")
    with pytest.raises(RewardError, match="does not exist"):
        load_reward(f"{tmp_path / 'nope.py'}:length")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(RewardError, match=r"importing .*broken.py failed"):
        load_reward(f"{broken}:f")


def naive_total(values: list[list[float | None]], weights: list[float]) -> list[float]:
    """Per sample: sum of weight * value over rewards that gave a number; NaN if none did."""
    totals = []
    for sample in zip(*values, strict=True):
        present = [
            w * v
            for w, v in zip(weights, sample, strict=True)
            if v is not None and not math.isnan(v)
        ]
        totals.append(sum(present) if present else math.nan)
    return totals


def test_weighted_sum_skips_none_and_nan_like_trl() -> None:
    a = [1.0, None, 0.5, None]
    b = [2.0, 3.0, math.nan, None]
    rewards = RewardSet(
        {
            "understanding": [
                BuiltReward("a", 0.5, constant(None)),
                BuiltReward("b", 2.0, constant(None)),
            ]
        }
    )
    rewards.rewards["understanding"][0].fn = lambda p, c, **k: a
    rewards.rewards["understanding"][1].fn = lambda p, c, **k: b
    total, per_reward, metrics = rewards("understanding", ["p"] * 4, ["c"] * 4, {})
    expected = naive_total([a, b], [0.5, 2.0])
    assert total.shape == (4,)
    assert total[:3].tolist() == pytest.approx(expected[:3])  # 4.5, 6.0, 0.25
    assert math.isnan(total[3].item())
    assert per_reward["a"][0].item() == 1.0 and math.isnan(per_reward["a"][1].item())
    assert metrics["rewards/a/mean"] == pytest.approx(statistics.mean([1.0, 0.5]))
    assert metrics["rewards/a/std"] == pytest.approx(statistics.pstdev([1.0, 0.5]))
    assert metrics["rewards/a/none"] == 2.0
    assert metrics["rewards/b/none"] == 2.0
    assert metrics["rewards/b/mean"] == pytest.approx(2.5)
    assert metrics["reward/understanding/mean"] == pytest.approx(statistics.mean(expected[:3]))


def test_random_batches_match_naive_combination() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        n, k = 6, 3
        table = torch.rand(k, n, generator=generator)
        holes = torch.rand(k, n, generator=generator) < 0.3
        values = [[None if holes[i, j] else table[i, j].item() for j in range(n)] for i in range(k)]
        weights = (torch.rand(k, generator=generator) * 4 - 2).tolist()
        built = [BuiltReward(f"r{i}", weights[i], constant(None)) for i in range(k)]
        for i, reward in enumerate(built):
            reward.fn = lambda p, c, _v=values[i], **kw: _v
        total, _, _ = RewardSet({"generation": built})("generation", ["p"] * n, ["c"] * n)
        expected = torch.tensor(naive_total(values, weights), dtype=torch.float32)
        assert torch.allclose(total, expected, equal_nan=True, atol=1e-6)


def test_columns_reach_rewards_and_must_be_aligned() -> None:
    rewards = RewardSet({"understanding": [BuiltReward("s", 1.0, from_column)]})
    total, _, _ = rewards("understanding", ["p", "q"], ["c", "d"], {"score": [0.25, 0.75]})
    assert total.tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="column 'score' has 1 values for 2 prompts"):
        rewards("understanding", ["p", "q"], ["c", "d"], {"score": [0.25]})


def failing(prompts: list[str], completions: list[Any], **columns: Any) -> list[float]:
    raise RuntimeError("model exploded")


def test_raise_policy_names_reward_and_batch() -> None:
    rewards = RewardSet({"generation": [BuiltReward("boom", 1.0, failing)]})
    with pytest.raises(
        RewardError, match=r"'boom' failed on a generation batch of 2.*'a red cube'"
    ):
        rewards("generation", ["a red cube", "x"], ["i", "j"])


def test_nan_policy_logs_and_continues(caplog: pytest.LogCaptureFixture) -> None:
    rewards = RewardSet(
        {"generation": [BuiltReward("boom", 1.0, failing), BuiltReward("one", 1.0, constant(1.0))]},
        on_reward_error="nan",
    )
    with caplog.at_level(logging.WARNING):
        total, per_reward, metrics = rewards("generation", ["p", "q"], ["i", "j"])
    assert "'boom'" in caplog.text and "model exploded" in caplog.text
    assert torch.isnan(per_reward["boom"]).all()
    assert total.tolist() == [1.0, 1.0]
    assert metrics["rewards/boom/errors"] == 1.0 and metrics["rewards/one/errors"] == 0.0


def test_nan_values_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    rewards = RewardSet({"understanding": [BuiltReward("shaky", 1.0, constant(math.nan))]})
    with caplog.at_level(logging.WARNING):
        total, _, _ = rewards("understanding", ["p"], ["c"])
    assert "'shaky' returned NaN for 1 of 1" in caplog.text
    assert math.isnan(total.item())


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([1.0], "returned 1 values for a batch of 2"),
        ("ab", "returned a str"),
        ([1.0, "high"], "returned 'high' at index 1"),
    ],
)
def test_bad_return_values_are_errors_naming_the_reward(returned: Any, message: str) -> None:
    rewards = RewardSet({"understanding": [BuiltReward("odd", 1.0, lambda p, c, **k: returned)]})
    with pytest.raises(RewardError, match=message):
        rewards("understanding", ["p", "q"], ["c", "d"])


def test_async_rewards_are_awaited() -> None:
    async def later(prompts: list[str], completions: list[Any], **columns: Any) -> list[float]:
        return [0.5] * len(prompts)

    total, _, _ = RewardSet({"understanding": [BuiltReward("later", 2.0, later)]})(
        "understanding", ["p"], ["c"]
    )
    assert total.tolist() == [1.0]


def test_reward_set_from_config_and_user_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(
        "def brevity(prompts, completions, **columns):\n"
        "    return [1.0 / len(c) for c in completions]\n"
    )
    config = RewardsConfig(
        understanding=[
            {"name": "mc_accuracy", "weight": 2.0},
            {"name": "format", "weight": 0.5},
            {"name": f"{path}:brevity", "weight": 1.0},
        ],
        generation=[],
    )
    rewards = RewardSet.from_config(config)
    completion = "<think>t</think><answer>B</answer>"
    total, per_reward, metrics = rewards(
        "understanding", ["q"], [completion], {"und_options": [["x", "y"]], "und_answer": ["B"]}
    )
    assert set(per_reward) == {"mc_accuracy", "format", "brevity"}
    assert total.item() == pytest.approx(2.0 * 1.0 + 0.5 * 1.0 + 1.0 / len(completion))
    assert "rewards/brevity/mean" in metrics


def test_default_generation_reward_explains_where_to_get_hps() -> None:
    with pytest.raises(RewardError, match=r"rewards.generation\[0\].*checkpoint.*xswu/HPSv2"):
        RewardSet.from_config(RewardsConfig())


def test_toy_rewards_of_the_tiny_config_are_registered() -> None:
    # configs/tiny.yaml names them; they must resolve without any file path
    from pairuni.rewards import toy

    assert registered_rewards()["toy_redness"].target is toy.redness
    assert registered_rewards()["toy_letter_fraction"].task == "understanding"
    assert toy.letter_fraction([""], ["ab12"]) == [0.5]
