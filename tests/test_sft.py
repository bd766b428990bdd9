"""`pairuni sft` on the tiny random Janus: the loss is the answers' and image codes'
cross-entropy (checked against an independent forward through transformers' modules), it falls
on the demo pairs, resume is bitwise, and pairs without a target image fail at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.training.sft import SFTTrainer
from pairuni.training.trainer import TrainingSetupError
from trainer_helpers import make_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    return make_assets(tmp_path_factory.mktemp("sft"))


def config(assets: dict[str, Path], out: Path, **sections: Any) -> PairUniConfig:
    train = {"pairs_per_step": 4, "learning_rate": 3e-3, **sections.pop("train", {})}
    data = {"path": str(assets["pairs"]), "kinds": "aligned", **sections.pop("data", {})}
    raw = demo.demo_config(assets["model"], assets["pairs"], out, train=train, data=data)
    raw.update(sections)
    return PairUniConfig.model_validate(raw)


def losses(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_is_the_token_mean_cross_entropy_of_each_task(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    # sampling temperatures of RL: SFT's cross-entropy is at temperature 1 whatever they are
    rollout = {"max_new_tokens": 5, "text_temperature": 0.7, "image_temperature": 0.8}
    trainer = SFTTrainer(config(assets, tmp_path, sft={"uncond_prob": 0.0}, rollout=rollout))
    pairs = trainer.sampler.pairs[:3]
    und = trainer._text_targets(pairs)
    gen = trainer._image_targets(pairs, [0, 1, 2])
    policy, model = trainer.policy, trainer.policy.model  # type: ignore[attr-defined]
    with torch.no_grad():
        ours_und = (
            -(policy.text_logprobs(und) * und.completion_mask).sum() / und.completion_mask.sum()
        )
        ours_gen = -policy.image_logprobs(gen).mean()
        # independent: the full HF forward's lm_head logits, shifted by one
        ids = torch.cat([und.prompt_ids, und.completion_ids], 1)
        mask = torch.cat([und.prompt_mask, und.completion_mask], 1)
        out = model(
            input_ids=ids,
            pixel_values=und.pixel_values,
            attention_mask=mask,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        )
        logits = out.logits[:, und.prompt_ids.shape[1] - 1 : -1].float()
        # answers never hold image markers: rollouts and SFT share the distribution without them
        banned = [policy.ids.image, policy.ids.boi]
        eoi = getattr(policy.processor.tokenizer, "eoi_token_id", None)
        banned += [eoi] if isinstance(eoi, int) else []
        logits[..., banned] = float("-inf")
        keep = und.completion_mask.bool()
        want_und = F.cross_entropy(logits[keep].float(), und.completion_ids[keep])
        # generation: [prompt ; codes 0..N-2] through the language model, generation head
        codes = gen.image_ids
        embeds = torch.cat(
            [
                model.get_input_embeddings()(gen.prompt_ids),
                model.prepare_embeddings_for_image_generation(codes[:, :-1]),
            ],
            1,
        )
        full = torch.cat([gen.prompt_mask, gen.prompt_mask.new_ones(3, codes.shape[1] - 1)], 1)
        hidden = model.model.language_model(
            inputs_embeds=embeds,
            attention_mask=full,
            position_ids=(full.cumsum(1) - 1).clamp(min=0),
        ).last_hidden_state[:, gen.prompt_ids.shape[1] - 1 :]
        head = model.model.generation_head(hidden).float()
        want_gen = F.cross_entropy(head.flatten(0, 1), codes.flatten())
    torch.testing.assert_close(ours_und, want_und, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_gen, want_gen, atol=1e-5, rtol=1e-5)
    # the answers are the template around und_answer, and end in EOS
    assert und.texts[0] == f"<answer>{pairs[0].und_answer}</answer>"
    last = und.completion_mask.sum(1) - 1
    assert int(und.completion_ids[0, last[0]]) in policy.ids.eos


def test_image_codes_are_the_cosine_nearest_codes(assets: dict[str, Path], tmp_path: Path) -> None:
    trainer = SFTTrainer(config(assets, tmp_path))
    policy = trainer.policy
    image = trainer.sampler.pairs[0].und_image.open(trainer.base_dir)
    codes = policy.image_codes([image])  # type: ignore[attr-defined]
    vq = policy.model.model.vqmodel  # type: ignore[attr-defined]
    side = policy.generation_image_size  # type: ignore[attr-defined]
    pixels = torch.tensor(__import__("numpy").array(image.convert("RGB").resize((side, side), 3)))
    pixels = pixels.float().view(side, side, 3).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        latent = vq.quant_conv(vq.encoder(pixels))[0].flatten(1).T  # (N, D)
    book = vq.quantize.embedding.weight
    for n in range(0, latent.shape[0], 7):
        cos = [float(F.cosine_similarity(latent[n], row, dim=0)) for row in book]
        assert int(codes[0, n]) == max(range(len(cos)), key=cos.__getitem__)
    assert codes.shape == (1, policy.num_image_tokens)  # type: ignore[attr-defined]


def test_sft_lowers_both_losses(assets: dict[str, Path], tmp_path: Path) -> None:
    SFTTrainer(config(assets, tmp_path, train={"max_steps": 20})).train()
    und, gen = losses(tmp_path, "und/loss"), losses(tmp_path, "gen/loss")
    assert sum(und[-3:]) / 3 < 0.3 * und[0], und
    assert sum(gen[-3:]) / 3 < 0.5 * gen[0], gen


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train = {"max_steps": 4, "save_every": 2}
    SFTTrainer(config(assets, straight, train=train)).train()
    SFTTrainer(config(assets, killed, train=train)).train()
    import shutil

    shutil.rmtree(killed / "checkpoint-4")  # as if killed after step 3 was logged
    resumed = SFTTrainer(config(assets, killed, train=train), resume=True)
    assert resumed.step == 2
    resumed.train()
    a = load_file(straight / "checkpoint-4" / "model" / "model.safetensors")
    b = load_file(killed / "checkpoint-4" / "model" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert losses(straight, "loss") == losses(killed, "loss")


def test_retrieved_pairs_without_a_target_image_fail_at_start(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(TrainingSetupError, match=r"retrieved pairs .* have no gen_image"):
        SFTTrainer(config(assets, tmp_path, data={"kinds": "all"}))
    SFTTrainer(config(assets, tmp_path / "und", data={"kinds": "all"}, sft={"gen_weight": 0.0}))


def test_unconditional_prompts_follow_uncond_prob(assets: dict[str, Path], tmp_path: Path) -> None:
    trainer = SFTTrainer(config(assets, tmp_path, sft={"uncond_prob": 0.5}))
    pairs = trainer.sampler.pairs[:4]
    record = trainer._image_targets(pairs, [0, 1, 2, 3])
    policy = trainer.policy
    blank = (record.prompt_ids == policy.unconditional_ids(record.prompt_ids)).all(1)  # type: ignore[attr-defined]
    draws = torch.rand(
        4,
        generator=__import__("pairuni.training.sampler", fromlist=["x"]).make_generator(
            3, "sft-uncond", 0
        ),
    )
    assert blank.tolist() == (draws < 0.5).tolist()


def test_sft_command_runs_end_to_end(assets: dict[str, Path], tmp_path: Path) -> None:
    from pairuni.cli import app

    file = tmp_path / "sft.yaml"
    file.write_text(
        json.dumps(config(assets, tmp_path / "out", train={"max_steps": 2}).model_dump(mode="json"))
    )
    result = CliRunner().invoke(app, ["sft", "--config", str(file)])
    assert result.exit_code == 0, result.output
    assert "done: 2 SFT steps" in result.output
    assert (tmp_path / "out" / "checkpoint-2" / "model").is_dir()
