"""The ShapesWorld base model (`pairuni shapes pretrain`): the quick pipeline end to end, its
determinism and cache, and each formula against an independent computation (naive loops, the
policy's own log-probs, hand-computed numbers)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.janus import JanusPolicy
from pairuni.rewards.understanding import format_reward, mc_accuracy
from pairuni.shapes import pretrain_lm as lm
from pairuni.shapes import pretrain_vq as vqt
from pairuni.shapes.pretrain import PretrainConfig, pretrain
from pairuni.shapes.render import render_scene
from pairuni.shapes.scene import sample_scene


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    # One thread is both deterministic and much faster while other jobs share the two cores.
    keep = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(keep)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("base") / "model"
    return out, pretrain(out, PretrainConfig.quick())


@pytest.fixture(scope="module")
def policy(built: tuple[Path, dict]) -> JanusPolicy:
    rollout = RolloutConfig(max_new_tokens=8, cfg_scale=1.0)
    return JanusPolicy.load(built[0], ModelConfig(device="cpu"), rollout)


# ----------------------------------------------------------------------------- pipeline


def test_quick_pipeline_saves_a_model_the_policy_loads_and_samples(
    built: tuple[Path, dict], policy: JanusPolicy
) -> None:
    out, report = built
    assert report["complete"] and not report["cached"]
    on_disk = json.loads((out / "pretrain.json").read_text())
    assert on_disk["settings_hash"] == PretrainConfig.quick().settings_hash()
    assert not out.with_name(out.name + ".partial").exists()
    config = PretrainConfig.quick()
    assert policy.num_image_tokens == config.latent_side**2
    assert policy.model.config.vq_config.num_embeddings == config.codebook_size
    image = Image.fromarray(render_scene(sample_scene(np.random.default_rng(0)), 32))
    text = policy.rollout_text([image], ["How many circles are there?"], 2, generator=0)
    assert len(text.texts) == 2
    images = policy.rollout_image(["a photo of a red circle"], 2, generator=0)
    assert images.image_ids.shape == (2, 64)
    assert images.images[0].size == (32, 32)
    for key in ("understanding_greedy", "understanding_t1"):
        assert 0.0 <= report["eval"][key]["accuracy"] <= 1.0
        assert set(report["eval"][key]["per_category"]) <= {
            "counting",
            "color",
            "shape",
            "position",
            "existence",
        }
    generation = report["eval"]["generation_cfg"]
    assert 0.0 <= generation["overall"] <= 1.0
    assert generation["cfg_scale"] == 5.0
    # the per-item scores the ablation's bootstrap resamples give back the summaries
    greedy = report["eval"]["understanding_greedy"]
    assert len(greedy["items"]) == config.n_eval_und
    assert sum(greedy["items"]) / len(greedy["items"]) == pytest.approx(
        greedy["accuracy"], abs=1e-5
    )
    from pairuni.shapes.ablate_stats import score

    tags = np.asarray(generation["item_tags"])
    overall = score(np.asarray([generation["items"]]), tags)
    assert overall == pytest.approx(generation["overall"], abs=1e-5)
    assert report["vq"]["recovery_rate_originals"] == 1.0  # the detector reads clean renders


def test_same_seed_gives_bitwise_equal_weights_and_another_seed_does_not(
    built: tuple[Path, dict], tmp_path: Path
) -> None:
    first = load_file(built[0] / "model.safetensors")
    again = pretrain(tmp_path / "again", PretrainConfig.quick())
    assert not again["cached"]
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = pretrain(tmp_path / "other", PretrainConfig.quick(seed=1, sft_steps=1, vq_steps=1))
    assert other["settings_hash"] != again["settings_hash"]
    third = load_file(tmp_path / "other" / "model.safetensors")
    assert not torch.equal(
        first["model.generation_head.vision_head.weight"],
        third["model.generation_head.vision_head.weight"],
    )


def test_second_call_returns_the_cached_model_without_training(
    built: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, report = built
    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached call must not train")

    monkeypatch.setattr(vqt, "train_vq", refuse)
    monkeypatch.setattr(lm, "train_sft", refuse)
    again = pretrain(out, PretrainConfig.quick())
    assert again["cached"] and again["settings_hash"] == report["settings_hash"]
    assert weights.stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="must not train"):  # other settings: rebuilds
        pretrain(out, PretrainConfig.quick(sft_steps=3))
    assert weights.stat().st_mtime_ns == stamp  # a failed rebuild leaves the old model


def test_an_interrupted_build_resumes_after_the_vq_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    config = PretrainConfig.quick(sft_steps=2)
    real_sft = lm.train_sft

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lm, "train_sft", crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "base", config)
    assert (tmp_path / "base.partial" / "vq_phase.pt").is_file()
    assert not (tmp_path / "base").exists()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the finished VQ phase must be reused")

    monkeypatch.setattr(lm, "train_sft", real_sft)
    monkeypatch.setattr(vqt, "train_vq", refuse)
    report = pretrain(tmp_path / "base", config)
    assert report["complete"] and (tmp_path / "base" / "model.safetensors").is_file()
    assert not (tmp_path / "base" / "vq_phase.pt").exists()


def test_cli_reports_the_cached_model(built: tuple[Path, dict]) -> None:
    from pairuni.cli import app

    result = CliRunner().invoke(app, ["shapes", "pretrain", "--quick", "--out", str(built[0])])
    assert result.exit_code == 0, result.output
    assert "already holds this base model" in result.output
    assert "VQ recovery" in result.output and "GenEval" in result.output


def test_an_unrelated_folder_is_never_replaced(tmp_path: Path) -> None:
    from pairuni.cli import app

    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["shapes", "pretrain", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "does not hold a base model" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_rejects_zero_threads(tmp_path: Path) -> None:
    from pairuni.cli import app

    result = CliRunner().invoke(
        app, ["shapes", "pretrain", "--quick", "--out", str(tmp_path), "--threads", "0"]
    )
    assert result.exit_code == 2 and "--threads 0" in result.output


# ----------------------------------------------------------------------------- VQ


def small_vq(codebook: int = 16) -> torch.nn.Module:
    from transformers import JanusVQVAEConfig
    from transformers.models.janus.modeling_janus import JanusVQVAE

    torch.manual_seed(0)
    config = JanusVQVAEConfig(
        embed_dim=4,
        num_embeddings=codebook,
        latent_channels=32,
        base_channels=32,
        channel_multiplier=[1, 1, 1],
        num_res_blocks=0,
        num_patches=8,
    )
    return JanusVQVAE(config)


def test_quantize_picks_the_nearest_unit_code_like_a_naive_loop() -> None:
    vq = small_vq()
    latents = torch.randn(2, 4, 3, 3)
    quantized, loss, codes = vqt.quantize(vq, latents, commitment=0.25)
    book = vq.quantize.embedding.weight.detach()
    naive_codes, naive_loss = [], 0.0
    for b in range(2):
        for y in range(3):
            for x in range(3):
                z = latents[b, :, y, x] / latents[b, :, y, x].norm()
                dists = [float(((z - e / e.norm()) ** 2).sum()) for e in book]
                best = int(np.argmin(dists))
                naive_codes.append(best)
                naive_loss += dists[best]
                chosen = book[best] / book[best].norm()
                assert torch.allclose(quantized[b, :, y, x], chosen, atol=1e-6)
    assert codes.flatten().tolist() == naive_codes
    # both terms are the mean squared distance over all latent entries: (1 + beta) * mean
    assert math.isclose(loss.item(), 1.25 * naive_loss / latents.numel(), rel_tol=1e-5)


def test_training_path_decodes_exactly_as_janus_decode_does() -> None:
    vq = small_vq().eval()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = vq.quant_conv(vq.encoder(pixels))
    quantized, _, codes = vqt.quantize(vq, latents)
    ours = vq.decoder(vq.post_quant_conv(quantized))
    assert torch.allclose(ours, vq.decode(codes), atol=1e-5)
    assert torch.equal(vqt.encode_codes(vq, pixels), codes)


def test_vq_reconstruction_error_decreases_with_training() -> None:
    rng = np.random.default_rng(0)
    images = np.stack([render_scene(sample_scene(rng), 32) for _ in range(32)])
    pixels = vqt.to_model_pixels(images)
    vq = small_vq(codebook=32)
    settings = vqt.VQTrainSettings(steps=40, batch_size=8, learning_rate=3e-3, restart_every=10)

    def error_on_all_images() -> float:  # the same 32 images before and after
        with torch.no_grad():
            return float(vqt.vq_loss(vq.eval(), pixels, settings)[1])

    before = error_on_all_images()
    seen: list[int] = []
    losses = vqt.train_vq(
        vq, pixels, settings, torch.Generator().manual_seed(0), lambda step, loss: seen.append(step)
    )
    assert seen == list(range(1, 41)) and len(losses) == 40
    assert error_on_all_images() < 0.5 * before


def test_foreground_marks_exactly_the_coloured_pixels() -> None:
    image = np.full((1, 4, 4, 3), 220, dtype=np.uint8)
    image[0, 1, 2] = (230, 34, 34)  # a palette red: chroma ~196 grey levels
    image[0, 3, 0] = (200, 190, 185)  # a greyish pixel: chroma 15
    mask = vqt.foreground(vqt.to_model_pixels(image))[0, 0]
    expected = torch.zeros(4, 4)
    expected[1, 2] = 1
    assert torch.equal(mask, expected)


def test_pixel_conversions_round_trip_and_reject_bad_input() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    assert np.array_equal(vqt.to_uint8(vqt.to_model_pixels(images)), images)
    with pytest.raises(ValueError, match="uint8"):
        vqt.to_model_pixels(images.astype(np.float32))


def test_recovery_rate_counts_exact_scene_matches() -> None:
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, 1, 3) for _ in range(4)]
    images = np.stack([render_scene(s, 32) for s in scenes])
    blank = images.copy()
    blank[:2] = 220  # two images lose every object
    assert vqt.recovery_rate(images, scenes) == 1.0
    assert vqt.recovery_rate(blank, scenes) == 0.5
    with pytest.raises(ValueError, match="3 images for 4 scenes"):
        vqt.recovery_rate(images[:3], scenes)


# ----------------------------------------------------------------------------- LM


def test_sft_target_is_well_formed_and_scores_as_correct() -> None:
    text = lm.completion_text(["2", "3", "4", "0"], "D")
    assert text == "<think>0</think><answer>D</answer>"
    assert format_reward([""], [text]) == [1.0]
    assert mc_accuracy([""], [text], und_options=[["2", "3", "4", "0"]], und_answer=["D"]) == [1.0]


@pytest.mark.parametrize(
    ("options", "answer", "said"),
    [
        (["red", "blue", "green", "cyan"], "B", "blue"),
        (["2", "3", "4", "0"], "D", "0"),  # a number, not a letter: still option D
        (["to the left", "to the right", "above", "below"], "c", "above"),
    ],
)
def test_text_answers_name_the_option_and_score_as_that_option(
    options: list[str], answer: str, said: str
) -> None:
    text = lm.completion_text(options, answer, answer_style="text")
    assert text == f"<think>{said}</think><answer>{said}</answer>"
    assert format_reward([""], [text]) == [1.0]
    assert mc_accuracy([""], [text], und_options=[options], und_answer=[answer]) == [1.0]
    wrong = next(o for o in options if o != said)
    wrong_text = lm.completion_text(options, "ABCD"[options.index(wrong)], answer_style="text")
    assert mc_accuracy([""], [wrong_text], und_options=[options], und_answer=[answer]) == [0.0]


def test_unknown_answer_style_is_refused() -> None:
    with pytest.raises(ValueError, match="answer_style"):
        lm.completion_text(["a", "b"], "A", answer_style="number")


def test_scene_think_lists_objects_left_to_right() -> None:
    from pairuni.shapes.scene import Scene

    scene = Scene.from_dict(
        {
            "objects": [
                {"shape": "square", "color": "blue", "size": "large", "x": 0.7, "y": 0.3},
                {"shape": "circle", "color": "red", "size": "small", "x": 0.2, "y": 0.8},
            ]
        }
    )
    text = lm.completion_text(["A", "b", "c", "d"], "b", scene)
    assert text == "<think>small red circle, large blue square</think><answer>B</answer>"
    assert format_reward([""], [text]) == [1.0]


def test_boilerplate_becomes_single_tokens_and_decodes_back(policy: JanusPolicy) -> None:
    tok = policy.processor.tokenizer
    text = lm.completion_text(["red", "blue", "green", "cyan"], "B")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<think>" and pieces[-1] == "</answer>"
    prompt = policy.encode_generation(["a photo of a red circle"])["input_ids"][0]
    assert tok.convert_ids_to_tokens(prompt.tolist())[1] == "<|User|>: "


def test_understanding_loss_matches_per_sample_unpadded_forwards(policy: JanusPolicy) -> None:
    model = policy.model
    rng = np.random.default_rng(2)
    images = [Image.fromarray(render_scene(sample_scene(rng), 32)) for _ in range(2)]
    batch = policy.encode_understanding(
        images,
        ["What color is the circle?", "How many objects are there?"],
        [["red", "blue", "green", "cyan"], ["1", "2", "3", "4"]],
    )
    prompts = lm.unpad(batch["input_ids"], batch["attention_mask"])
    tok = policy.processor.tokenizer
    completions = [
        torch.tensor(tok(t + tok.eos_token, add_special_tokens=False)["input_ids"])
        for t in ("<think>red</think><answer>A</answer>", "<think>three objects</think>")
    ]
    with torch.no_grad():
        batched = lm.understanding_loss(
            model, prompts, completions, batch["pixel_values"], policy.ids.pad
        )
        total, count = 0.0, 0
        for i in range(2):  # one unpadded row at a time, positions 0..L-1
            ids = torch.cat([prompts[i], completions[i]])[None]
            out = model.model(input_ids=ids, pixel_values=batch["pixel_values"][i : i + 1])
            logits = model.lm_head(out.last_hidden_state)[0]
            start = len(prompts[i])
            for j in range(len(completions[i])):
                logp = torch.log_softmax(logits[start + j - 1], -1)[completions[i][j]]
                total -= float(logp)
                count += 1
    assert math.isclose(float(batched), total / count, rel_tol=1e-4)


def test_generation_loss_is_minus_the_policys_mean_image_logprob(policy: JanusPolicy) -> None:
    prompts = ["a photo of a red circle", "a photo of two squares"]
    rollout = policy.rollout_image(prompts, 1, generator=3, decode=False)
    rows = lm.unpad(rollout.prompt_ids, rollout.prompt_mask)
    with torch.no_grad():
        ours = lm.generation_loss(policy.model, rows, rollout.image_ids, policy.ids.pad)
        reference = policy.image_logprobs(rollout, cfg_in_logprob=False)  # cfg_scale is 1 here
    assert math.isclose(float(ours), -float(reference.mean()), rel_tol=1e-4)


def test_left_pad_and_unpad_are_inverse() -> None:
    rows = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    ids, mask = lm.left_pad(rows, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert [r.tolist() for r in lm.unpad(ids, mask)] == [[5, 6, 7], [8]]
    assert lm.positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_learning_rate_schedule_by_hand() -> None:
    settings = lm.SFTSettings(
        steps=12, batch_size=1, learning_rate=1.0, warmup_steps=2, cfg_dropout=0.0, gen_weight=1.0
    )
    assert lm.learning_rate_at(0, settings) == pytest.approx(0.5)
    assert lm.learning_rate_at(1, settings) == pytest.approx(1.0)
    assert lm.learning_rate_at(2, settings) == pytest.approx(1.0)  # cosine starts at the peak
    assert lm.learning_rate_at(7, settings) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway
    assert lm.learning_rate_at(12, settings) == pytest.approx(0.1)


def test_config_rejects_bad_shapes_with_the_fix() -> None:
    with pytest.raises(ValueError, match="power of 2"):
        PretrainConfig(latent_side=6)
    with pytest.raises(ValueError, match="does not divide"):
        PretrainConfig(hidden_size=130, num_heads=4)
    with pytest.raises(ValueError, match="question"):
        PretrainConfig(und_prompt_template="no placeholder")


# ----------------------------------------------------------------------------- full build


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict:
    return pretrain(tmp_path_factory.mktemp("full") / "base", PretrainConfig())


@pytest.mark.slow
def test_full_pretrain_vq_is_readable_and_answers_are_well_formed(full_report: dict) -> None:
    # measured 2026-11-29: VQ recovery 0.895, format 1.0 (greedy) / 0.98 (T=1)
    assert full_report["vq"]["recovery_rate_heldout"] >= 0.8
    assert full_report["eval"]["understanding_greedy"]["format"] >= 0.9
    assert full_report["eval"]["understanding_t1"]["format"] >= 0.9
    assert full_report["sft"]["gen_loss_last_10"] < 0.7 * full_report["sft"]["gen_loss_first_10"]


@pytest.mark.slow
def test_full_pretrain_understands_at_a_middling_rate(full_report: dict) -> None:
    # measured 2026-11-29: 0.405 greedy on the held-out questions (chance 0.25); with answers
    # as letters (answer_style letter) it stayed at 0.20-0.28
    accuracy = full_report["eval"]["understanding_greedy"]["accuracy"]
    assert 0.3 <= accuracy <= 0.75


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="not reached yet: GenEval-style 0.08-0.13 after 2,000-3,000 SFT steps (widths 128 "
    "and 192); single-object prompts often come out blank. See docs/shapes.md 'Base model'",
)
def test_full_pretrain_generates_at_a_middling_rate(full_report: dict) -> None:
    assert 0.2 <= full_report["eval"]["generation_cfg"]["overall"] <= 0.6
