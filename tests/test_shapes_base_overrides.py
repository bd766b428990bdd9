"""Settings of the ShapesWorld base model from the command line: `pairuni shapes pretrain
--set KEY=VALUE` and `--base-set` on the demo, the ablation and the sweep."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.config import ConfigError
from pairuni.shapes.demo import DemoSettings
from pairuni.shapes.pretrain import PretrainConfig
from pairuni.shapes.pretrain_dimoo import DimooPretrainConfig


def test_overrides_apply_on_top_of_the_defaults_or_the_quick_settings() -> None:
    config = PretrainConfig.from_overrides(["sft_steps=4000", "think=option"])
    assert (config.sft_steps, config.think) == (4000, "option")
    assert config.vision_layers == PretrainConfig().vision_layers
    quick = PretrainConfig.from_overrides(["vision_layers=3"], quick=True, seed=5)
    assert quick == PretrainConfig.quick(vision_layers=3, seed=5)
    assert DimooPretrainConfig.from_overrides(["text_steps=4"]).text_steps == 4
    assert PretrainConfig.from_overrides([]) == PretrainConfig()


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("sft_stepz=3", "did you mean 'sft_steps'"),
        ("sft_steps=many", "valid integer"),
        ("pretrain.sft_steps=3", "no sections"),
        ("image_size=48", "latent_side"),  # the model validator runs too
    ],
)
def test_a_bad_override_names_the_key_and_the_fix(item: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        PretrainConfig.from_overrides([item])


def test_base_overrides_change_the_base_model_and_the_recipe_only_when_given() -> None:
    default = DemoSettings.quick_run()
    changed = replace(default, base_overrides=("sft_steps=3",))
    assert changed.pretrain_config().sft_steps == 3
    assert changed.pretrain_config().settings_hash() != default.pretrain_config().settings_hash()
    assert "base_overrides" not in default.recipe()  # folders written before stay comparable
    assert changed.recipe()["base_overrides"] == ["sft_steps=3"]


@pytest.mark.parametrize(
    "command",
    [
        ["shapes", "pretrain", "--quick", "--set", "sft_stepz=3"],
        ["shapes", "ablate", "--quick", "--base-set", "sft_stepz=3"],
        ["shapes", "sweep", "--quick", "--base-set", "sft_stepz=3"],
        ["demo", "--quick", "--base-set", "sft_stepz=3"],
    ],
)
def test_commands_refuse_a_bad_base_setting_before_running(
    command: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*command, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "sft_stepz" in result.output and "did you mean 'sft_steps'" in result.output
    assert not out.exists()


def test_pretrain_cli_builds_with_the_given_settings(tmp_path: Path) -> None:
    import json

    out = tmp_path / "base"
    args = ["shapes", "pretrain", "--quick", "--out", str(out), "--set", "sft_steps=3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "pretrain.json").read_text())
    assert report["settings"]["sft_steps"] == 3
    assert report["settings_hash"] == PretrainConfig.quick(sft_steps=3).settings_hash()


def test_the_dimoo_backend_builds_its_own_base_model_and_fits_the_training_config() -> None:
    from pairuni.shapes.demo import demo_training_config

    settings = replace(DemoSettings.quick_run(), backend="dimoo", base_overrides=("text_steps=4",))
    base = settings.pretrain_config()
    assert isinstance(base, DimooPretrainConfig) and base.text_steps == 4
    cfg = demo_training_config(settings.training_overrides())
    assert cfg.model.backend == "dimoo" and cfg.model.trainable == ["language_model"]
    assert cfg.rollout.dimoo.text_steps == 4 and cfg.rollout.dimoo.image_size == base.image_size
    assert cfg.rollout.max_new_tokens == base.answer_length
    assert settings.recipe()["backend"] == "dimoo"
    assert DemoSettings().training_overrides() == [] and "backend" not in DemoSettings().recipe()
    with pytest.raises(ValueError, match="use janus or dimoo"):
        DemoSettings(backend="bagel")


def test_commands_refuse_an_unknown_backend(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--quick", "--backend", "bagel", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "use janus or dimoo" in result.output
    assert not (tmp_path / "o").exists()


def test_the_demo_report_names_the_architecture_and_uses_only_its_own_spread() -> None:
    from pairuni.shapes.report import _html

    results = {"pairs": {"aligned": 3, "retrieved": 4}, "steps": 2, "seconds": {"train": 1.0}}
    rows = [("MC accuracy (greedy)", 0.30, 0.35)]
    janus = _html(rows, results, "")
    dimoo = _html(rows, {**results, "backend": "dimoo"}, "")
    assert "A tiny Janus (autoregressive)" in janus
    assert "A tiny Lumina-DiMOO (masked discrete diffusion)" in dimoo
    assert "One run of one seed" in janus and "2 std" in janus  # the packaged Janus spread
    assert "One run of one seed" not in dimoo and "2 std" not in dimoo
    assert "has been measured for" in dimoo
