"""DiMOO's layouts and batched samplers against a tiny bidirectional model over the real ids."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from dimoo_sampling_helpers import (
    BOS,
    IDS,
    Counting,
    FakeTokenizer,
    TinyBidirectional,
    codes_grid,
    with_eos_bias,
)
from pairuni.policy.dimoo.sampling import (
    NOT_COMMITTED,
    ImageSampling,
    TextSampling,
    completion_mask,
    guide,
    image_schedule,
    masked_after_step,
    sample_images,
    sample_text,
    text_schedule,
)
from pairuni.policy.dimoo.sequence import (
    Layout,
    editing_layout,
    prompt_text,
    text_to_image_layout,
    understanding_layout,
)

SYSTEM = "S"  # short system prompts keep the tiny forwards cheap
PROMPTS = ["a cat", "a red dog", "x"]
H, W = 3, 4
IMAGE = ImageSampling(steps=4, guidance=2.0, temperature=0.8)
TEXT = TextSampling(steps=4, block_length=4, temperature=0.8)
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def model() -> TinyBidirectional:
    torch.set_num_threads(2)
    return TinyBidirectional()


@pytest.fixture(scope="module")
def tok() -> FakeTokenizer:
    return FakeTokenizer()


@pytest.fixture(scope="module")
def t2i(tok: FakeTokenizer) -> Layout:
    return text_to_image_layout(tok, PROMPTS, H, W, IDS, system=SYSTEM)


@pytest.fixture(scope="module")
def image_rollout(model, t2i):
    return sample_images(model.logits, t2i, IMAGE, SEEDS)


@pytest.fixture(scope="module")
def mmu(tok: FakeTokenizer) -> Layout:
    images = [codes_grid(2, 2, 0), codes_grid(1, 3, 1), codes_grid(2, 1, 2)]
    return understanding_layout(tok, ["what?", "how many cats", "q"], images, 8, IDS, system=SYSTEM)


# --- layouts -----------------------------------------------------------------------------------


def masked_image_part() -> list[int]:
    rows = ([IDS.mask] * W + [IDS.newline]) * H
    return [IDS.answer_start, IDS.boi, *rows, IDS.eoi, IDS.answer_end]


def test_text_to_image_layout_matches_the_hand_built_rows(tok, t2i):
    uncond = tok.encode("<system>S</system><user><uncondition></user>")
    assert IDS.uncondition in uncond
    for b, prompt in enumerate(PROMPTS):
        prefix = tok.encode(prompt_text(SYSTEM, prompt))
        for branch, head in ((t2i.cond, prefix), (t2i.uncond_text, uncond)):
            row = [*head, *masked_image_part()]
            length = int(branch.attention_mask[b].sum())
            assert branch.input_ids[b, :length].tolist() == row
            assert branch.attention_mask[b, length:].sum() == 0  # right padding
            start = len(head) + 2
            expected = [start + r * (W + 1) + c for r in range(H) for c in range(W)]
            assert branch.positions[b].tolist() == expected
            assert int(branch.prompt_lengths[b]) == len(head)
    assert t2i.grid == (H, W) and t2i.kind == "image" and t2i.num_generated == H * W


def test_understanding_layout_inserts_the_image_before_the_last_prompt_token(tok):
    codes = codes_grid(2, 3, 5)
    layout = understanding_layout(tok, ["why?"], [codes], 5, IDS, system=SYSTEM)
    prompt = tok.encode(prompt_text(SYSTEM, "why?"))
    block = [IDS.boi]
    for r in range(2):
        block += [*(codes[r] + IDS.image_offset).tolist(), IDS.newline]
    block.append(IDS.eoi)
    prefix = [*prompt[:-1], *block, prompt[-1]]
    assert prompt[0] == BOS  # add_special_tokens=True by default, as DiMOO's tokenizer(text)
    expected = [*prefix, IDS.answer_start, *([IDS.mask] * 5), IDS.answer_end]
    assert layout.cond.input_ids[0].tolist() == expected
    assert layout.cond.positions[0].tolist() == list(range(len(prefix) + 1, len(prefix) + 6))
    assert layout.kind == "text" and layout.uncond_text is None


def test_editing_layout_has_the_three_branches(tok):
    source = codes_grid(2, 2, 3)
    layout = editing_layout(tok, ["make it red"], [source], IDS, system=SYSTEM)
    prompt = tok.encode(prompt_text(SYSTEM, "make it red"))
    uncond = tok.encode(prompt_text(SYSTEM, "<uncondition>"))
    rows = [*(source[0] + IDS.image_offset).tolist(), IDS.newline]
    rows += [*(source[1] + IDS.image_offset).tolist(), IDS.newline]
    block = [IDS.boi, *rows, IDS.eoi]
    target = [IDS.answer_start, IDS.boi, *([IDS.mask] * 2 + [IDS.newline]) * 2, IDS.eoi]
    target.append(IDS.answer_end)
    expected = {
        "cond": [*prompt[:-1], *block, prompt[-1], *target],
        "uncond_text": [*uncond[:-1], *block, uncond[-1], *target],
        "uncond_image": [*prompt, *target],
    }
    for name, branch in layout.branches().items():
        assert branch.input_ids[0].tolist() == expected[name], name
        assert (branch.input_ids[0, branch.positions[0]] == IDS.mask).all()
    assert layout.grid == (2, 2)


def test_layouts_reject_bad_input(tok):
    with pytest.raises(ValueError, match=r"VQ codes in \[0, 8192\)"):
        understanding_layout(tok, ["q"], [torch.tensor([[IDS.image_offset]])], 4, IDS)
    with pytest.raises(ValueError, match="different sizes"):
        editing_layout(tok, ["a", "b"], [codes_grid(2, 2, 0), codes_grid(2, 3, 0)], IDS)
    with pytest.raises(ValueError, match="one entry per row"):
        understanding_layout(tok, ["a", "b"], [codes_grid(2, 2, 0)], 4, IDS)
    with pytest.raises(ValueError, match="non-empty list"):
        text_to_image_layout(tok, "a cat", 2, 2, IDS)

    class NoUncondition:
        def encode(self, text, add_special_tokens=True):
            return [1000 + ord(c) for c in text]

    with pytest.raises(ValueError, match=r"ids\.uncondition"):
        text_to_image_layout(NoUncondition(), ["a"], 2, 2, IDS)


# --- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "steps"), [(1024, 35), (1024, 64), (12, 4), (5, 9), (1, 3)])
def test_image_schedule_commits_everything_monotonically(total, steps):
    commits = image_schedule(total, steps)
    assert sum(commits) == total and min(commits) >= 0 and len(commits) == steps
    masked = [total - sum(commits[: s + 1]) for s in range(steps)]
    assert masked[-1] == 0 and all(a >= b for a, b in itertools.pairwise(masked))
    assert all(m >= 1 for m in masked[:-1]) or total < steps
    for s in range(steps - 1):  # the formula where it does not clip
        formula = math.floor(total * math.cos(math.pi / 2 * (s + 1) / steps))
        assert masked_after_step(total, s, steps) == max(1, formula)


def test_image_schedule_known_values():
    commits = image_schedule(1024, 35)
    assert commits[0] == 1024 - math.floor(1024 * math.cos(math.pi / 70)) == 2
    assert masked_after_step(1024, 33, 35) == max(1, math.floor(1024 * math.cos(math.pi * 34 / 70)))
    assert masked_after_step(1024, 34, 35) == 0


def test_text_schedule_splits_evenly():
    assert text_schedule(8, 3) == [3, 3, 2]
    assert text_schedule(4, 2) == [2, 2]
    assert sum(text_schedule(2, 5)) == 2


# --- images ------------------------------------------------------------------------------------


def test_image_tokens_are_codes_at_the_image_positions(image_rollout, t2i):
    r = image_rollout
    assert r.tokens.shape == (3, H * W) and r.commit_step.dtype == torch.int64
    assert ((r.codes >= 0) & (r.codes < IDS.codebook_size)).all()
    assert torch.equal(r.input_ids.gather(1, r.positions), r.tokens)
    untouched = torch.ones_like(r.input_ids, dtype=torch.bool).scatter(1, r.positions, False)
    assert torch.equal(r.input_ids[untouched], t2i.cond.input_ids[untouched])  # newlines, tags
    assert (r.input_ids == IDS.newline).sum() == 3 * H
    assert r.mask.all() and torch.isfinite(r.logprobs).all() and (r.logprobs <= 0).all()
    counts = torch.stack([(r.commit_step == s).sum(1) for s in range(IMAGE.steps)], dim=1)
    assert (counts == torch.tensor(image_schedule(H * W, IMAGE.steps))).all()


def test_image_rows_are_independent_of_the_batch_and_its_padding(model, t2i, image_rollout):
    """Rows 0 and 2 are right-padded in the batch (row 1 is the longest) and unpadded alone;
    row 2 is also sampled with 7 extra padding columns."""
    assert t2i.cond.attention_mask[1].all() and not t2i.cond.attention_mask[[0, 2]].all()
    for b, extra in ((0, 0), (2, 7)):
        alone = sample_images(model.logits, pad_layout(t2i.select([b]), extra), IMAGE, [SEEDS[b]])
        assert torch.equal(alone.tokens[0], image_rollout.tokens[b])
        assert torch.equal(alone.commit_step[0], image_rollout.commit_step[b])
        # float32 matmuls of a 1-row and a 3-row batch block differently: a relative 1e-5 slack
        # on log-probs of magnitude ~2 (the sampled tokens and steps above are exact)
        torch.testing.assert_close(
            alone.logprobs[0], image_rollout.logprobs[b], atol=1e-5, rtol=1e-5
        )


def pad_layout(layout: Layout, extra: int) -> Layout:
    """The layout with `extra` more right-padding columns in every branch."""

    def pad(branch):
        ids = torch.nn.functional.pad(branch.input_ids, (0, extra), value=IDS.eos)
        mask = torch.nn.functional.pad(branch.attention_mask, (0, extra), value=0)
        return dataclasses.replace(branch, input_ids=ids, attention_mask=mask)

    return dataclasses.replace(layout, **{k: pad(v) for k, v in layout.branches().items()})


def test_image_seeds_reproduce_and_differ(model, t2i, image_rollout):
    """(Same seed, same row: the batch-independence test above.) Another seed, another image."""
    other = sample_images(model.logits, t2i.select([0]), IMAGE, [21])
    assert not torch.equal(other.tokens[0], image_rollout.tokens[0])


def hand_logprobs(model, rows: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
    """Codebook logits of each hand-built row, forwarded alone, at its positions."""
    out = []
    for row, pos in zip(rows, positions, strict=True):
        ids = torch.tensor([row])
        logits = model.logits(ids, torch.ones_like(ids))[0, pos]
        out.append(logits[:, IDS.image_offset : IDS.image_end])
    return out


def test_text_to_image_guidance_matches_an_independent_computation(model, tok, image_rollout):
    """Tokens committed at step 0 were drawn from log_softmax(((1 + w) c - w u) / tau) of the
    all-masked state; built here by hand, without the layout or the sampler's helpers."""
    w, tau = IMAGE.guidance, IMAGE.temperature
    uncond = tok.encode("<system>S</system><user><uncondition></user>")
    r = image_rollout
    for b, prompt in enumerate(PROMPTS):
        cond = tok.encode(prompt_text(SYSTEM, prompt))
        rows = [[*cond, *masked_image_part()], [*uncond, *masked_image_part()]]
        pos = [
            [len(head) + 2 + i * (W + 1) + j for i in range(H) for j in range(W)]
            for head in (cond, uncond)
        ]
        c, u = hand_logprobs(model, rows, pos)
        expected = torch.log_softmax(((1 + w) * c - w * u) / tau, dim=-1)
        first = r.commit_step[b] == 0
        got = r.logprobs[b, first]
        want = expected[first].gather(1, r.codes[b, first, None]).squeeze(1)
        assert first.any()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        # Janus's convention: uncond + s (cond - uncond) with s = 1 + w is the same logits
        torch.testing.assert_close(u + (1 + w) * (c - u), (1 + w) * c - w * u)


