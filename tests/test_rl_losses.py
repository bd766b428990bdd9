"""Clipped surrogate, KL and aggregation against hand numbers and a naive per-token loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pairuni.rl.losses import aggregate_loss, clipped_surrogate, kl_penalty

MODES = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]


def naive_token_loss(
    logp,
    old,
    adv,
    mask,
    *,
    eps_low,
    eps_high,
    dual=None,
    level="token",
    ref=None,
    beta=0.0,
    estimator="k3",
):
    """Per-token loss by Python loops over scalar tensors (autograd still works).

    Returns a list of lists of 0-d tensors; masked entries are plain 0.0.
    """
    batch, length = mask.shape
    rows = []
    for i in range(batch):
        valid = [t for t in range(length) if mask[i, t]]
        a_i = adv[i] if adv.dim() == 1 else None
        seq_lr = sum(logp[i, t] - old[i, t] for t in valid) / max(len(valid), 1)
        row = []
        for t in range(length):
            if not mask[i, t]:
                row.append(0.0)
                continue
            a = float(a_i if a_i is not None else adv[i, t])
            if level == "token":
                ratio = torch.exp(logp[i, t] - old[i, t])
            else:  # value of the sequence ratio, gradient of the token's own ratio
                ratio = math.exp(float(seq_lr.detach())) * torch.exp(
                    logp[i, t] - logp[i, t].detach()
                )
            clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
            loss = torch.maximum(-ratio * a, -clipped * a)
            if dual is not None and a < 0:
                loss = torch.minimum(loss, torch.tensor(-dual * a, dtype=loss.dtype))
            if beta > 0:
                x = float(ref[i, t]) - logp[i, t]  # log(pi_ref / pi_theta)
                kl = {"k1": -x, "k2": 0.5 * x * x, "k3": torch.exp(x) - x - 1}[estimator]
                loss = loss + beta * kl
            row.append(loss)
        rows.append(row)
    return rows


def stack(rows) -> torch.Tensor:
    return torch.stack(
        [
            torch.stack(
                [v if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float64) for v in row]
            )
            for row in rows
        ]
    )


def rand_batch(batch=4, length=6, seed=0, spread=0.5):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(batch, length, generator=g, dtype=torch.float64) * 3).requires_grad_()
    old = logp.detach() + spread * torch.randn(batch, length, generator=g, dtype=torch.float64)
    ref = logp.detach() + spread * torch.randn(batch, length, generator=g, dtype=torch.float64)
    adv = torch.randn(batch, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return logp, old, ref, adv, mask


# ------------------------------------------------------------------------------ surrogate


def test_hand_example_inside_and_outside_the_clip_range() -> None:
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 0.9]], dtype=torch.float64)
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logp = (old + ratios.log()).requires_grad_()
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    out = clipped_surrogate(logp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2)
    # A>0: min(1.5, 1.2)=1.2 | min(0.5, 0.8)=0.5 | 1.1.  A<0: max(1.5, 1.2) | max(0.5, 0.8) | 0.9
    expected = torch.tensor([[-1.2, -0.5, -1.1], [1.5, 0.8, 0.9]], dtype=torch.float64)
    torch.testing.assert_close(out.per_token_loss, expected)
    out.per_token_loss.sum().backward()
    # d loss / d logp = -A * ratio where unclipped, 0 where the clipped branch is active
    grad = torch.tensor([[0.0, -0.5, -1.1], [1.5, 0.0, 0.9]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, grad)
    assert float(out.metrics["clip_ratio/low_mean"]) == pytest.approx(1 / 6)
    assert float(out.metrics["clip_ratio/high_mean"]) == pytest.approx(1 / 6)
    assert float(out.metrics["clip_ratio/region_mean"]) == pytest.approx(2 / 6)
    assert float(out.metrics["ratio/max"]) == pytest.approx(1.5)
    assert float(out.metrics["ratio/min"]) == pytest.approx(0.5)
    assert float(out.metrics["ratio/mean"]) == pytest.approx(6.0 / 6)


def test_clip_higher_is_asymmetric() -> None:
    ratios = torch.tensor([[1.25, 0.75]], dtype=torch.float64)
    logp = ratios.log()
    mask = torch.ones(1, 2, dtype=torch.bool)
    pos = clipped_surrogate(
        logp,
        torch.zeros(1, 2, dtype=torch.float64),
        torch.tensor([1.0]),
        mask,
        epsilon_low=0.2,
        epsilon_high=0.28,
    )
    neg = clipped_surrogate(
        logp,
        torch.zeros(1, 2, dtype=torch.float64),
        torch.tensor([-1.0]),
        mask,
        epsilon_low=0.2,
        epsilon_high=0.28,
    )
    torch.testing.assert_close(
        pos.per_token_loss, torch.tensor([[-1.25, -0.75]], dtype=torch.float64)
    )
    torch.testing.assert_close(neg.per_token_loss, torch.tensor([[1.25, 0.8]], dtype=torch.float64))


def test_dual_clip_caps_negative_advantage_losses() -> None:
    ratios = torch.tensor([[5.0, 2.0], [5.0, 0.5]], dtype=torch.float64)
    logp = ratios.log().requires_grad_()
    adv = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = clipped_surrogate(
        logp,
        torch.zeros(2, 2, dtype=torch.float64),
        adv,
        mask,
        epsilon_low=0.2,
        epsilon_high=0.2,
        dual_clip=3.0,
    )
    # A=-2: ratio 5 -> max(10, 2.4) = 10, capped at 3*2 = 6; ratio 2 -> 4 (< 6, kept).
    # A=+1: dual clip never applies: min(5, 1.2) -> -1.2, ratio 0.5 -> -0.5.
    expected = torch.tensor([[6.0, 4.0], [-1.2, -0.5]], dtype=torch.float64)
    torch.testing.assert_close(out.per_token_loss, expected)
    out.per_token_loss.sum().backward()
    torch.testing.assert_close(
        logp.grad, torch.tensor([[0.0, 4.0], [0.0, -0.5]], dtype=torch.float64)
    )
    assert float(out.metrics["clip_ratio/dual_mean"]) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate(logp, logp.detach(), adv, mask, dual_clip=1.0)


def test_sequence_level_ratio_hand_example() -> None:
    old = torch.zeros(1, 3, dtype=torch.float64)
    logp = torch.tensor([[0.2, 0.4, 7.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    out = clipped_surrogate(
        logp,
        old,
        torch.tensor([1.0], dtype=torch.float64),
        mask,
        epsilon_low=0.5,
        epsilon_high=0.5,
        level="sequence",
    )
    s = math.exp(0.3)  # exp of the mean log-ratio of the two valid tokens
    torch.testing.assert_close(
        out.per_token_loss, torch.tensor([[-s, -s, 0.0]], dtype=torch.float64)
    )
    # GSPO-token: a token's loss has the sequence's value but only its own log-prob's gradient,
    # -A * s (not -A * s / |y| spread over the sequence as with a plain sequence ratio)
    (grad_first,) = torch.autograd.grad(out.per_token_loss[0, 0], logp, retain_graph=True)
    torch.testing.assert_close(grad_first, torch.tensor([[-s, 0.0, 0.0]], dtype=torch.float64))
    out.per_token_loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-s, -s, 0.0]], dtype=torch.float64))
    # clipped as a whole: s = exp(0.3) = 1.35 > 1.2
    clipped = clipped_surrogate(
        logp,
        old,
        torch.tensor([1.0], dtype=torch.float64),
        mask,
        epsilon_low=0.2,
        epsilon_high=0.2,
        level="sequence",
    )
    torch.testing.assert_close(
        clipped.per_token_loss, torch.tensor([[-1.2, -1.2, 0.0]], dtype=torch.float64)
    )
    assert float(clipped.metrics["clip_ratio/high_mean"]) == 1.0


def test_sequence_level_gradient_equals_scalar_sequence_ratio() -> None:
    """Aggregated with seq-mean-token-mean, GSPO-token gives GSPO's gradient: a scalar
    exp(mean log-ratio) per sequence, differentiated through the mean."""
    logp, old, _, adv, mask = rand_batch(seed=3, spread=0.05)
    out = clipped_surrogate(
        logp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2, level="sequence"
    )
    aggregate_loss(out.per_token_loss, mask, "seq-mean-token-mean").backward()
    ours = logp.grad.clone()
    logp.grad = None
    total = 0.0
    for i in range(mask.shape[0]):
        valid = mask[i]
        s = torch.exp((logp[i][valid] - old[i][valid]).mean())
        total = total - torch.minimum(s * adv[i], torch.clamp(s, 0.8, 1.2) * adv[i])
    (total / mask.shape[0]).backward()
    torch.testing.assert_close(ours, logp.grad)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_against_formulas(estimator: str) -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    formulas = {
        "k1": lambda lr: lr,
        "k2": lambda lr: lr * lr / 2,
        "k3": lambda lr: math.exp(-lr) + lr - 1,
    }
    expected = [
        formulas[estimator](a - b)
        for a, b in zip([-1.0, -2.0, -0.5], [-1.5, -1.0, -0.5], strict=True)
    ]
    torch.testing.assert_close(
        kl_penalty(logp, ref, estimator), torch.tensor([expected], dtype=torch.float64)
    )
    # as a loss term: with A = 0 the per-token loss is exactly beta * KL
    out = clipped_surrogate(
        logp,
        logp,
        torch.zeros(1, dtype=torch.float64),
        torch.ones(1, 3, dtype=torch.bool),
        ref_logp=ref,
        beta=0.1,
        kl_estimator=estimator,
    )
    torch.testing.assert_close(
        out.per_token_loss, 0.1 * torch.tensor([expected], dtype=torch.float64)
    )
    assert float(out.metrics["kl"]) == pytest.approx(sum(expected) / 3)
    with pytest.raises(ValueError, match="choose one of"):
        kl_penalty(logp, ref, "k4")


def test_kl_ratio_weighted_multiplies_by_the_ratio() -> None:
    logp, old, ref, adv, mask = rand_batch(seed=5)
    zero_adv = torch.zeros_like(adv)
    plain = clipped_surrogate(logp, old, zero_adv, mask, ref_logp=ref, beta=0.5)
    weighted = clipped_surrogate(
        logp, old, zero_adv, mask, ref_logp=ref, beta=0.5, kl_ratio_weighted=True
    )
    ratio = torch.exp(logp - old) * mask
    torch.testing.assert_close(weighted.per_token_loss, plain.per_token_loss * ratio)


def test_beta_zero_ignores_ref_and_beta_positive_needs_it() -> None:
    logp, old, ref, adv, mask = rand_batch(seed=1)
    without = clipped_surrogate(logp, old, adv, mask)
    garbage = torch.full_like(ref, float("nan"))
    with_ref = clipped_surrogate(logp, old, adv, mask, ref_logp=garbage, beta=0.0)
    torch.testing.assert_close(without.per_token_loss, with_ref.per_token_loss)
    assert "kl" not in without.metrics
    with pytest.raises(ValueError, match="ref_logp"):
        clipped_surrogate(logp, old, adv, mask, beta=0.04)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("dual", [None, 3.0])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_matches_naive_loop(level: str, dual: float | None, beta: float) -> None:
    logp, old, ref, adv, mask = rand_batch(batch=5, length=7, seed=11, spread=0.4)
    out = clipped_surrogate(
        logp,
        old,
        adv,
        mask,
        epsilon_low=0.2,
        epsilon_high=0.28,
        dual_clip=dual,
        level=level,
        ref_logp=ref,
        beta=beta,
    )
    expected = stack(
        naive_token_loss(
            logp,
            old,
            adv,
            mask,
            eps_low=0.2,
            eps_high=0.28,
            dual=dual,
            level=level,
            ref=ref,
            beta=beta,
        )
    )
    torch.testing.assert_close(out.per_token_loss, expected)
    (grad_ours,) = torch.autograd.grad(out.per_token_loss.sum(), logp)
    (grad_naive,) = torch.autograd.grad(expected.sum(), logp)
    torch.testing.assert_close(grad_ours, grad_naive)


def test_token_level_advantages_2d() -> None:
    logp, old, _, _, mask = rand_batch(seed=2)
    adv2d = torch.randn(mask.shape, dtype=torch.float64)
    out = clipped_surrogate(logp, old, adv2d, mask)
    expected = stack(naive_token_loss(logp, old, adv2d, mask, eps_low=0.2, eps_high=0.2))
    torch.testing.assert_close(out.per_token_loss, expected)
    with pytest.raises(ValueError, match="advantages must be"):
        clipped_surrogate(logp, old, torch.zeros(3), mask)


def test_shape_errors() -> None:
    logp, old, _, adv, mask = rand_batch()
    with pytest.raises(ValueError, match="mask's shape"):
        clipped_surrogate(logp, old[:, :3], adv, mask)


# ------------------------------------------------------------------------------ aggregation

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, False], [True, True, True]])


def test_aggregation_hand_examples() -> None:
    # sequence means 1.5 and 3; valid token sum 12 over 5 tokens; token sums 3 and 9
    assert float(aggregate_loss(LOSS, MASK, "seq-mean-token-mean")) == pytest.approx(2.25)
    assert float(aggregate_loss(LOSS, MASK, "token-mean")) == pytest.approx(2.4)
    assert float(aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm")) == pytest.approx(2.0)
    assert float(aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", norm_length=4)) == 1.5
    # global normalisers
    assert float(aggregate_loss(LOSS, MASK, "seq-mean-token-mean", num_sequences=4)) == 1.125
    assert float(aggregate_loss(LOSS, MASK, "token-mean", num_tokens=10)) == 1.2
    got = aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", num_sequences=6, norm_length=2)
    assert float(got) == 1.0


def test_aggregation_errors() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        aggregate_loss(LOSS, MASK, "sum")
    with pytest.raises(ValueError, match="num_tokens must be > 0"):
        aggregate_loss(LOSS, MASK, "token-mean", num_tokens=0)


def _micro_batches(mask: torch.Tensor, sizes: list[int]):
    """Row slices of the given sizes, each trimmed to its own longest sequence."""
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        width = int(mask[rows].sum(-1).max())
        yield rows, width
        start += size


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accumulation_invariance(mode: str, level: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logp, old, ref, adv, mask = rand_batch(batch=9, length=8, seed=seed, spread=0.3)
    settings_ = dict(
        epsilon_low=0.2, epsilon_high=0.28, dual_clip=3.0, level=level, ref_logp=ref, beta=0.05
    )
    norms = dict(num_sequences=mask.shape[0], num_tokens=mask.sum(), norm_length=8)

    full = clipped_surrogate(logp, old, adv, mask, **settings_)
    full_loss = aggregate_loss(full.per_token_loss, mask, mode, **norms)
    (full_grad,) = torch.autograd.grad(full_loss, logp)

    cuts = sorted(torch.randperm(8, generator=g)[: int(torch.randint(1, 5, (1,), generator=g))] + 1)
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, 9], strict=True) if b > a]
    total = 0.0
    for rows, width in _micro_batches(mask, sizes):
        part = clipped_surrogate(
            logp[rows, :width],
            old[rows, :width],
            adv[rows],
            mask[rows, :width],
            **{**settings_, "ref_logp": ref[rows, :width]},
        )
        total = total + aggregate_loss(part.per_token_loss, mask[rows, :width], mode, **norms)
    (micro_grad,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(total, full_loss)
    torch.testing.assert_close(micro_grad, full_grad)


# ------------------------------------------------------------------------------ properties


@st.composite
def token_batches(draw):
    batch = draw(st.integers(1, 6))
    length = draw(st.integers(1, 7))
    lengths = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 4
    old = logp + 0.5 * torch.randn(batch, length, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(batch, length, generator=g, dtype=torch.float64)
    adv = torch.randn(batch, generator=g, dtype=torch.float64)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return logp, old, ref, adv, mask


surrogate_settings = st.fixed_dictionaries(
    {
        "level": st.sampled_from(["token", "sequence"]),
        "dual_clip": st.sampled_from([None, 2.0]),
        "beta": st.sampled_from([0.0, 0.1]),
        "kl_estimator": st.sampled_from(["k1", "k2", "k3"]),
        "epsilon_high": st.sampled_from([0.2, 0.28]),
    }
)


def _loss(logp, old, ref, adv, mask, mode, settings_, norm_length=8):
    out = clipped_surrogate(logp, old, adv, mask, ref_logp=ref, **settings_)
    return aggregate_loss(out.per_token_loss, mask, mode, norm_length=norm_length), out


@settings(max_examples=60, deadline=None)
@given(batch=token_batches(), mode=st.sampled_from(MODES), settings_=surrogate_settings)
def test_masked_tokens_get_no_gradient_and_garbage_padding_is_harmless(batch, mode, settings_):
    logp, old, ref, adv, mask = batch
    poison = torch.tensor([float("nan"), float("-inf"), float("inf"), 1e30], dtype=torch.float64)
    fill = poison[torch.arange(mask.numel()) % 4].view(mask.shape)
    logp_bad = torch.where(mask, logp, fill).requires_grad_()
    old_bad = torch.where(mask, old, fill.flip(0))
    ref_bad = torch.where(mask, ref, fill.flip(1))
    loss, out = _loss(logp_bad, old_bad, ref_bad, adv, mask, mode, settings_)
    assert torch.isfinite(loss)
    assert torch.isfinite(out.per_token_loss).all()
    assert (out.per_token_loss[~mask] == 0).all()
    loss.backward()
    assert torch.isfinite(logp_bad.grad).all()
    assert (logp_bad.grad[~mask] == 0).all()
    clean, _ = _loss(logp, old, ref, adv, mask, mode, settings_)
    torch.testing.assert_close(loss, clean)


@settings(max_examples=60, deadline=None)
@given(
    batch=token_batches(),
    mode=st.sampled_from(MODES),
    settings_=surrogate_settings,
    extra=st.integers(1, 5),
)
def test_padding_length_invariance(batch, mode, settings_, extra):
    logp, old, ref, adv, mask = batch

    def pad(x, value):
        return torch.cat([x, torch.full((x.shape[0], extra), value, dtype=x.dtype)], dim=1)

    loss, _ = _loss(logp, old, ref, adv, mask, mode, settings_)
    padded, _ = _loss(
        pad(logp, -3.0), pad(old, 0.0), pad(ref, 5.0), adv, pad(mask, False), mode, settings_
    )
    torch.testing.assert_close(padded, loss)


@settings(max_examples=60, deadline=None)
@given(
    batch=token_batches(),
    mode=st.sampled_from(MODES),
    settings_=surrogate_settings,
    seed=st.integers(0, 999),
)
def test_permuting_sequences(batch, mode, settings_, seed):
    logp, old, ref, adv, mask = batch
    perm = torch.randperm(mask.shape[0], generator=torch.Generator().manual_seed(seed))
    loss, out = _loss(logp, old, ref, adv, mask, mode, settings_)
    loss_p, out_p = _loss(logp[perm], old[perm], ref[perm], adv[perm], mask[perm], mode, settings_)
    torch.testing.assert_close(out_p.per_token_loss, out.per_token_loss[perm])
    torch.testing.assert_close(loss_p, loss)


@settings(max_examples=40, deadline=None)
@given(batch=token_batches(), settings_=surrogate_settings)
def test_zero_advantage_and_no_kl_gives_zero_loss_and_gradient(batch, settings_):
    logp, old, ref, adv, mask = batch
    logp = logp.clone().requires_grad_()
    settings_ = {**settings_, "beta": 0.0}
    loss, _ = _loss(logp, old, ref, torch.zeros_like(adv), mask, "token-mean", settings_)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert (logp.grad == 0).all()
