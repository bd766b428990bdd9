"""`pairuni sft` on the tiny Lumina-DiMOO: DiMOO's masked-token recipe (pairuni.policy.dimoo.sft,
docs/sft.md) checked against an independent forward, its masks against the documented draws,
the unconditional prompt, the loss falling on the demo pairs and a bitwise resume.

Image size 48 px: understanding images crop to 32 px (2 x 2 codes, cheap to encode), generated
images are 3 x 3 codes, more than the 5 that DiMOO masks entirely."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.dimoo import sft
from pairuni.policy.dimoo.policy import DimooPolicy
from pairuni.policy.dimoo.tiny import write_tiny_dimoo
from pairuni.training.sft import SFTTrainer

ANSWER_LENGTH = 8
IMAGE_SIZE = 48
STEPS, SAVE_EVERY = 12, 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    return write_tiny_dimoo(tmp_path_factory.mktemp("dimoo-sft") / "tiny")


@pytest.fixture(scope="module")
def policy(checkpoint: Path) -> DimooPolicy:
    rollout = RolloutConfig(max_new_tokens=ANSWER_LENGTH, dimoo={"image_size": IMAGE_SIZE})
    return DimooPolicy.load(checkpoint, ModelConfig(dtype="float32", device="cpu"), rollout)


@pytest.fixture(scope="module")
def records(policy: DimooPolicy) -> dict[str, Any]:
    images = [Image.new("RGB", (32, 32), c) for c in [(220, 30, 30), (30, 60, 220), (30, 200, 60)]]
    und = policy.target_text(
        images,
        ["What colour is the square?"] * 3,
        ["<answer>B</answer>", "<answer>C</answer>", "<answer>a long answer</answer>"],
        options=[["red", "blue", "green", "yellow"]] * 3,
    )
    gen = policy.target_images(
        ["a red square", "a blue square", "a green square"],
        images,
        [
            False,
            True,
            False,
        ],
    )
    return {"understanding": und, "generation": gen}


def config(checkpoint: Path, out: Path, **train: Any) -> PairUniConfig:
    pairs = demo.write_demo_pairs(out.parent / "data", num_pairs=8)
    raw = demo.demo_config(
        checkpoint,
        pairs,
        out,
        model={"backend": "dimoo", "trainable": ["language_model"], "dtype": "float32"},
        rollout={"max_new_tokens": ANSWER_LENGTH, "dimoo": {"image_size": IMAGE_SIZE}},
        data={"kinds": "aligned"},
        train={"pairs_per_step": 4, "learning_rate": 1e-2, **train},
    )
    return PairUniConfig.model_validate(raw)


def metrics(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def real_tokens(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[keep.bool()].tolist() for row, keep in zip(ids, mask, strict=True)]


# --------------------------------------------------------------------- the documented math


def documented_masks(segments: torch.Tensor, seed: int) -> torch.Tensor:
    """docs/sft.md's draw, written from the text: B row seeds from the call's generator; per row
    content then padding: u, a permutation, k = all if content <= 5 else max(1, int(n cos))."""
    gen = torch.Generator().manual_seed(seed)
    seeds = torch.randint(0, 2**62, (segments.shape[0],), generator=gen).tolist()
    out = torch.zeros(segments.shape, dtype=torch.bool)
    for b, row_seed in enumerate(seeds):
        row = torch.Generator().manual_seed(int(row_seed))
        for label in (1, 2):  # content, padding
            where = (segments[b] == label).nonzero().squeeze(1)
            n = int(where.numel())
            u = float(torch.rand((), generator=row, dtype=torch.float64))
            order = torch.randperm(n, generator=row)
            k = 0 if n == 0 else max(1, int(n * math.cos(math.pi / 2 * u)))
            k = n if label == 1 and n <= 5 else k
            out[b, where[order[:k]]] = True
    return out


def independent_logprobs(
    policy: DimooPolicy, record: Any, task: str, masked: torch.Tensor
) -> torch.Tensor:
    """log p of every target from the state with `masked` masked, through the backbone's own
    modules (bidirectional 4-D mask, padding columns at -inf), the whole head, then the
    rollouts' vocabulary (text ids without the mask token; the 8,192 codes)."""
    ids, model = policy.ids, policy.model
    if task == "understanding":
        targets = record.completion_ids
    else:
        targets = record.image_ids + ids.image_offset
    state = torch.where(masked, ids.mask, targets)
    seq = record.seq_ids.scatter(1, record.seq_positions, state)
    keep = record.seq_mask.bool()[:, None, None, :]
    bias = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    bias = bias.expand(-1, 1, seq.shape[1], -1)
    positions = torch.arange(seq.shape[1]).expand_as(seq)
    with torch.no_grad():
        hidden = model.backbone.model(
            input_ids=seq, attention_mask=bias, position_ids=positions
        ).last_hidden_state
        picked = hidden[torch.arange(seq.shape[0])[:, None], record.seq_positions]
        logits = model.backbone.lm_head(picked).float()
    if task == "understanding":
        logits = logits[..., : ids.image_offset]
        logits[..., ids.mask] = float("-inf")
        index = targets
    else:
        logits = logits[..., ids.image_offset : ids.image_end]
        index = targets - ids.image_offset
    return logits.log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)


