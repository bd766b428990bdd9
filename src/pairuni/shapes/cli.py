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
