"""`pairuni reward-server`: host rewards over HTTP (see pairuni.rewards.server).

Module-level imports stay light (typer only) so that `pairuni --help` is instant.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pairuni.cliutils import fail


def reward_server(
    reward: Annotated[
        list[str],
        typer.Option(
            "--reward",
            "-r",
            help="NAME or 'NAME:{yaml kwargs}', e.g. 'hps_v21:{checkpoint: hps.pt, "
            "tokenizer_dir: tok}' or 'my_rewards.py:score' (repeatable).",
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Beyond loopback (0.0.0.0: all), set a token and stay on a "
            "trusted network or behind a TLS proxy (docs/rewards.md)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token_env: Annotated[
        str,
        typer.Option(
            help="Environment variable holding a bearer token; when it is set, /score and "
            "/health require `Authorization: Bearer <token>`."
        ),
    ] = "PAIRUNI_REWARD_TOKEN",
    max_body_mb: Annotated[
        float,
        typer.Option(
            help="Largest request body in MiB; a bigger one gets 413 and is never held in memory."
        ),
    ] = 64.0,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds a connection may stall on a read or write (0: forever)."),
    ] = 30.0,
    threads: Annotated[
        int,
        typer.Option(
            help="Connections handled at once (0: no limit); the rest wait in the backlog."
        ),
    ] = 32,
    backlog: Annotated[
        int, typer.Option(help="Connections the kernel queues while every thread is busy.")
    ] = 1024,
) -> None:
    """Serve rewards over HTTP: POST /score, GET /health (docs/rewards.md)."""
    import logging
    import os

    from pairuni.rewards.base import RewardError
    from pairuni.rewards.server import MIB, RewardHTTPServer, build_served_rewards, is_loopback

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if max_body_mb <= 0:
        fail("--max-body-mb must be > 0")
    token = os.environ.get(token_env) if token_env else None
    try:
        served = build_served_rewards(reward)
        server = RewardHTTPServer(
            served,
            host=host,
            port=port,
            backlog=backlog,
            threads=threads,
            timeout=timeout,
            max_body_bytes=int(max_body_mb * MIB),
            token=token,
        )
    except (RewardError, KeyError, ValueError, OSError) as err:
        fail(str(err).strip("'\""))
    typer.echo(f"serving {', '.join(served)} on {server.url} (POST /score, GET /health)")
    _echo_access(token_env if token else None, exposed=not is_loopback(host))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()


def _echo_access(token_env: str | None, exposed: bool) -> None:
    """Say who may call the server; never the token itself."""
    if token_env:
        typer.echo(f"requests need the bearer token in ${token_env}")
    elif exposed:
        typer.secho(
            "warning: listening beyond loopback without a token: anyone who reaches this port "
            "can use the server; set a token (--token-env) and see docs/rewards.md, Reward server",
            fg=typer.colors.YELLOW,
            err=True,
        )
