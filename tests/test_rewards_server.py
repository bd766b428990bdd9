"""The reward server and its `http` client, against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.rewards.base import RewardError, build_reward
from pairuni.rewards.server import (
    HttpReward,
    RewardHTTPServer,
    ServedReward,
    build_served_rewards,
    parse_reward_arg,
)
from pairuni.rewards.understanding import mc_accuracy


class Recorder:
    """A reward that records the batch sizes it saw, optionally failing or sleeping first."""

    def __init__(self, fn: Any, fail_first: int = 0, sleep: float = 0.0) -> None:
        self.fn, self.fail_first, self.sleep = fn, fail_first, sleep
        self.calls: list[int] = []

    def __call__(self, prompts: list[str], completions: list[Any], **columns: Any) -> list[Any]:
        self.calls.append(len(prompts))
        if len(self.calls) <= self.fail_first:
            raise RuntimeError(f"transient failure {len(self.calls)}")
        time.sleep(self.sleep)
        return self.fn(prompts, completions, **columns)


def mean_red(prompts: list[str], images: list[Image.Image], **columns: Any) -> list[float]:
    return [float(np.asarray(im.convert("RGB"))[..., 0].mean()) / 255 for im in images]


def serve(fn: Any, task: str = "any", name: str = "r") -> RewardHTTPServer:
    server = RewardHTTPServer({name: ServedReward(name, task, fn, threading.Lock())})
    server.start()
    return server


@pytest.fixture
def servers() -> Iterator[list[RewardHTTPServer]]:
    started: list[RewardHTTPServer] = []
    yield started
    for server in started:
        server.stop()


ANIMALS = ["A cat", "A dog", "A bird"]


def test_text_batches_are_chunked_and_equal_the_local_reward(servers: list) -> None:
    recorder = Recorder(mc_accuracy)
    servers.append(server := serve(recorder, task="understanding"))
    completions = ["<answer>A</answer>", "B", "<answer>a bird</answer>", "C", "nothing"]
    columns = {"und_options": [ANIMALS] * 5, "und_answer": ["A", "A", "C", "C", "B"]}
    client = HttpReward(url=server.url, batch_size=2)
    remote = client(["q"] * 5, completions, **columns)
    assert remote == mc_accuracy(["q"] * 5, completions, **columns) == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert recorder.calls == [2, 2, 1]


def test_images_travel_as_png(servers: list) -> None:
    servers.append(server := serve(mean_red, task="generation"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(3)]
    remote = HttpReward(url=server.url)(["p"] * 3, images)
    assert remote == pytest.approx(mean_red(["p"] * 3, images))  # PNG is lossless


def test_none_and_nan_come_back_as_none(servers: list) -> None:
    servers.append(server := serve(lambda p, c, **k: [None, math.nan, 0.5]))
    assert HttpReward(url=server.url)(["p"] * 3, ["a", "b", "c"]) == [None, None, 0.5]


def test_server_failing_twice_then_succeeding_is_retried(servers: list) -> None:
    recorder = Recorder(lambda p, c, **k: [1.0] * len(p), fail_first=2)
    servers.append(server := serve(recorder))
    client = HttpReward(url=server.url, retries=2, backoff=0.01)
    assert client(["p"], ["c"]) == [1.0]
    assert recorder.calls == [1, 1, 1]


def test_last_retry_raises_naming_the_url(servers: list) -> None:
    recorder = Recorder(lambda p, c, **k: [1.0] * len(p), fail_first=5)
    servers.append(server := serve(recorder))
    client = HttpReward(url=server.url, retries=1, backoff=0.01)
    with pytest.raises(
        RewardError, match=rf"{server.url} failed after 2 attempts.*transient failure 2"
    ):
        client(["p"], ["c"])


def test_timeout_is_retried_then_raises(servers: list) -> None:
    recorder = Recorder(lambda p, c, **k: [1.0] * len(p), sleep=0.6)
    servers.append(server := serve(recorder))
    client = HttpReward(url=server.url, timeout=0.15, retries=1, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(RewardError, match=rf"{server.url} failed after 2 attempts.*timed out"):
        client(["p"], ["c"])
    assert time.monotonic() - start < 2.0
    # The second attempt reached the server too (it waits for the first behind the lock).
    deadline = time.monotonic() + 3
    while recorder.calls != [1, 1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorder.calls == [1, 1]


def test_connection_refused_raises_naming_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(RewardError, match=rf"{url} failed after 3 attempts.*(Refused|refused)"):
        HttpReward(url=url, retries=2, backoff=0.0)(["p"], ["c"])


def test_bad_request_is_not_retried(servers: list) -> None:
    recorder = Recorder(lambda p, c, **k: [1.0] * len(p))
    servers.append(server := serve(recorder, task="generation"))
    client = HttpReward(url=server.url, retries=3, backoff=0.01)
    with pytest.raises(RewardError, match=r"rejected the request \(HTTP 400\).*generation outputs"):
        client(["p"], ["text, not an image"])
    assert recorder.calls == []
    with pytest.raises(RewardError, match=r"HTTP 400.*unknown reward 'other'"):
        HttpReward(url=server.url, reward="other")(["p"], ["c"])


def test_wrong_length_from_server_reward_is_a_500_naming_it(servers: list) -> None:
    servers.append(server := serve(lambda p, c, **k: [1.0], name="short"))
    with pytest.raises(RewardError, match="'short' returned 1 values for a batch of 2"):
        HttpReward(url=server.url, retries=0)(["p", "q"], ["c", "d"])


def test_health_and_routes(servers: list) -> None:
    servers.append(server := serve(mc_accuracy, task="understanding", name="mc_accuracy"))
    with urllib.request.urlopen(f"{server.url}/health", timeout=5) as reply:
        assert json.loads(reply.read()) == {
            "status": "ok",
            "rewards": {"mc_accuracy": "understanding"},
        }


def test_columns_that_are_not_json_are_named() -> None:
    client = HttpReward(url="http://127.0.0.1:9")
    with pytest.raises(RewardError, match=r"not JSON: \['blob'\]"):
        client(["p"], ["c"], blob=[object()], ok=[1])


def test_client_kwargs_are_validated() -> None:
    with pytest.raises(RewardError, match=r"kwargs.url must be an http"):
        build_reward("http", {"url": "localhost:8000"})
    with pytest.raises(RewardError, match="batch_size >= 1"):
        build_reward("http", {"url": "http://x", "batch_size": 0})


def test_parse_reward_arg() -> None:
    assert parse_reward_arg("mc_accuracy") == ("mc_accuracy", {})
    assert parse_reward_arg("numeric_accuracy:{abs_tol: 0.5}") == (
        "numeric_accuracy",
        {"abs_tol": 0.5},
    )
    assert parse_reward_arg("dir/r.py:score:{k: [1, 2]}") == ("dir/r.py:score", {"k": [1, 2]})
    with pytest.raises(ValueError, match="not a YAML mapping"):
        parse_reward_arg("x:{a: [}")
    served = build_served_rewards(["format", "numeric_accuracy:{rel_tol: 0.1}"])
    assert {name: r.task for name, r in served.items()} == {
        "format": "understanding",
        "numeric_accuracy": "understanding",
    }


def test_cli_reports_a_bad_reward() -> None:
    result = CliRunner().invoke(app, ["reward-server", "--reward", "no_such_reward"])
    assert result.exit_code == 2
    assert "unknown reward 'no_such_reward'" in result.output


def test_cli_serves_a_user_reward_file(tmp_path: Path) -> None:
    path = tmp_path / "judge.py"
    path.write_text(
        "def shout(prompts, completions, scale=1.0, **columns):\n"
        "    return [scale * c.count('!') for c in completions]\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "pairuni",
        "reward-server",
        "--reward",
        f"{path}:shout",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = HttpReward(url=f"http://127.0.0.1:{port}", retries=0, timeout=5)
        deadline = time.monotonic() + 30
        while True:  # poll while the server process starts
            try:
                assert client(["p", "q"], ["hi!!", "no"]) == [2.0, 0.0]
                break
            except RewardError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.25)
    finally:
        process.terminate()
        process.wait(timeout=10)
