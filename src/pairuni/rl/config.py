"""The `algo` section: every knob of the PairGRPO objective (advantages, pair weights, loss)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pairuni.configbase import Section


class AlgoConfig(Section):
    """PairGRPO: group-relative advantages per task, pair weights, clipped surrogate, KL and loss
    aggregation. The defaults are the paper's (arXiv 2510.25682 §2.2 and §3): separate group
    normalisation for understanding and generation, w_p = sqrt(s_p) for retrieved pairs, beta = 0,
    understanding loss + generation loss with equal weight."""

    num_generations_und: int = Field(8, ge=2)
    """K_u: answers sampled per understanding question (the group size for its advantages). The
    paper uses 8 for Janus-Pro-1B and 4 for 7B."""

    num_generations_gen: int = Field(8, ge=2)
    """K_g: images sampled per generation prompt (the group size for its advantages). The paper uses
    8 for Janus-Pro-1B and 4 for 7B."""

    advantage_scale: Literal["group", "batch", "none"] = "group"
    """How a reward minus its group mean is scaled: `group` divides by the group's standard
    deviation (GRPO), `batch` by the standard deviation of the whole task batch, `none` leaves it
    unscaled (Dr. GRPO). Standard deviations are sample (n - 1) ones, as in TRL. A group whose
    valid rewards are all equal (or fewer than two) gets exactly zero advantage, and a NaN reward
    (unscorable) gets zero and is left out of the means and standard deviations."""

    advantage_epsilon: float = Field(1e-4, ge=0.0)
    """Added to the standard deviation before dividing, as in TRL and CoRL (1e-4)."""

    pair_weighting: Literal["none", "linear", "sqrt"] = "sqrt"
    """The pair weight w_p multiplied into both tasks' advantages after normalisation: `none`
    (w_p = 1, plain GRPO on pairs), `linear` (w_p = s_p), `sqrt` (w_p = sqrt(s_p), the paper's
    PairGRPO). Aligned pairs always get w_p = 1."""

    epsilon_low: float = Field(0.2, ge=0.0, lt=1.0)
    """Lower clip range of the importance ratio: the ratio is clipped below at 1 - epsilon_low."""

    epsilon_high: float = Field(0.2, ge=0.0)
    """Upper clip range of the importance ratio: the ratio is clipped above at 1 + epsilon_high
    (DAPO's clip-higher uses 0.28)."""

    dual_clip: float | None = Field(None, gt=1.0)
    """Dual-clip constant c (> 1) for negative advantages: the per-token loss is capped at
    c * |A| when A < 0 (verl's `clip_ratio_c`, typically 3.0). `null` disables it."""

    importance_sampling_level: Literal["token", "sequence"] = "token"
    """`token`: one importance ratio per token (PPO / GRPO). `sequence`: the ratio is the
    exponentiated mean log-ratio of the sequence, shared by its tokens (GSPO; computed as
    GSPO-token, so each token's gradient flows through its own log-prob)."""

    beta: float = Field(0.0, ge=0.0)
    """KL coefficient to the reference model. 0 (the paper's default) needs no reference model."""

    beta_und: float | None = Field(None, ge=0.0)
    """KL coefficient of the understanding loss alone; null: `beta`. The tasks may need their
    own: on ShapesWorld a KL of 0.2 kept understanding RL from collapsing its thinks and took
    nearly all of generation's gain (docs/results/sweep.md)."""

    beta_gen: float | None = Field(None, ge=0.0)
    """KL coefficient of the generation loss alone; null: `beta`."""

    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token estimator of KL(pi_theta || pi_ref) used when beta > 0: k1 = log r,
    k2 = (log r)^2 / 2, k3 = exp(-log r) + log r - 1 (Schulman's unbiased, non-negative estimator),
    with log r = log pi_theta - log pi_ref."""

    loss_aggregation: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = (
        "seq-mean-token-mean"
    )
    """How per-token losses become one number, separately for each task:
    `seq-mean-token-mean` (GRPO: mean over a sequence's tokens, then over sequences),
    `token-mean` (DAPO: mean over all tokens of the task in the global batch),
    `seq-mean-token-sum-norm` (Dr. GRPO: token sums divided by a constant length, then mean over
    sequences). The trainer passes each task's sequence and token counts of the whole optimiser
    batch, so every mode gives the same gradient however a batch is split into micro-batches.
    Dr. GRPO's constant is the task's maximum length (max new tokens for text, 576 image tokens
    for Janus-Pro)."""

    und_loss_weight: float = Field(1.0, ge=0.0)
    """Weight of the understanding loss in the PairGRPO objective (the paper: 1)."""

    gen_loss_weight: float = Field(1.0, ge=0.0)
    """Weight of the generation loss in the PairGRPO objective (the paper: 1)."""

    num_iterations: int = Field(1, ge=1)
    """Policy updates per rollout batch (mu). With 1 the ratio is 1 at every update and clipping is
    inactive; > 1 reuses the batch with its rollout log-probs as the old policy."""

    @model_validator(mode="after")
    def _check_task_weights(self) -> AlgoConfig:
        if self.und_loss_weight == 0 and self.gen_loss_weight == 0:
            raise ValueError(
                "und_loss_weight and gen_loss_weight are both 0, so nothing would be trained; "
                "set at least one of them above 0"
            )
        return self

    def task_beta(self, task: str) -> float:
        """The KL coefficient of task `und` or `gen`: its own (`beta_und` / `beta_gen`) if set,
        else `beta`."""
        own = {"und": self.beta_und, "gen": self.beta_gen}[task]
        return self.beta if own is None else own

    @property
    def uses_reference(self) -> bool:
        """Whether some task's loss has a KL term (the trainer then keeps pi_ref)."""
        return any(self.task_beta(task) > 0 for task in ("und", "gen"))