@pytest.mark.parametrize("task", ["understanding", "generation"])
def test_terms_are_the_rows_plain_masked_mean_cross_entropy(
    policy: DimooPolicy, records: dict[str, Any], task: str
) -> None:
    record = records[task]
    if task == "understanding":
        segments = sft.answer_segments(
            record.completion_ids, record.completion_mask, policy.ids.answer_pad
        )
    else:
        segments = torch.ones_like(record.image_ids)
    masked = documented_masks(segments, seed=11)
    out = policy.supervised_logprobs(task, record, torch.Generator().manual_seed(11))
    logp = independent_logprobs(policy, record, task, masked)
    n, k = torch.ones_like(logp).sum(1, keepdim=True), masked.sum(1, keepdim=True)
    torch.testing.assert_close(out.detach(), torch.where(masked, logp * n / k, 0.0))
    # per row: the sum over the targets is n x the plain mean over masked positions (no 1/t)
    means = torch.stack([-logp[b][masked[b]].mean() for b in range(len(record))])
    torch.testing.assert_close(-out.detach().sum(1) / n[:, 0], means)
    assert 0 < int(masked.sum()) < masked.numel()  # some masked, some not: the test can tell
    out.sum().backward()
    head = policy.model.backbone.lm_head.weight.grad
    assert head is not None and head.abs().sum() > 0
    policy.model.backbone.zero_grad(set_to_none=True)


# --------------------------------------------------------------------- masks, padding, prompts


