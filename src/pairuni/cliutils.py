"""Pieces shared by every sub-command: the --config / --set options and friendly failures.

Kept free of heavy imports (torch, transformers) so that `pairuni --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file; see docs/config.md for every key."),
]
BackendOption = Annotated[
    str,
    typer.Option(
        "--backend",
        help="The ShapesWorld base model's architecture: `janus` (autoregressive) or `dimoo` "
        "(masked diffusion; RL steps are several times slower on a CPU).",
    ),
]

BaseSetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--base-set",
        help="A setting of the ShapesWorld base model, e.g. --base-set sft_steps=4000 "
        "(repeatable; PretrainConfig's keys): builds and caches that base model instead.",
    ),
]

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one key, e.g. --set algo.num_generations_und=8 (repeatable; YAML values).",
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error for a person (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load_config_or_exit(config: Path | None, overrides: list[str] | None) -> Any:
    from pairuni.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        fail(str(err))
