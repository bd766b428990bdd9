"""The `data`, `train` and `logging` sections: what the PairGRPO trainer reads, how much it trains
per step, and what it records. Defaults are the paper's (arXiv 2510.25682 §3) where it gives them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pairuni.configbase import Section
from pairuni.eval.config import BenchmarkName

Precision = Literal["auto", "fp32", "bf16"]
MasterWeights = Literal["fp32", "bf16"]
Bf16Update = Literal["kahan", "stochastic_rounding"]

DataMode = Literal["pairs", "unpaired", "random_pairs", "understanding_only", "generation_only"]
PairKinds = Literal["all", "aligned", "retrieved"]
ReportTo = Literal["tensorboard", "wandb"]


class DataConfig(Section):
    """The pair file and how each step's batch is drawn from it. Each of the paper's data
    ablations (Table 5) is one key here; the pair weighting (Table 7) is `algo.pair_weighting`."""

    path: str | None = None
    """The PairUG file (`.jsonl`, `.jsonl.gz`, `.parquet` or a folder of parquet shards) with one
    `Pair` record per line (docs/data-format.md); `pairuni pairs build` writes one. Relative image
    paths resolve from the file's folder."""

    mode: DataMode = "pairs"
    """How the understanding (U) and generation (G) sides of a step are drawn. `pairs`: B pairs,
    each giving its question and its prompt (PairUni). `unpaired`: B questions and B prompts drawn
    by two independent shuffles of the same file (the paper's "Unpair"). `random_pairs`: the
    prompts re-paired once, at random, with other pairs' questions ("Random Pair").
    `understanding_only` / `generation_only`: one side only, with the same B. Pair weights apply
    in `pairs` mode only (the others have no meaningful similarity: w = 1)."""

    kinds: PairKinds = "all"
    """Keep `all` pairs, only `aligned` ones or only `retrieved` ones (Table 5's "Aligned-based" /
    "Retrieval-based Pairs")."""

    min_similarity: float | None = Field(None, ge=0.0, le=1.0)
    """Drop retrieved pairs whose similarity s_p is below this (Table 8 uses 0.5 / 0.6 / 0.7);
    `null` keeps them all. Aligned pairs are never dropped by it."""

    on_bad_record: Literal["error", "skip"] = "error"
    """A record with a missing or invalid field, or an image that cannot be read: `error` stops
    before training with the file, line and field; `skip` leaves it out and logs the counts and
    reasons."""

    check_images: bool = True
    """Open and decode every understanding image before training starts, so that a broken file
    fails (or is skipped) up front instead of at step 800."""

    shuffle: bool = True
    """Shuffle the pairs each epoch (with a permutation derived from `seed` and the epoch, so a
    resumed run draws exactly the same batches). `false` walks the file in order."""


