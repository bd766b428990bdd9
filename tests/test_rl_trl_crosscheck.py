"""Our surrogate and aggregation against TRL's real `GRPOTrainer._compute_loss` (trl 1.16).

TRL's trainer is built without `__init__` (`object.__new__`) and given exactly the attributes
`_compute_loss` reads, set from a real `GRPOConfig` the way `GRPOTrainer.__init__` sets them; its
log-prob function is replaced by one returning our tensors. No TRL formula is re-typed here.

Per-token losses are read from TRL by passing the completion mask as a float tensor that requires
grad: with `loss_type="dapo"` and `num_items_in_batch=1` TRL's loss is `sum(per_token_loss *
mask)`, so its gradient w.r.t. the mask is TRL's per-token loss (token-level ratios only: with
sequence-level ratios the mask also enters the ratio).

Mapping (documented in docs/algorithm.md):
- grpo    = seq-mean-token-mean, num_sequences = B * gradient_accumulation_steps
- dapo    = token-mean, num_tokens = num_items_in_batch (the accumulated batch's tokens)
- dr_grpo = seq-mean-token-sum-norm, norm_length = max_completion_length, num_sequences as grpo
- use_bias_correction_kl (TRL default True) = kl_ratio_weighted
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

from pairuni.rl.advantages import group_advantages  # noqa: E402
from pairuni.rl.losses import aggregate_loss, clipped_surrogate  # noqa: E402

F64 = torch.float64
TRL_TO_OURS = {
    "grpo": "seq-mean-token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
}
MAX_LEN = 9


class SingleProcessAccelerator:
    """What `_compute_loss` needs from `accelerate.Accelerator` on one process."""

    num_processes = 1

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    gather_for_metrics = gather


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> GRPOConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("trl")),
            bf16=False,
            use_cpu=True,
            report_to="none",
            max_completion_length=MAX_LEN,
        )


def trl_trainer(base: GRPOConfig, logp: torch.Tensor, accumulation: int = 1, **overrides):
    """A GRPOTrainer shell whose `_compute_loss` sees `logp` as the policy's log-probs."""
    args = copy.copy(base)
    for key, value in overrides.items():
        setattr(args, key, value)
    args.steps_per_generation = accumulation
    trainer = object.__new__(GRPOTrainer)
    # the attributes GRPOTrainer.__init__ derives from args and _compute_loss reads
    trainer.args = args
    trainer.loss_type = args.loss_type
    trainer.beta = args.beta
    trainer.epsilon_low = args.epsilon
    trainer.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    trainer.importance_sampling_level = args.importance_sampling_level
    trainer.max_completion_length = args.max_completion_length
    trainer.top_entropy_quantile = args.top_entropy_quantile
    trainer.off_policy_mask_threshold = args.off_policy_mask_threshold
    trainer.use_vllm = False
    trainer.vllm_importance_sampling_correction = args.vllm_importance_sampling_correction
    trainer.aux_loss_enabled = False
    trainer._entropy_bonus_enabled = False
    trainer.current_gradient_accumulation_steps = accumulation
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SingleProcessAccelerator()
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (
        logp,
        torch.zeros_like(logp),
        None,
    )
    return trainer


def trl_inputs(mask, adv, old, ref, num_items=None):
    batch, length = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }
    if num_items is not None:
        inputs["num_items_in_batch"] = torch.tensor(float(num_items))
    return inputs


def rollout(seed: int, batch: int = 5, length: int = MAX_LEN):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(batch, length, generator=g, dtype=F64) * 3).requires_grad_()
    old = logp.detach() + 0.4 * torch.randn(batch, length, generator=g, dtype=F64)
    ref = logp.detach() + 0.4 * torch.randn(batch, length, generator=g, dtype=F64)
    adv = torch.randn(batch, generator=g, dtype=F64)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return logp, old, ref, adv, mask


CASES = [
    # epsilon, epsilon_high, beta, use_bias_correction_kl
    (0.2, None, 0.0, False),
    (0.2, 0.28, 0.0, False),
    (0.1, 0.3, 0.04, False),
    (0.2, 0.28, 0.04, True),
]


