"""JanusPolicy on the tiny random checkpoint: rollout records, gradients, checkpointing,
save/load, seeds and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from janus_helpers import PROMPTS, QUESTIONS, images, load
from pairuni.policy.base import TextRollout
from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.janus import (
    CheckpointError,
    JanusPolicy,
    PromptTooLongError,
    resolve_device,
    resolve_dtype,
)
from pairuni.policy.tiny import build_tiny_janus

# ----------------------------------------------------------------------------- records


def test_rollouts_slice_into_micro_batches(policy: JanusPolicy) -> None:
    rollout = policy.rollout_text(images(), QUESTIONS, 3, generator=0)
    parts = list(rollout.split(4))
    assert [len(p) for p in parts] == [4, 2]
    assert isinstance(parts[1], TextRollout)
    assert parts[1].texts == rollout.texts[4:]
    assert torch.equal(parts[1].pixel_values, rollout.pixel_values[4:])
    picked = rollout[[5, 0]]
    assert picked.group.tolist() == [1, 0] and picked.texts == [rollout.texts[5], rollout.texts[0]]
    undecoded = policy.rollout_image(PROMPTS, 1, generator=0, decode=False)
    assert undecoded[1:].images == [] and len(undecoded[1:]) == 1


# ----------------------------------------------------------------------------- training


def grads_after_loss(policy: JanusPolicy) -> dict[str, torch.Tensor | None]:
    policy.model.zero_grad(set_to_none=True)
    text = policy.rollout_text(images()[:1], QUESTIONS[:1], 2, generator=0)
    image = policy.rollout_image(PROMPTS[:1], 2, generator=0, decode=False)
    loss = -(policy.text_logprobs(text).sum() + policy.image_logprobs(image).sum())
    loss.backward()
    return {name: p.grad for name, p in policy.model.named_parameters()}


@pytest.mark.parametrize(
    "trainable",
    [["language_model"], ["language_model", "generation_head", "generation_aligner", "aligner"]],
)
def test_gradients_reach_trainable_modules_only(tiny_dir: Path, trainable: list[str]) -> None:
    policy = JanusPolicy.load(
        tiny_dir, ModelConfig(device="cpu", trainable=trainable), RolloutConfig(max_new_tokens=6)
    )
    prefixes = {
        "language_model": ("model.language_model.", "lm_head."),
        "generation_head": ("model.generation_head.",),
        "generation_aligner": ("model.generation_aligner.",),
        "aligner": ("model.aligner.",),
    }
    wanted = tuple(p for name in trainable for p in prefixes[name])
    grads = grads_after_loss(policy)
    for name, grad in grads.items():
        if name.startswith(wanted):
            assert grad is not None and grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert grad is None, f"frozen {name} got a gradient"
    groups = policy.parameter_groups()
    assert list(groups) == trainable
    n_trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
    assert sum(p.numel() for ps in groups.values() for p in ps) == n_trainable


def test_gradient_checkpointing_gives_the_same_gradient(tiny_dir: Path) -> None:
    plain = JanusPolicy.load(tiny_dir, ModelConfig(device="cpu"), RolloutConfig(max_new_tokens=6))
    ckpt = JanusPolicy.load(
        tiny_dir,
        ModelConfig(device="cpu", gradient_checkpointing=True),
        RolloutConfig(max_new_tokens=6),
    )
    ckpt.model.train()  # checkpointing is active in training mode; rollouts switch to eval
    g_plain, g_ckpt = grads_after_loss(plain), grads_after_loss(ckpt)
    assert ckpt.model.training
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(g_ckpt[name], g_plain[name], atol=1e-5, rtol=1e-4)


def test_save_and_reload_round_trip(policy: JanusPolicy, tmp_path: Path) -> None:
    rollout = policy.rollout_image(PROMPTS, 1, generator=4, decode=False)
    text = policy.rollout_text(images(), QUESTIONS, 1, generator=4)
    with torch.no_grad():  # a change that must survive the round trip
        policy.model.model.generation_head.vision_head.bias.add_(0.5)
    try:
        policy.save(tmp_path / "saved")
        again = load(tmp_path / "saved")
        assert again.ids == policy.ids
        for (name, a), b in zip(
            policy.model.state_dict().items(), again.model.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name
        torch.testing.assert_close(again.image_logprobs(rollout), policy.image_logprobs(rollout))
        torch.testing.assert_close(again.text_logprobs(text), policy.text_logprobs(text))
    finally:
        with torch.no_grad():
            policy.model.model.generation_head.vision_head.bias.sub_(0.5)


# ----------------------------------------------------------------------------- bad input


def test_prompt_longer_than_context_says_by_how_much(tmp_path: Path) -> None:
    short = build_tiny_janus(tmp_path / "short", max_position_embeddings=160)
    policy = load(short, max_new_tokens=50)
    with pytest.raises(PromptTooLongError, match=r"more than the model's context") as err:
        policy.rollout_text(images()[:1], QUESTIONS[:1], 1)
    prompt_len = policy.encode_understanding(images()[:1], QUESTIONS[:1])["input_ids"].shape[1]
    assert f"{prompt_len + 50 - 160} more than" in str(err.value)
    long_prompt = " ".join(["word"] * 200)
    with pytest.raises(PromptTooLongError, match="image-generation"):
        policy.rollout_image([long_prompt], 1)


def test_missing_checkpoint_files_are_listed(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").unlink()
    (broken / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError) as err:
        load(broken)
    message = str(err.value)
    assert "model weights" in message and "tokenizer.json" in message
    assert "config.json" not in message.split("missing:")[1].split(".")[0]
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_unknown_dtype_or_device_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid dtypes: float32, fp32, bfloat16"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="valid devices: auto, cpu"):
        resolve_device("gpu0")
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_device("cpu").type == "cpu"


def test_seed_makes_rollouts_reproducible(policy: JanusPolicy) -> None:
    a = policy.rollout_image(PROMPTS, 2, generator=11, decode=False).image_ids
    b = policy.rollout_image(PROMPTS, 2, generator=11, decode=False).image_ids
    c = policy.rollout_image(PROMPTS, 2, generator=12, decode=False).image_ids
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bos_is_added_when_the_tokenizer_does_not(tiny_dir: Path) -> None:
    from tokenizers import processors

    policy = load(tiny_dir, system_prompt=None)  # the default system prompt must follow BOS
    policy.processor.tokenizer.backend_tokenizer.post_processor = processors.ByteLevel()
    assert policy.processor.tokenizer("x")["input_ids"][0] != policy.ids.bos
    und = policy.encode_understanding(images()[:1], QUESTIONS[:1])["input_ids"][0]
    gen = policy.encode_generation(PROMPTS[:1])["input_ids"][0]
    assert und[0] == gen[0] == policy.ids.bos
    assert (und == policy.ids.bos).sum() == 1 and (gen == policy.ids.bos).sum() == 1
    assert "helpful language" in policy.processor.tokenizer.decode(und)


def test_empty_batches_and_bad_sample_counts_are_errors(policy: JanusPolicy) -> None:
    with pytest.raises(ValueError, match="no prompts given"):
        policy.rollout_image([], 2)
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        policy.rollout_text(images()[:1], QUESTIONS[:1], 0)
    with pytest.raises(ValueError, match="got 2 images for 1 questions"):
        policy.rollout_text(images(), QUESTIONS[:1], 1)
