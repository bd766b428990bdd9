"""Shared by the JanusPolicy test files: the tiny checkpoint, a loader and mixed-size inputs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.janus import JanusPolicy

TOL = 1e-5
QUESTIONS = ["what colour is it?", "how many shapes are there in the picture, and where?"]
PROMPTS = ["a red square", "two blue circles on a green field under a cloudy sky"]


def load(path: Path, **rollout: object) -> JanusPolicy:
    # no system prompt keeps the prompts short (fast tests); one test checks the default one
    cfg = RolloutConfig(**{"max_new_tokens": 10, "system_prompt": "", **rollout})
    return JanusPolicy.load(path, ModelConfig(device="cpu"), cfg)


def images() -> list[Image.Image]:
    # two sizes, neither the model's 32 px: the processor must resize them
    return [Image.new("RGB", (37, 23), (200, 30, 30)), Image.new("RGB", (50, 90), (10, 10, 220))]
