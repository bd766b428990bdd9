"""The `rewards` config section: defaults, name / kwargs / task validation, errors with fixes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pairuni.config import ConfigError, load_config
from pairuni.rewards.config import RewardsConfig, RewardSpec


def test_defaults_are_the_papers() -> None:
    config = RewardsConfig()
    assert [(s.name, s.weight, s.kwargs) for s in config.understanding] == [
        ("mc_accuracy", 1.0, {})
    ]
    assert [s.name for s in config.generation] == ["hps_v21"]
    assert config.on_reward_error == "raise"
    assert isinstance(load_config().rewards, RewardsConfig)


def test_unknown_name_lists_registered_rewards() -> None:
    with pytest.raises(
        ConfigError,
        match=r"rewards.understanding.0.name: unknown reward 'mc_acc'.*"
        r"exact_match.*mc_accuracy.*file.py:function",
    ):
        load_config(None, ["rewards.understanding=[{name: mc_acc}]"])


def test_user_file_spec_is_accepted_and_keyed_by_function() -> None:
    spec = RewardSpec(name="my/rewards.py:brevity", weight=0.5)
    assert spec.key == "brevity"
    assert RewardSpec(name="format", alias="fmt").key == "fmt"
    assert RewardSpec(name="format").key == "format"


def test_unknown_kwargs_are_named_with_the_accepted_ones() -> None:
    with pytest.raises(
        ValidationError, match=r"'numeric_accuracy' has no kwargs \['tol'\].*abs_tol"
    ):
        RewardSpec(name="numeric_accuracy", kwargs={"tol": 0.1})
    assert RewardSpec(name="hps_v21", kwargs={"checkpoint": "x.pt", "batch_size": 4}).kwargs


def test_reward_in_the_wrong_task_says_where_it_goes() -> None:
    with pytest.raises(
        ValidationError, match=r"'hps_v21' scores generation outputs; move it to rewards.generation"
    ):
        RewardsConfig(understanding=[{"name": "hps_v21"}])
    RewardsConfig(understanding=[{"name": "http", "kwargs": {"url": "http://x"}}])  # any task


def test_same_reward_twice_needs_an_alias() -> None:
    with pytest.raises(ValidationError, match="more than once; give each an `alias`"):
        RewardsConfig(understanding=[{"name": "format"}, {"name": "format", "weight": 2}])
    RewardsConfig(understanding=[{"name": "format"}, {"name": "format", "alias": "format2"}])


def test_weight_must_be_finite_and_policy_a_choice() -> None:
    with pytest.raises(ValidationError, match="finite"):
        RewardSpec(name="format", weight=float("inf"))
    with pytest.raises(ConfigError, match="on_reward_error"):
        load_config(None, ["rewards.on_reward_error=skip"])
    config = load_config(None, ["rewards.on_reward_error=nan", "rewards.generation=[]"])
    assert config.rewards.on_reward_error == "nan" and config.rewards.generation == []