def test_masks_follow_the_recipe_and_the_generator() -> None:
    content_pad = torch.tensor([[1] * 3 + [2] * 13, [1] * 12 + [2] * 3 + [0]])
    first = sft.draw_masks(content_pad, torch.Generator().manual_seed(5))
    assert torch.equal(first, sft.draw_masks(content_pad, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, sft.draw_masks(content_pad, torch.Generator().manual_seed(6)))
    assert torch.equal(first, documented_masks(content_pad, seed=5))
    assert first[0, :3].all()  # an answer of <= 5 tokens is masked entirely
    assert first[0, 3:].any() and first[1, 12:15].any()  # padding: at least one token
    assert not first[1, 15]  # not a target: never masked
    # a row's draw does not depend on the other rows' contents
    other = torch.tensor([[1] * 3 + [2] * 13, [2] * 16])
    assert torch.equal(sft.draw_masks(other, torch.Generator().manual_seed(5))[0], first[0])
    # the masked share of a long segment is cos(pi/2 u): mean 2 / pi
    many = sft.draw_masks(torch.ones(4000, 64, dtype=torch.long), torch.Generator().manual_seed(0))
    assert abs(many.float().mean().item() - 2 / math.pi) < 0.01
    assert many.sum(1).min() >= 1


def test_answers_are_padded_targets_and_newlines_are_never_masked(
    policy: DimooPolicy, records: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, und, gen = policy.ids, records["understanding"], records["generation"]
    # "B</answer>" then answer_pad up to the answer length, all of it in the loss
    assert und.completion_ids[0, 1:].tolist() == [ids.answer_end] + [ids.answer_pad] * 6
    assert und.completion_mask.bool().all() and und.texts[0] == "<answer>B</answer>"
    assert policy.model.tokenizer.decode(und.completion_ids[0, :1]) == "B"
    # the model sees exactly the record's sequence with the masked targets masked
    seen: list[torch.Tensor] = []

    def recorder(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(input_ids)
        return policy.model.logits(input_ids, *args, **kwargs)

    recorder.scores_positions = True  # type: ignore[attr-defined]
    monkeypatch.setattr(DimooPolicy, "_logits", property(lambda self: recorder))
    for task, record, targets in [
        ("understanding", und, und.completion_ids),
        ("generation", gen, gen.image_ids + ids.image_offset),
    ]:
        out = policy.supervised_logprobs(task, record, torch.Generator().manual_seed(2))
        full = record.seq_ids.scatter(1, record.seq_positions, targets)
        masked = seen[-1] != full
        assert (seen[-1][masked] == ids.mask).all()
        # only target positions are ever masked: never a newline, a tag or the prompt
        where = torch.zeros_like(masked).scatter(1, record.seq_positions, True)
        assert not (masked & ~where).any()
        assert torch.equal(masked.gather(1, record.seq_positions), out.detach() != 0)
    newlines = gen.seq_ids == ids.newline
    assert newlines.sum(1).tolist() == [3, 3, 3]  # one per row of 3 x 3 codes, kept as they are
    assert (seen[-1][newlines] == ids.newline).all()


def test_unconditional_flags_give_dimoo_s_unconditional_prompt(
    policy: DimooPolicy, records: dict[str, Any]
) -> None:
    gen, ids = records["generation"], policy.ids
    real, twin = (
        real_tokens(gen.seq_ids, gen.seq_mask),
        real_tokens(gen.uncond_ids, gen.uncond_mask),
    )
    assert real[1] == twin[1] and ids.uncondition in real[1]  # flagged: <uncondition>
    assert real[0] != twin[0] and ids.uncondition not in real[0] + real[2]
    text = policy.model.tokenizer.decode(real[1][: real[1].index(ids.answer_start)])
    assert text.endswith("<user><uncondition></user>")
    # the image part is the same whatever the prompt, and the codes are the VQ's
    assert gen.image_ids.shape == (3, 9)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (30, 60, 220))
    assert torch.equal(gen.image_ids[1], policy.model.vq.encode([image]).flatten())


# --------------------------------------------------------------------- through SFTTrainer


@pytest.fixture(scope="module")
def run(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dimoo-sft-run") / "straight"
    SFTTrainer(config(checkpoint, out, max_steps=STEPS, save_every=SAVE_EVERY)).train()
    return out


@pytest.mark.slow
def test_sft_lowers_both_losses_on_the_demo_pairs(run: Path) -> None:
    und, gen = metrics(run, "und/loss"), metrics(run, "gen/loss")
    assert sum(und[-3:]) / 3 < 0.7 * und[0], und
    assert sum(gen[-3:]) / 3 < 0.7 * gen[0], gen


@pytest.mark.slow
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(checkpoint: Path, run: Path) -> None:
    killed = run.parent / "killed"
    shutil.copytree(run, killed)
    shutil.rmtree(killed / f"checkpoint-{STEPS}")  # as if killed after the last step was logged
    resumed = SFTTrainer(
        config(checkpoint, killed, max_steps=STEPS, save_every=SAVE_EVERY), resume=True
    )
    assert resumed.step == SAVE_EVERY
    resumed.train()
    shards = sorted((run / f"checkpoint-{STEPS}" / "model").glob("*.safetensors"))
    assert shards
    for shard in shards:
        a, b = load_file(shard), load_file(killed / shard.relative_to(run))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), shard
    assert metrics(run, "loss") == metrics(killed, "loss")
