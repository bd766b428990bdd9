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
        str, typer.Option(help="Address to listen on (0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve rewards over HTTP: POST /score, GET /health (docs/rewards.md)."""
    import logging

    from pairuni.rewards.base import RewardError
    from pairuni.rewards.server import RewardHTTPServer, build_served_rewards

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        served = build_served_rewards(reward)
        server = RewardHTTPServer(served, host=host, port=port)
    except (RewardError, KeyError, ValueError, OSError) as err:
        fail(str(err).strip("'\""))
    typer.echo(f"serving {', '.join(served)} on {server.url} (POST /score, GET /health)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
