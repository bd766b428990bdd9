"""The PairGRPO trainer: `pairuni train --config X.yaml`.

One step (the loop in `train` fits on a screen):

    batch    = _sample_batch(step)          B pairs, the same on every process (data modes)
    rollouts = _rollout(batch)              this process's share: K_u answers, K_g images a pair
    scores   = _score(rollouts)             rewards, gathered from all processes
    advs     = _advantages(batch, scores)   group-normalised per task on the GLOBAL batch, x w_p
    for _ in range(num_iterations):
        _update(rollouts, advs)             micro-batched clipped surrogate, backward, AdamW step
    _log(...); _save(...)

What differs between the two tasks (K, the rollout and log-prob calls, the prompt field, the
loss mask and normaliser, the loss weight, the names) is decided once, in one `TaskSpec` per task
(`_task_specs`); the stages loop over the specs. The policy is driven only through the
`TrainablePolicy` protocol (`policy/base.py`) and loaded through `policy.registry`, so the trainer
does not know which backend it trains.

Rollout and loss are separate steps: nothing is sampled inside the loss. Every random draw comes
from a generator seeded with (seed, step, task, first pair of the call), so a resumed run samples
exactly what the uninterrupted run would have (see docs/training.md).

Multi-process: every process draws the same global batch and rolls out pairs
[rank * B/W, (rank + 1) * B/W); rewards are gathered before group normalisation, so group
statistics never depend on the number of processes; loss normalisers count the whole step on all
processes, so the summed gradients equal the single-process gradient (`distributed.py`).
`train.sharding` (zero1 / fsdp) partitions the optimiser state or the whole model (`sharding.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pairuni.config import PairUniConfig, dump_config
from pairuni.data.schema import Pair
from pairuni.policy.base import (
    LogProbScorer,
    RolloutBatch,
    StagedLogProbScorer,
    Task,
    TrainablePolicy,
    UnsupportedSettingError,
    missing_members,
)
from pairuni.rewards.base import RewardSet
from pairuni.rl.objective import (
    TaskAdvantages,
    TaskBatch,
    separable_over_tokens,
    task_advantages,
    task_loss,
)
from pairuni.training import checkpoint as ckpt
from pairuni.training import runs
from pairuni.training.distributed import Collective
from pairuni.training.evaluation import TrainingEval
from pairuni.training.precision import CompensatedAdamW, autocast, compute_dtype
from pairuni.training.resume import config_changes, refusal_message
from pairuni.training.sampler import (
    PairSampler,
    StepBatch,
    filter_pairs,
    filter_report,
    make_generator,
)
from pairuni.training.sharding import (
    ShardingError,
    ShardingPlan,
    grad_norm_value,
    incompatibilities,
)
from pairuni.training.tracking import Tracker

logger = logging.getLogger(__name__)


class TrainingSetupError(ValueError):
    """A run that cannot start (missing model or data, impossible batch); the message says the
    fix."""


# ----------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything the trainer does differently for one task, decided once (`_task_specs`)."""

    key: str
    """`und` | `gen`: the metric prefix (`und/loss`...), the key of the task in the step's
    records and the name that seeds its rollout generators."""
    name: Task
    """`understanding` | `generation`: the rewards' and the policy's name of the task."""
    num_samples: int
    """K: rollouts per pair (`algo.num_generations_und` / `_gen`)."""
    loss_weight: float
    """Its weight in the summed objective (`algo.und_loss_weight` / `gen_loss_weight`)."""
    pairs: Callable[[StepBatch], list[Pair]]
    """The step's pairs this task trains on ([] when the data mode leaves it out)."""
    prompt: Callable[[Pair], str]
    """The pair field the rollout answers or depicts (what the rewards and grids show)."""
    rollout: Callable[[Sequence[Pair], torch.Generator], RolloutBatch]
    """K samples for each of these pairs, drawn with this generator."""
    logprobs: Callable[[LogProbScorer, RolloutBatch], torch.Tensor]
    """(n, T) teacher-forced log-probs of a record under a policy or its reference."""
    outputs: Callable[[RolloutBatch], list[Any]]
    """What the rewards score: the answers' texts or the decoded images."""
    loss_mask: Callable[[RolloutBatch], torch.Tensor]
    """(n, T) bool: the tokens in the loss."""
    norm_length: Callable[[RolloutBatch], float]
    """The constant of `seq-mean-token-sum-norm` (max new tokens; image tokens)."""
    max_length: int | None
    """The longest completion the rollout may produce (for `completions/clipped_ratio`), or
    None when every completion has the same length."""
    image_outputs: bool
    """Whether its outputs are images (saved as sample grids, `logging.image_grid_every`)."""


@dataclasses.dataclass
class TaskRollouts:
    """One task's rollouts on this process in one step: the record every update of the step
    reads. `old_logp` and `ref_logp` are computed once, by the first update that needs them
    (`_old_logprobs`, `_ref_logprobs`), and reused by the step's other updates."""

    spec: TaskSpec
    rollout: RolloutBatch
    """The local rows: K consecutive rows per local pair."""
    slots: torch.Tensor
    """(n,) the global batch slot (pair) of each local row."""
    old_logp: torch.Tensor | None = None
    """(n, T) log pi_old, when `algo.num_iterations > 1`."""
    ref_logp: torch.Tensor | None = None
    """(n, T) log pi_ref, when `algo.beta > 0`."""


@dataclasses.dataclass
class StepRollouts:
    """This process's rollouts of one step, by task key (`und`, `gen`) in task order; a task
    the data mode leaves out is absent."""

    tasks: dict[str, TaskRollouts]

    def __getitem__(self, key: str) -> TaskRollouts:
        return self.tasks[key]

    def __contains__(self, key: object) -> bool:
        return key in self.tasks

    def __iter__(self) -> Iterator[TaskRollouts]:
        return iter(self.tasks.values())

    def __len__(self) -> int:
        return len(self.tasks)


