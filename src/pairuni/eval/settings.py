"""The settings that determine what a run generates (run.json), checked when a run resumes.

They are the run's model and batch settings plus every key of `eval.rollout`, so a new sampling
field of `RolloutConfig` is recorded and checked without any edit here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pairuni.eval.config import EvalConfig
from pairuni.eval.errors import EvalSetupError

RUN_KEYS = {
    "model": "--model / model.path",
    "dtype": "model.dtype",
    "seed": "eval.seed",
    "und_batch_size": "eval.und_batch_size",
    "gen_batch_size": "eval.gen_batch_size",
    "greedy_understanding": "eval.greedy_understanding",
    "protocol": "eval.protocol",
    "answer_format": "eval.answer_format",
    "rl_prompt_template": "eval.rl_prompt_template",
    "geneval_images_per_prompt": "eval.geneval_images_per_prompt",
    "wise_set": "eval.wise_set",
    "limit": "eval.limit / --limit",
}


def generation_keys() -> dict[str, str]:
    """Setting name in run.json -> the option or config key that sets it."""
    from pairuni.policy.config import RolloutConfig

    rollout = {f"rollout.{k}": f"eval.rollout.{k}" for k in RolloutConfig.model_fields}
    return {**RUN_KEYS, **rollout}


GENERATION_KEYS = generation_keys()
"""Settings that change what the model writes: a run may only resume with the same values."""


def source_commit() -> str | None:
    """The git commit of the pairuni source tree (`+dirty` with uncommitted changes to tracked
    files), or None when pairuni is not run from a git checkout."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if status else head


def generation_settings(cfg: EvalConfig, model_path: str | None, dtype: str) -> dict[str, Any]:
    """The settings that determine the generated outputs (checked on resume)."""
    from pairuni.eval.generation import rollout_config_for

    run = {key: getattr(cfg, key) for key in RUN_KEYS if key not in ("model", "dtype")}
    rollout = rollout_config_for(cfg).model_dump(mode="json")
    return {
        "model": str(Path(model_path).expanduser().resolve()) if model_path else None,
        "dtype": dtype,
        **run,
        **{f"rollout.{k}": v for k, v in rollout.items()},
    }


def check_same_settings(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Refuse to add outputs made with other settings to a run (the files would mix them)."""
    differ = [k for k in GENERATION_KEYS if saved.get(k) != current.get(k)]
    if differ:
        lines = [
            f"  {GENERATION_KEYS[k]}: {saved.get(k)!r} in the run, {current.get(k)!r} now"
            for k in differ
        ]
        raise EvalSetupError(
            f"{path} was made with other settings, so its cached outputs would not match:\n"
            + "\n".join(lines)
            + "\npass the run's settings again, choose a new --out, or use --rescore to score the "
            "cached outputs without generating"
        )
