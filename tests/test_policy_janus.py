"""JanusPolicy on the tiny random checkpoint: rollout log-probs vs teacher forcing (text and
images, with and without CFG), the off-by-one guard, HF parity, EOS masks and batching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from janus_helpers import PROMPTS, QUESTIONS, TOL, images, load
from pairuni.policy.base import ImageRollout, TextRollout, UnifiedPolicy
from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.janus import (
    JanusPolicy,
    position_ids_from_mask,
    sample_from_logits,
    top_p_filter,
)
from pairuni.policy.tiny import BOS

# ----------------------------------------------------------------------------- pure helpers


def test_top_p_filter_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    # sorted: 0.5, 0.25, 0.15, 0.1 -> mass before each: 0, 0.5, 0.75, 0.9; top_p 0.7 keeps two
    expected = torch.tensor([[0.0, 0.5 / 0.75, 0.0, 0.25 / 0.75]])
    torch.testing.assert_close(top_p_filter(probs, 0.7), expected)
    torch.testing.assert_close(top_p_filter(probs, 0.01), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert top_p_filter(probs, 1.0) is probs


def test_sample_from_logits_reports_temperature_logprob() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    tok, logp = sample_from_logits(logits, 2.0, greedy=True)
    scaled = [0.5, 1.5, 1.0]
    log_z = torch.tensor(scaled).exp().sum().log().item()
    assert tok.item() == 1
    assert logp.item() == pytest.approx(1.5 - log_z, abs=1e-6)


def test_position_ids_count_real_tokens_only() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


# ----------------------------------------------------------------------------- the checkpoint


def test_tiny_model_is_small_and_loads_like_a_real_checkpoint(policy: JanusPolicy) -> None:
    assert sum(p.numel() for p in policy.model.parameters()) < 1_000_000
    assert isinstance(policy, UnifiedPolicy)
    tok = policy.processor.tokenizer
    # ids come from the checkpoint, and sit where no real checkpoint has them
    assert policy.ids.pad == tok.convert_tokens_to_ids("<｜▁pad▁｜>")
    assert policy.ids.boi == tok.convert_tokens_to_ids("<begin_of_image>")
    assert policy.ids.image == policy.model.config.image_token_id
    assert len({policy.ids.bos, policy.ids.pad, policy.ids.boi, policy.ids.image}) == 4


# ----------------------------------------------------------------------------- understanding


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.8)])
def test_text_sampling_logprobs_equal_teacher_forced(
    tiny_dir: Path, temperature: float, top_p: float
) -> None:
    policy = load(tiny_dir, text_temperature=temperature, top_p=top_p)
    rollout = policy.rollout_text(images(), QUESTIONS, 3, generator=1)
    assert rollout.completion_ids.shape[0] == 6
    assert rollout.group.tolist() == [0, 0, 0, 1, 1, 1]
    assert rollout.pixel_values.shape[1:] == (3, 32, 32)  # 37x23 and 50x90 inputs, resized
    # the two prompts differ in length, so the batch really is left-padded
    assert (rollout.prompt_mask == 0).any()
    teacher = policy.text_logprobs(rollout)
    assert teacher.requires_grad
    torch.testing.assert_close(teacher.detach(), rollout.logprobs, atol=TOL, rtol=0)


def naive_text_logprobs(
    policy: JanusPolicy, rollout: TextRollout, temperature: float
) -> torch.Tensor:
    """The documented distribution with none of the policy's sampling code: no cache, no padding,
    no shared helpers. For answer token j, run the model on the image + prompt + answer[:j], put
    the LAST hidden state through lm_head, ban the image markers, then log softmax(l / T)."""
    model = policy.model
    out = torch.zeros_like(rollout.logprobs)
    with torch.no_grad():
        for b in range(len(rollout)):
            prompt = rollout.prompt_ids[b][rollout.prompt_mask[b].bool()]
            answer = rollout.completion_ids[b]
            for j in range(int(rollout.completion_mask[b].sum())):
                ids = torch.cat([prompt, answer[:j]])[None]
                pixels = rollout.pixel_values[b : b + 1]
                h = model.model(input_ids=ids, pixel_values=pixels).last_hidden_state[0, -1]
                logits = model.lm_head(h).float()
                logits[policy._banned_text_ids] = float("-inf")
                out[b, j] = torch.log_softmax(logits / temperature, -1)[answer[j]]
    return out


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 0.8), (1.6, 1.0)])
def test_text_sampling_logprobs_equal_an_uncached_loop_at_any_temperature(
    tiny_dir: Path, temperature: float, top_p: float
) -> None:
    # the test above compares two paths that share text_logits and the temperature code; this
    # loop shares neither, so a temperature applied twice (or never) in both shows here
    policy = load(tiny_dir, text_temperature=temperature, top_p=top_p, max_new_tokens=4)
    rollout = policy.rollout_text(images(), QUESTIONS, 2, generator=4)
    naive = naive_text_logprobs(policy, rollout, temperature)
    torch.testing.assert_close(rollout.logprobs, naive, atol=TOL, rtol=0)
    torch.testing.assert_close(policy.text_logprobs(rollout).detach(), naive, atol=TOL, rtol=0)


def rollout_with_likely_eos(policy: JanusPolicy) -> TextRollout:
    eos = policy.ids.eos[0]
    bias = torch.zeros(policy.model.lm_head.out_features)
    bias[eos] = 30.0
    coin = torch.Generator().manual_seed(0)

    def make_eos_likely(_module: object, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        # with probability 1/4 per row and step, EOS wins: rows end at different steps
        hit = torch.rand(out.shape[:-1], generator=coin)[..., None] < 0.25
        return out + torch.where(hit, bias, 0.0)

    handle = policy.model.lm_head.register_forward_hook(make_eos_likely)
    try:
        return policy.rollout_text(images(), QUESTIONS, 4, generator=3)
    finally:
        handle.remove()


def test_completion_mask_stops_after_first_eos(tiny_dir: Path) -> None:
    policy = load(tiny_dir, max_new_tokens=40)
    eos = policy.ids.eos[0]
    rollout = rollout_with_likely_eos(policy)
    ids, mask = rollout.completion_ids, rollout.completion_mask
    lengths = []
    for row_ids, row_mask, row_lp in zip(ids, mask, rollout.logprobs, strict=True):
        hits = (row_ids == eos).nonzero().flatten().tolist()
        end = hits[0] + 1 if hits else ids.shape[1]
        lengths.append(end)
        assert row_mask[:end].eq(1).all() and row_mask[end:].eq(0).all()
        assert row_ids[end:].eq(policy.ids.pad).all()
        assert row_lp[end:].eq(0).all()
    assert len(set(lengths)) > 1, "rows should end at different steps"
    assert ids.shape[1] == max(lengths) < 40, "generation stops when every row has ended"


def test_under_collective_forwards_answers_run_to_max_new_tokens_unchanged(tiny_dir: Path) -> None:
    """Under FSDP every forward is a collective, so no process may stop early (another may
    still be generating): the same answers, padded to max_new_tokens."""
    policy = load(tiny_dir, max_new_tokens=40)
    free = rollout_with_likely_eos(policy)
    policy.collective_forwards = True
    locked = rollout_with_likely_eos(policy)
    length = free.completion_ids.shape[1]
    assert length < 40 and locked.completion_ids.shape[1] == 40
    assert torch.equal(locked.completion_ids[:, :length], free.completion_ids)
    assert torch.equal(locked.completion_mask[:, :length], free.completion_mask)
    torch.testing.assert_close(locked.logprobs[:, :length], free.logprobs, rtol=0, atol=0)
    assert not locked.completion_mask[:, length:].any()
    assert locked.completion_ids[:, length:].eq(policy.ids.pad).all()


def test_answers_never_contain_image_marker_tokens(tiny_dir: Path) -> None:
    """A sampled <image_placeholder> would make teacher forcing expect image features; the text
    distribution excludes the image markers in sampling and teacher forcing alike."""
    policy = load(tiny_dir, max_new_tokens=6)
    markers = policy._banned_text_ids.tolist()
    assert {policy.ids.image, policy.ids.boi} <= set(markers)
    bias = torch.zeros(policy.model.lm_head.out_features)
    bias[markers] = 50.0

    def prefer_markers(_module: object, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        return out + bias

    handle = policy.model.lm_head.register_forward_hook(prefer_markers)
    try:
        rollout = policy.rollout_text(images(), QUESTIONS, 2, generator=5)
        teacher = policy.text_logprobs(rollout)
    finally:
        handle.remove()
    assert not torch.isin(rollout.completion_ids, torch.tensor(markers)).any()
    torch.testing.assert_close(teacher.detach(), rollout.logprobs, atol=TOL, rtol=0)


def test_greedy_text_rollout_matches_hf_generate(policy: JanusPolicy) -> None:
    image = images()[0]
    rollout = policy.rollout_text([image], [QUESTIONS[0]], 1, greedy=True)
    batch = policy.encode_understanding([image], [QUESTIONS[0]])
    hf = policy.model.generate(**batch, do_sample=False, max_new_tokens=10, min_new_tokens=10)
    n = int(rollout.completion_mask.sum())
    assert (
        rollout.completion_ids[0, :n].tolist() == hf[0, batch["input_ids"].shape[1] :][:n].tolist()
    )


def test_text_batch_with_mixed_lengths_equals_one_at_a_time(policy: JanusPolicy) -> None:
    both = policy.rollout_text(images(), QUESTIONS, 1, greedy=True)
    for i in range(2):
        one = policy.rollout_text([images()[i]], [QUESTIONS[i]], 1, greedy=True)
        n = one.completion_ids.shape[1]
        assert both.completion_ids[i, :n].tolist() == one.completion_ids[0].tolist()
        torch.testing.assert_close(both.logprobs[i, :n], one.logprobs[0], atol=TOL, rtol=0)
        torch.testing.assert_close(
            policy.text_logprobs(both[i]).detach()[0, :n],
            policy.text_logprobs(one).detach()[0],
            atol=TOL,
            rtol=0,
        )


def test_system_prompt_default_custom_and_none(tiny_dir: Path) -> None:
    def prompt_text(system: str | None) -> str:
        policy = JanusPolicy.load(
            tiny_dir, ModelConfig(device="cpu"), RolloutConfig(system_prompt=system)
        )
        ids = policy.encode_understanding(images()[:1], QUESTIONS[:1])["input_ids"][0]
        return policy.processor.tokenizer.decode(ids)

    default, custom, none = prompt_text(None), prompt_text("Be brief."), prompt_text("")
    assert "You are a helpful language and vision assistant" in default
    assert "Be brief.\n\n<|User|>:" in custom and "helpful language" not in custom
    assert "helpful language" not in none and "Be brief" not in none
    for text in (default, custom, none):
        assert text.startswith(BOS) and text.endswith("<|Assistant|>:")


def test_options_and_template_reach_the_prompt(policy: JanusPolicy) -> None:
    text = policy.understanding_prompt("Which shape?", ["circle", "square"])
    assert "Which shape?\nA. circle\nB. square" in text
    assert "<answer>" in text and text.rstrip().endswith("<|Assistant|>:")
    assert text.count(policy.processor.image_token) == 1


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize(("cfg_scale", "temperature"), [(5.0, 1.0), (3.0, 0.7), (1.0, 1.0)])
def test_image_sampling_logprobs_equal_teacher_forced(
    tiny_dir: Path, cfg_scale: float, temperature: float
) -> None:
    policy = load(tiny_dir, cfg_scale=cfg_scale, image_temperature=temperature)
    rollout = policy.rollout_image(PROMPTS, 2, generator=5, decode=False)
    assert rollout.image_ids.shape == (4, policy.num_image_tokens)
    assert (rollout.prompt_mask == 0).any()
    teacher = policy.image_logprobs(rollout)
    assert teacher.requires_grad
    torch.testing.assert_close(teacher.detach(), rollout.logprobs, atol=TOL, rtol=0)


def test_conditional_only_logprobs_are_not_the_sampler_under_cfg(tiny_dir: Path) -> None:
    policy = load(tiny_dir, cfg_scale=5.0, cfg_in_logprob=False)
    rollout = policy.rollout_image(PROMPTS[:1], 2, generator=0, decode=False)
    cond_only = policy.image_logprobs(rollout).detach()
    assert (cond_only - rollout.logprobs).abs().max() > 1e-2
    torch.testing.assert_close(
        policy.image_logprobs(rollout, cfg_in_logprob=True).detach(),
        rollout.logprobs,
        atol=TOL,
        rtol=0,
    )


def naive_image_logprobs(
    policy: JanusPolicy,
    rollout: ImageRollout,
    shift: int,
    num_codes: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """No cache, no slicing arithmetic, no shared helpers: for code j, run the LM on
    prompt + codes[:j + shift] per branch, read the LAST hidden state, combine the generation
    head's logits as l_u + w (l_c - l_u) and take log softmax(l / T). shift=0 is correct;
    shift=1 is the classic off-by-one."""
    model, w = policy.model, policy.rollout_config.cfg_scale
    rows = []
    with torch.no_grad():
        for b in range(len(rollout)):
            real = rollout.prompt_mask[b].bool()
            prompt = rollout.prompt_ids[b][real][None]
            codes = rollout.image_ids[b]
            out = []
            for j in range(num_codes or codes.shape[0]):
                prefix = codes[: min(j + shift, codes.shape[0])][None]
                branch_logits = []
                for ids in (prompt, policy.unconditional_ids(prompt)):
                    emb = torch.cat(
                        [
                            model.get_input_embeddings()(ids),
                            model.prepare_embeddings_for_image_generation(prefix),
                        ],
                        dim=1,
                    )
                    h = model.model.language_model(inputs_embeds=emb).last_hidden_state[:, -1]
                    branch_logits.append(model.model.generation_head(h)[0].float())
                cond, uncond = branch_logits
                guided = uncond + w * (cond - uncond)
                out.append(torch.log_softmax(guided / temperature, -1)[codes[j]])
            rows.append(torch.stack(out))
    return torch.stack(rows)


def test_hidden_state_at_begin_of_image_predicts_code_zero(policy: JanusPolicy) -> None:
    # row 0 is the short, left-padded prompt of a mixed batch; the naive loop sees it unpadded
    rollout = policy.rollout_image(PROMPTS, 1, generator=2, decode=False)[0]
    assert (rollout.prompt_mask == 0).any()
    teacher = policy.image_logprobs(rollout).detach()
    right = naive_image_logprobs(policy, rollout, shift=0)
    torch.testing.assert_close(teacher, right, atol=TOL, rtol=0)
    torch.testing.assert_close(rollout.logprobs, right, atol=TOL, rtol=0)
    off_by_one = naive_image_logprobs(policy, rollout, shift=1, num_codes=4)
    assert (off_by_one - right[:, :4]).abs().max() > 1e-2, "the guard must be able to fail"


@pytest.mark.parametrize(("cfg_scale", "temperature"), [(3.0, 0.7), (5.0, 1.6)])
def test_image_sampling_logprobs_equal_an_uncached_loop_at_any_temperature(
    tiny_dir: Path, cfg_scale: float, temperature: float
) -> None:
    # sampling and teacher forcing share _guided and the temperature code; the loop shares neither
    policy = load(tiny_dir, cfg_scale=cfg_scale, image_temperature=temperature)
    rollout = policy.rollout_image(PROMPTS, 1, generator=7, decode=False)
    naive = naive_image_logprobs(policy, rollout, shift=0, temperature=temperature)
    torch.testing.assert_close(rollout.logprobs, naive, atol=TOL, rtol=0)
    torch.testing.assert_close(policy.image_logprobs(rollout).detach(), naive, atol=TOL, rtol=0)


def test_greedy_image_rollout_equals_hf_generate(policy: JanusPolicy) -> None:
    # a left-padded batch of two prompts, 2 samples each (HF gets the rows repeated)
    ours = policy.rollout_image(PROMPTS, 2, greedy=True, decode=False).image_ids
    batch = policy.encode_generation(PROMPTS)
    rows = torch.tensor([0, 0, 1, 1])
    hf = policy.model.generate(
        input_ids=batch["input_ids"][rows],
        attention_mask=batch["attention_mask"][rows],
        generation_mode="image",
        do_sample=False,
        guidance_scale=5.0,
    )
    assert (batch["attention_mask"] == 0).any()
    assert len(set(hf[0].tolist())) > 3, "a degenerate model would make this test vacuous"
    assert not torch.equal(hf[0], hf[2]), "different prompts should give different images"
    assert ours.tolist() == hf.tolist()


def test_unconditional_branch_masks_what_hf_masks(policy: JanusPolicy) -> None:
    batch = policy.encode_generation(PROMPTS)
    seen: list[torch.Tensor] = []
    hook = policy.model.get_input_embeddings().register_forward_hook(
        lambda _m, inputs, _o: seen.append(inputs[0].clone())
    )
    try:
        policy.model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            generation_mode="image",
            do_sample=False,
            guidance_scale=5.0,
        )
    finally:
        hook.remove()
    hf_ids = seen[0]  # the [cond; uncond] prompt HF embeds once, before its loop
    ids = batch["input_ids"]
    assert hf_ids[: len(ids)].tolist() == ids.tolist()
    assert hf_ids[len(ids) :].tolist() == policy.unconditional_ids(ids).tolist()
    assert (policy.unconditional_ids(ids) == policy.ids.pad).sum() > (ids == policy.ids.pad).sum()


def test_image_batch_with_mixed_lengths_equals_one_at_a_time(policy: JanusPolicy) -> None:
    both = policy.rollout_image(PROMPTS, 1, greedy=True, decode=False)
    for i, prompt in enumerate(PROMPTS):
        one = policy.rollout_image([prompt], 1, greedy=True, decode=False)
        assert both.image_ids[i].tolist() == one.image_ids[0].tolist()
        torch.testing.assert_close(both.logprobs[i], one.logprobs[0], atol=TOL, rtol=0)


def test_decoded_images_have_the_vq_size(policy: JanusPolicy) -> None:
    rollout = policy.rollout_image(PROMPTS[:1], 3, generator=0)
    side = 4 * 2 ** (len(policy.model.config.vq_config.channel_multiplier) - 1)
    assert [im.size for im in rollout.images] == [(side, side)] * 3
    assert all(im.mode == "RGB" for im in rollout.images)