def test_editing_guidance_matches_dimoos_formula(model, tok):
    source = codes_grid(2, 2, 9)
    settings = ImageSampling(steps=3, guidance=1.5, image_guidance=3.0, temperature=0.7)
    layout = editing_layout(tok, ["make it red"], [source], IDS, system=SYSTEM)
    counter = Counting(model.logits)
    r = sample_images(counter, layout, settings, [3])
    assert counter.calls == 3 * settings.steps  # cond, uncond_text, uncond_image per step
    c, ut, ui = hand_logprobs(
        model,
        [
            layout.cond.input_ids[0].tolist(),
            *(b.input_ids[0].tolist() for b in (layout.uncond_text, layout.uncond_image)),
        ],
        [b.positions[0].tolist() for b in (layout.cond, layout.uncond_text, layout.uncond_image)],
    )
    guided = c + 1.5 * (c - ut) + 3.0 * (c - ui)
    expected = torch.log_softmax(guided / 0.7, dim=-1)
    first = r.commit_step[0] == 0
    want = expected[first].gather(1, r.codes[0, first, None]).squeeze(1)
    torch.testing.assert_close(r.logprobs[0, first], want, atol=1e-5, rtol=0)
    assert torch.equal(guide(c, guidance=0.0), c)


def test_no_guidance_skips_the_unconditional_forward(model, t2i):
    counter = Counting(model.logits)
    sample_images(counter, t2i.select([0]), dataclasses.replace(IMAGE, guidance=0.0), [1])
    assert counter.calls == IMAGE.steps


