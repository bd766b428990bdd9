"""`train.sharding` on the masked-diffusion backend, as real 2-process gloo runs of the tiny
Lumina-DiMOO checkpoint: FSDP2 and ZeRO-1 train exactly as one unsharded process (the
trajectory replay backpropagated group by group, so several backwards per micro-batch), resume
bitwise, the FSDP checkpoint is the released layout that loads back, and LoRA adapters shard
too. The launch helpers and tolerances are those of test_trainer_sharding (Janus)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

import pairuni.training.tiny_demo as demo
from pairuni.policy.dimoo.tiny import write_tiny_dimoo
from test_trainer_sharding import (
    assert_states_close,
    assert_weights_close,
    grad_norms,
    launch,
    optimizer_state,
)

STEPS = 2
ADAPTERS = "adapter_model.safetensors"
LORA_MODEL = {"lora": {"rank": 4, "alpha": 8.0}}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dimoo-sharding")
    return {
        "model": write_tiny_dimoo(root / "tiny"),
        "pairs": demo.write_demo_pairs(root / "data", num_pairs=4),
    }


def write_config(
    assets: dict[str, Path], out: Path, model: dict[str, Any] | None = None, **train: Any
) -> Path:
    """Two pairs a step (one per process), 2 samples per task, the trajectory estimator with
    one backward per replay group, two answer blocks; no clipping (see Janus's test)."""
    dimoo = {
        "image_size": 32,
        "image_steps": 3,
        "text_steps": 2,
        "text_block_length": 2,
        "logprob": "trajectory",
        "trajectory_backward_groups": 1,
    }
    raw = demo.demo_config(
        assets["model"],
        assets["pairs"],
        out,
        seed=5,
        model={
            "backend": "auto",
            "trainable": ["language_model"],
            "dtype": "float32",
            **(model or {}),
        },
        rollout={"max_new_tokens": 4, "cfg_scale": 3.0, "dimoo": dimoo},
        train={
            "max_steps": STEPS,
            "save_every": 1,
            "save_total_limit": None,
            "max_grad_norm": None,
            "adam_epsilon": 1.0,
            "rollout_pairs_per_call": 1,
            **train,
        },
    )
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def weights_of(folder: Path, pattern: str = "model*.safetensors") -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files (the released layout is sharded)."""
    files = sorted(folder.glob(pattern))
    assert files, f"no {pattern} in {folder}"
    return {name: t for file in files for name, t in load_file(file).items()}


def saved(out: Path, step: int, pattern: str = "model*.safetensors") -> dict[str, torch.Tensor]:
    return weights_of(out / f"checkpoint-{step}" / "model", pattern)


def resume_from_copy(
    assets: dict[str, Path], run: Path, step: int, tmp: Path, processes: int, **config: Any
) -> Path:
    out = tmp / "resumed"
    out.mkdir()
    shutil.copytree(run / f"checkpoint-{step}", out / f"checkpoint-{step}")
    launch(write_config(assets, out, **config), processes, "--resume")
    return out


@pytest.fixture(scope="module")
def unsharded(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    launch(write_config(assets, out), 1)
    return out


@pytest.mark.parametrize("sharding", ["fsdp", "zero1"])
def test_two_sharded_processes_match_one_process_and_resume_exactly(
    sharding: str, assets: dict[str, Path], unsharded: Path, tmp_path: Path
) -> None:
    run = tmp_path / sharding
    launch(write_config(assets, run, sharding=sharding), 2)
    assert grad_norms(run) == pytest.approx(grad_norms(unsharded), rel=1e-4)
    start = weights_of(assets["model"])
    for step in range(1, STEPS + 1):
        got, want = saved(run, step), saved(unsharded, step)
        assert [k for k in want if not torch.equal(want[k], start[k])], "nothing trained"
        assert_weights_close(got, want)
        assert_states_close(optimizer_state(run, step), optimizer_state(unsharded, step))
    resumed = resume_from_copy(assets, run, 1, tmp_path, 2, sharding=sharding)
    a, b = saved(run, STEPS), saved(resumed, STEPS)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fsdp_without_gathered_rollouts_writes_the_released_layout_that_loads_back(
    assets: dict[str, Path], unsharded: Path, tmp_path: Path
) -> None:
    """Every rollout forward a collective (`fsdp_gather_for_rollout: false`, the samplers in
    lockstep); the checkpoint is written from the gathered state in DiMOO's own layout."""
    from pairuni.policy.dimoo.model import load_dimoo

    run = tmp_path / "fsdp"
    launch(write_config(assets, run, sharding="fsdp", fsdp_gather_for_rollout=False), 2)
    want = saved(unsharded, STEPS)
    assert_weights_close(saved(run, STEPS), want)
    folder = run / f"checkpoint-{STEPS}" / "model"
    assert all(name.startswith("model.transformer.") for name in saved(run, STEPS))
    assert (folder / "vqvae").is_dir() and (folder / "config.json").is_file()
    loaded = load_dimoo(folder, dtype=torch.float32, device="cpu")
    for name, tensor in loaded.released_state_dict().items():
        torch.testing.assert_close(tensor, want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def unsharded_lora(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one-lora") / "run"
    launch(write_config(assets, out, model=LORA_MODEL), 1)
    return out


@pytest.mark.parametrize("sharding", ["fsdp", "zero1"])
def test_lora_under_sharding_matches_one_process(
    sharding: str, assets: dict[str, Path], unsharded_lora: Path, tmp_path: Path
) -> None:
    run = tmp_path / sharding
    launch(write_config(assets, run, model=LORA_MODEL, sharding=sharding), 2)
    assert not list((run / f"checkpoint-{STEPS}" / "model").glob("model*.safetensors"))
    assert grad_norms(run) == pytest.approx(grad_norms(unsharded_lora), rel=1e-4)
    got, want = saved(run, STEPS, ADAPTERS), saved(unsharded_lora, STEPS, ADAPTERS)
    assert any("lora_B" in k and want[k].abs().sum() > 0 for k in want), "nothing trained"
    assert_weights_close(got, want)
