"""Write a ShapesWorld dataset: understanding and generation JSONL files with PNG images.

    out_dir/understanding.jsonl   {"id", "image", "question", "options", "answer", "category",
                                   "source", "scene"}
    out_dir/generation.jsonl      {"id", "prompt", "image", "category", "source", "scene",
                                   "geneval"}
    out_dir/images/und_000000.png, gen_000000.png, ...   (paths in the JSONL are relative)

Every record has its own generator seeded by (seed, kind, index), so a dataset is the same for a
seed whatever else is built, and the first N records do not depend on how many are written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pairuni.shapes.prompts import GENEVAL_TAGS, sample_generation
from pairuni.shapes.questions import UND_CATEGORIES, qa_for_scene
from pairuni.shapes.render import render_scene
from pairuni.shapes.scene import MAX_OBJECTS, Scene, sample_scene

SOURCE = "shapesworld"
_UND, _GEN = 0, 1
_SCENE_TRIES = 100


def understanding_record(index: int, seed: int, max_objects: int = MAX_OBJECTS) -> dict[str, Any]:
    """Record `index` (its image not yet written). Categories take turns so each gets a fifth of
    the records; a scene that cannot support its turn's category (say, no two objects in a clear
    relation) is redrawn, up to `_SCENE_TRIES` times, before another category is used."""
    rng = np.random.default_rng([seed, _UND, index])
    category = UND_CATEGORIES[index % len(UND_CATEGORIES)]
    for _ in range(_SCENE_TRIES):
        scene = sample_scene(rng, 1, max_objects)
        try:
            question, options, answer, category = qa_for_scene(scene, rng, category)
            break
        except ValueError:
            continue
    else:
        question, options, answer, category = qa_for_scene(scene, rng)
    return {
        "id": f"shapes-und-{seed}-{index:06d}",
        "image": f"images/und_{index:06d}.png",
        "question": question,
        "options": options,
        "answer": answer,
        "category": category,
        "source": SOURCE,
        "scene": scene.to_dict(),
    }


def generation_record(index: int, seed: int) -> dict[str, Any]:
    """Record `index`: GenEval tags cycle; the image is a rendering of a scene that fits."""
    rng = np.random.default_rng([seed, _GEN, index])
    tag = GENEVAL_TAGS[index % len(GENEVAL_TAGS)]
    prompt, metadata, scene = sample_generation(rng, tag)
    return {
        "id": f"shapes-gen-{seed}-{index:06d}",
        "prompt": prompt,
        "image": f"images/gen_{index:06d}.png",
        "category": tag,
        "source": SOURCE,
        "scene": scene.to_dict(),
        "geneval": metadata,
    }


def _write_split(
    path: Path, records: Iterator[dict[str, Any]], total: int, image_size: int, desc: str
) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for record in tqdm(records, total=total, desc=desc, unit="sample"):
            image = render_scene(Scene.from_dict(record["scene"]), image_size)
            Image.fromarray(image).save(path.parent / record["image"])
            f.write(json.dumps(record) + "\n")
    return path


def write_dataset(
    out_dir: str | Path,
    n_und: int,
    n_gen: int,
    seed: int = 0,
    image_size: int = 32,
    max_objects: int = MAX_OBJECTS,
) -> tuple[Path, Path]:
    """Write `n_und` understanding and `n_gen` generation samples under `out_dir`.

    Returns the paths of understanding.jsonl and generation.jsonl. Overwrites earlier files of
    the same names.
    """
    if n_und < 0 or n_gen < 0:
        raise ValueError(f"sample counts must be >= 0, got n_und={n_und}, n_gen={n_gen}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    und = (understanding_record(i, seed, max_objects) for i in range(n_und))
    gen = (generation_record(i, seed) for i in range(n_gen))
    und_path = _write_split(out / "understanding.jsonl", und, n_und, image_size, "understanding")
    gen_path = _write_split(out / "generation.jsonl", gen, n_gen, image_size, "generation")
    return und_path, gen_path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a bad line raises ValueError naming the file and line."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{number}: not valid JSON ({err.msg}); fix or remove the line"
                ) from None
    return records


def sample_grid(seed: int = 0, columns: int = 3, rows: int = 2, scale: int = 3) -> Image.Image:
    """A picture of generation samples (one per GenEval tag) with their prompts, for the docs."""
    cell_w, image_px, text_h = 210, 64 * scale, 34
    grid = Image.new("RGB", (columns * cell_w, rows * (image_px + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for k in range(columns * rows):
        record = generation_record(k, seed)
        image = Image.fromarray(render_scene(Scene.from_dict(record["scene"]), 64))
        x, y = (k % columns) * cell_w, (k // columns) * (image_px + text_h)
        grid.paste(
            image.resize((image_px, image_px), Image.NEAREST), (x + (cell_w - image_px) // 2, y)
        )
        words = record["prompt"].removeprefix("a photo of ")
        draw.text((x + 4, y + image_px + 2), f"[{record['category']}]", fill="gray")
        draw.text((x + 4, y + image_px + 16), words, fill="black")
    return grid
