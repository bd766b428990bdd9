"""The `model` and `rollout` sections: defaults, validation messages, and the root config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pairuni.config import ConfigError, load_config
from pairuni.policy.config import ModelConfig, RolloutConfig


def test_defaults_are_the_papers() -> None:
    cfg = RolloutConfig()
    assert (cfg.cfg_scale, cfg.image_temperature, cfg.text_temperature) == (5.0, 1.0, 1.0)
    assert cfg.cfg_in_logprob is True and cfg.top_p == 1.0
    assert "<think>" in cfg.und_prompt_template and "<answer>" in cfg.und_prompt_template
    assert ModelConfig().trainable == ["language_model"]


def test_device_and_dtype_errors_list_the_valid_values() -> None:
    with pytest.raises(ValidationError, match="valid devices: auto, cpu"):
        ModelConfig(device="gpu:0")
    with pytest.raises(ValidationError, match="'float32'"):
        ModelConfig(dtype="float8")  # type: ignore[arg-type]
    for device in ("auto", "cpu", "cuda", "cuda:3", "mps"):
        assert ModelConfig(device=device).device == device


def test_template_needs_the_question_and_trainable_something() -> None:
    with pytest.raises(ValidationError, match=r"no `\{question\}` placeholder"):
        RolloutConfig(und_prompt_template="Answer it.")
    with pytest.raises(ValidationError, match="nothing would train"):
        ModelConfig(trainable=[])
    assert ModelConfig(trainable=["aligner", "aligner"]).trainable == ["aligner"]


def test_sections_load_from_the_root_config() -> None:
    cfg = load_config(None, ["model.dtype=bf16", "rollout.cfg_scale=3", "model.device=cpu"])
    assert (cfg.model.dtype, cfg.rollout.cfg_scale, cfg.model.device) == ("bf16", 3.0, "cpu")
    with pytest.raises(ConfigError, match=r"rollout\.cfg_scale"):
        load_config(None, ["rollout.cfg_scale=0.5"])
