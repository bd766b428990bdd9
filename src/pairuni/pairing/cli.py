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
    retry_dropped: Annotated[
        bool,
        typer.Option(
            "--retry-dropped",
            help="Try again the records in <out>.dropped.jsonl (and cached drops), e.g. after "
            "a fix on the server's side.",
        ),
    ] = False,
) -> None:
    """Complete single-task records into quadruples with the configured annotator.

    Exits 1 with the cause when records are left undone because of the service (an outage,
    every request refused, a rejected key); what finished is kept, so the same command resumes.
    """
    from pairuni.data.errors import DataError
    from pairuni.pairing.annotators import make_annotator
    from pairuni.pairing.complete import CompletionFailed, complete_records
    from pairuni.pairing.sources import load_samples, rejects_path

    if task not in ("understanding", "generation"):
        fail(f"task must be `understanding` or `generation`, got {task!r}")
    cfg = load_config_or_exit(config, set_)
    pc = cfg.pairing
    paths = input_ or getattr(pc.sources, task)
    if not paths:
        fail(f"no {task} data: set pairing.sources.{task} or pass --input")
    try:
        samples = load_samples(
            paths,
            task,
            pc.sources,
            rejects=rejects_path(out, task),  # type: ignore[arg-type]
        )
        annotator = make_annotator(pc.complete, seed=cfg.seed)
    except (DataError, FileNotFoundError, ValueError, ImportError) as err:
        fail(str(err))
    typer.echo(samples.summary())
    if not samples.records:
        fail(
            f"no {task} records to complete in {', '.join(map(str, paths))}: "
            f"{samples.summary()}. Check the input (--input or pairing.sources.{task}), the "
            "column mapping (pairing.sources.columns) and the category filters; nothing was "
            "sent and nothing was written",
            code=1,
        )
    try:
        summary = complete_records(
            samples.records,
            task,  # type: ignore[arg-type]
            out,
            annotator,
            pc.complete,
            progress=progress,
            retry_dropped=retry_dropped,
        )
    except CompletionFailed as err:
        if err.summary is not None:
            typer.echo(err.summary.line())
            for warning in err.summary.warnings:
                typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
            typer.echo(f"request ledger: {err.summary.ledger}")
        fail(str(err), code=1)
    except (DataError, OSError) as err:
        fail(str(err), code=1)
    typer.echo(summary.line())
    for warning in summary.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"request ledger: {summary.ledger}")


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
        stale = result.stats.get("stale_completions", 0)
        edited = f" ({stale} were edited since their completion)" if stale else ""
        fail(
            f"{len(result.needs_completion)} selected samples have no completion{edited}; they "
            f"are in {out}.needs-completion.<task>.jsonl: run `pairuni pairs complete <task> "
            "--input <that file> --out <quads.jsonl>` and build again with --completions "
            "<quads.jsonl> "
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


@pairs_app.command("export")
def export_cmd(
    pairs: Annotated[Path, typer.Option("--pairs", "-p", help="The PairUG file to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to write.")],
    format_: Annotated[
        str, typer.Option("--format", help="The trainer's format: `bagel` (docs/bagel.md).")
    ] = "bagel",
    on_bad_record: Annotated[
        str,
        typer.Option(
            "--on-bad-record",
            help="`error` stops at the first bad pair; `skip` leaves bad pairs out, counts "
            "them and lists them in <out>/rejects.jsonl.",
        ),
    ] = "error",
    images: Annotated[
        str, typer.Option(help="`copy` the understanding images, or `link` them (symlinks).")
    ] = "copy",
    t2i_shards: Annotated[
        int,
        typer.Option(help="Parquet shards of the T2I data; a multiple of GPUs x data workers."),
    ] = 64,
    data_root: Annotated[
        str | None,
        typer.Option(help="The path of --out on the machine that runs Bagel (default: here)."),
    ] = None,
    name: Annotated[
        str, typer.Option(help="Prefix of the DATASET_INFO keys and of the data files.")
    ] = "pairug",
    progress: ProgressOption = True,
) -> None:
    """Write the PairUG file in the formats Bagel's trainer reads (SFT, as in the paper)."""
    from pairuni.data.errors import DataError
    from pairuni.pairing.export import FORMATS, BagelExportOptions, export_bagel

    if format_ not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
    try:
        options = BagelExportOptions(
            t2i_shards=t2i_shards,
            images=images,  # type: ignore[arg-type]
            data_root=data_root,
            name=name,
            on_bad_record=on_bad_record,  # type: ignore[arg-type]
            progress=progress,
        )
        result = export_bagel(pairs, out, options)
    except (DataError, FileNotFoundError, ValueError, OSError) as err:
        fail(str(err))
    typer.echo(result.summary())
    typer.echo(f"next: register and train as {out / 'README.txt'} says")
