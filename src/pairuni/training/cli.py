"""`pairuni train`: PairGRPO on a pair file (heavy imports stay inside the command body)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pairuni.cliutils import ConfigOption, SetOption, fail, load_config_or_exit

ResumeOption = Annotated[
    bool,
    typer.Option("--resume", help="Continue the run in train.out_dir from its latest checkpoint."),
]
ResumeFromOption = Annotated[
    Path | None,
    typer.Option(
        "--resume-from",
        help="Continue from this checkpoint-{step} directory (an older one starts a new branch).",
    ),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Delete an earlier run's checkpoints and metrics in train.out_dir before a fresh "
        "start (train.existing_run=overwrite).",
    ),
]
MoveAsideOption = Annotated[
    bool,
    typer.Option(
        "--move-aside",
        help="Move an earlier run in train.out_dir to <out_dir>.previous-<time> before a fresh "
        "start (train.existing_run=move_aside).",
    ),
]


def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: ResumeOption = False,
    resume_from: ResumeFromOption = None,
    overwrite: OverwriteOption = False,
    move_aside: MoveAsideOption = False,
) -> None:
    """Train a policy with PairGRPO (single process, or under `accelerate launch` / `torchrun`).

    Writes train.out_dir/{config.yaml, run.json, metrics.jsonl, samples/, checkpoint-{step}/}.
    A fresh run refuses a folder that holds another run (--resume, --overwrite, --move-aside);
    resuming from an older checkpoint starts a new branch and moves the later checkpoints to
    out_dir/superseded/. See docs/training.md.
    """
    from pairuni.training.trainer import PairGRPOTrainer

    cfg = _config(config, set_, overwrite, move_aside)
    trainer, metrics = _run(PairGRPOTrainer, cfg, resume_from if resume_from else resume)
    keys = ("loss", "und/reward", "gen/reward")
    summary = ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
    if trainer.dist.is_main:
        typer.echo(f"done: {trainer.step} steps in {cfg.train.out_dir} ({summary})")


def sft(
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: ResumeOption = False,
    resume_from: ResumeFromOption = None,
    overwrite: OverwriteOption = False,
    move_aside: MoveAsideOption = False,
) -> None:
    """Supervised fine-tuning on a pair file: each pair gives one understanding example
    (image, question -> answer) and one generation example (prompt -> its image's VQ codes),
    mixed 1:1; the `sft` section sets the loss weights, the unconditional-prompt share and the
    answer format. Same run folder, checkpoints, resume and distributed modes as `pairuni train`
    (train.* settings). See docs/sft.md.
    """
    from pairuni.training.sft import SFTTrainer

    cfg = _config(config, set_, overwrite, move_aside)
    trainer, metrics = _run(SFTTrainer, cfg, resume_from if resume_from else resume)
    keys = ("loss", "und/loss", "gen/loss")
    summary = ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
    if trainer.dist.is_main:
        typer.echo(f"done: {trainer.step} SFT steps in {cfg.train.out_dir} ({summary})")


def _config(config: Path | None, set_: list[str] | None, overwrite: bool, move_aside: bool) -> Any:
    """The config with --overwrite / --move-aside folded in, its paths checked (no torch)."""
    import logging

    if overwrite and move_aside:
        fail("pass at most one of --overwrite and --move-aside")
    extra = ["train.existing_run=overwrite"] if overwrite else []
    extra += ["train.existing_run=move_aside"] if move_aside else []
    cfg = load_config_or_exit(config, [*(set_ or []), *extra])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_paths(cfg)
    return cfg


def _run(trainer_class: Any, cfg: Any, resume: Path | bool) -> tuple[Any, dict[str, float]]:
    """Build and run a trainer; every error whose message says the fix exits 2 without a
    traceback."""
    from pairuni.data.errors import DataError
    from pairuni.policy.registry import load_errors
    from pairuni.rewards.base import RewardError
    from pairuni.training.distributed import CollectiveTimeoutError
    from pairuni.training.trainer import TrainingSetupError

    errors = (DataError, RewardError, TrainingSetupError, CollectiveTimeoutError)
    try:
        trainer = trainer_class(cfg, resume=resume)
        return trainer, trainer.train()
    except (*errors, FileNotFoundError, *load_errors()) as err:
        fail(str(err))


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
            f"model.path {model_path} does not exist; {tiny_demo_hint(Path(model_path), 'model')}"
            f"download the checkpoint there (e.g. `hf download deepseek-community/Janus-Pro-1B "
            f"--local-dir {model_path}`), or write a tiny random one with `pairuni tiny-model "
            f"{model_path}`"
        )
    if data_path is None:
        fail("data.path is not set; point it at a pair file (--set data.path=pairs.jsonl)")
    if not Path(data_path).exists():
        hint = tiny_demo_hint(Path(data_path), "pairs.jsonl")
        fail(
            f"data.path {data_path} does not exist; {hint}build it with `pairuni pairs build` "
            "(docs/pairing.md)"
        )


def tiny_demo_hint(path: Path, leaf: str) -> str:
    """For a path laid out like `pairuni tiny-demo DIR` writes it: the exact command to run."""
    if path.name != leaf:
        return ""
    return f"for the tiny smoke run, make it with `pairuni tiny-demo {path.parent}`; otherwise "


def tiny_demo(
    out: Annotated[
        Path, typer.Argument(help="Folder for model/ and pairs.jsonl (configs/tiny.yaml's).")
    ] = Path("runs/tiny-demo"),
    num_pairs: Annotated[int, typer.Option(min=1, help="Synthetic pairs to write.")] = 16,
) -> None:
    """Write the inputs of the smoke run `pairuni train --config configs/tiny.yaml`: a tiny random
    Janus (OUT/model) and synthetic colour-question pairs (OUT/pairs.jsonl), offline, in a second.
    """
    from pairuni.training.tiny_demo import write_tiny_demo

    model, pairs = write_tiny_demo(out, num_pairs)
    typer.echo(f"wrote a tiny random Janus to {model} and {num_pairs} pairs to {pairs}")
    typer.echo("next: pairuni train --config configs/tiny.yaml")