def test_greedy_images_ignore_the_seed(model, t2i):
    greedy = dataclasses.replace(IMAGE, temperature=0.0)
    a = sample_images(model.logits, t2i.select([0]), greedy, [1])
    b = sample_images(model.logits, t2i.select([0]), greedy, [2])
    assert torch.equal(a.tokens, b.tokens)


def test_sampler_errors_name_the_fix(model, t2i, mmu, tok):
    with pytest.raises(ValueError, match="one seed per row"):
        sample_images(model.logits, t2i, IMAGE, [1])
    with pytest.raises(ValueError, match="takes image layouts"):
        sample_images(model.logits, mmu, IMAGE, [1, 2, 3])
    with pytest.raises(ValueError, match="uncond_image"):
        sample_images(model.logits, t2i, dataclasses.replace(IMAGE, image_guidance=1.0), SEEDS)
    with pytest.raises(ValueError, match="must divide the answer length"):
        sample_text(model.logits, mmu, TextSampling(steps=3, block_length=3), [1, 2, 3])
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        sample_text(model.logits, mmu, TextSampling(steps=3, block_length=4), [1, 2, 3])
    with pytest.raises(ValueError, match="temperature"):
        ImageSampling(temperature=-1.0)
    with pytest.raises(ValueError, match="embedding_size"):
        sample_images(lambda i, m: torch.zeros(*i.shape, 100), t2i, IMAGE, SEEDS)


