"""`pairuni pairs ...`: complete, features, build, stats. Heavy imports stay inside commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pairuni.cliutils import ConfigOption, SetOption, fail, load_config_or_exit

pairs_app = typer.Typer(
    help="Build the PairUG file from single-task data: complete, features, build, stats.",
    no_args_is_help=True,
)

ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]


@pairs_app.command("complete")
def complete_cmd(
    task: Annotated[
        str, typer.Argument(help="`understanding` (add prompts) or `generation` (add QA).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Quadruples JSONL (appended, resumable).")
    ],
    config: ConfigOption = None,
    set_: SetOption = None,
    input_: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="Records to complete instead of the config's sources."),
    ] = None,
    progress: ProgressOption = True,
) -> None:
    """Complete single-task records into quadruples with the configured annotator."""
    from pairuni.data.errors import DataError
    from pairuni.pairing.annotators import make_annotator
    from pairuni.pairing.complete import complete_records
    from pairuni.pairing.sources import load_samples

    if task not in ("understanding", "generation"):
        fail(f"task must be `understanding` or `generation`, got {task!r}")
    cfg = load_config_or_exit(config, set_)
    pc = cfg.pairing
    paths = input_ or getattr(pc.sources, task)
    if not paths:
        fail(f"no {task} data: set pairing.sources.{task} or pass --input")
    try:
        samples = load_samples(paths, task, pc.sources)  # type: ignore[arg-type]
        annotator = make_annotator(pc.complete, seed=cfg.seed)
    except (DataError, FileNotFoundError, ValueError, ImportError) as err:
        fail(str(err))
    typer.echo(samples.summary())
    summary = complete_records(
        samples.records,
        task,
        out,
        annotator,
        pc.complete,
        progress=progress,  # type: ignore[arg-type]
    )
    typer.echo(summary.line())


@pairs_app.command("features")
def features_cmd(
    config: ConfigOption = None,
    set_: SetOption = None,
    progress: ProgressOption = True,
) -> None:
    """Extract (and cache) the image features of every source record."""
    from pairuni.data.errors import DataError
    from pairuni.pairing.build import sample_features
    from pairuni.pairing.sources import load_samples

    pc = load_config_or_exit(config, set_).pairing
    try:
        for task in ("understanding", "generation"):
            samples = load_samples(getattr(pc.sources, task), task, pc.sources)  # type: ignore[arg-type]
            feats = sample_features(samples.records, pc, progress=progress)
            typer.echo(f"{samples.summary()}\n  features {feats.shape} in {pc.features.cache_dir}")
    except (DataError, FileNotFoundError, ValueError) as err:
        fail(str(err))


@pairs_app.command("build")
def build_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="The PairUG file (.jsonl / .parquet).")],
    completions: Annotated[
        list[str] | None,
        typer.Option("--completions", help="Quadruple files from `pairs complete` (repeatable)."),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    progress: ProgressOption = True,
) -> None:
    """Select aligned pairs (k-means medoids) and retrieve pairs; write the PairUG file."""
    from pairuni.data.errors import DataError
    from pairuni.pairing.build import run_build

    pc = load_config_or_exit(config, set_).pairing
    try:
        result = run_build(pc, str(out), completions or [], progress=progress)
    except (DataError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    if result.needs_completion:
        fail(
            f"{len(result.needs_completion)} selected samples have no completion; they are in "
            f"{out}.needs-completion.<task>.jsonl: run `pairuni pairs complete <task> --input "
            "<that file> --out <quads.jsonl>` and build again with --completions <quads.jsonl> "
            "(or set pairing.on_missing_completion=drop)"
        )
    typer.echo(
        f"wrote {out}: {result.stats['aligned']} aligned + {result.stats['retrieved']} retrieved "
        "pairs"
    )


@pairs_app.command("stats")
def stats_cmd(
    pairs: Annotated[Path, typer.Argument(help="A PairUG file.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Where to write the report.")],
    examples: Annotated[int, typer.Option(help="Example pairs shown in the HTML page.")] = 12,
) -> None:
    """Counts by kind and category, the similarity histogram (PNG) and an HTML page of examples."""
    from pairuni.data.errors import DataError
    from pairuni.pairing.stats import write_report

    try:
        counts = write_report(pairs, out_dir, examples=examples)
    except (DataError, FileNotFoundError) as err:
        fail(str(err))
    typer.echo(counts)
