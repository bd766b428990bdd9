"""The PairGRPO algorithm core: pure tensor functions (advantages, pair weights, surrogate, KL,
aggregation) and the two-task objective. See docs/algorithm.md.

The names below are imported lazily (PEP 562) because `pairuni.config` imports
`pairuni.rl.config`, which runs this file: an eager `import torch` here would make
`pairuni --help` take seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "ADVANTAGE_SCALES": "advantages",
    "PAIR_WEIGHTINGS": "advantages",
    "GroupAdvantages": "advantages",
    "apply_pair_weights": "advantages",
    "group_advantages": "advantages",
    "pair_weights": "advantages",
    "trajectory_weights": "advantages",
    "KL_ESTIMATORS": "losses",
    "LOSS_AGGREGATIONS": "losses",
    "SurrogateOutput": "losses",
    "aggregate_loss": "losses",
    "clipped_surrogate": "losses",
    "importance_log_ratio": "losses",
    "kl_penalty": "losses",
    "ObjectiveOutput": "objective",
    "TaskAdvantages": "objective",
    "TaskBatch": "objective",
    "pairgrpo_loss": "objective",
    "task_advantages": "objective",
    "task_loss": "objective",
}

__all__ = [
    "ADVANTAGE_SCALES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "PAIR_WEIGHTINGS",
    "GroupAdvantages",
    "ObjectiveOutput",
    "SurrogateOutput",
    "TaskAdvantages",
    "TaskBatch",
    "aggregate_loss",
    "apply_pair_weights",
    "clipped_surrogate",
    "group_advantages",
    "importance_log_ratio",
    "kl_penalty",
    "pair_weights",
    "pairgrpo_loss",
    "task_advantages",
    "task_loss",
    "trajectory_weights",
]

if TYPE_CHECKING:
    from pairuni.rl.advantages import (
        ADVANTAGE_SCALES,
        PAIR_WEIGHTINGS,
        GroupAdvantages,
        apply_pair_weights,
        group_advantages,
        pair_weights,
        trajectory_weights,
    )
    from pairuni.rl.losses import (
        KL_ESTIMATORS,
        LOSS_AGGREGATIONS,
        SurrogateOutput,
        aggregate_loss,
        clipped_surrogate,
        importance_log_ratio,
        kl_penalty,
    )
    from pairuni.rl.objective import (
        ObjectiveOutput,
        TaskAdvantages,
        TaskBatch,
        pairgrpo_loss,
        task_advantages,
        task_loss,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pairuni.rl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pairuni.rl.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