# --- text --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_rollout(model, mmu):
    return sample_text(model.logits, mmu, TEXT, SEEDS)


def test_text_blocks_commit_left_to_right_with_the_schedule(text_rollout, mmu):
    r = text_rollout
    assert (r.commit_step >= 0).all()  # the tiny model never emits EOS unprompted
    per_block = TEXT.steps // 2
    for k in range(2):
        steps = r.commit_step[:, 4 * k : 4 * (k + 1)]
        assert ((steps >= k * per_block) & (steps < (k + 1) * per_block)).all()
    for s in range(TEXT.steps):
        assert ((r.commit_step == s).sum(1) == text_schedule(4, per_block)[s % per_block]).all()
    vocabulary_ok = (r.tokens < IDS.image_offset) & (r.tokens != IDS.mask)
    assert vocabulary_ok.all()
    assert torch.equal(r.input_ids.gather(1, r.positions), r.tokens)
    assert r.mask.all() and (r.logprobs <= 0).all()


def test_text_rows_are_independent_of_the_batch(model, mmu, text_rollout):
    assert not mmu.cond.attention_mask[[0, 2]].all()  # padded in the batch, not alone
    for b in (0, 2):
        alone = sample_text(model.logits, mmu.select([b]), TEXT, [SEEDS[b]])
        assert torch.equal(alone.tokens[0], text_rollout.tokens[b])
        assert torch.equal(alone.commit_step[0], text_rollout.commit_step[b])
        torch.testing.assert_close(
            alone.logprobs[0], text_rollout.logprobs[b], atol=1e-5, rtol=1e-5
        )
    padded = sample_text(model.logits, pad_layout(mmu.select([2]), 5), TEXT, [SEEDS[2]])
    assert torch.equal(padded.tokens[0], text_rollout.tokens[2])


