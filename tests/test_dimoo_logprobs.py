"""DiMOO's log-prob estimators: trajectory replay equals the sampler, masks are seeded and
coupled, gradients flow."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dimoo_sampling_helpers import (
    IDS,
    Counting,
    FakeTokenizer,
    TinyBidirectional,
    codes_grid,
    with_eos_bias,
)
from pairuni.policy.dimoo.logprobs import (
    mean_field,
    num_groups,
    random_mask,
    score_tokens,
    trajectory,
)
from pairuni.policy.dimoo.sampling import (
    ImageSampling,
    TextSampling,
    sample_images,
    sample_text,
)
from pairuni.policy.dimoo.sequence import (
    editing_layout,
    text_to_image_layout,
    understanding_layout,
)

IMAGE = ImageSampling(steps=5, guidance=2.0, temperature=0.7)
TEXT = TextSampling(steps=4, block_length=4, temperature=0.8)
SEEDS = [3, 4, 5]


@pytest.fixture(scope="module")
def model() -> TinyBidirectional:
    torch.set_num_threads(2)
    return TinyBidirectional(seed=1)


@pytest.fixture(scope="module")
def image_rollout(model):
    layout = text_to_image_layout(
        FakeTokenizer(), ["a cat", "two dogs", "x"], 3, 4, IDS, system="S"
    )
    return sample_images(model.logits, layout, IMAGE, SEEDS)


@pytest.fixture(scope="module")
def text_rollout(model):
    """Row 0 stops after block 0 (its question holds '?': EOS pushed up), rows 1-2 run on."""
    images = [codes_grid(2, 2, 0), codes_grid(1, 3, 1), codes_grid(2, 1, 2)]
    layout = understanding_layout(
        FakeTokenizer(), ["what?", "how many", "q"], images, 8, IDS, system="S"
    )
    rollout = sample_text(eos_model(model), layout, TEXT, SEEDS)
    assert rollout.mask[0].sum() < 8 and rollout.mask[1:].all()
    return rollout


def eos_model(model):
    return with_eos_bias(
        model.logits, 1000 + ord("?"), bias=18.0
    )  # row 0: a token, EOS, ... (a mid-block stop)


# --- trajectory --------------------------------------------------------------------------------


def test_trajectory_reproduces_the_image_sampler(model, image_rollout):
    counter = Counting(model.logits)
    logp, mask = trajectory(counter, image_rollout)
    assert mask.all() and logp.dtype == torch.float32
    assert (logp - image_rollout.logprobs).abs().max() < 1e-5
    assert counter.calls == 2 * IMAGE.steps  # cond + uncond per step


def test_trajectory_reproduces_the_text_sampler_with_early_stop(model, text_rollout):
    counter = Counting(eos_model(model))
    logp, mask = trajectory(counter, text_rollout)
    assert torch.equal(mask, text_rollout.mask)
    on = mask.bool()
    assert (logp[on] - text_rollout.logprobs[on]).abs().max() < 1e-5
    assert (logp[~on] == 0).all()
    # row 0 stopped after block 0 (steps 0-1): it is left out of the forwards of steps 2-3
    assert counter.rows == 3 * 2 + 2 * 2


def test_trajectory_reproduces_editing_with_both_guidances(model):
    settings = ImageSampling(steps=3, guidance=1.5, image_guidance=2.0, temperature=0.9)
    sources = [codes_grid(2, 2, 4), codes_grid(2, 2, 5)]
    layout = editing_layout(FakeTokenizer(), ["red", "make it blue"], sources, IDS, system="E")
    rollout = sample_images(model.logits, layout, settings, [1, 2])
    logp, _ = trajectory(model.logits, rollout)
    assert (logp - rollout.logprobs).abs().max() < 1e-5
    dropped = dataclasses.replace(settings, image_guidance=0.0)
    assert (
        trajectory(model.logits, rollout, dropped).logprobs - rollout.logprobs
    ).abs().max() > 1e-3


@pytest.mark.parametrize(
    "planted",
    [{"guidance": 0.0}, {"temperature": 1.0}, {"guidance": 3.0}],
    ids=["guidance dropped", "temperature dropped", "guidance changed"],
)
def test_trajectory_with_the_wrong_settings_fails_the_check(model, image_rollout, planted):
    wrong = dataclasses.replace(IMAGE, **planted)
    logp, _ = trajectory(model.logits, image_rollout, wrong)
    assert (logp - image_rollout.logprobs).abs().max() > 1e-3


def test_trajectory_with_a_shifted_state_fails_the_check(model, image_rollout):
    """The replay state of step s must hold the tokens committed *before* s: shifting the
    recorded steps by one (tokens scored from the state after their own step) is caught."""
    shifted = dataclasses.replace(image_rollout, commit_step=image_rollout.commit_step + 1)
    shifted = dataclasses.replace(shifted, settings=dataclasses.replace(IMAGE, steps=6))
    same, _ = trajectory(model.logits, shifted)  # a uniform shift with the state rule: same
    assert (same - image_rollout.logprobs).abs().max() < 1e-5
    late = image_rollout.commit_step.clone()
    late[late > 0] -= 1  # steps 0 and 1 merged: tokens of step 1 scored from step 0's state
    wrong = dataclasses.replace(image_rollout, commit_step=late)
    logp, _ = trajectory(model.logits, wrong)
    assert (logp - image_rollout.logprobs).abs().max() > 1e-3


def test_trajectory_shrink_and_groups(model, image_rollout):
    counter = Counting(model.logits)
    logp, mask = trajectory(counter, image_rollout, shrink=2)
    assert mask.all() and counter.calls == 2 * num_groups(IMAGE.steps, 2) == 6
    first = image_rollout.commit_step < 2  # group 0 has the sampler's state of step 0 only
    step0 = image_rollout.commit_step == 0
    assert (logp[step0] - image_rollout.logprobs[step0]).abs().max() < 1e-5
    assert (logp[first & ~step0] - image_rollout.logprobs[first & ~step0]).abs().max() > 1e-4
    parts = [trajectory(model.logits, image_rollout, groups=[g]) for g in range(IMAGE.steps)]
    assert torch.equal(sum(p.mask for p in parts), torch.ones_like(parts[0].mask))
    total = sum(p.logprobs for p in parts)
    assert (total - image_rollout.logprobs).abs().max() < 1e-5
    with pytest.raises(ValueError, match="groups must lie"):
        trajectory(model.logits, image_rollout, groups=[5])


# --- mean field --------------------------------------------------------------------------------


def test_mean_field_scores_every_token_from_the_all_masked_state(model, image_rollout):
    logp, mask = mean_field(model.logits, image_rollout)
    state = torch.full_like(image_rollout.tokens, IDS.mask)
    want = score_tokens(model.logits, image_rollout.layout, state, image_rollout.tokens, IMAGE)
    assert mask.all() and torch.allclose(logp, want)
    # ...which is the sampler's own state at step 0
    step0 = image_rollout.commit_step == 0
    assert (logp[step0] - image_rollout.logprobs[step0]).abs().max() < 1e-5


def test_mean_field_prompt_masking_is_seeded_and_stays_in_the_prompt(model, text_rollout):
    counter = Counting(eos_model(model))
    a = mean_field(counter, text_rollout, p_mask_prompt=0.5, seeds=[1, 2, 3])
    cond = text_rollout.layout.cond
    seen = counter.inputs[0]
    changed = seen != cond.input_ids
    assert changed.any() and (seen[changed] == IDS.mask).all()
    columns = torch.arange(seen.shape[1])[None, :]
    in_prompt = columns < cond.prompt_lengths[:, None]
    assert not (changed & ~in_prompt).any()
    structural = torch.isin(cond.input_ids, torch.tensor([IDS.boi, IDS.eoi, IDS.newline]))
    assert not (changed & structural).any()
    b = mean_field(eos_model(model), text_rollout, p_mask_prompt=0.5, seeds=[1, 2, 3])
    assert torch.equal(a.logprobs, b.logprobs)
    c = mean_field(eos_model(model), text_rollout, p_mask_prompt=0.5, seeds=[7, 8, 9])
    assert not torch.equal(a.logprobs, c.logprobs)
    assert torch.equal(a.mask, text_rollout.mask)
    with pytest.raises(ValueError, match="one seed per row"):
        mean_field(model.logits, text_rollout, p_mask_prompt=0.5)


# --- random masking ----------------------------------------------------------------------------


def test_coupled_masks_score_each_token_once_per_pair(model, text_rollout):
    n = text_rollout.tokens.shape[1]
    logp, mask = random_mask(eos_model(model), text_rollout, seeds=SEEDS, copies=4, coupled=True)
    assert logp.shape == (3, 4 * n)
    for pair in range(2):
        both = (
            mask[:, 2 * pair * n : (2 * pair + 1) * n]
            + mask[:, (2 * pair + 1) * n : (2 * pair + 2) * n]
        )
        assert torch.equal(both, text_rollout.mask)
    again = random_mask(eos_model(model), text_rollout, seeds=SEEDS, copies=4, coupled=True)
    assert torch.equal(again.logprobs, logp)
    with pytest.raises(ValueError, match="even when coupled"):
        random_mask(model.logits, text_rollout, seeds=SEEDS, copies=3, coupled=True)


def test_random_mask_copy_matches_an_independent_computation(model, image_rollout):
    counter = Counting(model.logits)
    logp, mask = random_mask(counter, image_rollout, seeds=SEEDS, copies=1)
    masked = mask.bool()
    assert masked.any() and (~masked).any()
    state = torch.where(masked, IDS.mask, image_rollout.tokens)
    want = score_tokens(model.logits, image_rollout.layout, state, image_rollout.tokens, IMAGE)
    assert torch.allclose(logp, torch.where(masked, want, 0.0))
    cond_input = counter.inputs[0]  # the tokens left visible are in the model's input
    visible = cond_input.gather(1, image_rollout.positions)
    assert torch.equal(visible[~masked], image_rollout.tokens[~masked])


def test_random_mask_ratio_range_and_seeds(model, image_rollout):
    few = random_mask(model.logits, image_rollout, seeds=SEEDS, copies=1, ratio_range=(0.0, 0.0))
    assert few.mask.sum() == 0
    every = random_mask(model.logits, image_rollout, seeds=SEEDS, copies=1, ratio_range=(1.0, 1.0))
    assert every.mask.all()


def test_estimators_are_row_local(model, image_rollout):
    """A micro-batch of row 1 with seed 4 gets row 1's masks and log-probs."""
    full = random_mask(model.logits, image_rollout, seeds=SEEDS, copies=2)
    part = random_mask(model.logits, image_rollout.select([1]), seeds=[SEEDS[1]], copies=2)
    assert torch.equal(part.mask[0], full.mask[1])
    torch.testing.assert_close(part.logprobs[0], full.logprobs[1], atol=1e-5, rtol=0)


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["trajectory", "mean_field", "random_mask"])
def test_gradients_flow(model, text_rollout, estimator):
    model.zero_grad()
    fn = eos_model(model)
    if estimator == "trajectory":
        logp, mask = trajectory(fn, text_rollout, shrink=2)
    elif estimator == "mean_field":
        logp, mask = mean_field(fn, text_rollout)
    else:
        logp, mask = random_mask(fn, text_rollout, seeds=SEEDS, copies=2, coupled=True)
    assert logp.requires_grad and not mask.requires_grad
    (logp * mask).sum().backward()
    for name in ("qkv", "head", "embed"):
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    model.zero_grad()


def test_lockstep_replay_runs_every_group_with_the_same_values_and_gradient(model, text_rollout):
    """Row 0 alone stopped after block 0: its replay has no tokens in groups 2-3. Under
    `lockstep` (FSDP) those groups still run a forward and join the backward with zero weight,
    so every process runs the same forwards and backwards; values and gradient are unchanged."""
    alone = text_rollout.select([0])
    fn = eos_model(model)

    def replay(rollout, counter):
        model.zero_grad()
        logp, mask = trajectory(counter, rollout)
        (logp * mask).sum().backward()
        return logp.detach(), mask, model.head.grad.clone()

    plain = Counting(fn)
    free = replay(alone, plain)
    assert plain.calls == 2
    locked = Counting(fn)
    settings = dataclasses.replace(alone.settings, lockstep=True)
    same = replay(dataclasses.replace(alone, settings=settings), locked)
    assert locked.calls == TEXT.steps
    assert torch.equal(same[0], free[0]) and torch.equal(same[1], free[1])
    torch.testing.assert_close(same[2], free[2], rtol=0, atol=1e-7)
    model.zero_grad()
