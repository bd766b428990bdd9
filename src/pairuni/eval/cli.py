"""`pairuni eval`: run the paper's benchmarks on a checkpoint, and `pairuni eval compare A B`.

Heavy imports (torch, transformers, the loaders) stay inside the command bodies so that
`pairuni --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pairuni.cliutils import ConfigOption, SetOption, fail, load_config_or_exit

eval_app = typer.Typer(invoke_without_command=True)


@eval_app.callback(invoke_without_command=True)
def eval_run(
    ctx: typer.Context,
    model: Annotated[
        Path | None, typer.Option(help="Checkpoint directory (HF Janus format); sets model.path.")
    ] = None,
    benchmarks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: mmmu,mmstar,mme,pope,geneval,wise,imgedit. Default: "
            "eval.benchmarks, the first six (with --rescore: every benchmark the run has "
            "outputs for). imgedit needs a backend that edits images (model.backend dimoo)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (eval.out_dir); an existing run resumes."),
    ] = None,
    rescore: Annotated[
        bool,
        typer.Option("--rescore", help="Score the cached outputs again without loading the model."),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1, help="Only the first N samples per benchmark (eval.limit; a smoke test)."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Model name in the tables (default: the checkpoint folder).")
    ] = None,
    judge_prompts: Annotated[
        Path | None,
        typer.Option(
            help="ImgEdit judge prompts, JSON {edit type: text} (eval.imgedit.judge_prompts): "
            "the official Benchmark/Basic/prompts.json, which published numbers need."
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Evaluate a checkpoint on MMMU, MMStar, MME, POPE, GenEval, WISE (and ImgEdit), or compare
    two runs.

    Generates (batched; resumes after a kill), scores, and writes OUT/results.json and
    OUT/results.md (docs/eval.md). The settings are the `eval` config section (docs/config.md):
    the paper's CFG 5 and temperature 1 for images, 4 images per GenEval prompt, greedy answers.
    GenEval needs eval.detector (owlv2 with eval.detector_dir, or shapes); WISE and ImgEdit need
    their judge's API key.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pairuni.data.errors import DataError
    from pairuni.eval.errors import EvalSetupError
    from pairuni.eval.layout import BenchmarkDataError, MissingPredictionsError
    from pairuni.eval.runner import run_eval
    from pairuni.eval.wise import JudgeError
    from pairuni.policy.janus import PromptTooLongError
    from pairuni.policy.registry import load_errors

    cfg = load_config_or_exit(config, set_)
    try:
        if limit is not None:
            cfg.eval.limit = limit
        if judge_prompts is not None:
            cfg.eval.imgedit.judge_prompts = judge_prompts
        outcome = run_eval(
            cfg.eval,
            model_path=str(model) if model is not None else None,
            model_config=cfg.model,
            out_dir=out,
            benchmarks=benchmarks,
            rescore=rescore,
            name=name,
        )
    except (
        EvalSetupError,
        BenchmarkDataError,
        MissingPredictionsError,
        PromptTooLongError,
        *load_errors(),  # a checkpoint of any backend that cannot be loaded
        DataError,  # a damaged predictions.jsonl line
        JudgeError,
        FileNotFoundError,  # BenchmarkNotFoundError, a missing detector or CLIP directory
    ) as err:
        fail(str(err))
    paths = outcome.paths
    typer.echo(paths.results_md.read_text(encoding="utf-8"))
    typer.echo(f"wrote {paths.results_json} and {paths.results_md}")


@eval_app.command("compare")
def eval_compare(
    run_a: Annotated[Path, typer.Argument(help="Run directory (or its results.json): A.")],
    run_b: Annotated[Path, typer.Argument(help="Run directory (or its results.json): B.")],
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print a Markdown table instead of a rich one.")
    ] = False,
    all_metrics: Annotated[
        bool,
        typer.Option("--all", help="Every metric, not only the paper's table columns."),
    ] = False,
) -> None:
    """Two runs side by side: A, B and B − A for every table column (or every metric)."""
    from pairuni.eval.errors import EvalSetupError
    from pairuni.eval.tables import (
        compare_markdown,
        compare_results,
        load_results,
        settings_differences,
    )

    try:
        a, b = load_results(run_a), load_results(run_b)
    except EvalSetupError as err:
        fail(str(err))
    rows = compare_results(a, b, all_metrics)
    name_a, name_b = run_name(a, run_a), run_name(b, run_b)
    if markdown:
        typer.echo(compare_markdown(rows, name_a, name_b))
    else:
        print_rich_table(rows, name_a, name_b)
    differences = settings_differences(a, b)
    if differences:
        typer.echo("\nsettings that differ (A -> B):\n  " + "\n  ".join(differences))


def run_name(results: dict, path: Path) -> str:
    return str(results.get("settings", {}).get("name") or path)


def print_rich_table(rows: list, name_a: str, name_b: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for header, justify in (
        ("Benchmark", "left"),
        ("Metric", "left"),
        (f"A: {name_a}", "right"),
        (f"B: {name_b}", "right"),
        ("B − A", "right"),
    ):
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        cells = row.cells()
        delta = row.delta
        plain = not row.headline or not delta or round(delta, row.digits) == 0
        style = "" if plain else "green" if delta > 0 else "red"  # headline: higher is better
        table.add_row(*cells[:4], f"[{style}]{cells[4]}[/]" if style else cells[4])
    Console(width=200 if not Console().is_terminal else None).print(table)
