"""The `pairuni` command. Every sub-command is a thin call into one room of the package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pairuni import __version__
from pairuni.cliutils import ConfigOption, SetOption, fail, load_config_or_exit
from pairuni.rewards.cli import reward_server

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
app.add_typer(config_app, name="config")


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


@app.command("demo")
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
) -> None:
    """PairGRPO end to end on ShapesWorld: data, pairs, base model, training, before/after report.

    Runs on a laptop CPU with exact rewards; finished stages are skipped on a re-run and an
    interrupted training resumes. The report is OUT/report/index.html. --set overrides keys of the
    embedded training config (src/pairuni/shapes/demo.yaml), e.g. --set train.max_steps=80.
    """
    import shutil

    from pairuni.config import ConfigError
    from pairuni.shapes.demo import DemoSettings, run_demo

    if fresh and out.exists():
        shutil.rmtree(out)
    settings = DemoSettings.quick_run() if quick else DemoSettings()
    try:
        state = run_demo(out, settings, set_ or [], echo=typer.echo)
    except ConfigError as err:
        fail(str(err))
    table = state["report"]["result"]["table"]
    width = max(len(row[0]) for row in table)
    typer.echo(f"\n{'':{width}}   base  trained")
    for name, before, after in table[:2]:
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


app.command("reward-server")(reward_server)

from pairuni.shapes.cli import shapes_app  # noqa: E402

app.add_typer(shapes_app, name="shapes")

from pairuni.policy import cli as policy_cli  # noqa: E402

app.command("generate")(policy_cli.generate)
app.command("answer")(policy_cli.answer)
app.command("tiny-model")(policy_cli.tiny_model)

from pairuni.rl.cli import train as train_command  # noqa: E402

app.command("train")(train_command)

from pairuni.eval.cli import eval_app  # noqa: E402

app.add_typer(eval_app, name="eval")

from pairuni.pairing.cli import pairs_app  # noqa: E402

app.add_typer(pairs_app, name="pairs")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
