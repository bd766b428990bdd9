"""The `rewards` section: which rewards score each task, their weights and kwargs."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pairuni.configbase import Section


class RewardSpec(Section):
    """One reward: a registered name or `path/to/file.py:function`, a weight and its kwargs."""

    name: str = Field(min_length=1)
    """A built-in or registered reward (`mc_accuracy`, `numeric_accuracy`, `exact_match`,
    `format`, `clip_score`, `hps_v21`, `http`), or a function of your own as
    `path/to/file.py:function` (see docs/rewards.md)."""

    weight: float = 1.0
    """Multiplies this reward in the task's total (a weighted sum; None/NaN values are skipped).
    0 keeps the reward for logging only."""

    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Settings of the reward, e.g. `{checkpoint: path/to/HPS_v2.1_compressed.pt, tokenizer_dir:
    path/to/clip-tokenizer}` for `hps_v21` (docs/rewards.md lists every reward's kwargs)."""

    alias: str | None = None
    """The name in logs and metrics (`rewards/{alias}/mean`); default: `name`, or the function
    name for a `file.py:function` reward. Needed to use one reward twice in a task."""

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("weight must be a finite number")
        return value

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        from pairuni.rewards.base import is_file_spec, registered_rewards

        if is_file_spec(value):
            return value
        registry = registered_rewards()
        if value not in registry:
            raise ValueError(
                f"unknown reward {value!r}; registered rewards: {', '.join(sorted(registry))}, "
                "or give a function of your own as `path/to/file.py:function`"
            )
        return value

    @model_validator(mode="after")
    def _known_kwargs(self) -> RewardSpec:
        from pairuni.rewards.base import bindable_kwargs, get_reward, is_file_spec

        if is_file_spec(self.name):
            return self
        allowed = bindable_kwargs(get_reward(self.name).target)
        unknown = sorted(set(self.kwargs) - allowed) if allowed is not None else []
        if unknown:
            raise ValueError(
                f"reward {self.name!r} has no kwargs {unknown}; it accepts "
                f"{sorted(allowed or []) or 'none'}"
            )
        return self

    @property
    def key(self) -> str:
        """The name used in logs and metrics."""
        if self.alias:
            return self.alias
        from pairuni.rewards.base import is_file_spec

        return self.name.rpartition(":")[2] if is_file_spec(self.name) else self.name


def _default_understanding() -> list[dict[str, Any]]:
    # Plain mappings (validated into RewardSpec because validate_default is on) so that the
    # config docs can print the default as YAML.
    return [{"name": "mc_accuracy", "weight": 1.0, "kwargs": {}}]


def _default_generation() -> list[dict[str, Any]]:
    return [{"name": "hps_v21", "weight": 1.0, "kwargs": {}}]


class RewardsConfig(Section):
    """Rewards per task. The paper's: multiple-choice accuracy for understanding, HPS v2.1 for
    generation. HPS v2.1 needs files you download (see docs/rewards.md): until
    `rewards.generation[0].kwargs.checkpoint` and `tokenizer_dir` are set, building the rewards
    fails with an error that says where to get them."""

    understanding: list[RewardSpec] = Field(default_factory=_default_understanding)  # type: ignore[arg-type]
    """Rewards of understanding answers (text), each `{name, weight, kwargs, alias}`: `name` a
    registered reward (`mc_accuracy`, `numeric_accuracy`, `exact_match`, `format`, `http`) or
    `path/to/file.py:function`; `weight` (default 1) multiplies it in the weighted sum; `kwargs`
    its settings; `alias` its name in metrics. Every reward and its kwargs: docs/rewards.md."""

    generation: list[RewardSpec] = Field(default_factory=_default_generation)  # type: ignore[arg-type]
    """Rewards of generated images, each `{name, weight, kwargs, alias}` as above: `hps_v21` (set
    `kwargs.checkpoint` and `kwargs.tokenizer_dir`), `clip_score` (`kwargs.model_dir`), `http`
    (`kwargs.url`) or `path/to/file.py:function`."""

    on_reward_error: Literal["raise", "nan"] = "raise"
    """When a reward raises: `raise` stops training with an error naming the reward and the batch;
    `nan` logs the reward's name and the exception and gives the whole batch NaN for that reward
    (excluded like None; a sample with no other reward gets no advantage)."""

    timeout_s: float | None = Field(600.0, gt=0)
    """The longest one reward may take on one batch; past it the call counts as a failed reward
    (handled by `on_reward_error`), so a reward that never returns cannot hang the run. `null`:
    wait for ever."""

    max_rewardless_steps: int | None = Field(5, ge=1)
    """Stop the run when a task has had no finite reward on any of its samples for this many
    consecutive steps (a reward server that is down under `on_reward_error: nan`, a reward that
    returns only None): such steps train that task on no signal. `null`: never stop."""

    @model_validator(mode="after")
    def _check_tasks(self) -> RewardsConfig:
        from pairuni.rewards.base import get_reward, is_file_spec

        for task in ("understanding", "generation"):
            specs: list[RewardSpec] = getattr(self, task)
            keys = [s.key for s in specs]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise ValueError(
                    f"rewards.{task} names {twice} more than once; give each an `alias`"
                )
            for spec in specs:
                if is_file_spec(spec.name):
                    continue
                declared = get_reward(spec.name).task
                if declared not in ("any", task):
                    raise ValueError(
                        f"reward {spec.name!r} scores {declared} outputs; move it to "
                        f"rewards.{declared}"
                    )
        return self
