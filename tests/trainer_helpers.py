"""Shared scaffolding of the multi-process trainer tests: a tiny Janus with the tiny demo pairs,
and a small `pairuni train` config over them (the toy rewards of `pairuni.rewards.toy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import pairuni.training.tiny_demo as demo


def make_assets(root: Path) -> dict[str, Path]:
    """A tiny random Janus and 8 demo pairs under `root`."""
    from pairuni.policy.tiny import build_tiny_janus

    model = build_tiny_janus(root / "model")
    return {"model": model, "pairs": demo.write_demo_pairs(root, num_pairs=8)}


def write_tiny_config(
    assets: dict[str, Path],
    out: Path,
    *,
    seed: int,
    max_new_tokens: int,
    model: dict[str, Any] | None = None,
    **train: Any,
) -> Path:
    """Write `<out>.yaml`: 2 pairs a step, 2 samples per task, micro-batches of 3; `train`
    adds or replaces keys of the `train` section, `model` of the `model` section."""
    raw = {
        "seed": seed,
        "model": {
            "path": str(assets["model"]),
            "device": "cpu",
            "trainable": ["language_model", "generation_head"],
            **(model or {}),
        },
        "rollout": {"max_new_tokens": max_new_tokens},
        "data": {"path": str(assets["pairs"])},
        "algo": {"num_generations_und": 2, "num_generations_gen": 2},
        "rewards": {
            "understanding": [{"name": "toy_letter_fraction"}],
            "generation": [{"name": "toy_redness"}],
        },
        "train": {
            "out_dir": str(out),
            "pairs_per_step": 2,
            "micro_batch_size": 3,
            "learning_rate": 1e-2,
            # see test_trainer_loop: keeps float noise from becoming a step
            "adam_epsilon": 1.0,
            "rollout_pairs_per_call": 1,  # samples independent of the number of processes
            **train,
        },
        "logging": {"progress_bar": False},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