@dataclasses.dataclass
class StepScores:
    """Rewards of the GLOBAL batch (every process holds all of them), per task."""

    total: dict[str, torch.Tensor]
    per_reward: dict[str, dict[str, torch.Tensor]]
    failures: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    """Per task: `rewards/{name}/errors` (failed calls, summed over processes) and
    `rewards/{name}/none` (samples it gave None or NaN)."""


# ----------------------------------------------------------------------------- helpers


def concat_rollouts(parts: Sequence[RolloutBatch], pad_id: int) -> Any:
    """One rollout record from several calls (`RolloutBatch.concat` of the records' class)."""
    return type(parts[0]).concat(parts, pad_id)


def lr_lambda(update: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Learning-rate multiplier after `update` optimiser updates."""
    if warmup and update < warmup:
        return (update + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    if kind == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) in float64; NaN when either is zero (no signal)."""
    a, b = a.double(), b.double()
    norm = a.norm() * b.norm()
    return float(a @ b / norm) if norm > 0 else math.nan


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pair_columns(pairs: Sequence[Pair], repeat: int) -> dict[str, list[Any]]:
    """The records' fields as reward columns, each pair repeated for its `repeat` rows."""
    dumps = [pair.model_dump() for pair in pairs]
    keys = list(dict.fromkeys(k for d in dumps for k in d))
    return {k: [d.get(k) for d in dumps for _ in range(repeat)] for k in keys}


class MetricSum:
    """Token-weighted means, sums, minima and maxima of micro-batch metrics (then global)."""

    def __init__(self) -> None:
        self.weighted: dict[str, list[float]] = {}
        self.extreme: dict[str, float] = {}
        self.sums: dict[str, float] = {}

    def add(self, metrics: dict[str, torch.Tensor], weight: float) -> None:
        for key, value in metrics.items():
            v = float(value)
            if key.endswith("/loss") or key == "loss":
                self.sums[key] = self.sums.get(key, 0.0) + v
            elif key.endswith("/min"):
                self.extreme[key] = min(self.extreme.get(key, math.inf), v)
            elif key.endswith("/max"):
                self.extreme[key] = max(self.extreme.get(key, -math.inf), v)
            elif math.isfinite(v):
                acc = self.weighted.setdefault(key, [0.0, 0.0])
                acc[0] += v * weight
                acc[1] += weight

    def result(self, dist: Collective) -> dict[str, float]:
        out: dict[str, float] = {}
        keys = sorted(self.weighted)
        if keys or dist.world_size > 1:
            # every process must take part in the same reductions, whatever it saw
            keys = dist.broadcast_object(keys)
            pairs = torch.tensor([self.weighted.get(k, [0.0, 0.0]) for k in keys]).reshape(-1, 2)
            pairs = dist.reduce(pairs)
            out.update(
                {k: float(s / w) if w else math.nan for k, (s, w) in zip(keys, pairs, strict=True)}
            )
        sum_keys = dist.broadcast_object(sorted(self.sums))
        sums = dist.reduce(torch.tensor([self.sums.get(k, 0.0) for k in sum_keys]))
        out.update({k: float(v) for k, v in zip(sum_keys, sums, strict=True)})
        ext_keys = dist.broadcast_object(sorted(self.extreme))
        for key in ext_keys:
            op = "min" if key.endswith("/min") else "max"
            fill = math.inf if op == "min" else -math.inf
            out[key] = float(dist.reduce(torch.tensor(self.extreme.get(key, fill)), op))
        return out


# ----------------------------------------------------------------------------- the trainer


class PairGRPOTrainer:
    """Trains a `TrainablePolicy` with PairGRPO on a pair file. Override the `_` methods to
    change one stage (TRL style); `train()` runs the loop. `policy`: an already built policy
    instead of loading `model.path` through the registry."""

    def __init__(
        self,
        config: PairUniConfig,
        resume: str | Path | bool | None = None,
        policy: TrainablePolicy | None = None,
        reward_set: RewardSet | None = None,
    ) -> None:
        self.config = config
        self.train_cfg = config.train
        self.algo = config.algo
        self.out_dir = Path(config.train.out_dir)
        self.dist = Collective(
            cpu=config.model.device == "cpu", timeout_s=config.train.collective_timeout_s
        )
        if self.train_cfg.pairs_per_step % self.dist.world_size:
            raise TrainingSetupError(
                f"train.pairs_per_step={self.train_cfg.pairs_per_step} is not divisible by the "
                f"{self.dist.world_size} processes; make it a multiple of {self.dist.world_size}"
            )
        self.local_pairs = self.train_cfg.pairs_per_step // self.dist.world_size
        chunk = self.train_cfg.rollout_pairs_per_call or self.local_pairs
        if self.local_pairs % chunk:
            raise TrainingSetupError(
                f"train.rollout_pairs_per_call={chunk} does not divide the {self.local_pairs} "
                "pairs of each process; pick a divisor of pairs_per_step / processes"
            )
        self.rollout_chunk = chunk
        seed_everything(config.seed)
        self.resume_from = self._find_resume(resume)
        self.run_plan = self._plan_run(resume)
        self.pairs = self._load_pairs()
        kept = filter_pairs(self.pairs, config.data)
        if not kept:
            raise TrainingSetupError(
                f"no pairs of {config.data.path} are left to train on after the data filters: "
                f"{filter_report(self.pairs, config.data)}; relax data.kinds / "
                "data.min_similarity"
            )
        self.sampler = PairSampler(
            kept,
            config.data,
            self.train_cfg.pairs_per_step,
            config.seed,
        )
        model_path = self.resume_from / "model" if self.resume_from else None
        self.compute_dtype = compute_dtype(self.train_cfg.precision, self._device())
        if self.train_cfg.master_weights == "bf16":
            self.compute_dtype = torch.bfloat16  # bf16 weights compute in bf16 anyway
        self.policy = policy if policy is not None else self._build_policy(model_path)
        self._check_policy()
        self.specs = self._task_specs()
        self._set_master_weights()
        self.sharding = self._shard_policy()
        self.reward_set = reward_set or RewardSet.from_config(config.rewards)
        check_ready = getattr(self.reward_set, "check_ready", None)  # a user's own set may lack it
        if callable(check_ready):
            check_ready()  # a reward server that is down fails now, not after the first rollout
        self.rewardless_steps = {key: 0 for key in self.specs}
        self.ref_policy = self._build_reference() if self.algo.uses_reference else None
        self.params = [p for group in self.policy.parameter_groups().values() for p in group]
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.step = 0
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
        self.tracker: Tracker | None = None
        self.evaluation = self._setup_evaluation()

    # ------------------------------------------------------------------ setup

    def _find_resume(self, resume: str | Path | bool | None) -> Path | None:
        if not resume:
            return None
        if resume is True or resume == "latest":
            found = runs.head_checkpoint(self.out_dir)
            if found is None:
                logger.warning("no checkpoint in %s to resume from; starting fresh", self.out_dir)
            return found
        path = Path(resume)
        ckpt.read_state(path)  # fails clearly if incomplete
        return path

    def _plan_run(self, resume: str | Path | bool | None) -> runs.RunPlan:
        """What this start does to out_dir (every process decides the same, nothing is changed
        yet): refuses to start over another run's checkpoints and metrics."""
        existing = self.train_cfg.existing_run
        nothing_to_resume = bool(resume) and self.resume_from is None
        if nothing_to_resume and not ckpt.list_checkpoints(self.out_dir):
            existing = "overwrite"  # --resume of a run killed before its first checkpoint
        try:
            return runs.plan_start(self.out_dir, self.resume_from, existing)
        except runs.RunFolderError as err:
            raise TrainingSetupError(str(err)) from err

    def _load_pairs(self) -> list[Pair]:
        from pairuni.data import check_images, read_records

        data = self.config.data
        if data.path is None:
            raise TrainingSetupError(
                "data.path is not set; point it at a pair file (e.g. --set data.path=pairs.jsonl)"
            )
        if not Path(data.path).exists():
            raise TrainingSetupError(
                f"data.path {data.path} does not exist; build one with `pairuni pairs build` or "
                "see docs/training.md for the demo pair file"
            )
        records = read_records(data.path, Pair, on_bad_record=data.on_bad_record)
        if data.check_images:
            records = check_images(
                records, ["und_image"], on_bad_record=data.on_bad_record, progress=False
            )
        if records.skipped and self.dist.is_main:
            logger.warning("%s", records.summary())
        if not records.records:
            raise TrainingSetupError(
                f"data.path {data.path} holds no pairs to train on: "
                + (records.summary() if records.skipped else "the file is empty")
                + "; build one with `pairuni pairs build` (docs/pairing.md)"
            )
        self.data_summary = records.summary()
        self.base_dir = records.base_dir
        return list(records.records)

    def _device(self) -> torch.device:
        if self.dist.world_size > 1 or self.config.model.device == "auto":
            return self.dist.device
        return torch.device(self.config.model.device)  # a valid name: ModelConfig checked it

    def _load_dtype(self) -> str:
        """The dtype to load the checkpoint in: bfloat16 for bf16 master weights; float32 under
        float32 compute (a bf16 module cannot take float32 inputs outside autocast); otherwise
        `model.dtype`, the trainable modules being cast to float32 after loading."""
        if self.train_cfg.master_weights == "bf16":
            return "bfloat16"
        if self.compute_dtype == torch.float32:
            return "float32"
        return self.config.model.dtype

    def _build_policy(self, path: Path | None) -> TrainablePolicy:
        """`model.backend`'s policy from `path` (a checkpoint's `model/` when resuming, else
        `model.path`), on this process's device, in the dtype precision asks for."""
        from pairuni.policy.registry import load_policy

        device = self._device()
        model_cfg = self.config.model.model_copy(
            update={
                "device": "cpu" if device.type == "cpu" else str(device),
                "dtype": self._load_dtype(),
            }
        )
        policy = load_policy(path, model_cfg, self.config.rollout, for_training=True)
        return policy  # type: ignore[return-value]  # checked by _check_policy

    def _check_policy(self) -> None:
        missing = missing_members(self.policy, TrainablePolicy)
        if missing:
            raise TrainingSetupError(
                f"{type(self.policy).__name__} (model.backend: {self.config.model.backend}) "
                f"cannot be trained: it lacks {', '.join(missing)} of the TrainablePolicy "
                "protocol (pairuni/policy/base.py)"
            )

    def _task_specs(self) -> dict[str, TaskSpec]:
        """The understanding and generation tasks' settings: the one place that tells them
        apart."""
        algo, rollout = self.algo, self.config.rollout

        def image_mask(ro: Any) -> torch.Tensor:
            return torch.ones_like(ro.logprobs, dtype=torch.bool)  # every image token

        und = TaskSpec(
            key="und",
            name="understanding",
            num_samples=algo.num_generations_und,
            loss_weight=algo.und_loss_weight,
            pairs=lambda batch: batch.und,
            prompt=lambda pair: pair.und_question,
            rollout=self._rollout_text,
            logprobs=lambda scorer, ro: scorer.text_logprobs(ro),
            outputs=lambda ro: list(ro.texts),  # type: ignore[attr-defined]
            loss_mask=lambda ro: ro.completion_mask.bool(),  # type: ignore[attr-defined]
            norm_length=lambda ro: float(rollout.max_new_tokens),
            max_length=rollout.max_new_tokens,
            image_outputs=False,
        )
        gen = TaskSpec(
            key="gen",
            name="generation",
            num_samples=algo.num_generations_gen,
            loss_weight=algo.gen_loss_weight,
            pairs=lambda batch: batch.gen,
            prompt=lambda pair: pair.gen_prompt,
            rollout=self._rollout_image,
            logprobs=lambda scorer, ro: scorer.image_logprobs(ro),
            outputs=lambda ro: list(ro.images),  # type: ignore[attr-defined]
            loss_mask=image_mask,
            norm_length=lambda ro: float(ro.logprobs.shape[1]),
            max_length=None,
            image_outputs=True,
        )
        return {spec.key: spec for spec in (und, gen)}

    def _set_master_weights(self) -> None:
        """Cast the trainable parameters to the master-weight dtype (train.master_weights)."""
        target = torch.float32 if self.train_cfg.master_weights == "fp32" else torch.bfloat16
        changed = self.policy.cast_trainable(target)
        if changed and self.dist.is_main:
            logger.info(
                "holding %d trainable parameters in %s (train.master_weights: %s)",
                changed,
                target,
                self.train_cfg.master_weights,
            )

    def _shard_policy(self) -> ShardingPlan:
        """Apply `train.sharding` to the policy (FSDP wraps it in place; see sharding.py)."""
        cfg = self.config
        problems = incompatibilities(
            self.train_cfg.sharding, list(cfg.model.trainable), cfg.logging.grad_agreement_every
        )
        if problems:
            raise TrainingSetupError("; ".join(problems))
        try:
            plan = ShardingPlan(self.train_cfg.sharding, self.dist)
            plan.wrap(self.policy, list(cfg.model.trainable))
        except (ShardingError, UnsupportedSettingError) as err:
            raise TrainingSetupError(str(err)) from err
        return plan

    def _setup_evaluation(self) -> TrainingEval:
        """`train.eval_every`: check the benchmarks and judges now, not at step N."""
        from pairuni.eval.errors import EvalSetupError
        from pairuni.eval.layout import BenchmarkNotFoundError

        evaluation = TrainingEval(self.config, self.out_dir)
        if evaluation.enabled and self.dist.is_main:
            try:
                evaluation.check(str(self._device()))
            except (BenchmarkNotFoundError, EvalSetupError, ValueError) as err:
                raise TrainingSetupError(f"train.eval_benchmarks: {err}") from err
        return evaluation

    def _evaluate(self) -> None:
        """Evaluate the current policy (main process; the others wait, however long it takes,
        while its heartbeat lives) and log the scores."""

        def evaluate() -> None:
            with self._autocast():
                metrics = self.evaluation.run(self.step, self.policy, self.config.model)
            if self.tracker is not None:
                self.tracker.log(self.step, metrics)

        self.dist.run_on_main(f"evaluation at step {self.step}", evaluate)

    def _build_reference(self) -> LogProbScorer:
        """pi_ref for the KL term (algo.beta > 0): the policy's frozen initial model
        (`TrainablePolicy.reference`: with LoRA the adapters disabled, otherwise a frozen copy
        of the INITIAL checkpoint, model.path, also when resuming)."""
        dtype = "float32" if self.compute_dtype == torch.float32 else self.config.model.dtype
        return self.policy.reference(dtype)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.train_cfg
        groups = [
            {"params": params, "name": name}
            for name, params in self.policy.parameter_groups().items()
            if params
        ]
        adamw: dict[str, Any] = {
            "lr": cfg.learning_rate,
            "betas": (cfg.adam_beta1, cfg.adam_beta2),
            "eps": cfg.adam_epsilon,
            "weight_decay": cfg.weight_decay,
        }
        if cfg.master_weights == "bf16":
            adamw.update(rounding=cfg.bf16_update, seed=self.config.seed)
            return self.sharding.build_optimizer(groups, optimizer_class=CompensatedAdamW, **adamw)
        return self.sharding.build_optimizer(groups, **adamw)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        cfg = self.train_cfg
        total = cfg.max_steps * self.algo.num_iterations
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda u: lr_lambda(u, cfg.warmup_steps, total, cfg.lr_scheduler, cfg.min_lr_ratio),
        )

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict[str, float]:
        """Run from `self.step` to `train.max_steps`; returns the last step's metrics."""
        from tqdm.auto import tqdm

        self._start_run()
        cfg, metrics = self.train_cfg, {}
        if self.evaluation.due(self.step) and not self.evaluation.finished(self.step):
            self._evaluate()  # a run killed while evaluating the step it resumes from
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (self.dist.is_main and self.config.logging.progress_bar),
        )
        try:
            while self.step < cfg.max_steps:
                metrics = self._train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.get('loss', math.nan):.4f}")
        finally:  # a run stopped by an error still flushes its TensorBoard events
            bar.close()
            if self.tracker is not None:
                self.tracker.close()
        self.dist.close()
        return metrics

    def _train_step(self) -> dict[str, float]:
        """One PairGRPO step (rollout, rewards, advantages, updates), logged, saved and
        evaluated when due; returns its metrics."""
        cfg = self.train_cfg
        start = time.perf_counter()
        batch = self._sample_batch(self.step)
        self.dist.stage = f"rollout of step {self.step + 1}"
        rollouts = self._rollout(batch)
        rollout_time = time.perf_counter() - start
        self.dist.stage = f"rewards of step {self.step + 1}"
        scores = self._score(batch, rollouts)
        self.dist.stage = f"update of step {self.step + 1}"
        advantages = self._advantages(batch, scores)
        metrics = self._metrics(batch, rollouts, scores, advantages)
        for iteration in range(self.algo.num_iterations):
            metrics.update(self._update(rollouts, advantages, iteration))
        self.step += 1
        metrics.update({"time/rollout": rollout_time, "time/step": time.perf_counter() - start})
        self._log(metrics, batch, rollouts, scores)
        self._check_reward_signal(scores)
        if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
            self._save()
        if self.evaluation.due(self.step):
            self._evaluate()
        return metrics

    def _start_run(self) -> None:
        if self.dist.is_main:
            runs.prepare(self.run_plan, self.step)
            if self.run_plan.describe():
                logger.warning("%s", self.run_plan.describe())
            (self.out_dir / "config.yaml").write_text(dump_config(self.config), encoding="utf-8")
            log = self.config.logging
            self.tracker = Tracker(
                self.out_dir,
                list(log.report_to),
                log.run_name or self.out_dir.name,
                self.config.model_dump(mode="json"),
                log.wandb_project,
                resume_step=self.step if self.resume_from else None,
            )
            logger.info("%s", self.data_summary)
        self.dist.barrier()

    # ------------------------------------------------------------------ stages

    def _sample_batch(self, step: int) -> StepBatch:
        return self.sampler.batch(step)

    def _local_range(self) -> range:
        start = self.dist.rank * self.local_pairs
        return range(start, start + self.local_pairs)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.compute_dtype, self.policy.device)

    def _rollout(self, batch: StepBatch) -> StepRollouts:
        """This process's K answers and K images per pair, `rollout_chunk` pairs a call."""
        local = self._local_range()
        tasks: dict[str, TaskRollouts] = {}
        gather = self.sharding.gathered_for_rollout(self.train_cfg.fsdp_gather_for_rollout)
        with self._autocast(), gather:
            for spec in self.specs.values():
                pairs = spec.pairs(batch)
                if not pairs:
                    continue
                parts = [
                    spec.rollout(
                        pairs[start : start + self.rollout_chunk],
                        self._generator(spec.key, batch.step, start),
                    )
                    for start in local[:: self.rollout_chunk]
                ]
                slots = torch.tensor(list(local)).repeat_interleave(spec.num_samples)
                rollout = concat_rollouts(parts, self.policy.pad_id)
                tasks[spec.key] = TaskRollouts(spec, rollout, slots)
        return StepRollouts(tasks)

    def _generator(self, task: str, step: int, first_slot: int) -> torch.Generator:
        device = self.policy.device
        return make_generator(self.config.seed, "rollout", task, step, first_slot, device=device)

    def _rollout_text(self, pairs: Sequence[Pair], generator: torch.Generator) -> RolloutBatch:
        images = [p.und_image.open(self.base_dir) for p in pairs]
        return self.policy.rollout_text(
            images,
            [p.und_question for p in pairs],
            self.algo.num_generations_und,
            options=[p.und_options or None for p in pairs],
            generator=generator,
        )

    def _rollout_image(self, pairs: Sequence[Pair], generator: torch.Generator) -> RolloutBatch:
        return self.policy.rollout_image(
            [p.gen_prompt for p in pairs], self.algo.num_generations_gen, generator=generator
        )

    def _score(self, batch: StepBatch, rollouts: StepRollouts) -> StepScores:
        """Rewards of the local rows, then gathered into the global batch's order."""
        local = self._local_range()
        totals: dict[str, torch.Tensor] = {}
        per_reward: dict[str, dict[str, torch.Tensor]] = {}
        failures: dict[str, dict[str, float]] = {}
        for task in rollouts:
            spec, k = task.spec, task.spec.num_samples
            pairs = spec.pairs(batch)
            mine = [pairs[i] for i in local]
            total, values, reward_metrics = self.reward_set(
                spec.name,
                [spec.prompt(p) for p in mine for _ in range(k)],
                spec.outputs(task.rollout),
                pair_columns(mine, k),  # type: ignore[arg-type]
            )
            totals[spec.key] = self.dist.gather(total)
            per_reward[spec.key] = {name: self.dist.gather(v) for name, v in values.items()}
            failures[spec.key] = self._failure_counts(reward_metrics)
        return StepScores(totals, per_reward, failures)

    def _failure_counts(self, reward_metrics: dict[str, float]) -> dict[str, float]:
        """The rewards' `errors` and `none` counts of this step, summed over processes."""
        keys = sorted(k for k in reward_metrics if k.endswith(("/errors", "/none")))
        keys = [k for k in keys if k.startswith("rewards/")]
        summed = self.dist.reduce(torch.tensor([reward_metrics[k] for k in keys]).double())
        return {k: float(v) for k, v in zip(keys, summed.tolist(), strict=True)}

    def _check_reward_signal(self, scores: StepScores) -> None:
        """Stop the run when a task has had no finite reward for `rewards.max_rewardless_steps`
        consecutive steps (every process sees the same gathered rewards, so all stop)."""
        limit = self.config.rewards.max_rewardless_steps
        for key, total in scores.total.items():
            if torch.isfinite(total).any():
                self.rewardless_steps[key] = 0
                continue
            self.rewardless_steps[key] += 1
            if limit is None or self.rewardless_steps[key] < limit:
                continue
            from pairuni.rewards.base import RewardError

            counts = ", ".join(
                f"{name.removeprefix('rewards/')} {value:g}"
                for name, value in scores.failures.get(key, {}).items()
            )
            raise RewardError(
                f"{self.specs[key].name}: no finite reward on any sample for {limit} "
                f"consecutive steps (up to step {self.step}; this step's counts: {counts}), so "
                "that task trains on no signal. Check the rewards' errors above (a reward server "
                "that is down, a reward that returns only None); rewards.max_rewardless_steps "
                "sets how many such steps are tolerated"
            )

    def _advantages(self, batch: StepBatch, scores: StepScores) -> dict[str, TaskAdvantages]:
        """Group-normalised, pair-weighted advantages of the GLOBAL batch, per task."""
        out = {}
        weighting = self.config.data.mode == "pairs"
        aligned = batch.aligned if weighting else torch.ones_like(batch.aligned)
        for key, rewards in scores.total.items():
            slots = torch.arange(batch.size).repeat_interleave(self.specs[key].num_samples)
            out[key] = task_advantages(rewards, slots, slots, batch.similarity, aligned, self.algo)
        return out

    # ------------------------------------------------------------------ the update

    def _local_rows(self, spec: TaskSpec) -> slice:
        start = self.dist.rank * self.local_pairs * spec.num_samples
        return slice(start, start + self.local_pairs * spec.num_samples)

    def _micro_logprobs(self, scorer: LogProbScorer, task: TaskRollouts) -> torch.Tensor:
        """(n, T) float32 log-probs of the task's local rows under `scorer`, without gradient,
        one micro-batch at a time."""
        with torch.no_grad(), self._autocast():
            return torch.cat(
                [
                    task.spec.logprobs(scorer, mb).float()
                    for mb in task.rollout.split(self.train_cfg.micro_batch_size)
                ]
            )

    def _ref_logprobs(self, task: TaskRollouts) -> torch.Tensor | None:
        """(n, T) log pi_ref of the local rows (computed once per step), or None when the
        task's loss has no KL term."""
        if self.ref_policy is None or self.algo.task_beta(task.spec.key) == 0:
            return None
        if task.ref_logp is None:
            task.ref_logp = self._micro_logprobs(self.ref_policy, task)
        return task.ref_logp

    def _old_logprobs(self, task: TaskRollouts) -> torch.Tensor | None:
        """pi_old for num_iterations > 1. The rollout's sampling log-probs when they are exactly
        what the loss's forward computes (float32, and the policy says they are: the same
        distribution and estimator); otherwise recomputed once, without gradient, by that same
        teacher-forced forward (as TRL does), so that the first update's ratio is exactly 1:
        under bf16 the KV-cached sampler and the full forward round differently (image ratios
        0.93-1.09 on the tiny model), and Janus without `cfg_in_logprob` samples from another
        distribution than the loss scores."""
        if self.algo.num_iterations == 1:
            return None  # on-policy: the ratio is exactly 1
        if task.old_logp is None:
            exact = self.compute_dtype == torch.float32 and (
                self.policy.recorded_logprobs_are_exact(task.spec.name)
            )
            if exact:
                task.old_logp = task.rollout.logprobs  # type: ignore[attr-defined]
            else:
                task.old_logp = self._micro_logprobs(self.policy, task)
        return task.old_logp

    def _update(
        self, rollouts: StepRollouts, advantages: dict[str, TaskAdvantages], iteration: int
    ) -> dict[str, float]:
        """One optimiser update on the step's rollouts: every micro-batch of every task."""
        sums = MetricSum()
        measure = (
            iteration == 0
            and self.config.logging.grad_agreement_every > 0
            and self.step % self.config.logging.grad_agreement_every == 0
            and len(rollouts) == len(self.specs)
        )
        task_grads: dict[str, torch.Tensor] = {}
        training_mode = self._loss_in_training_mode()
        for task in rollouts:
            spec = task.spec
            adv = advantages[spec.key].advantages[self._local_rows(spec)]
            mask = spec.loss_mask(task.rollout)
            if training_mode:
                self.policy.eval()  # old and reference log-probs: the sampling distribution
            self._old_logprobs(task)
            self._ref_logprobs(task)
            if training_mode:
                self.policy.train()
            num_tokens = self.dist.reduce(mask.sum().double()).item()
            num_seqs = self.dist.reduce(torch.tensor(float(mask.shape[0]))).item()
            size = self.train_cfg.micro_batch_size
            for start in range(0, len(task.rollout), size):
                rows = slice(start, start + size)
                sums.add(*self._loss(task, rows, adv[rows], mask[rows], num_seqs, num_tokens))
            if measure:
                task_grads[spec.key] = self._take_grads()
        self.policy.eval()
        metrics = sums.result(self.dist)
        metrics["loss"] = sum(
            spec.loss_weight * metrics.get(f"{spec.key}/loss", 0.0) for spec in self.specs.values()
        )
        if measure:
            metrics.update(self._restore_and_compare(task_grads))
        metrics.update(self._optimizer_step())
        return metrics

    def _loss_in_training_mode(self) -> bool:
        """HF gradient checkpointing is active in training mode only, and LoRA dropout acts only
        there; otherwise the loss's forward runs in eval mode like the rollouts."""
        lora = self.config.model.lora
        return self.config.model.gradient_checkpointing or (lora is not None and lora.dropout > 0)

    def _loss(
        self,
        task: TaskRollouts,
        rows: slice,
        adv: torch.Tensor,
        mask: torch.Tensor,
        num_sequences: float,
        num_tokens: float,
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Backward of one micro-batch's (`rows` of the task's record) share of the global
        loss; returns its metrics and its token count."""
        spec, old, ref = task.spec, task.old_logp, task.ref_logp
        micro = task.rollout[rows]

        def batch_of(logp: torch.Tensor) -> TaskBatch:
            device = logp.device
            return TaskBatch(
                logp=logp,
                mask=mask.to(device),
                advantages=adv.to(device),
                old_logp=None if old is None else old[rows].to(device).float(),
                ref_logp=None if ref is None else ref[rows].to(device),
                num_sequences=num_sequences,
                num_tokens=num_tokens,
                norm_length=spec.norm_length(task.rollout),
            )

        stages = self._logprob_stages(spec, micro)
        if stages > 1:
            metrics = self._staged_backward(spec, micro, stages, batch_of, on_policy=old is None)
        else:
            with self._autocast():
                logp = spec.logprobs(self.policy, micro).float()
            loss, metrics = task_loss(batch_of(logp), self.algo, spec.key)
            (spec.loss_weight * loss).backward()
        named = {f"{spec.key}/{k}": v for k, v in metrics.items()}
        return named, float(mask.sum())

    def _logprob_stages(self, spec: TaskSpec, micro: RolloutBatch) -> int:
        """Stages of the loss's backward of one micro-batch (1 unless the policy scores a
        record with several forwards and splits them: `StagedLogProbScorer`)."""
        if not isinstance(self.policy, StagedLogProbScorer):
            return 1
        return max(1, int(self.policy.logprob_stages(spec.name, micro)))

    def _staged_backward(
        self,
        spec: TaskSpec,
        micro: RolloutBatch,
        stages: int,
        batch_of: Callable[[torch.Tensor], TaskBatch],
        on_policy: bool,
    ) -> dict[str, torch.Tensor]:
        """The micro-batch's backward one stage at a time, one stage's graph held at a time:
        stage s's log-probs carry the gradient, every other token is a detached constant, so
        the stages' gradients add up to that of one backward through all of them. The other
        tokens' values are exact where the loss needs them (sequence-level ratios off policy:
        one extra forward pass without gradient) and the sampler's recorded log-probs
        otherwise; the metrics are computed once from the assembled values."""
        policy: Any = self.policy
        if separable_over_tokens(self.algo, on_policy):
            filler = micro.logprobs.detach().float()  # type: ignore[attr-defined]
        else:
            with torch.no_grad(), self._autocast():
                filler = spec.logprobs(policy, micro).float()
        values = torch.zeros_like(filler)
        for stage in range(stages):
            with self._autocast():
                logp, in_stage = policy.stage_logprobs(spec.name, micro, stage)
            logp, in_stage = logp.float(), in_stage.to(filler.device)
            values = torch.where(in_stage, logp.detach(), values)
            kept = torch.where(in_stage, logp, filler)
            loss, _ = task_loss(batch_of(kept), self.algo, spec.key)
            (spec.loss_weight * loss).backward()
        with torch.no_grad():
            _, metrics = task_loss(batch_of(values), self.algo, spec.key)
        return metrics

    def _take_grads(self) -> torch.Tensor:
        """The accumulated gradient as one flat vector; the parameters' grads are cleared."""
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                for p in self.params
            ]
        )
        for p in self.params:
            p.grad = None
        return flat

    def _restore_and_compare(self, grads: dict[str, torch.Tensor]) -> dict[str, float]:
        """cos(g_und, g_gen) over all processes, over all trainable parameters
        (`grad_cosine`) and over the SHARED ones only (`grad_cosine_shared`: the tensors both
        losses reach, e.g. the language-model trunk; a block only one loss reaches, like an
        output head, adds zero to the dot product and only dilutes the all-parameter cosine
        toward 0), plus one cosine per parameter group (`grad_cosine/{group}`). The
        parameters get g_und + g_gen back."""
        first, second = grads.values()  # task order: und, gen
        und, gen = self.dist.reduce(first), self.dist.reduce(second)
        # the local sum goes back: _optimizer_step all-reduces it like any other step
        total = (first + second).to(self.params[0].device)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = total[offset : offset + n].view_as(p).to(p.dtype).clone()
            offset += n
        out = {"grad_cosine": _cosine(und, gen)}
        shared = torch.zeros_like(und, dtype=torch.bool)
        offset = 0
        for group, params in self.policy.parameter_groups().items():
            size = sum(p.numel() for p in params)
            part = slice(offset, offset + size)
            offset += size
            if size:
                out[f"grad_cosine/{group}"] = _cosine(und[part], gen[part])
        offset = 0
        for p in self.params:
            part = slice(offset, offset + p.numel())
            offset += p.numel()
            both = bool(und[part].abs().sum() > 0) and bool(gen[part].abs().sum() > 0)
            shared[part] = both
        out["grad_cosine_shared"] = _cosine(und[shared], gen[shared])
        return out

    def _optimizer_step(self) -> dict[str, float]:
        if self.sharding.all_reduces_grads:  # FSDP has reduce-scattered them already
            self.dist.all_reduce_grads(self.params)
        max_norm = self.train_cfg.max_grad_norm or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm_value(grad_norm), "learning_rate": float(lr)}

    # ------------------------------------------------------------------ metrics and logging

    def _metrics(
        self,
        batch: StepBatch,
        rollouts: StepRollouts,
        scores: StepScores,
        advantages: dict[str, TaskAdvantages],
    ) -> dict[str, float]:
        """Rollout and reward metrics of the global batch (TRL names, `und/` and `gen/`)."""
        out: dict[str, float] = {"epoch": batch.step * batch.size / len(self.sampler.pairs)}
        for task, adv in advantages.items():
            out.update({k: float(v) for k, v in adv.metrics(task).items()})
            for name, count in scores.failures.get(task, {}).items():
                out[f"{task}/{name}"] = count
            for name, values in scores.per_reward[task].items():
                valid = values[~torch.isnan(values)]
                out[f"{task}/rewards/{name}/mean"] = float(valid.mean()) if len(valid) else math.nan
                out[f"{task}/rewards/{name}/std"] = (
                    float(valid.std()) if len(valid) > 1 else math.nan
                )
        for task in rollouts:
            key, rollout = task.spec.key, task.rollout
            mask = task.spec.loss_mask(rollout).float()
            lengths = self.dist.gather(mask.sum(1))
            out[f"{key}/completions/mean_length"] = float(lengths.mean())
            out[f"{key}/completions/min_length"] = float(lengths.min())
            out[f"{key}/completions/max_length"] = float(lengths.max())
            limit = task.spec.max_length
            if limit is not None:
                out[f"{key}/completions/clipped_ratio"] = float((lengths >= limit).float().mean())
            # Monte-Carlo entropy: the mean of -log pi(token) over sampled tokens
            logprobs = rollout.logprobs  # type: ignore[attr-defined]
            neg = self.dist.reduce(-(logprobs * mask).sum().double())
            out[f"{key}/entropy"] = float(neg / self.dist.reduce(mask.sum().double()))
        weighted = self.config.data.mode == "pairs"
        if weighted:
            from pairuni.rl.advantages import pair_weights

            weights = pair_weights(batch.similarity, batch.aligned, self.algo.pair_weighting)
            out["pair/weight_mean"] = float(weights.mean())
            out["pair/weight_min"] = float(weights.min())
        else:
            out["pair/weight_mean"] = 1.0
        out["pair/frac_aligned"] = float(batch.aligned.float().mean()) if weighted else math.nan
        return out

    def _log(
        self,
        metrics: dict[str, float],
        batch: StepBatch,
        rollouts: StepRollouts,
        scores: StepScores,
    ) -> None:
        if not self.dist.is_main or self.tracker is None:
            return
        self.tracker.log(self.step, metrics)
        every = self.config.logging.image_grid_every
        if not every or self.step % every:
            return
        for task in rollouts:
            images = task.spec.outputs(task.rollout) if task.spec.image_outputs else []
            if images:  # empty when the rollout was not decoded
                self._save_grid(batch, task, images, scores.total[task.spec.key])

    def _save_grid(
        self, batch: StepBatch, task: TaskRollouts, images: list[Any], rewards: torch.Tensor
    ) -> None:
        from pairuni.training.grids import captioned_grid

        spec, limit = task.spec, self.config.logging.image_grid_max
        pairs = spec.pairs(batch)
        slots = list(self._local_range())
        prompts = [spec.prompt(pairs[s]) for s in slots for _ in range(spec.num_samples)]
        local_rewards = rewards[self._local_rows(spec)].tolist()
        grid = captioned_grid(images[:limit], prompts[:limit], local_rewards[:limit])
        path = self.out_dir / "samples" / f"step-{self.step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        assert self.tracker is not None
        self.tracker.log_image(self.step, "samples", grid)

    # ------------------------------------------------------------------ checkpoints

    def _save(self) -> None:
        """Write `checkpoint-{step}` atomically (temp dir, then rename) and rotate old ones."""
        tmp = ckpt.temp_dir(self.out_dir, self.step)
        # collective under zero1 / fsdp: every process takes part, rank 0 gets the full states
        model_state = self.sharding.full_model_state()
        optimizer_state = self.sharding.optimizer_state(self.optimizer)
        if self.dist.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            self.policy.save(tmp / "model", state_dict=model_state)
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        self.dist.barrier()
        torch.save(ckpt.rng_state(), tmp / f"rng_state_{self.dist.rank}.pt")
        self.dist.barrier()
        if self.dist.is_main:
            state = {
                "step": self.step,
                "data_position": self.step * self.train_cfg.pairs_per_step,
                "optimizer_updates": self.step * self.algo.num_iterations,
                "world_size": self.dist.world_size,
                "sharding": self.sharding.effective,
                "branch": self.run_plan.branch,
                "parent": self.run_plan.parent,
                "config": self.config.model_dump(mode="json"),
            }
            ckpt.write_state(tmp / ckpt.STATE_FILE, state)
            final = ckpt.checkpoint_dir(self.out_dir, self.step)
            if final.exists():
                self._displace(final)
            tmp.rename(final)
            runs.rotate(self.out_dir, self.train_cfg.save_total_limit, self.run_plan.branch)
        self.dist.barrier()

    def _displace(self, existing: Path) -> None:
        """A checkpoint of this step already there: this branch's own (rewritten), or another
        branch's, which moves to `superseded/` instead of being deleted."""
        other = runs.branch_of(existing)
        if other == self.run_plan.branch:
            shutil.rmtree(existing)
            return
        target = self.out_dir / runs.SUPERSEDED / f"{other or 'unnamed'}-displaced"
        target.mkdir(parents=True, exist_ok=True)
        existing.rename(target / existing.name)
        logger.warning("moved %s of branch %s to %s", existing.name, other, target)

    def _load_checkpoint(self, path: Path) -> None:
        state = ckpt.read_state(path)
        self.step = int(state["step"])
        self._check_resume_config(path, state.get("config", {}))
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=False)
        try:
            self.sharding.load_optimizer_state(self.optimizer, optimizer_state)
        except ShardingError as err:
            raise TrainingSetupError(f"{path / 'optimizer.pt'}: {err}") from err
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        self._apply_optimizer_settings()
        rng_file = path / f"rng_state_{self.dist.rank}.pt"
        if rng_file.is_file():
            ckpt.set_rng_state(torch.load(rng_file, weights_only=False))
        logger.info("resumed from %s at step %d", path, self.step)

    def _check_resume_config(self, path: Path, saved: dict[str, Any]) -> None:
        """Refuse, warn about or apply each changed config key (`training/resume.py`'s rules,
        docs/training.md)."""
        changes = config_changes(saved, self.config.model_dump(mode="json"))
        refused = [c for c in changes if c.rule == "refuse"]
        if refused:
            raise TrainingSetupError(refusal_message(str(path), refused))
        warned = [c for c in changes if c.rule == "warn"]
        applied = [c for c in changes if c.rule == "apply"]
        if warned and self.dist.is_main:
            logger.warning(
                "resuming with changed settings that alter the experiment (%s); they apply from "
                "step %d on, and the run will not reproduce the uninterrupted one",
                "; ".join(f"{c} ({c.why})" for c in warned),
                self.step + 1,
            )
        if applied and self.dist.is_main:
            logger.info("resuming with %s", "; ".join(str(c) for c in applied))

    def _apply_optimizer_settings(self) -> None:
        """The optimiser and schedule settings of THIS config over the restored state (which
        carries the old ones): base learning rate, betas, eps and weight decay in every group,
        and the learning rate of the next update from the new schedule at the restored update
        count."""
        cfg = self.train_cfg
        for group in self.optimizer.param_groups:
            group.update(
                lr=cfg.learning_rate,
                initial_lr=cfg.learning_rate,
                betas=(cfg.adam_beta1, cfg.adam_beta2),
                eps=cfg.adam_epsilon,
                weight_decay=cfg.weight_decay,
            )
        scheduler = self.scheduler
        scheduler.base_lrs = [cfg.learning_rate] * len(self.optimizer.param_groups)
        update = scheduler.last_epoch
        rates = [
            base * fn(update)
            for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        ]
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        scheduler._last_lr = rates  # what get_last_lr() reports for the next update
