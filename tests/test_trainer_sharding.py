"""`train.sharding`: zero1 (ZeroRedundancyOptimizer) and fsdp (FSDP2) as real 2-process gloo runs
against a 1-process unsharded run, exact resume from a sharded checkpoint, and the pieces
(optimizer state-dict conversion, compatibility checks, single-process fallback) in-process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file

from pairuni.training.config import TrainConfig
from pairuni.training.sharding import (
    ShardingError,
    ShardingPlan,
    by_index,
    by_name,
    check_launcher,
    grad_norm_value,
    incompatibilities,
)
from trainer_helpers import make_assets, write_tiny_config

BIN = Path(sys.executable).parent
STEPS = 3

# ----------------------------------------------------------------------------- in-process


def adamw_state_after_one_step() -> tuple[torch.nn.Module, dict[str, Any], list[str]]:
    """A two-group AdamW after one step, and the parameter names in group order."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    groups = [
        {"params": [model[1].weight, model[0].bias], "name": "a"},
        {"params": [model[0].weight], "name": "b"},
    ]
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # model[1].bias has a gradient but no group: it must not appear
    return model, optimizer.state_dict(), ["1.weight", "0.bias", "0.weight"]


def test_optimizer_state_by_name_and_back_keeps_every_tensor() -> None:
    _, state, names = adamw_state_after_one_step()
    named = by_name(state, names)
    # written out by hand: index i of the groups is names[i]
    assert named["param_groups"][0]["params"] == ["1.weight", "0.bias"]
    assert named["param_groups"][1]["params"] == ["0.weight"]
    assert named["param_groups"][0]["name"] == "a"
    for i, name in enumerate(names):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(named["state"][name][key], state["state"][i][key])
    back = by_index(named)
    assert back["param_groups"] == state["param_groups"]
    assert back["state"].keys() == state["state"].keys()


def test_optimizer_state_by_index_numbers_a_name_once_in_group_order() -> None:
    named = {
        "state": {"x": {"v": 1}, "z": {"v": 3}},
        "param_groups": [{"params": ["z", "y"], "lr": 1}, {"params": ["x"], "lr": 2}],
    }
    out = by_index(named)
    assert out["param_groups"] == [{"params": [0, 1], "lr": 1}, {"params": [2], "lr": 2}]
    assert out["state"] == {2: {"v": 1}, 0: {"v": 3}}  # y has no state (no step yet)


def test_optimizer_state_of_another_model_is_refused_with_the_fix() -> None:
    _, state, names = adamw_state_after_one_step()
    with pytest.raises(ShardingError, match=r"3 parameters but the model trains 2.*trainable"):
        by_name(state, names[:2])


def test_fsdp_incompatibilities_name_the_fix() -> None:
    assert incompatibilities("fsdp", ["language_model"], 0) == []
    assert incompatibilities("zero1", ["vqmodel"], 5) == []
    assert incompatibilities("none", ["vqmodel"], 5) == []
    (vq,) = incompatibilities("fsdp", ["language_model", "vqmodel"], 0)
    assert "remove vqmodel from model.trainable" in vq
    (agreement,) = incompatibilities("fsdp", ["language_model"], 1)
    assert "logging.grad_agreement_every: 0" in agreement


def test_single_process_sharding_warns_and_runs_unsharded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    one = SimpleNamespace(world_size=1, rank=0, is_main=True)
    with caplog.at_level(logging.WARNING, logger="pairuni.training.sharding"):
        plan = ShardingPlan("fsdp", one)  # type: ignore[arg-type]
    assert plan.effective == "none" and plan.requested == "fsdp"
    assert plan.all_reduces_grads
    assert "shards nothing" in caplog.text
    params = [torch.nn.Parameter(torch.ones(2))]
    optimizer = plan.build_optimizer([{"params": params, "name": "x"}], lr=0.5)
    assert type(optimizer) is torch.optim.AdamW
    with plan.gathered_for_rollout():
        pass  # nothing to gather
    assert plan.full_model_state() is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pairuni.training.sharding"):
        ShardingPlan("none", one)  # type: ignore[arg-type]
    assert caplog.text == ""


