"""What a resumed run does with each config key that differs from its checkpoint's.

Every key falls under the longest prefix of `RESUME_RULES`:

- `apply`: the new value takes effect from the first resumed step, also where the checkpoint's
  state carries the old one (the optimiser's hyper-parameters, the scheduler's base rate);
- `warn`: applied, with a warning, because the run then no longer continues the same experiment
  (another data order, group size, reward or sampling distribution);
- `refuse`: the checkpoint cannot continue under it (its weights or optimiser state have another
  shape or dtype); the error names the key, both values and the way out.

A key no rule covers is warned about. The table is printed in docs/training.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Literal

Rule = Literal["apply", "warn", "refuse"]

RESUME_RULES: dict[str, tuple[Rule, str]] = {
    "seed": ("warn", "the data order and every rollout's random draws change"),
    "data": ("warn", "the data order changes (the step's pairs are drawn from another list)"),
    "data.on_bad_record": ("apply", "only how bad records are reported"),
    "data.check_images": ("apply", "only when bad images are found"),
    "train.pairs_per_step": ("warn", "the data order and the group statistics change"),
    "algo": ("warn", "the objective changes mid-run"),
    "algo.num_generations_und": ("warn", "the group size K of the advantages changes"),
    "algo.num_generations_gen": ("warn", "the group size K of the advantages changes"),
    "algo.num_iterations": ("warn", "updates per step change, and with them the schedule"),
    "rewards": ("warn", "the rewards change mid-run"),
    "rollout": ("warn", "the sampling distribution changes mid-run"),
    "rollout.decode_batch_size": ("apply", "memory only"),
    "model.backend": ("refuse", "the checkpoint holds this backend's weights"),
    "model.trainable": ("refuse", "the optimiser state holds one group per trainable module"),
    "model.lora": ("refuse", "the checkpoint's adapters have this rank and these targets"),
    "model.lora.dropout": ("apply", "no shape depends on it"),
    "model.path": ("warn", "the KL reference is the initial model at model.path"),
    "model.dtype": ("warn", "the numerics of the frozen parts change"),
    "model.device": ("apply", "where it runs"),
    "model.gradient_checkpointing": ("apply", "memory only"),
    "train": ("apply", "the schedule, limits and bookkeeping"),
    "train.master_weights": ("refuse", "the weights and optimiser state are in the saved dtype"),
    "train.bf16_update": ("warn", "the rounding of bf16 updates changes"),
    "train.precision": ("warn", "the numerics change"),
    "logging": ("apply", "logging only"),
    "sft": ("warn", "the supervised objective changes mid-run"),
    "eval": ("apply", "evaluation only"),
    "pairing": ("apply", "not read by `pairuni train`"),
}
"""dotted key prefix -> (rule, why). The longest matching prefix decides."""


@dataclasses.dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    rule: Rule
    why: str

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def rule_for(key: str) -> tuple[Rule, str]:
    """The rule of a dotted key: its longest prefix in RESUME_RULES (else warn)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        found = RESUME_RULES.get(".".join(parts[:end]))
        if found is not None:
            return found
    return ("warn", "pairuni has no rule for this key")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[Change]:
    """Every leaf key whose value differs between the checkpoint's config and this run's.
    A key absent from an older checkpoint's config is not a change (it had its default)."""
    old, new = dict(flatten(saved)), dict(flatten(now))
    changes = []
    for key in sorted(new):
        if key in old and old[key] != new[key]:
            changes.append(Change(key, old[key], new[key], *rule_for(key)))
    return changes


def refusal_message(checkpoint: str, refused: list[Change]) -> str:
    items = "; ".join(f"{c} ({c.why})" for c in refused)
    keys = " ".join(f"--set {c.key}={c.old}" for c in refused)
    return (
        f"cannot resume from {checkpoint} with a changed {', '.join(c.key for c in refused)}: "
        f"{items}. Set them back ({keys}), or start a new run from the checkpoint's weights "
        "(model.path=<checkpoint>/model, another train.out_dir, no --resume)"
    )


def rules_table() -> str:
    """RESUME_RULES as a Markdown table (docs/training.md)."""
    rows = ["| key (prefix) | on resume | why |", "|---|---|---|"]
    rows += [f"| `{key}` | {rule} | {why} |" for key, (rule, why) in sorted(RESUME_RULES.items())]
    return "\n".join(rows)
