"""Clipped surrogate, KL estimators and loss aggregation (pure tensor functions).

Shapes: B sequences, T token positions (padded); `mask` (B, T) marks the valid tokens.
Formulas and the names that select them: docs/algorithm.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]
ImportanceLevel = Literal["token", "sequence"]
LossAggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]


# --------------------------------------------------------------------------------------------
# KL estimators: functions of log r = log pi_theta - log pi_ref, per token.


def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """k1 = log r. Unbiased for KL(pi_theta || pi_ref) under pi_theta samples, high variance."""
    return log_ratio


def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)^2 / 2. Non-negative, biased, low variance."""
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """k3 = exp(-log r) + log r - 1 (Schulman). Non-negative and unbiased; TRL's and CoRL's KL."""
    return torch.exp(-log_ratio) + log_ratio - 1


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate.

    Args:
        logp: (B, T) log pi_theta of the sampled tokens.
        ref_logp: (B, T) log pi_ref of the same tokens.
        estimator: "k1" | "k2" | "k3".

    Returns:
        (B, T); the gradient flows into `logp` only if it requires grad (ref is a constant).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; choose one of {tuple(KL_ESTIMATORS)}"
        )
    return KL_ESTIMATORS[estimator](logp - ref_logp.detach())


# --------------------------------------------------------------------------------------------
# Clipped surrogate


@dataclass(frozen=True)
class SurrogateOutput:
    """Result of `clipped_surrogate`.

    Attributes:
        per_token_loss: (B, T), exactly 0 on masked tokens; aggregate it with `aggregate_loss`.
        metrics: detached () tensors over the valid tokens of this batch:
            `clip_ratio/low_mean` (A < 0 and ratio < 1 - eps_low), `clip_ratio/high_mean`
            (A > 0 and ratio > 1 + eps_high), `clip_ratio/region_mean` (either), as TRL names them;
            `clip_ratio/dual_mean` (A < 0 and the dual clip bound binds, when it is on);
            `ratio/mean`, `ratio/min`, `ratio/max`; `kl` (mean per-token KL term, ratio-weighted
            if `kl_ratio_weighted` as TRL logs it; only when `ref_logp` is given). With
            sequence-level ratios the clip ratios count sequences, as TRL does.
    """

    per_token_loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