def test_an_accelerate_fsdp_or_deepspeed_config_is_not_silently_ignored() -> None:
    check_launcher("none", {})
    check_launcher("fsdp", {"ACCELERATE_USE_FSDP": "true"})  # pairuni shards: fine
    with pytest.raises(ShardingError, match=r"set train\.sharding: fsdp"):
        check_launcher("zero1", {"ACCELERATE_USE_FSDP": "true"})
    for sharding in ("none", "zero1", "fsdp"):
        with pytest.raises(ShardingError, match=r"enables DeepSpeed.*train\.sharding: zero1"):
            check_launcher(sharding, {"ACCELERATE_USE_DEEPSPEED": "TRUE"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "processes", "machines"),
    [("fsdp-8gpu", 8, 1), ("fsdp-2node-16gpu", 16, 2), ("zero1-8gpu", 8, 1)],
)
def test_sharded_launch_configs_are_plain_multi_gpu_launches(
    name: str, processes: int, machines: int
) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    # pairuni shards itself: an accelerate FSDP / DeepSpeed plugin would be refused
    assert config.distributed_type.value == "MULTI_GPU"
    assert (config.num_processes, config.num_machines) == (processes, machines)
    sharding = name.split("-")[0]
    assert f"--set train.sharding={sharding}" in path.read_text()


def test_sharding_config_field() -> None:
    assert TrainConfig().sharding == "none"
    assert TrainConfig(sharding="fsdp").fsdp_gather_for_rollout is True
    with pytest.raises(ValidationError, match="sharding"):
        TrainConfig(sharding="zero3")  # type: ignore[arg-type]


def test_grad_norm_value_of_a_plain_tensor() -> None:
    assert grad_norm_value(torch.tensor(2.5)) == 2.5


# ----------------------------------------------------------------------------- processes


