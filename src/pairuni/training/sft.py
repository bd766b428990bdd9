"""`pairuni sft`: supervised fine-tuning on UG pairs, through the PairGRPO trainer's machinery.

One step:

    batch = sampler.batch(step)                    B pairs, the same on every process
    und   = policy.target_text(images, questions, answers)      this process's B/W pairs
    gen   = policy.target_images(prompts, images, unconditional)
    loss  = und_weight * CE(und answers) / N_und + gen_weight * CE(gen codes) / N_gen

Each task's cross-entropy is summed over its tokens and divided by the number of that task's
tokens in the whole step on all processes (so micro-batching and the number of processes do not
change the gradient, as in `train`); the two are summed with `sft.und_weight` / `gen_weight`.
The cross-entropies are the policy's own teacher-forced log-probs (`text_logprobs`,
`image_logprobs`) at temperature 1 and on the conditional branch alone, so what SFT teaches is
exactly what the rollouts sample. A `sft.uncond_prob` share of generation examples (drawn from
(seed, step, slot), independent of the number of processes) get the unconditional prompt.

Everything else — the run folder and its branches, checkpoints, exact resume, the resume rules,
logging, precision, distributed modes, evaluation during training — is `PairGRPOTrainer`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pairuni.config import PairUniConfig
from pairuni.data.schema import Pair
from pairuni.policy.base import TrainablePolicy
from pairuni.rewards.base import RewardSet
from pairuni.training.sampler import make_generator
from pairuni.training.trainer import MetricSum, PairGRPOTrainer, TaskSpec, TrainingSetupError

SFT_METHODS = ("target_text", "target_images")


class SFTTrainer(PairGRPOTrainer):
    """Supervised fine-tuning of a policy on a pair file (`pairuni sft`)."""

    def __init__(
        self,
        config: PairUniConfig,
        resume: str | Path | bool | None = None,
        policy: TrainablePolicy | None = None,
    ) -> None:
        super().__init__(config, resume=resume, policy=policy, reward_set=RewardSet({}))
        missing = [name for name in SFT_METHODS if not callable(getattr(self.policy, name, None))]
        if missing:
            raise TrainingSetupError(
                f"model.backend {config.model.backend!r} ({type(self.policy).__name__}) has no "
                f"supervised targets ({', '.join(missing)}); `pairuni sft` supports janus and dimoo"
            )
        if config.sft.gen_weight > 0 and config.data.mode != "understanding_only":
            self._check_generation_targets()
        # teacher forcing: log-probs at temperature 1 (the cross-entropy), conditional branch
        self.policy.rollout_config = self.policy.rollout_config.model_copy(  # type: ignore[attr-defined]
            update={"text_temperature": 1.0, "image_temperature": 1.0, "cfg_in_logprob": False}
        )

    def _check_generation_targets(self) -> None:
        """Before the first step: every pair's prompt has a target image."""
        lacking = [p for p in self.sampler.pairs if p.gen_image is None and p.kind != "aligned"]
        if lacking:
            shown = ", ".join(repr(p.pair_id) for p in lacking[:3])
            raise TrainingSetupError(
                f"{self.config.data.path}: {len(lacking)} retrieved pairs ({shown}"
                f"{', ...' if len(lacking) > 3 else ''}) have no gen_image, so their prompts "
                "have no target image; rebuild the pairs with `pairuni pairs build` (it writes "
                "gen_image), train with data.kinds=aligned, or sft.gen_weight=0"
            )

    def _build_reference(self) -> Any:
        return None  # SFT has no KL term

    def _train_step(self) -> dict[str, float]:
        cfg, sft = self.train_cfg, self.config.sft
        batch = self._sample_batch(self.step)
        self.dist.stage = f"sft step {self.step + 1}"
        local = list(self._local_range())
        records = {}
        with self._autocast():
            if batch.und and sft.und_weight > 0:
                records["und"] = self._text_targets([batch.und[i] for i in local])
            if batch.gen and sft.gen_weight > 0:
                records["gen"] = self._image_targets([batch.gen[i] for i in local], local)
        sums = MetricSum()
        for key, record in records.items():
            sums.add(*self._task_loss(key, record))
        metrics = sums.result(self.dist)
        weights = {"und": sft.und_weight, "gen": sft.gen_weight}
        metrics["loss"] = sum(weights[k] * metrics.get(f"{k}/loss", 0.0) for k in weights)
        metrics.update(self._optimizer_step())
        metrics["epoch"] = batch.step * batch.size / len(self.sampler.pairs)
        self.step += 1
        if self.dist.is_main and self.tracker is not None:
            self.tracker.log(self.step, metrics)
        if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
            self._save()
        if self.evaluation.due(self.step):
            self._evaluate()
        return metrics

    def _text_targets(self, pairs: Sequence[Pair]) -> Any:
        template = self.config.sft.answer_template
        return self.policy.target_text(  # type: ignore[attr-defined]
            [pair.und_image.open(self.base_dir) for pair in pairs],
            [pair.und_question for pair in pairs],
            [template.replace("{answer}", pair.und_answer) for pair in pairs],
            options=[pair.und_options or None for pair in pairs],
        )

    def _image_targets(self, pairs: Sequence[Pair], slots: Sequence[int]) -> Any:
        draws = torch.rand(
            self.train_cfg.pairs_per_step,
            generator=make_generator(self.config.seed, "sft-uncond", self.step),
        )
        unconditional = [bool(draws[slot] < self.config.sft.uncond_prob) for slot in slots]
        return self.policy.target_images(  # type: ignore[attr-defined]
            [pair.gen_prompt for pair in pairs],
            [self._generation_image(pair) for pair in pairs],
            unconditional,
        )

    def _generation_image(self, pair: Pair) -> Any:
        """The image a pair's prompt should produce: its generation side's own image, else
        (an aligned pair: one instance on both sides) its understanding image."""
        if pair.gen_image is not None:
            return pair.gen_image.open(self.base_dir)
        return pair.und_image.open(self.base_dir)  # aligned (checked at start)

    def _task_loss(self, key: str, record: Any) -> tuple[dict[str, torch.Tensor], float]:
        """Backward of the task's share of the global loss, one micro-batch at a time."""
        spec = self.specs[key]
        full = spec.loss_mask(record)
        num_tokens = self.dist.reduce(full.sum().double()).item()
        weight = self.config.sft.und_weight if key == "und" else self.config.sft.gen_weight
        total = torch.zeros((), dtype=torch.float64)
        correct, counted = (
            torch.zeros((), dtype=torch.float64),
            torch.zeros((), dtype=torch.float64),
        )
        size = self.train_cfg.micro_batch_size
        first_row = self.dist.rank * self.local_pairs
        for start in range(0, len(record), size):
            micro = record[start : start + size]
            rows = full[start : start + size]
            with self._autocast():
                logp = self._target_logprobs(spec, micro, first_row + start).float()
            rows = rows.to(logp.device)
            nll = -(logp * rows).sum() / max(num_tokens, 1.0)
            (weight * nll).backward()
            total += nll.detach().double().cpu()
            # a token is "right" when the target had probability > 1/2 (argmax for sure); a
            # masked-diffusion policy scores only the positions it masked (0 elsewhere)
            scored = rows & (logp.detach() != 0)
            correct += ((logp.detach() > -0.6931) & scored).sum().double().cpu()
            counted += scored.sum().double().cpu()
        metrics = {
            f"{key}/loss": total,
            f"{key}/token_accuracy_lb": correct / max(float(counted), 1.0),
        }
        return metrics, float(counted)

    def _target_logprobs(self, spec: TaskSpec, micro: Any, first_row: int) -> torch.Tensor:
        """(n, T) per-token log-likelihood terms of the targets, with gradient, whose sum over
        the target mask is the loss's -NLL: the teacher-forced log-probs of an autoregressive
        policy; a policy with `supervised_logprobs` (masked diffusion: a random masking of the
        targets, reweighted) gives its own estimate, drawing from the generator it is passed
        (seeded by (seed, step, task, first row), so resumes are exact)."""
        own = getattr(self.policy, "supervised_logprobs", None)
        if callable(own):
            generator = make_generator(
                self.config.seed,
                "sft-mask",
                spec.key,
                self.step,
                first_row,
                device=self.policy.device,
            )
            return own(spec.name, micro, generator)
        return spec.logprobs(self.policy, micro)
