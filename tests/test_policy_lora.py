"""LoRA through peft on the tiny Janus: only adapters (and modules trained in full) change,
checkpoints hold adapters and resume exactly, the merged model samples like the adapter model,
the adapter-disabled reference is the frozen initial model, and the commands load both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import pairuni.training.tiny_demo as demo
from pairuni.cli import app
from pairuni.config import ConfigError, PairUniConfig, load_config
from pairuni.policy.config import ModelConfig
from pairuni.policy.janus import CheckpointError, JanusPolicy
from pairuni.policy.lora import LoraError
from pairuni.training.trainer import PairGRPOTrainer
from trainer_helpers import make_assets

LORA = {"rank": 4, "alpha": 8.0}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    return make_assets(tmp_path_factory.mktemp("lora"))


def lora_config(assets: dict[str, Path], out: Path, **sections: Any) -> PairUniConfig:
    model = {"lora": LORA, "trainable": ["language_model", "generation_head"]}
    raw = demo.demo_config(
        assets["model"],
        assets["pairs"],
        out,
        model={**model, **sections.pop("model", {})},
        train={"max_steps": 2, "save_every": 1, "learning_rate": 5e-2, **sections.pop("train", {})},
        **sections,
    )
    return PairUniConfig.model_validate(raw)


@pytest.fixture(scope="module")
def trained(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two LoRA steps (adapters on the language model, the generation head in full)."""
    out = tmp_path_factory.mktemp("run")
    trainer = PairGRPOTrainer(lora_config(assets, out))
    before = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters()}
    trainer.train()
    return {"trainer": trainer, "before": before, "out": out}


def test_only_adapters_and_the_fully_trained_module_change(trained: dict[str, Any]) -> None:
    trainer = trained["trainer"]
    groups = trainer.policy.parameter_groups()
    assert set(groups) == {"lora", "generation_head"}
    trainable = {id(p) for params in groups.values() for p in params}
    moved = set()
    for name, param in trainer.policy.model.named_parameters():
        changed = not torch.equal(trained["before"][name], param)
        if id(param) in trainable:
            assert "lora_" in name or ".modules_to_save." in name, name
        else:
            assert not changed, f"frozen parameter {name} changed"
        if changed:
            moved.add(name)
    assert any("lora_B" in n for n in moved)  # B starts at 0: its change is the training
    assert any(".modules_to_save." in n for n in moved)


def test_checkpoint_holds_adapters_only(trained: dict[str, Any]) -> None:
    saved = trained["out"] / "checkpoint-2" / "model"
    assert not (saved / "model.safetensors").exists()
    config = json.loads((saved / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    weights = load_file(saved / "adapter_model.safetensors")
    assert all("lora_" in k or "generation_head" in k for k in weights)
    assert (saved / "tokenizer.json").is_file()  # the folder loads on its own


def test_resume_from_an_adapter_checkpoint_is_bitwise(
    assets: dict[str, Path], trained: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(trained["out"] / "checkpoint-1", tmp_path / "checkpoint-1")
    resumed = PairGRPOTrainer(lora_config(assets, tmp_path), resume=True)
    assert resumed.step == 1
    resumed.train()
    want = load_file(trained["out"] / "checkpoint-2" / "model" / "adapter_model.safetensors")
    got = load_file(tmp_path / "checkpoint-2" / "model" / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def rollouts(policy: JanusPolicy) -> tuple[Any, Any]:
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    text = policy.rollout_text([image], ["What colour?"], 3, generator=4, max_new_tokens=6)
    images = policy.rollout_image(["a red square"], 3, generator=5, decode=False)
    return text, images


def test_merged_and_adapter_models_sample_identically(
    assets: dict[str, Path], trained: dict[str, Any], tmp_path: Path
) -> None:
    saved = trained["out"] / "checkpoint-2" / "model"
    result = CliRunner().invoke(app, ["merge-lora", str(saved), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    config = ModelConfig(device="cpu")
    adapter = JanusPolicy.load(saved, config)
    merged = JanusPolicy.load(tmp_path / "m", config)
    assert adapter.peft is not None and merged.peft is None
    (text_a, image_a), (text_m, image_m) = rollouts(adapter), rollouts(merged)
    assert torch.equal(text_a.completion_ids, text_m.completion_ids)
    assert torch.equal(image_a.image_ids, image_m.image_ids)
    torch.testing.assert_close(image_a.logprobs, image_m.logprobs, rtol=1e-5, atol=1e-5)
    # and the trained model is not the base one: the comparison above has teeth
    base = JanusPolicy.load(assets["model"], config)
    assert not torch.equal(rollouts(base)[1].logprobs, image_a.logprobs)


def test_disabled_adapter_reference_equals_a_frozen_copy(
    assets: dict[str, Path], trained: dict[str, Any]
) -> None:
    trainer = trained["trainer"]
    reference = trainer.policy.reference()
    frozen = JanusPolicy.load(assets["model"], ModelConfig(device="cpu"))
    text, images = rollouts(trainer.policy)
    with torch.no_grad():
        assert torch.equal(reference.text_logprobs(text), frozen.text_logprobs(text))
        assert torch.equal(reference.image_logprobs(images), frozen.image_logprobs(images))
        # the policy itself has moved away from it
        assert not torch.equal(trainer.policy.image_logprobs(images), frozen.image_logprobs(images))


def test_kl_reference_is_the_same_weights_not_a_copy(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    trainer = PairGRPOTrainer(lora_config(assets, tmp_path, algo={"beta": 0.1}))
    assert trainer.ref_policy.policy is trainer.policy
    metrics = trainer.train()
    assert metrics["gen/kl"] > 0  # the adapters moved the policy off its reference


def test_the_commands_load_an_adapter_folder(trained: dict[str, Any], tmp_path: Path) -> None:
    saved = trained["out"] / "checkpoint-2" / "model"
    grid = tmp_path / "grid.png"
    args = ["generate", "--model", str(saved), "-p", "a red square", "-n", "2", "-o", str(grid)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert grid.is_file()


def test_lora_settings_errors_name_the_fix(assets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lora\.modules lists generation_head.*model\.trainable"):
        load_config(None, ["model.lora={modules: [generation_head]}"])
    with pytest.raises(LoraError, match=r"matches no linear layer of generation_head.*proj_out"):
        PairGRPOTrainer(
            lora_config(
                assets,
                tmp_path,
                model={
                    "trainable": ["generation_head"],
                    "lora": {**LORA, "modules": ["generation_head"], "target_modules": ["qq"]},
                },
            )
        )


def test_adapter_folder_without_its_base_model_says_where_it_looked(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(trained["out"] / "checkpoint-2" / "model", moved)
    config_file = moved / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"base model .*gone.*does not exist"):
        JanusPolicy.load(moved, ModelConfig(device="cpu"))


def test_all_linear_targets_every_linear_layer_of_the_module(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    trainer = PairGRPOTrainer(
        lora_config(assets, tmp_path, model={"lora": {**LORA, "target_modules": ["all-linear"]}})
    )
    names = [n for n, _ in trainer.policy.model.named_parameters() if "lora_A" in n]
    assert any(".mlp.gate_proj." in n for n in names) and any(".o_proj." in n for n in names)
    assert not any(n.startswith("lm_head") for n in names)  # the text head stays frozen
