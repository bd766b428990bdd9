"""LoRA on Lumina-DiMOO through peft, as on Janus: fresh adapters leave the model unchanged,
training moves only the adapters, checkpoints hold adapters and resume exactly, the KL
reference is the same weights with the adapters off, `merge-lora` writes the released layout
that samples like the adapter model, and the commands find the backend from the base model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import pairuni.training.tiny_demo as demo
from pairuni.cli import app
from pairuni.config import PairUniConfig
from pairuni.policy import registry
from pairuni.policy.base import UnsupportedSettingError
from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.dimoo.policy import DimooPolicy
from pairuni.policy.dimoo.tiny import write_tiny_dimoo
from pairuni.policy.lora import LoraError
from pairuni.training.trainer import PairGRPOTrainer

LORA = {"rank": 4, "alpha": 8.0}
ROLLOUT = RolloutConfig(
    max_new_tokens=4, cfg_scale=3.0, dimoo={"image_size": 32, "image_steps": 2, "text_steps": 2}
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dimoo(tmp_path_factory.mktemp("dimoo") / "tiny")


def lora_config(checkpoint: Path, out: Path, **sections: Any) -> PairUniConfig:
    pairs = demo.write_demo_pairs(out.parent / f"{out.name}-data", num_pairs=4)
    raw = demo.demo_config(
        checkpoint,
        pairs,
        out,
        model={
            "backend": "auto",
            "dtype": "float32",
            "lora": LORA,
            "trainable": ["language_model"],
        },
        rollout=ROLLOUT.model_dump(mode="json"),
        train={"max_steps": 2, "save_every": 1, "learning_rate": 5e-2},
        **sections,
    )
    return PairUniConfig.model_validate(raw)


def rollouts(policy: DimooPolicy) -> tuple[Any, Any]:
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    text = policy.rollout_text([image], ["What colour?"], 2, generator=4)
    images = policy.rollout_image(["a red square"], 2, generator=5, decode=False)
    return text, images


def load(path: Path, **model: Any) -> DimooPolicy:
    config = ModelConfig(device="cpu", dtype="float32", **model)
    policy = registry.load_policy(path, config, ROLLOUT)
    assert isinstance(policy, DimooPolicy)
    return policy


def test_fresh_adapters_leave_the_model_unchanged_and_only_they_train(checkpoint: Path) -> None:
    base = load(checkpoint)
    adapted = DimooPolicy.load(
        checkpoint, ModelConfig(dtype="float32", lora=LORA), ROLLOUT, for_training=True
    )
    groups = adapted.parameter_groups()
    assert set(groups) == {"lora"}
    names = {id(p): n for n, p in adapted.module.named_parameters()}
    assert all("lora_" in names[id(p)] for p in groups["lora"])
    assert any(".q_proj.lora_A" in n for n in names.values())
    assert not any("lm_head.lora" in n for n in names.values())  # the head stays frozen
    text, images = rollouts(base)
    with torch.no_grad():
        assert torch.equal(adapted.image_logprobs(images), base.image_logprobs(images))
        assert torch.equal(adapted.text_logprobs(text), base.text_logprobs(text))


def test_lora_on_a_module_dimoo_lacks_names_the_fix(checkpoint: Path) -> None:
    config = ModelConfig(
        dtype="float32",
        trainable=["language_model", "generation_head"],
        lora={**LORA, "modules": ["language_model", "generation_head"]},
    )
    with pytest.raises(UnsupportedSettingError, match="generation_head"):
        DimooPolicy.load(checkpoint, config, ROLLOUT, for_training=True)


def test_an_adapter_folder_without_its_base_says_where_it_looked(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    missing = tmp_path / "gone"
    (folder / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(missing)})
    )
    assert registry.resolve_backend("auto", folder) == "janus"  # no base to ask: the default
    with pytest.raises(LoraError, match="gone"):
        DimooPolicy.load(folder, ModelConfig(), ROLLOUT)


@pytest.fixture(scope="module")
def trained(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two LoRA steps with the KL term on (its reference: the adapters disabled)."""
    out = tmp_path_factory.mktemp("run") / "run"
    trainer = PairGRPOTrainer(lora_config(checkpoint, out, algo={"beta": 0.1}))
    before = {n: p.detach().clone() for n, p in trainer.policy.module.named_parameters()}
    metrics = trainer.train()
    return {"trainer": trainer, "before": before, "out": out, "metrics": metrics}


def test_training_moves_the_adapters_only_and_saves_them_alone(
    trained: dict[str, Any], checkpoint: Path
) -> None:
    trainer = trained["trainer"]
    assert trainer.ref_policy.policy is trainer.policy  # the same weights, not a copy
    assert trained["metrics"]["gen/kl"] > 0
    moved = set()
    for name, param in trainer.policy.module.named_parameters():
        if not torch.equal(trained["before"][name], param):
            moved.add(name)
            assert "lora_" in name, f"frozen parameter {name} changed"
    assert any("lora_B" in n for n in moved)
    saved = trained["out"] / "checkpoint-2" / "model"
    assert not list(saved.glob("model*.safetensors"))
    config = json.loads((saved / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == checkpoint.resolve()
    assert registry.resolve_backend("auto", saved) == "dimoo"


def test_resume_from_a_dimoo_adapter_checkpoint_is_bitwise(
    trained: dict[str, Any], checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained["out"] / "checkpoint-1", out / "checkpoint-1")
    resumed = PairGRPOTrainer(lora_config(checkpoint, out, algo={"beta": 0.1}), resume=True)
    assert resumed.step == 1
    resumed.train()
    want = load_file(trained["out"] / "checkpoint-2" / "model" / "adapter_model.safetensors")
    got = load_file(out / "checkpoint-2" / "model" / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_merge_lora_writes_the_released_layout_that_samples_like_the_adapters(
    trained: dict[str, Any], checkpoint: Path, tmp_path: Path
) -> None:
    saved = trained["out"] / "checkpoint-2" / "model"
    merged_dir = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge-lora", str(saved), "--out", str(merged_dir)])
    assert result.exit_code == 0, result.output
    assert (merged_dir / "config.json").is_file() and (merged_dir / "vqvae").is_dir()
    adapter, merged, base = load(saved), load(merged_dir), load(checkpoint)
    assert adapter.peft is not None and merged.peft is None
    (text_a, image_a), (_, image_m) = rollouts(adapter), rollouts(merged)
    with torch.no_grad():
        torch.testing.assert_close(
            merged.image_logprobs(image_a), adapter.image_logprobs(image_a), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            merged.text_logprobs(text_a), adapter.text_logprobs(text_a), rtol=1e-5, atol=1e-5
        )
        # the adapters did change the model: the comparison above has teeth
        assert not torch.allclose(base.image_logprobs(image_a), adapter.image_logprobs(image_a))
    assert torch.equal(image_a.image_ids, image_m.image_ids)


def test_the_commands_run_on_a_dimoo_adapter_folder(trained: dict[str, Any], tmp_path: Path):
    saved = trained["out"] / "checkpoint-2" / "model"
    grid = tmp_path / "grid.png"
    args = ["generate", "--model", str(saved), "-p", "a red square", "-n", "2", "-o", str(grid)]
    result = CliRunner().invoke(
        app, [*args, "--device", "cpu", "--set", "rollout.dimoo.image_size=32"]
    )
    assert result.exit_code == 0, result.output
    assert grid.is_file()
