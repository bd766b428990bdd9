"""DimooPolicy: the masked-diffusion backend behind the trainer's protocol, on the tiny
checkpoint in the released layout (32 px images -> 2 x 2 codes)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.dimoo.policy import DimooImageRollout, DimooPolicy, DimooTextRollout
from pairuni.policy.dimoo.tiny import write_tiny_dimoo


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_dimoo(tmp_path_factory.mktemp("dimoo") / "tiny")


def make_policy(checkpoint, **dimoo) -> DimooPolicy:
    settings = {"image_size": 32, "image_steps": 3, "text_steps": 4, **dimoo}
    rollout = RolloutConfig(max_new_tokens=8, dimoo=settings, cfg_scale=3.0)
    return DimooPolicy.load(checkpoint, ModelConfig(dtype="float32", device="cpu"), rollout)


def images(n: int) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(0)
    return [
        Image.fromarray((torch.rand(32, 32, 3, generator=gen) * 255).byte().numpy())
        for _ in range(n)
    ]


def test_rollouts_have_the_protocol_shapes(checkpoint):
    policy = make_policy(checkpoint)
    text = policy.rollout_text(images(2), ["what is it?", "how many?"], 3, generator=0)
    assert isinstance(text, DimooTextRollout) and len(text) == 6
    assert text.completion_ids.shape == (6, 8) and len(text.texts) == 6
    assert text.group.tolist() == [0, 0, 0, 1, 1, 1]
    image = policy.rollout_image(["a red square", "a blue disc"], 2, generator=1)
    assert isinstance(image, DimooImageRollout) and len(image) == 4
    assert image.image_ids.shape == (4, 4)
    assert ((image.image_ids >= 0) & (image.image_ids < policy.ids.codebook_size)).all()
    assert len(image.images) == 4 and image.images[0].size == (32, 32)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_trajectory_logprobs_equal_the_sampling_ones_and_carry_gradient(checkpoint, kind):
    policy = make_policy(checkpoint)
    if kind == "text":
        ro = policy.rollout_text(images(2), ["q one", "q two"], 2, generator=3)
        logp, mask = policy.text_logprobs(ro), ro.completion_mask
    else:
        ro = policy.rollout_image(["a red square", "two green discs"], 2, generator=3)
        logp, mask = policy.image_logprobs(ro), torch.ones_like(ro.image_ids)
    assert mask.sum() > 0
    torch.testing.assert_close(logp * mask, ro.logprobs * mask, atol=1e-5, rtol=0)
    assert policy.recorded_logprobs_are_exact(kind)
    (logp * mask).sum().backward()
    grads = [p.grad for p in policy.parameter_groups()["language_model"]]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_micro_batches_and_concatenation_keep_the_replay_exact(checkpoint):
    policy = make_policy(checkpoint)
    a = policy.rollout_text(images(1), ["short"], 2, generator=4)
    b = policy.rollout_text(
        images(1), ["a much longer question than the other one"], 2, generator=5
    )
    both = type(a).concat([a, b], policy.pad_id)
    with torch.no_grad():
        whole = policy.text_logprobs(both)
        part = policy.text_logprobs(both[2:4])
    torch.testing.assert_close(whole * both.completion_mask, both.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(part, whole[2:4], atol=1e-5, rtol=0)


@pytest.mark.parametrize("estimator", ["mean_field", "random_mask"])
def test_other_estimators_are_deterministic_per_row(checkpoint, estimator):
    policy = make_policy(checkpoint, logprob=estimator)
    assert not policy.recorded_logprobs_are_exact("generation")
    ro = policy.rollout_image(["a red square"], 3, generator=6)
    with torch.no_grad():
        first, again = policy.image_logprobs(ro), policy.image_logprobs(ro)
        alone = policy.image_logprobs(ro[1:2])
    assert first.shape == ro.image_ids.shape and torch.isfinite(first).all()
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(alone, first[1:2], atol=1e-5, rtol=0)
    assert (first <= 0).all()


def test_seeds_reproduce_and_greedy_ignores_them(checkpoint):
    policy = make_policy(checkpoint)
    one = policy.rollout_image(["a red square"], 2, generator=7, decode=False)
    two = policy.rollout_image(["a red square"], 2, generator=7, decode=False)
    assert torch.equal(one.image_ids, two.image_ids)
    g1 = policy.rollout_image(["a red square"], 1, greedy=True, generator=1, decode=False)
    g2 = policy.rollout_image(["a red square"], 1, greedy=True, generator=2, decode=False)
    assert torch.equal(g1.image_ids, g2.image_ids)


def test_edit_images_and_save_round_trip(checkpoint, tmp_path):
    policy = make_policy(checkpoint)
    edited = policy.edit_images(images(2), ["make it red", "remove the disc"], generator=0)
    assert len(edited) == 2 and edited[0].size == (32, 32)
    policy.save(tmp_path / "out")
    again = make_policy(tmp_path / "out")
    ids = torch.tensor([[policy.ids.boi, policy.ids.mask, policy.ids.eoi]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(again.model.logits(ids, mask), policy.model.logits(ids, mask))


def test_bad_settings_are_refused(checkpoint):
    with pytest.raises(ValueError, match="dimoo backend does not"):
        DimooPolicy.load(checkpoint, ModelConfig(trainable=["language_model", "vision_model"]))
    policy = make_policy(checkpoint)
    with pytest.raises(ValueError, match="image_size"):
        policy.decode_images(torch.zeros(1, 9, dtype=torch.long))


def test_the_head_fast_path_samples_what_the_full_logits_sample(checkpoint):
    """`DimooModel` scores only the generated positions and the vocabulary rows read; a plain
    logits function over (B, S, V) must give the same rollout."""
    from pairuni.policy.dimoo.sampling import sample_images, sample_text
    from pairuni.policy.dimoo.sequence import text_to_image_layout, understanding_layout

    policy = make_policy(checkpoint)
    model = policy.model
    assert model.scores_positions

    def plain(ids, mask):
        return model.logits(ids, mask)

    layout = text_to_image_layout(model.tokenizer, ["a red square", "b"], 2, 2, policy.ids)
    settings = policy.image_sampling()
    fast, slow = (sample_images(fn, layout, settings, [1, 2]) for fn in (model, plain))
    assert torch.equal(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)
    codes = [torch.zeros(2, 2, dtype=torch.long)] * 2
    layout = understanding_layout(model.tokenizer, ["q", "a longer q"], codes, 8, policy.ids)
    fast, slow = (sample_text(fn, layout, policy.text_sampling(), [3, 4]) for fn in (model, plain))
    assert torch.equal(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)
