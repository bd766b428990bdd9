"""Fixtures shared by the JanusPolicy tests: the tiny checkpoint and a policy loaded from it.

A test module that defines its own `tiny_dir` or `policy` fixture keeps using its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from janus_helpers import load
from pairuni.policy.janus import JanusPolicy
from pairuni.policy.tiny import build_tiny_janus


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    return build_tiny_janus(tmp_path_factory.mktemp("tiny") / "janus")


@pytest.fixture(scope="module")
def policy(tiny_dir: Path) -> JanusPolicy:
    return load(tiny_dir)