class TrainConfig(Section):
    """The loop: batch sizes, optimiser (AdamW), schedule, precision, checkpoints.

    One step = one rollout batch of `pairs_per_step` pairs on all processes together, followed by
    `algo.num_iterations` optimiser updates on it."""

    out_dir: str = "runs/pairuni"
    """Where the run writes config.yaml, metrics.jsonl, sample grids and `checkpoint-{step}/`."""

    max_steps: int = Field(1200, ge=1)
    """Rollout steps to train for (the paper trains Janus-Pro-7B for at most 1200)."""

    pairs_per_step: int = Field(16, ge=1)
    """B: pairs per step across ALL processes. Each pair yields K_u answers and K_g images, so a
    step holds B * K_u understanding and B * K_g generation trajectories. The paper's "per-device
    batch size 2 (global batch size 16)" on 8 GPUs is read as 16 pairs (open question 4). Must be
    divisible by the number of processes."""

    micro_batch_size: int = Field(8, ge=1)
    """Rows (trajectories of one task) per forward/backward pass when computing the loss; the
    gradients of a step's micro-batches are accumulated, and the loss normalisers are those of the
    whole step, so this changes memory, never the result."""

    rollout_pairs_per_call: int | None = Field(None, ge=1)
    """Pairs sampled together in one rollout call (one random generator per call, seeded from
    (seed, step, first pair)). `null`: all of this process's pairs at once (fastest). Set it to a
    divisor of pairs_per_step / processes to make the samples independent of the number of
    processes (a 1-GPU run then reproduces an 8-GPU one)."""

    learning_rate: float = Field(1e-6, gt=0.0)
    """Peak learning rate of AdamW (the paper: 1e-6)."""

    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW decoupled weight decay (TRL's default: 0)."""

    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    """AdamW beta1."""

    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    """AdamW beta2."""

    adam_epsilon: float = Field(1e-8, gt=0.0)
    """AdamW epsilon."""

    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup, over all optimiser updates (max_steps * num_iterations): `cosine` to
    `min_lr_ratio` * peak, `linear` to the same, or `constant`."""

    warmup_steps: int = Field(0, ge=0)
    """Optimiser updates of linear warmup from 0 to the peak learning rate."""

    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Final learning rate as a fraction of the peak (cosine and linear schedules)."""

    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the global gradient norm (over all trainable parameters) to this; `null` disables
    clipping (the norm is still logged as `grad_norm`)."""

    precision: Precision = "auto"
    """The dtype the forward and backward passes compute in. `bf16`: rollouts and loss passes run
    under bfloat16 autocast (what the paper's GPU runs use); `fp32`: everything in float32;
    `auto`: `bf16` on a GPU that supports it, else `fp32` (CPUs without bf16 units run bf16
    slower). Where the weights live is `master_weights`; docs/training.md gives the memory of
    each combination."""

    master_weights: MasterWeights = "fp32"
    """The dtype of the trainable weights and of what AdamW updates. `fp32` (the default, and the
    recipes'): trainable parameters are held in float32 whatever `model.dtype` says, so that a
    step of ~1e-6 is not rounded away (in bfloat16 it is below half the spacing of a typical
    weight: plain AdamW then leaves ~98 % of the elements unchanged); frozen modules stay in
    `model.dtype` under bf16 compute. `bf16`: trainable weights stay bfloat16 (2 bytes less per
    parameter) and AdamW's update is compensated as `bf16_update` says; implies bf16 compute."""

    bf16_update: Bf16Update = "kahan"
    """With `master_weights: bf16`: how AdamW's float32 step reaches the bfloat16 weights.
    `kahan`: each weight keeps its rounding error in a bfloat16 compensation buffer (weight +
    buffer is the exact master value; 2 bytes per parameter); `stochastic_rounding`: rounds up
    or down at random in proportion (unbiased in expectation, no extra memory, noisier). The
    AdamW moments are float32 in both."""

    sharding: Literal["none", "zero1", "fsdp"] = "none"
    """How the processes of a multi-process run split the training state (docs/distributed.md).
    `none`: each holds the model, its gradients and the AdamW state. `zero1`: the AdamW state is
    partitioned over the processes (torch's ZeroRedundancyOptimizer, ZeRO stage 1: the AdamW
    moments, half of the training state, divided by the number of processes). `fsdp`: PyTorch
    FSDP2 shards parameters, gradients and AdamW state (ZeRO stage 3), what Janus-Pro-7B needs.
    Checkpoints are the same in every mode (full HF model, full AdamW state), so a run may resume
    under another mode. With one process every mode runs unsharded (a warning says so). `fsdp`
    cannot train `vqmodel` nor log `logging.grad_agreement_every`."""

    fsdp_gather_for_rollout: bool = True
    """With `sharding: fsdp`, keep the full weights gathered during each rollout call (one
    all-gather per module per call; memory: the full sharded modules, i.e. the trainable part of
    the model, in `model.dtype` on every GPU for the duration of the rollout). `false` re-gathers
    every decoder layer at every generated token (576 times per image): least memory, much more
    communication, and answers always run to `rollout.max_new_tokens` (every process must run
    the same number of forwards)."""

    eval_every: int = Field(0, ge=0)
    """Every N steps (and before the first step, and at the last) evaluate the current policy on
    `eval_benchmarks`
    with `pairuni eval`'s runner, prompts and scorers (the `eval` section says where the data is
    and how to sample), writing `out_dir/eval/step-{N}/` and logging `eval/{benchmark}/{metric}`
    beside the rewards. A resumed run finishes an interrupted evaluation. 0 turns it off. Runs on
    the main process; not with `sharding: fsdp` (evaluate its checkpoints with `pairuni eval`)."""

    eval_benchmarks: list[BenchmarkName] = Field(default_factory=list)
    """The benchmarks of `eval_every` (e.g. `[geneval, mme]`; with `eval.detector: shapes`,
    GenEval scores ShapesWorld prompts exactly)."""

    eval_limit: int | None = Field(64, ge=1)
    """Samples per benchmark for `eval_every` (the first N in loader order, the same ones at
    every evaluation, so the curves compare like with like); `null`: all of them."""

    save_every: int = Field(100, ge=1)
    """Write a checkpoint every this many steps (and always at the last step)."""

    save_total_limit: int | None = Field(3, ge=1)
    """Keep only the latest N checkpoints of this run's branch (`null`: keep all). Checkpoints
    of an earlier run or of another branch in the same folder are never deleted."""

    existing_run: Literal["refuse", "overwrite", "move_aside"] = "refuse"
    """A fresh run (or a branch from another folder's checkpoint) whose `out_dir` already holds
    another run's checkpoints or metrics: `refuse` stops with an error (the default: nothing is
    lost); `overwrite` deletes that run's files (`--overwrite`); `move_aside` moves them to
    `<out_dir>.previous-<time>` (`--move-aside`). Files of your own there are never touched."""

    collective_timeout_s: float = Field(600.0, gt=0)
    """Multi-process runs: how long a process waits in a collective (a gradient all-reduce, a
    reward gather, a barrier) for the others before the run stops with an error naming the
    process that stopped answering (torch's default is 30 min). The main process's evaluation
    (`eval_every`) is waited for as long as its heartbeat is alive."""

    @model_validator(mode="after")
    def _check_eval(self) -> TrainConfig:
        if self.eval_every and not self.eval_benchmarks:
            raise ValueError(
                f"eval_every={self.eval_every} but eval_benchmarks is empty, so nothing would be "
                "evaluated; list some (e.g. eval_benchmarks: [geneval]) or set eval_every: 0"
            )
        if self.eval_every and self.sharding == "fsdp":
            raise ValueError(
                "eval_every needs the whole model on the main process, which sharding: fsdp "
                "splits; set eval_every: 0 and run `pairuni eval` on the checkpoints, or use "
                "sharding: zero1"
            )
        return self

    @model_validator(mode="after")
    def _check_rollout_chunk(self) -> TrainConfig:
        chunk = self.rollout_pairs_per_call
        if chunk is not None and self.pairs_per_step % chunk:
            raise ValueError(
                f"rollout_pairs_per_call={chunk} does not divide pairs_per_step="
                f"{self.pairs_per_step}; pick a divisor of pairs_per_step / processes, or null"
            )
        return self


class SFTConfig(Section):
    """`pairuni sft`: supervised fine-tuning on the pairs (docs/sft.md). Each pair of a step
    gives one understanding example (its image and question -> its answer) and one generation
    example (its prompt -> the VQ codes of its image): understanding and generation mixed 1:1 by
    samples. The loop, batch, optimiser, schedule, checkpoints and resume are `train`'s."""

    und_weight: float = Field(1.0, ge=0)
    """Weight of the understanding loss (token-mean answer cross-entropy) in the sum."""

    gen_weight: float = Field(1.0, ge=0)
    """Weight of the generation loss (token-mean image-code cross-entropy) in the sum."""

    uncond_prob: float = Field(0.1, ge=0, lt=1)
    """Share of generation examples whose prompt is replaced by the unconditional one (the CFG
    branch), so that classifier-free guidance keeps working after SFT (Janus trains with 10 %)."""

    answer_template: str = "<answer>{answer}</answer>"
    """The target of an understanding example; `{answer}` is the pair's `und_answer`. The
    default is the format the RL prompt asks for and `mc_accuracy` reads."""

    @field_validator("answer_template")
    @classmethod
    def _has_answer(cls, value: str) -> str:
        if "{answer}" not in value:
            raise ValueError("answer_template has no `{answer}` placeholder; add it")
        return value

    @model_validator(mode="after")
    def _some_weight(self) -> SFTConfig:
        if self.und_weight == 0 and self.gen_weight == 0:
            raise ValueError("sft.und_weight and sft.gen_weight are both 0: nothing to train")
        return self


class LoggingConfig(Section):
    """Metrics (JSONL always; TensorBoard / W&B on request), sample grids, gradient agreement."""

    report_to: list[ReportTo] = Field(default_factory=list)
    """Extra metric sinks besides `out_dir/metrics.jsonl`: `tensorboard` (writes
    `out_dir/tensorboard`) and/or `wandb` (needs `pip install wandb`)."""

    wandb_project: str = "pairuni"
    """W&B project name (with `report_to: [wandb]`)."""

    run_name: str | None = None
    """Name of the run for W&B / TensorBoard; default: the last part of `train.out_dir`."""

    image_grid_every: int = Field(0, ge=0)
    """Every N steps save a grid of the step's generated images with their prompts and rewards to
    `out_dir/samples/step-{step}.png` (and to TensorBoard); 0 turns it off."""

    image_grid_max: int = Field(16, ge=1)
    """At most this many images in a grid."""

    grad_agreement_every: int = Field(0, ge=0)
    """Every N steps log `grad_cosine`: the cosine between the flattened gradient of the
    understanding loss and that of the generation loss over all trainable parameters, on the same
    step's batch (first update of the step, all processes, before clipping) — the paper's Fig. 8
    diagnostic — and `grad_cosine_shared` over the parameters both losses reach (the heads only
    one reaches dilute the first toward 0), and `grad_cosine/{group}` per trainable group.
    Free: the two losses are back-propagated separately anyway. 0 turns it off."""

    progress_bar: bool = True
    """Show a progress bar with ETA on the main process."""

    @field_validator("report_to")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))