def test_text_early_stop_per_row(model, mmu):
    """Row 0's prompt holds the marker: EOS is pushed up there, so it stops after block 0;
    the others run every block. Stopped rows are left out of later forwards."""
    marker = 1000 + ord("?")  # only row 0's question "what?" has it
    assert (mmu.cond.input_ids[0] == marker).any()
    assert not (mmu.cond.input_ids[1:] == marker).any()
    counter = Counting(with_eos_bias(model.logits, marker))
    r = sample_text(counter, mmu, TEXT, SEEDS)
    first_block = slice(0, 4)
    assert (r.tokens[0, first_block] == IDS.eos).any()
    assert (r.commit_step[0, 4:] == NOT_COMMITTED).all()
    assert (r.tokens[0, 4:] == IDS.answer_pad).all() and (r.logprobs[0, 4:] == 0).all()
    first_eos = int((r.tokens[0] == IDS.eos).nonzero()[0])
    assert r.mask[0].tolist() == [1] * (first_eos + 1) + [0] * (8 - first_eos - 1)
    assert r.mask[1:].all() and (r.commit_step[1:] >= 0).all()
    assert counter.rows == 3 * 2 + 2 * 2  # block 0: 3 rows x 2 steps; block 1: 2 rows x 2
    alone = sample_text(with_eos_bias(model.logits, marker), mmu.select([0]), TEXT, [SEEDS[0]])
    assert torch.equal(alone.tokens[0], r.tokens[0])


def test_completion_mask_stops_at_the_first_stop_token():
    tokens = torch.tensor([[5, 9, 6, 9, 7], [5, 6, 7, 8, 8]])
    committed = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    mask = completion_mask(tokens, committed, torch.tensor([9]))
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_greedy_text_ignores_the_seed(model, mmu):
    greedy = dataclasses.replace(TEXT, temperature=0.0)
    a = sample_text(model.logits, mmu.select([1]), greedy, [1])
    b = sample_text(model.logits, mmu.select([1]), greedy, [2])
    assert torch.equal(a.tokens, b.tokens)


def test_text_never_samples_the_mask_token_or_image_codes(model, mmu):
    def tempting(input_ids, attention_mask):
        out = model.logits(input_ids, attention_mask).clone()
        out[..., IDS.mask] += 100.0
        out[..., IDS.image_offset + 7] += 100.0
        return out

    r = sample_text(tempting, mmu.select([0]), TEXT, [1])
    assert ((r.tokens < IDS.image_offset) & (r.tokens != IDS.mask)).all()
    assert torch.isfinite(r.logprobs).all()


def test_lockstep_runs_every_scheduled_step_and_samples_the_same(model, mmu):
    """Under FSDP (`lockstep`) a batch whose rows all stopped still runs each scheduled step's
    forward (another process may not have stopped: every forward is a collective there), and
    the samples are those of the plain sampler."""
    marker = 1000 + ord("?")  # row 0 alone: it stops after block 0 of 2
    batch = mmu.select([0])
    plain, locked = Counting(with_eos_bias(model.logits, marker)), None
    free = sample_text(plain, batch, TEXT, [SEEDS[0]])
    assert plain.calls == 2  # block 1 skipped
    locked = Counting(with_eos_bias(model.logits, marker))
    settings = dataclasses.replace(TEXT, lockstep=True)
    same = sample_text(locked, batch, settings, [SEEDS[0]])
    assert locked.calls == TEXT.steps
    for field in ("tokens", "commit_step", "logprobs", "mask"):
        assert torch.equal(getattr(same, field), getattr(free, field)), field
