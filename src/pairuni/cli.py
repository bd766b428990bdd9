"""The `pairuni` command. Every sub-command is a thin call into one room of the package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pairuni import __version__
from pairuni.cliutils import (
    BackendOption,
    BaseSetOption,
    ConfigOption,
    SetOption,
    fail,
    load_config_or_exit,
)
from pairuni.eval.cli import eval_app
from pairuni.pairing.cli import pairs_app
from pairuni.policy import cli as policy_cli
from pairuni.rewards.cli import reward_server
from pairuni.shapes.cli import demo_settings_or_exit, shapes_app
from pairuni.training import cli as training_cli

PIPELINE = "The pipeline"
CHECKPOINT = "A first look at a checkpoint"
TOOLS = "Tools"

app = typer.Typer(
    name="pairuni",
    help=(
        "RL fine-tuning of unified vision-language models (e.g. Janus-Pro) with "
        "understanding-generation pairs: PairUni / PairGRPO (arXiv 2510.25682)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

config_app = typer.Typer(help="Show, check and document configs.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pairuni {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """RL fine-tuning of unified vision-language models with understanding-generation pairs."""


@app.command("demo", rich_help_panel=PIPELINE)
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder of the run and its report.")
    ] = Path("runs/demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Toy sizes (the CI smoke run): same stages, ~2 min.")
    ] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Delete OUT first instead of resuming what is there.")
    ] = False,
    set_: SetOption = None,
    base_set: BaseSetOption = None,
    backend: BackendOption = "janus",
) -> None:
    """PairGRPO end to end on ShapesWorld: data, pairs, base model, training, before/after report.

    Runs on a laptop CPU with exact rewards; finished stages are skipped on a re-run and an
    interrupted training resumes. The report is OUT/report/index.html. --set overrides keys of the
    embedded training config (src/pairuni/shapes/demo.yaml), e.g. --set train.max_steps=80.
    """
    import shutil

    from pairuni.config import ConfigError
    from pairuni.data.errors import DataError
    from pairuni.rewards.base import RewardError
    from pairuni.shapes.demo import run_demo
    from pairuni.training.trainer import TrainingSetupError

    settings = demo_settings_or_exit(quick, None, base_set, backend)
    if fresh and out.exists():
        shutil.rmtree(out)
    try:
        state = run_demo(out, settings, set_ or [], echo=typer.echo)
    except (ConfigError, DataError, RewardError, TrainingSetupError) as err:
        fail(f"{err}\n(finished stages are kept in {out}; fix the cause and run again)")
    table = state["report"]["result"]["table"]
    width = max(len(row[0]) for row in table)
    typer.echo(f"\n{'':{width}}   base  trained")
    overall = [row for row in table if not row[0].startswith(("understanding:", "generation:"))]
    for name, before, after in overall:
        typer.echo(f"{name:{width}}  {before:5.3f}  {after:5.3f}")
    typer.echo(f"report: {out / 'report' / 'index.html'}")


@config_app.command("show")
def config_show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the resolved config (defaults <- file <- --set) as YAML."""
    from pairuni.config import dump_config

    typer.echo(dump_config(load_config_or_exit(config, set_)), nl=False)


@config_app.command("check")
def config_check(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Validate a config; exit 0 if it can be used, 2 with the reasons if not."""
    load_config_or_exit(config, set_)
    typer.echo(f"{config or 'defaults'}: ok")


@config_app.command("docs")
def config_docs(
    out: Annotated[Path | None, typer.Option(help="Write here instead of standard output.")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if OUT differs from what would be written.")
    ] = False,
) -> None:
    """Render the reference of every config key (docs/config.md) from the field docstrings."""
    from pairuni.config import render_config_docs

    text = render_config_docs()
    if out is None:
        typer.echo(text, nl=False)
    elif check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            fail(f"{out} is out of date; run `pairuni config docs --out {out}`", code=1)
        typer.echo(f"{out}: up to date")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}")


# Registration order is the order of `pairuni --help` within each panel.
app.add_typer(pairs_app, name="pairs", rich_help_panel=PIPELINE)
app.command("train", rich_help_panel=PIPELINE)(training_cli.train)
app.command("sft", rich_help_panel=PIPELINE)(training_cli.sft)
app.add_typer(eval_app, name="eval", rich_help_panel=PIPELINE)
app.command("generate", rich_help_panel=CHECKPOINT)(policy_cli.generate)
app.command("answer", rich_help_panel=CHECKPOINT)(policy_cli.answer)
app.command("merge-lora", rich_help_panel=CHECKPOINT)(policy_cli.merge_lora)
app.command("convert-janus", rich_help_panel=CHECKPOINT)(policy_cli.convert_janus)
app.add_typer(shapes_app, name="shapes", rich_help_panel=TOOLS)
app.command("reward-server", rich_help_panel=TOOLS)(reward_server)
app.command("tiny-model", rich_help_panel=TOOLS)(policy_cli.tiny_model)
app.command("tiny-demo", rich_help_panel=TOOLS)(training_cli.tiny_demo)
app.add_typer(config_app, name="config", rich_help_panel=TOOLS)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