@pytest.mark.parametrize(("epsilon", "epsilon_high", "beta", "bias_kl"), CASES)
def test_per_token_loss_equals_trl(base_config, epsilon, epsilon_high, beta, bias_kl) -> None:
    logp, old, ref, adv, mask = rollout(seed=0)
    float_mask = mask.to(F64).requires_grad_()
    trainer = trl_trainer(
        base_config,
        logp,
        loss_type="dapo",
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        beta=beta,
        use_bias_correction_kl=bias_kl,
    )
    trl_loss = trainer._compute_loss(None, trl_inputs(float_mask, adv, old, ref, num_items=1))
    (trl_per_token,) = torch.autograd.grad(trl_loss, float_mask)

    ours = clipped_surrogate(
        logp,
        old,
        adv,
        mask,
        epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high,
        ref_logp=ref,
        beta=beta,
        kl_estimator="k3",
        kl_ratio_weighted=bias_kl,
    )
    torch.testing.assert_close(ours.per_token_loss, trl_per_token * mask)
    metrics = trainer._metrics["train"]
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert float(ours.metrics[name]) == pytest.approx(metrics[name][0]), name
    if beta > 0:
        assert float(ours.metrics["kl"]) == pytest.approx(metrics["kl"][0])


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize(("epsilon", "epsilon_high", "beta", "bias_kl"), CASES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("accumulation", [1, 3])
def test_aggregated_loss_and_gradient_equal_trl(
    base_config, loss_type, epsilon, epsilon_high, beta, bias_kl, level, accumulation
) -> None:
    logp, old, ref, adv, mask = rollout(seed=1)
    batch = mask.shape[0]
    # the accumulated batch has `accumulation` micro-batches; this is one of them
    num_items = int(mask.sum()) * accumulation
    trainer = trl_trainer(
        base_config,
        logp,
        accumulation=accumulation,
        loss_type=loss_type,
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        beta=beta,
        use_bias_correction_kl=bias_kl,
        importance_sampling_level=level,
    )
    trl_loss = trainer._compute_loss(None, trl_inputs(mask.long(), adv, old, ref, num_items))

    ours = clipped_surrogate(
        logp,
        old,
        adv,
        mask,
        epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high,
        level=level,
        ref_logp=ref,
        beta=beta,
        kl_estimator="k3",
        kl_ratio_weighted=bias_kl,
    )
    our_loss = aggregate_loss(
        ours.per_token_loss,
        mask,
        TRL_TO_OURS[loss_type],
        num_sequences=batch * accumulation,
        num_tokens=num_items,
        norm_length=MAX_LEN,
    )
    torch.testing.assert_close(our_loss, trl_loss)
    metrics = trainer._metrics["train"]
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert float(ours.metrics[name]) == pytest.approx(metrics[name][0]), name
    if beta > 0:
        assert float(ours.metrics["kl"]) == pytest.approx(metrics["kl"][0])
    if level == "sequence" and bias_kl and beta > 0:
        # Same value, different gradient: TRL multiplies the KL by a sequence ratio
        # differentiated through the mean log-ratio, we by the GSPO-token ratio (docs/algorithm.md)
        return
    (trl_grad,) = torch.autograd.grad(trl_loss, logp)
    (our_grad,) = torch.autograd.grad(our_loss, logp)
    torch.testing.assert_close(our_grad, trl_grad)


def test_group_advantages_equal_trl_formula() -> None:
    """TRL: (r - nanmean_group) / (nanstd_group + 1e-4), NaN -> 0, for contiguous groups."""
    g = torch.Generator().manual_seed(2)
    rewards = torch.randn(6, 4, generator=g, dtype=F64)
    rewards[1, 2] = float("nan")
    mean = torch.nanmean(rewards, dim=1, keepdim=True)
    expected = torch.nan_to_num((rewards - mean) / (nanstd(rewards, dim=1, keepdim=True) + 1e-4))
    groups = torch.arange(6).repeat_interleave(4)
    ours = group_advantages(rewards.flatten(), groups, scale="group", epsilon=1e-4)
    torch.testing.assert_close(ours.advantages, expected.flatten())
    batch_expected = torch.nan_to_num((rewards - mean) / (nanstd(rewards) + 1e-4))
    ours_batch = group_advantages(rewards.flatten(), groups, scale="batch", epsilon=1e-4)
    torch.testing.assert_close(ours_batch.advantages, batch_expected.flatten())
