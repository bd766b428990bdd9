"""Checkpoints: `out_dir/checkpoint-{step}/` holding everything an exact resume needs.

    checkpoint-{step}/
        model/                 the policy in Hugging Face format (safetensors; `from_pretrained`)
        optimizer.pt           AdamW state
        scheduler.pt           learning-rate schedule state
        rng_state_{rank}.pt    torch / numpy / python RNG states of each process
        trainer_state.json     step, data position, config

A checkpoint is written into `.tmp-checkpoint-{step}/` and renamed when complete, so a process
killed while saving never leaves a directory that `latest_checkpoint` would pick. Which run and
branch a checkpoint belongs to, and which ones rotation may delete: `runs.py`.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / f"checkpoint-{step}"


def temp_dir(out_dir: Path, step: int) -> Path:
    return out_dir / f".tmp-checkpoint-{step}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `out_dir`, oldest first."""
    if not out_dir.is_dir():
        return []
    found = []
    for child in out_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


def read_state(checkpoint: Path) -> dict[str, Any]:
    file = checkpoint / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{checkpoint} is not a complete checkpoint (no {STATE_FILE}); pass a "
            "`checkpoint-{step}` directory written by `pairuni train`"
        )
    return json.loads(file.read_text(encoding="utf-8"))
