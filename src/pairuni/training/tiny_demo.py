"""Everything `configs/tiny.yaml` needs, made offline in a second: a tiny random Janus checkpoint
and a small synthetic pair file (coloured-square images, multiple-choice colour questions, a mix
of aligned and retrieved pairs). Its toy rewards live in `pairuni.rewards.toy`.

    pairuni tiny-demo                           # writes runs/tiny-demo/{model,pairs.jsonl}
    pairuni train --config configs/tiny.yaml
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
}


def write_demo_pairs(out_dir: str | Path, num_pairs: int = 16, seed: int = 0) -> Path:
    """Write `pairs.jsonl` and `images/*.png` under `out_dir`; returns the pair file."""
    from PIL import Image

    rng = random.Random(seed)
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    lines = []
    for index in range(num_pairs):
        colour = rng.choice(names)
        image_name = f"images/{index:04d}.png"
        Image.new("RGB", (32, 32), COLOURS[colour]).save(root / image_name)
        options = rng.sample(names, k=4)
        aligned = index % 2 == 0
        record: dict[str, Any] = {
            "pair_id": f"demo-{index:04d}",
            "kind": "aligned" if aligned else "retrieved",
            "gen_prompt": f"a {colour} square",
            "und_image": image_name,
            "und_question": "What colour is the square?",
            "und_options": options,
            "und_answer": "ABCD"[options.index(colour)],
        }
        if not aligned:
            record["similarity"] = round(rng.uniform(0.6, 0.95), 3)
        lines.append(json.dumps(record))
    path = root / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def demo_config(
    model_dir: str | Path, pairs_file: str | Path, out_dir: str | Path, **sections: Any
) -> dict[str, Any]:
    """A small, fast run of the tiny model on a demo pair file, as a config mapping (for tests and
    benchmarks). `sections` update the sections they name (a mapping) or replace a key."""
    raw: dict[str, Any] = {
        "seed": 3,
        "model": {
            "path": str(model_dir),
            "device": "cpu",
            "trainable": ["language_model", "generation_head"],
        },
        "rollout": {"max_new_tokens": 5},
        "data": {"path": str(pairs_file)},
        "algo": {"num_generations_und": 2, "num_generations_gen": 2},
        "rewards": {
            "understanding": [{"name": "toy_letter_fraction"}],
            "generation": [{"name": "toy_redness"}],
        },
        "train": {
            "out_dir": str(out_dir),
            "max_steps": 2,
            "pairs_per_step": 2,
            "micro_batch_size": 4,
            "learning_rate": 1e-2,
            "save_every": 100,
        },
        "logging": {"progress_bar": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


DEFAULT_DIR = Path("runs/tiny-demo")
"""Where `configs/tiny.yaml` expects the model and the pairs."""


def write_tiny_demo(out_dir: str | Path = DEFAULT_DIR, num_pairs: int = 16) -> tuple[Path, Path]:
    """Write `out_dir/model` (a tiny random Janus) and `out_dir/pairs.jsonl`; returns both."""
    from pairuni.policy.tiny import build_tiny_janus

    root = Path(out_dir)
    model = build_tiny_janus(root / "model")
    return model, write_demo_pairs(root, num_pairs)