def partition_worker(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    """One of 2 gloo processes: shard the tiny Janus both ways and record what each rank holds."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    from torch.distributed.tensor import DTensor

    from pairuni.policy.config import ModelConfig
    from pairuni.policy.janus import JanusPolicy
    from pairuni.training.distributed import Collective

    dist = Collective(cpu=True)
    trainable = ["language_model", "generation_head"]
    config = ModelConfig(path=model_dir, device="cpu", trainable=trainable)
    report: dict[str, Any] = {}

    fsdp_policy = JanusPolicy.load(model_dir, config)
    total = sum(p.numel() for p in fsdp_policy.model.parameters())
    plan = ShardingPlan("fsdp", dist)
    plan.wrap(fsdp_policy, trainable)
    trained = [p for group in fsdp_policy.parameter_groups().values() for p in group]
    report["fsdp_trainable_dtensor"] = all(isinstance(p, DTensor) for p in trained)
    report["fsdp_local"] = sum(p.to_local().numel() for p in trained)
    report["fsdp_full"] = sum(p.numel() for p in trained)
    inner = fsdp_policy.model.get_submodule("model.generation_embeddings")
    report["frozen_replicated"] = not any(isinstance(p, DTensor) for p in inner.parameters())
    report["total"] = total
    weight = "model.language_model.layers.0.self_attn.q_proj.weight"
    with plan.gathered_for_rollout():
        fsdp_policy.rollout_image(["a red square"], 2, generator=0, decode=False)
        report["gathered_in_rollout"] = not isinstance(
            fsdp_policy.model.get_parameter(weight), DTensor
        )
    report["resharded_after"] = isinstance(fsdp_policy.model.get_parameter(weight), DTensor)

    zero_policy = JanusPolicy.load(model_dir, config)
    groups = [{"params": p, "name": n} for n, p in zero_policy.parameter_groups().items()]
    optimizer = ShardingPlan("zero1", dist).build_optimizer(groups, lr=1e-3)
    for group in groups:
        for param in group["params"]:
            param.grad = torch.ones_like(param)
    optimizer.step()
    local = optimizer.optim.state  # type: ignore[attr-defined]
    report["zero1_local_numel"] = sum(s["exp_avg"].numel() for s in local.values())
    report["zero1_full_numel"] = sum(p.numel() for g in groups for p in g["params"])
    Path(out_dir, f"rank{rank}.yaml").write_text(yaml.safe_dump(report))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_really_hold_a_share_of_the_state(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    import torch.multiprocessing as mp

    mp.spawn(
        partition_worker,
        args=(free_port(), str(assets["model"]), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [yaml.safe_load((tmp_path / f"rank{r}.yaml").read_text()) for r in range(2)]
    for report in ranks:
        assert report["fsdp_trainable_dtensor"] and report["frozen_replicated"]
        assert report["gathered_in_rollout"] and report["resharded_after"]
    # FSDP: each rank stores about half of every trainable tensor (dim 0 split, rounded up)
    assert sum(r["fsdp_local"] for r in ranks) == ranks[0]["fsdp_full"]
    assert max(r["fsdp_local"] for r in ranks) < 0.6 * ranks[0]["fsdp_full"]
    # zero1: the AdamW moments of each parameter live on exactly one rank
    assert sum(r["zero1_local_numel"] for r in ranks) == ranks[0]["zero1_full_numel"]
    assert all(0 < r["zero1_local_numel"] < r["zero1_full_numel"] for r in ranks)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_assets(tmp_path_factory.mktemp("sharding"))


def write_config(
    assets: dict[str, Path], out: Path, model: dict[str, Any] | None = None, **train: Any
) -> Path:
    # no clipping: a clipped gradient has norm 1 whatever its scale, so a mean taken for a sum
    # over ranks would go unnoticed (the unclipped norm here is ~10)
    run = {"max_steps": STEPS, "save_every": 1, "save_total_limit": None, "max_grad_norm": None}
    return write_tiny_config(assets, out, seed=5, max_new_tokens=4, model=model, **{**run, **train})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(config: Path, processes: int, *extra: str) -> None:
    """`pairuni train` in 1 process, or under torchrun with gloo on 127.0.0.1."""
    train = ["-m", "pairuni", "train", "--config", str(config), *extra]
    if processes == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [
            str(BIN / "torchrun"),
            f"--nproc_per_node={processes}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            *train,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def grad_norms(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["grad_norm"] for line in lines]


def weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"checkpoint-{step}" / "model" / "model.safetensors")


def optimizer_state(out: Path, step: int) -> dict[str, Any]:
    return torch.load(out / f"checkpoint-{step}" / "optimizer.pt", weights_only=False)


def assert_states_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Optimizer states equal up to float summation order (see `assert_weights_close`)."""
    assert got["param_groups"] == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    for index, slots in want["state"].items():
        for key, value in slots.items():
            torch.testing.assert_close(got["state"][index][key], value, rtol=1e-4, atol=1e-7)


def assert_weights_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Sharded and 1-process runs differ only by the order of float32 sums (gradients are
    summed over ranks by an all-reduce or a reduce-scatter instead of accumulated in one
    process): relative rounding ~1e-7 per addition. With adam_epsilon = 1 an update is about
    lr * m / (sqrt(v) + 1), nearly linear in the gradient, so rounding stays ~1e-2 * 1e-6 in
    the parameters. The tolerance (rtol 1e-4, atol 1e-6, that of test_trainer_distributed) is
    far below what a wrong reduction does: the parameters move by up to ~1e-2 in 3 steps
    (measured); averaging instead of summing the gradients halves the gradient norm, which the
    grad_norm check catches directly (tried: it fails)."""
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)


def test_trainer_refuses_fsdp_with_grad_agreement_before_training(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    from pairuni.config import load_config
    from pairuni.training.trainer import PairGRPOTrainer, TrainingSetupError

    path = write_config(assets, tmp_path / "run", sharding="fsdp")
    config = load_config(path, ["logging.grad_agreement_every=1"])
    with pytest.raises(TrainingSetupError, match=r"set logging\.grad_agreement_every: 0"):
        PairGRPOTrainer(config)


@pytest.fixture(scope="module")
def unsharded(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    launch(write_config(assets, out), 1)
    return out


def resume_from_copy(
    assets: dict[str, Path],
    run: Path,
    step: int,
    tmp: Path,
    processes: int,
    model: dict[str, Any] | None = None,
    **train: Any,
) -> Path:
    """Copy `run`'s checkpoint-`step` into a fresh out_dir and resume there to the end."""
    out = tmp / "resumed"
    out.mkdir()
    shutil.copytree(run / f"checkpoint-{step}", out / f"checkpoint-{step}")
    launch(write_config(assets, out, model=model, **train), processes, "--resume")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["fsdp", "zero1"])
