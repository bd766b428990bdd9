"""`pairuni train`: PairGRPO on a pair file (heavy imports stay inside the command body)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pairuni.cliutils import ConfigOption, SetOption, fail, load_config_or_exit


def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from the latest checkpoint in train.out_dir."),
    ] = False,
    resume_from: Annotated[
        Path | None,
        typer.Option("--resume-from", help="Continue from this checkpoint-{step} directory."),
    ] = None,
) -> None:
    """Train a policy with PairGRPO (single process, or under `accelerate launch` / `torchrun`).

    Writes train.out_dir/{config.yaml, metrics.jsonl, samples/, checkpoint-{step}/}.
    See docs/training.md.
    """
    import logging

    cfg = load_config_or_exit(config, set_)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_paths(cfg)
    from pairuni.data.errors import DataError
    from pairuni.policy.janus import CheckpointError
    from pairuni.rewards.base import RewardError
    from pairuni.rl.trainer import PairGRPOTrainer, TrainingSetupError

    target: Path | bool | None = resume_from if resume_from is not None else resume
    try:
        trainer = PairGRPOTrainer(cfg, resume=target)
    except (DataError, CheckpointError, RewardError, TrainingSetupError) as err:
        fail(str(err))
    except FileNotFoundError as err:
        fail(str(err))
    try:
        metrics = trainer.train()
    except (DataError, RewardError) as err:
        fail(str(err))
    summary = ", ".join(
        f"{k}={metrics[k]:.4g}" for k in ("loss", "und/reward", "gen/reward") if k in metrics
    )
    if trainer.dist.is_main:
        typer.echo(f"done: {trainer.step} steps in {cfg.train.out_dir} ({summary})")


def check_paths(cfg: object) -> None:
    """The checks that need no torch: the model and data paths exist."""
    model_path = cfg.model.path  # type: ignore[attr-defined]
    data_path = cfg.data.path  # type: ignore[attr-defined]
    if model_path is None:
        fail(
            "model.path is not set; point it at a Janus checkpoint directory (--set model.path=DIR)"
        )
    if not Path(model_path).is_dir():
        fail(
            f"model.path {model_path} does not exist; download the checkpoint there (e.g. `hf "
            f"download deepseek-community/Janus-Pro-1B --local-dir {model_path}`) or make the "
            "demo one with `python -m pairuni.rl.demo runs/tiny-demo`"
        )
    if data_path is None:
        fail("data.path is not set; point it at a pair file (--set data.path=pairs.jsonl)")
    if not Path(data_path).exists():
        fail(
            f"data.path {data_path} does not exist; build it with `pairuni pairs build` or make "
            "the demo one with `python -m pairuni.rl.demo runs/tiny-demo`"
        )
