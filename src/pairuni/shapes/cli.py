"""`pairuni shapes ...`: make ShapesWorld data. Heavy imports stay inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pairuni.cliutils import fail

shapes_app = typer.Typer(
    help="ShapesWorld: a synthetic world of coloured shapes with exact rewards (docs/shapes.md).",
    no_args_is_help=True,
)


@shapes_app.command("data")
def shapes_data(
    out: Annotated[Path, typer.Option(help="Directory for the JSONL files and images/.")],
    n_und: Annotated[int, typer.Option("--n-und", help="Understanding samples.")] = 2000,
    n_gen: Annotated[int, typer.Option("--n-gen", help="Generation samples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes the same data.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels (32 or 64 are tested).")] = 32,
    max_objects: Annotated[
        int, typer.Option("--max-objects", help="Most objects in an understanding scene (1-4).")
    ] = 4,
) -> None:
    """Write understanding.jsonl, generation.jsonl and their PNG images under OUT."""
    from pairuni.shapes.build import write_dataset

    if n_und < 0 or n_gen < 0 or n_und + n_gen == 0:
        fail(f"--n-und and --n-gen must be >= 0 and not both 0 (got {n_und} and {n_gen})")
    if size < 16:
        fail(f"--size {size} is too small to draw shapes; use 32 or 64")
    if not 1 <= max_objects <= 4:
        fail(f"--max-objects {max_objects} must be between 1 and 4")
    und, gen = write_dataset(out, n_und, n_gen, seed, image_size=size, max_objects=max_objects)
    typer.echo(f"wrote {und} ({n_und} samples) and {gen} ({n_gen} samples)")


@shapes_app.command("grid")
def shapes_grid(
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path(
        "docs/img/shapes_samples.png"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the samples shown.")] = 0,
) -> None:
    """Draw one generation sample per GenEval category with its prompt (for the docs)."""
    from pairuni.shapes.build import sample_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(seed).save(out, optimize=True)
    typer.echo(f"wrote {out}")


@shapes_app.command("pretrain")
def shapes_pretrain(
    out: Annotated[Path, typer.Option(help="Directory for the base model (HF format).")],
    seed: Annotated[int, typer.Option(help="Seed of weights, batches and evaluation.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny settings for tests/CI: same path, low quality.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if OUT holds a model of these settings.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(help="torch CPU threads (default: torch's). 1 is faster on a busy machine."),
    ] = None,
) -> None:
    """Build the ShapesWorld base model: VQ tokenizer + SFT on both tasks, then evaluate it.

    The result is cached: a second call with the same settings returns at once.
    """
    import torch

    from pairuni.shapes.pretrain import PretrainConfig, pretrain

    if threads is not None:
        if threads < 1:
            fail(f"--threads {threads} must be at least 1")
        torch.set_num_threads(threads)
    config = PretrainConfig.quick(seed=seed) if quick else PretrainConfig(seed=seed)
    try:
        report = pretrain(out, config, force=force)
    except FileExistsError as err:
        fail(str(err))
    if report["cached"]:
        typer.echo(f"{out} already holds this base model (settings {report['settings_hash']})")
    scores = report["eval"]
    typer.echo(
        f"base model in {out}: VQ recovery {report['vq']['recovery_rate_heldout']:.1%}, "
        f"MC accuracy {scores['understanding_greedy']['accuracy']:.1%} greedy / "
        f"{scores['understanding_t1']['accuracy']:.1%} at T=1, "
        f"GenEval {scores['generation_cfg']['overall']:.1%} (CFG "
        f"{scores['generation_cfg']['cfg_scale']:g}); {report['seconds']['total']:.0f} s"
    )