def test_two_sharded_processes_match_one_process_and_resume_exactly(
    sharding: str, assets: dict[str, Path], unsharded: Path, tmp_path: Path
) -> None:
    run = tmp_path / sharding
    launch(write_config(assets, run, sharding=sharding), 2)
    state = yaml.safe_load((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert (state["world_size"], state["sharding"]) == (2, sharding)
    # the global gradient (a SUM over ranks) has the 1-process norm
    assert grad_norms(run) == pytest.approx(grad_norms(unsharded), rel=1e-4)
    start = load_file(assets["model"] / "model.safetensors")
    for step in range(1, STEPS + 1):
        got, want = weights(run, step), weights(unsharded, step)
        assert [k for k in want if not torch.equal(want[k], start[k])], "nothing trained"
        assert_weights_close(got, want)
        # the gathered AdamW state is the unsharded one, in the same (index-keyed) format
        assert_states_close(optimizer_state(run, step), optimizer_state(unsharded, step))

    resumed = resume_from_copy(assets, run, 1, tmp_path, 2, sharding=sharding)
    a, b = weights(run, STEPS), weights(resumed, STEPS)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # same mode, same ranks: bitwise


@pytest.mark.slow
def test_fsdp_checkpoint_loads_with_from_pretrained_and_resumes_under_another_mode(
    assets: dict[str, Path], unsharded: Path, tmp_path: Path
) -> None:
    from transformers import JanusForConditionalGeneration

    run = tmp_path / "fsdp"
    launch(write_config(assets, run, sharding="fsdp", fsdp_gather_for_rollout=False), 2)
    assert_weights_close(weights(run, STEPS), weights(unsharded, STEPS))
    saved = run / f"checkpoint-{STEPS}" / "model"
    model = JanusForConditionalGeneration.from_pretrained(saved)
    config = yaml.safe_load((saved / "config.json").read_text())
    assert config["architectures"] == ["JanusForConditionalGeneration"]
    want = weights(unsharded, STEPS)
    for name, tensor in model.state_dict().items():
        if name in want:
            torch.testing.assert_close(tensor, want[name], rtol=1e-4, atol=1e-6)
    # an FSDP checkpoint resumed in ONE unsharded process continues like the 1-process run
    resumed = resume_from_copy(assets, run, 2, tmp_path, 1)
    assert_weights_close(weights(resumed, STEPS), weights(unsharded, STEPS))


LORA_MODEL = {"lora": {"rank": 4, "alpha": 8.0}}


def adapters(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"checkpoint-{step}" / "model" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def unsharded_lora(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one-lora") / "run"
    launch(write_config(assets, out, model=LORA_MODEL), 1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["fsdp", "zero1"])
def test_lora_under_sharding_matches_one_process_and_resumes_exactly(
    sharding: str, assets: dict[str, Path], unsharded_lora: Path, tmp_path: Path
) -> None:
    """Adapters (LoRA on the language model, the generation head in full as modules_to_save)
    train the same in 2 sharded processes as in 1, and the checkpoint holds adapters only."""
    run = tmp_path / sharding
    launch(write_config(assets, run, model=LORA_MODEL, sharding=sharding), 2)
    assert not (run / f"checkpoint-{STEPS}" / "model" / "model.safetensors").exists()
    assert grad_norms(run) == pytest.approx(grad_norms(unsharded_lora), rel=1e-4)
    got, want = adapters(run, STEPS), adapters(unsharded_lora, STEPS)
    assert any("lora_B" in k and want[k].abs().sum() > 0 for k in want), "nothing trained"
    assert_weights_close(got, want)
    assert_states_close(optimizer_state(run, STEPS), optimizer_state(unsharded_lora, STEPS))
    resumed = resume_from_copy(assets, run, 1, tmp_path, 2, model=LORA_MODEL, sharding=sharding)
    final = adapters(resumed, STEPS)
    for key in got:
        assert torch.equal(got[key], final[key]), key
