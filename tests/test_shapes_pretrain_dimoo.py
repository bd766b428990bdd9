"""`pairuni shapes pretrain --backend dimoo`: the masked-diffusion ShapesWorld base model, at
toy sizes (--quick): the released layout, the VQ's two quantisers agreeing, the answers' format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.policy.dimoo.ids import RELEASED
from pairuni.policy.dimoo.model import backend_of, load_vq
from pairuni.policy.dimoo.policy import DimooPolicy
from pairuni.rewards.understanding import format_reward, mc_accuracy
from pairuni.shapes.build import understanding_record
from pairuni.shapes.pretrain import REPORT_FILE, ShapesSamples, pretrain
from pairuni.shapes.pretrain_dimoo import (
    DimooPretrainConfig,
    answer_text,
    load_policy,
    unit_pixels,
)
from pairuni.shapes.pretrain_lm import THINK_CLOSE, THINK_OPEN
from pairuni.shapes.pretrain_vq import encode_codes

QUICK = DimooPretrainConfig.quick()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dimoo-base") / "model"
    result = CliRunner().invoke(
        app, ["shapes", "pretrain", "--backend", "dimoo", "--quick", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "MC accuracy" in result.output
    return out, json.loads((out / REPORT_FILE).read_text())


def test_quick_build_is_a_released_layout_dimoo_that_samples(built: tuple[Path, dict]) -> None:
    out, report = built
    assert report["complete"] and report["backend"] == "dimoo"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        REPORT_FILE,
        "tokenizer.json",
        "tokenizer_config.json",
        "vqvae",
    ]
    assert backend_of(out) == "dimoo"
    policy = load_policy(out, QUICK)
    assert isinstance(policy, DimooPolicy)
    assert policy.ids.codebook_size == QUICK.codebook_size  # read from image_codebook_size
    # the compact id layout: text, then DiMOO's special tokens, then the image codes
    ids, tokenizer = policy.ids, policy.model.tokenizer
    assert ids.mask == tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    assert ids.answer_pad == tokenizer.convert_tokens_to_ids("<|answer_pad|>")
    assert ids.newline == tokenizer.convert_tokens_to_ids("<|image_newline|>")
    assert ids.image_offset == len(tokenizer) < RELEASED["mask"]
    assert ids.image_end == policy.model.arch.embedding_size
    assert policy.grid == (QUICK.latent_side, QUICK.latent_side)
    record = understanding_record(0, 7)
    samples = ShapesSamples.render(QUICK)
    from PIL import Image

    image = Image.fromarray(samples.und_images[0])
    text = policy.rollout_text([image], [record["question"]], 2, options=[record["options"]])
    assert len(text.texts) == 2
    images = policy.rollout_image(["a red circle"], 2).images
    assert [im.size for im in images] == [(QUICK.image_size, QUICK.image_size)] * 2
    for key in ("recovery_rate_heldout", "recon_loss_last_10"):
        assert key in report["vq"]
    assert report["sft"]["und_loss_first_10"] > 0


def test_stored_codebook_makes_diffusers_quantiser_pick_the_trained_code(
    built: tuple[Path, dict],
) -> None:
    """train_vq quantises by cosine; DimooVQ.encode uses the VQModel's Euclidean nearest code.
    They agree only because the build stores the codebook L2-normalised."""
    out, _ = built
    vq = load_vq(out / "vqvae")
    rows = vq.model.quantize.embedding.weight
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(rows.shape[0]))
    samples = ShapesSamples.render(QUICK)
    images = samples.gen_images[:8]
    from PIL import Image

    diffusers_codes = vq.encode([Image.fromarray(im) for im in images]).flatten(1)
    cosine_codes = encode_codes(vq.model, unit_pixels(images))
    assert torch.equal(diffusers_codes, cosine_codes)


def test_answers_round_trip_through_the_layout_and_score_format_and_accuracy(
    built: tuple[Path, dict],
) -> None:
    """The SFT target of an answer, decoded as a rollout's reply, is the Janus completion
    `<think>..</think><answer>option</answer>`: DiMOO's special answer tags are kept as tags,
    so the `format` reward scores 1 (it scored 0 on every DiMOO reply before) and
    `mc_accuracy` reads the option."""
    out, _ = built
    policy = load_policy(out, QUICK)
    tokenizer, ids = policy.model.tokenizer, policy.ids
    record = understanding_record(3, 11)
    answer = answer_text(record, QUICK)
    option = record["options"]["ABCD".index(record["answer"])]
    assert answer.startswith(THINK_OPEN) and answer.endswith(
        f"{THINK_CLOSE}<answer>{option}</answer>"
    )
    for tag in (THINK_OPEN, THINK_CLOSE):  # whole tokens that decode as text
        tag_ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        assert len(tag_ids) == 1 and tokenizer.decode(tag_ids, skip_special_tokens=True) == tag
    samples = ShapesSamples.render(QUICK)
    from PIL import Image

    image = Image.fromarray(samples.und_images[0])
    target = policy.target_text([image], [record["question"]], [answer], [record["options"]])
    row = target.completion_ids[0].tolist()
    assert ids.answer_start in row and row.index(ids.answer_start) > 0  # opened after the think
    assert row.count(ids.answer_end) == 1
    # a reply as the sampler returns it: committed up to and including the first stop
    mask = torch.zeros_like(target.completion_ids)
    mask[0, : row.index(ids.answer_end) + 1] = 1
    (reply,) = policy._decode_answers(target.completion_ids, mask)
    assert reply == answer
    assert format_reward([record["question"]], [reply]) == [1.0]
    score = mc_accuracy(
        [record["question"]],
        [reply],
        und_options=[record["options"]],
        und_answer=[record["answer"]],
    )
    assert score == [1.0]
    # a reply that never opens an answer is decoded as written (the format reward rejects it)
    no_open = [t for t in row if t != ids.answer_start]
    (plain,) = policy._decode_answers(torch.tensor([no_open]), torch.ones(1, len(no_open)))
    assert plain == answer.replace("<answer>", "").replace("</answer>", "")
    assert format_reward([record["question"]], [plain]) == [0.0]


def test_second_build_is_cached(built: tuple[Path, dict]) -> None:
    out, report = built
    again = pretrain(out, QUICK)
    assert again["cached"] and again["settings_hash"] == report["settings_hash"]


def test_dimoo_and_janus_settings_never_share_a_cache_key() -> None:
    from pairuni.shapes.pretrain import PretrainConfig

    assert DimooPretrainConfig.quick().settings_hash() != PretrainConfig.quick().settings_hash()


def test_cli_rejects_an_unknown_backend(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["shapes", "pretrain", "--backend", "bagel", "--quick", "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "--backend 'bagel'" in result.output and "janus or dimoo" in result.output