def _check_token_tensors(**tensors: torch.Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    reference = shapes["mask"]
    if len(reference) != 2:
        raise ValueError(f"mask must be (B, T), got {reference}")
    wrong = {name: shape for name, shape in shapes.items() if shape != reference}
    if wrong:
        raise ValueError(f"token tensors must all have the mask's shape {reference}; got {wrong}")


def _broadcast_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) or (B, T) -> (B, T)."""
    if advantages.dim() == 1 and advantages.shape[0] == mask.shape[0]:
        return advantages.unsqueeze(1).expand_as(mask)
    if advantages.shape == mask.shape:
        return advantages
    raise ValueError(
        f"advantages must be (B,) or (B, T) with (B, T) = {tuple(mask.shape)}, got "
        f"{tuple(advantages.shape)}"
    )


def importance_log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: ImportanceLevel
) -> torch.Tensor:
    """Log importance ratio per token, (B, T).

    `token`: log pi_theta(o_t) - log pi_old(o_t).
    `sequence` (GSPO-token): every token carries the value of the sequence's masked mean log-ratio
    s_i = mean_t(log pi_theta - log pi_old), with the gradient of its own token:
    `sg(s_i) + logp_t - sg(logp_t)`. So exp of it equals the GSPO sequence ratio, and its gradient
    w.r.t. logp_t is the ratio itself (GSPO-token, arXiv 2507.18071 §4.2).

    Args:
        logp, old_logp: (B, T), already zero (or any finite value) on masked tokens.
        mask: (B, T) bool.
        level: "token" | "sequence".
    """
    log_ratio = logp - old_logp.detach()
    if level == "token":
        return log_ratio
    if level != "sequence":
        raise ValueError(f"unknown importance sampling level {level!r}; choose token or sequence")
    maskf = mask.to(logp.dtype)
    seq_log_ratio = (log_ratio * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)
    return seq_log_ratio.detach().unsqueeze(1) + logp - logp.detach()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    maskf = mask.to(values.dtype)
    return (values * maskf).sum() / maskf.sum().clamp(min=1.0)


def _clip_metric(flags: torch.Tensor, mask: torch.Tensor, level: ImportanceLevel) -> torch.Tensor:
    """Fraction of valid tokens (token level) or of non-empty sequences (sequence level)."""
    flags = flags.to(torch.get_default_dtype())
    if level == "token":
        return _masked_mean(flags, mask)
    has_tokens = mask.any(-1)
    # Every valid token of a sequence carries the same flag; read it from the first one.
    first_valid = mask.to(torch.long).argmax(-1, keepdim=True)
    seq_flags = flags.gather(1, first_valid).squeeze(1)
    return _masked_mean(seq_flags, has_tokens)


def _ratio_metrics(ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    if not mask.any():
        nan = torch.tensor(float("nan"), dtype=ratio.dtype, device=ratio.device)
        return {"ratio/mean": nan, "ratio/min": nan, "ratio/max": nan}
    valid = ratio[mask]
    return {"ratio/mean": valid.mean(), "ratio/min": valid.min(), "ratio/max": valid.max()}


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    dual_clip: float | None = None,
    level: ImportanceLevel = "token",
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    kl_ratio_weighted: bool = False,
) -> SurrogateOutput:
    """PPO clipped surrogate per token (a loss: lower is better), plus beta * KL.

    `loss_t = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)`; with the dual clip
    c > 1, for A_t < 0 the loss is further capped at `-c A_t` (verl's `clip_ratio_c`). The KL
    term `beta * k(log pi_theta - log pi_ref)` is added per token when beta > 0; with
    `kl_ratio_weighted` it is multiplied by rho_t first (TRL's `use_bias_correction_kl`).

    Masked tokens: their logp/old_logp/ref_logp values are never read (they may be NaN or
    -inf), their loss is 0 and no gradient reaches them.

    Args:
        logp: (B, T) log pi_theta of the sampled tokens, with grad.
        old_logp: (B, T) log pi_old (rollout policy), a constant.
        advantages: (B,) or (B, T), already pair-weighted.
        mask: (B, T) bool or 0/1, valid tokens.
        epsilon_low, epsilon_high: clip range of the ratio.
        dual_clip: c > 1 or None.
        level: "token" ratio per token, or "sequence" (GSPO-token, see `importance_log_ratio`).
        ref_logp: (B, T) log pi_ref; needed only when beta > 0 (read for the `kl` metric if given).
        beta: KL coefficient.
        kl_estimator: "k1" | "k2" | "k3".
        kl_ratio_weighted: multiply the per-token KL by the importance ratio.

    Returns:
        SurrogateOutput with the (B, T) per-token loss and detached () metrics.
    """
    _check_token_tensors(logp=logp, old_logp=old_logp, mask=mask, ref_logp=ref_logp)
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference policy's token log-probs)")
    mask = mask.bool()
    adv = _broadcast_advantages(advantages, mask).detach()
    # Sanitise padding first: `where` passes exactly zero gradient to the unselected branch, so
    # garbage (NaN, -inf) in padded positions can never produce NaN gradients.
    zeros = torch.zeros_like(logp)
    logp = torch.where(mask, logp, zeros)
    old_logp = torch.where(mask, old_logp.detach(), zeros)
    adv = torch.where(mask, adv, torch.zeros_like(adv))

    ratio = torch.exp(importance_log_ratio(logp, old_logp, mask, level))
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    metrics: dict[str, torch.Tensor] = {}
    if dual_clip is not None:
        cap = -dual_clip * adv
        dual_binds = (adv < 0) & (loss > cap)
        loss = torch.where(adv < 0, torch.min(loss, cap), loss)
        metrics["clip_ratio/dual_mean"] = _clip_metric(dual_binds & mask, mask, level)

    kl = None
    if ref_logp is not None:
        ref_logp = torch.where(mask, ref_logp.detach(), zeros)
        kl = kl_penalty(logp, ref_logp, kl_estimator)
        if kl_ratio_weighted:
            kl = kl * ratio
    if beta > 0:
        assert kl is not None
        loss = loss + beta * kl
    loss = torch.where(mask, loss, zeros)

    with torch.no_grad():
        low = (ratio < 1.0 - epsilon_low) & (adv < 0) & mask
        high = (ratio > 1.0 + epsilon_high) & (adv > 0) & mask
        metrics["clip_ratio/low_mean"] = _clip_metric(low, mask, level)
        metrics["clip_ratio/high_mean"] = _clip_metric(high, mask, level)
        metrics["clip_ratio/region_mean"] = _clip_metric(low | high, mask, level)
        metrics.update(_ratio_metrics(ratio.detach(), mask))
        if kl is not None:
            metrics["kl"] = _masked_mean(kl.detach(), mask)
    return SurrogateOutput(per_token_loss=loss, metrics={k: v.detach() for k, v in metrics.items()})


# --------------------------------------------------------------------------------------------
# Aggregation with global normalisers


def _seq_mean_token_mean(
    loss: torch.Tensor,
    maskf: torch.Tensor,
    num_sequences: float,
    num_tokens: float,
    norm_length: float,
) -> torch.Tensor:
    seq_means = (loss * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)
    return seq_means.sum() / num_sequences


def _token_mean(
    loss: torch.Tensor,
    maskf: torch.Tensor,
    num_sequences: float,
    num_tokens: float,
    norm_length: float,
) -> torch.Tensor:
    return (loss * maskf).sum() / num_tokens


def _seq_mean_token_sum_norm(
    loss: torch.Tensor,
    maskf: torch.Tensor,
    num_sequences: float,
    num_tokens: float,
    norm_length: float,
) -> torch.Tensor:
    return ((loss * maskf).sum(-1) / norm_length).sum() / num_sequences


LOSS_AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "seq-mean-token-mean": _seq_mean_token_mean,
    "token-mean": _token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation,
    *,
    num_sequences: float | int | torch.Tensor | None = None,
    num_tokens: float | int | torch.Tensor | None = None,
    norm_length: float | int | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar with explicit (global) normalisers.

    - `seq-mean-token-mean` (GRPO): `sum_i mean_{t valid} l_it / num_sequences`.
    - `token-mean` (DAPO): `sum_{i, t valid} l_it / num_tokens`.
    - `seq-mean-token-sum-norm` (Dr. GRPO): `sum_i (sum_{t valid} l_it / norm_length) /
      num_sequences`.

    Pass the counts of the whole optimiser batch (all micro-batches, all ranks of this task):
    summing the micro-batch losses then gives exactly the full batch's loss and gradient. When a
    normaliser is omitted the local batch's own count is used: B sequences (empty ones included,
    as TRL does; at least 1), the number of valid tokens (at least 1), and T, the padded length, for
    `norm_length`. The T default is not padding-invariant: pass a constant (the maximum
    completion length; 576 for Janus-Pro images).

    Args:
        per_token_loss: (B, T).
        mask: (B, T) bool or 0/1.
        mode: the aggregation name.
        num_sequences, num_tokens, norm_length: the normalisers, > 0.

    Returns:
        () tensor.
    """
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(
            f"unknown loss aggregation {mode!r}; choose one of {tuple(LOSS_AGGREGATIONS)}"
        )
    _check_token_tensors(per_token_loss=per_token_loss, mask=mask)
    maskf = mask.to(per_token_loss.dtype)
    if num_sequences is None:
        num_sequences = max(per_token_loss.shape[0], 1)
    if num_tokens is None:
        num_tokens = maskf.sum().clamp(min=1.0)
    if norm_length is None:
        norm_length = per_token_loss.shape[1]
    for name, value in (
        ("num_sequences", num_sequences),
        ("num_tokens", num_tokens),
        ("norm_length", norm_length),
    ):
        # Tensors are not checked: reading one would synchronise the device on every call.
        if not isinstance(value, torch.Tensor) and value <= 0:
            raise ValueError(f"{name} must be > 0, got {float(value)}")
    return LOSS_AGGREGATIONS[mode](per_token_loss, maskf, num_sequences, num_tokens, norm_length)
