"""The ShapesWorld rewards through the reward registry, on rendered images and spoiled ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pairuni.rewards.base import RewardSet
from pairuni.rewards.config import RewardsConfig
from pairuni.shapes.build import generation_record
from pairuni.shapes.render import render_scene
from pairuni.shapes.scene import Scene


def _sample(index: int) -> tuple[str, Image.Image, dict]:
    record = generation_record(index, seed=5)
    image = Image.fromarray(render_scene(Scene.from_dict(record["scene"]), 32))
    return record["prompt"], image, record["geneval"]


def _reward_set(name: str, **kwargs: object) -> RewardSet:
    config = RewardsConfig(
        understanding=[{"name": "mc_accuracy"}],
        generation=[{"name": name, "kwargs": kwargs}],
    )
    return RewardSet.from_config(config)


def test_rendered_images_score_one_and_blank_images_zero() -> None:
    samples = [_sample(i) for i in range(12)]
    prompts = [s[0] for s in samples]
    metadata = [s[2] for s in samples]
    blank = Image.new("RGB", (32, 32), (128, 128, 128))
    rewards = _reward_set("shapes_geneval")
    total, _, _ = rewards("generation", prompts, [s[1] for s in samples], {"geneval": metadata})
    assert total.tolist() == [1.0] * 12
    total, _, _ = rewards("generation", prompts, [blank] * 12, {"geneval": metadata})
    assert total.tolist() == [0.0] * 12


def test_partial_reward_and_metadata_column_kwarg() -> None:
    prompt, image, metadata = _sample(1)
    rewards = _reward_set("shapes_geneval_partial", metadata_column="gen_geneval")
    total, _, _ = rewards("generation", [prompt], [image], {"gen_geneval": [metadata]})
    assert total.tolist() == [1.0]
    arr = np.asarray(image).copy()
    arr[:] = 128
    total, _, _ = rewards(
        "generation", [prompt], [Image.fromarray(arr)], {"gen_geneval": [metadata]}
    )
    assert 0.0 <= float(total[0]) < 1.0


def test_missing_metadata_column_names_it() -> None:
    prompt, image, _ = _sample(0)
    rewards = _reward_set("shapes_geneval")
    with pytest.raises(Exception, match="geneval"):
        rewards("generation", [prompt], [image], {})
