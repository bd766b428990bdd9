"""The reward server and its `http` client, against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import math
import select
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
from pairuni.rewards.http_client import HttpReward
from pairuni.rewards.server import (
    MIB,
    RewardHTTPServer,
    ServedReward,
    build_served_rewards,
    is_loopback,
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


def serve(fn: Any, task: str = "any", name: str = "r", **options: Any) -> RewardHTTPServer:
    server = RewardHTTPServer({name: ServedReward(name, task, fn, threading.Lock())}, **options)
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


# --- under load and under attack ------------------------------------------------------------


def ones(prompts: list[str], completions: list[Any], **columns: Any) -> list[float]:
    return [1.0] * len(prompts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raw_exchange(server: RewardHTTPServer, data: bytes, wait: float = 5.0) -> tuple[int, str]:
    """Send raw bytes and read one answer, not waiting for the server to close: (status, body);
    (0, "") when the server closed without answering."""
    with socket.create_connection(server.server_address[:2], timeout=wait) as sock:
        sock.sendall(data)
        reply = sock.makefile("rb")
        status_line = reply.readline().decode()
        if not status_line:
            return 0, ""
        length = 0
        while (line := reply.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            length = int(value) if name.lower() == "content-length" else length
        return int(status_line.split(" ", 2)[1]), reply.read(length).decode()


def post_headers(length: int, extra: str = "") -> bytes:
    return (
        f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def test_listen_backlog_queues_a_burst_while_the_server_is_busy() -> None:
    """Connections the accept loop has not taken yet wait in the kernel's backlog; with
    Python's default of 5 a burst beyond it is dropped (resets and SYN retries at the client)."""

    def connected_out_of_40(server: RewardHTTPServer) -> int:
        sockets = [socket.socket() for _ in range(40)]
        try:
            for sock in sockets:
                sock.setblocking(False)
                sock.connect_ex(server.server_address[:2])
            time.sleep(0.3)
            _, writable, _ = select.select([], sockets, [], 0.3)
            return sum(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in writable)
        finally:
            for sock in sockets:
                sock.close()
            server.server_close()

    rewards = {"r": ServedReward("r", "any", ones, threading.Lock())}
    assert connected_out_of_40(RewardHTTPServer(rewards)) == 40  # not serving: all queued
    assert connected_out_of_40(RewardHTTPServer(rewards, backlog=5)) < 40  # the old setting


def test_a_burst_of_200_concurrent_requests_all_succeed(servers: list) -> None:
    servers.append(server := serve(ones))
    client = HttpReward(url=server.url, retries=0, timeout=30)
    barrier = threading.Barrier(200)
    failures: list[str] = []

    def one() -> None:
        barrier.wait()
        try:
            assert client(["p"], ["c"]) == [1.0]
        except Exception as err:
            failures.append(repr(err))

    workers = [threading.Thread(target=one) for _ in range(200)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    assert server.status_counts == {200: 200}


def test_a_stalled_body_gets_408_and_frees_its_thread(servers: list) -> None:
    servers.append(server := serve(ones, timeout=0.3, threads=1))
    start = time.monotonic()
    status, body = raw_exchange(server, post_headers(100) + b'{"task": "und')
    assert status == 408 and "did not arrive within 0.3 s" in body
    assert time.monotonic() - start < 3
    # Silent after connecting: dropped at the timeout too, and the one thread is free again.
    assert raw_exchange(server, b"") == (0, "")
    assert HttpReward(url=server.url, retries=0, timeout=5)(["p"], ["c"]) == [1.0]
    deadline = time.monotonic() + 3  # the thread ends just after its answer is sent
    while server.active_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.active_connections == 0


def test_an_oversized_body_gets_413_before_it_is_sent(servers: list) -> None:
    recorder = Recorder(ones)
    servers.append(server := serve(recorder, max_body_bytes=1000))
    # Only the headers go: the answer comes without the server waiting for a 1 GB body.
    start = time.monotonic()
    status, body = raw_exchange(server, post_headers(10**9))
    assert status == 413 and "--max-body-mb 954 or more" in body
    assert time.monotonic() - start < 2
    assert recorder.calls == []


def test_a_413_is_not_retried_and_says_how_to_raise_the_cap(servers: list) -> None:
    recorder = Recorder(ones)
    servers.append(server := serve(recorder, max_body_bytes=MIB))
    client = HttpReward(url=server.url, retries=3, backoff=0.01)
    # 8 MiB: more than the socket buffers hold, so the server must drain it to be heard.
    with pytest.raises(RewardError, match=r"HTTP 413\): the body is 8.0 MiB.*--max-body-mb 9"):
        client(["p"], ["x" * (8 * MIB)])
    assert server.status_counts == {413: 1}
    assert recorder.calls == []


def test_the_client_splits_chunks_to_fit_the_cap_learnt_from_health(servers: list) -> None:
    recorder = Recorder(lambda p, c, **k: [float(len(x)) for x in c])
    servers.append(server := serve(recorder, max_body_bytes=2500))
    client = HttpReward(url=server.url)
    client.check_health()
    assert client.max_body_bytes == 2500
    outputs = ["y" * (1000 + i) for i in range(5)]
    assert client(["p"] * 5, outputs, k=list(range(5))) == [1000.0 + i for i in range(5)]
    assert recorder.calls == [2, 1, 2] and server.status_counts == {200: 4}  # + /health
    # A sample that alone is over the known cap fails here, naming the option to raise.
    with pytest.raises(RewardError, match=r"above the cap of 2.4 KiB.*--max-body-mb 1 or more"):
        client(["p"], ["z" * 3000])
    assert server.status_counts == {200: 4}


GOOD = {"task": "understanding", "prompts": ["p", "q"], "outputs": ["a", "b"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outputs": ["a", None]}, r"outputs\[1\] must be a string, got null"),
        ({"prompts": [1, "q"]}, r"prompts\[0\] must be a string, got a number"),
        ({"columns": {"prompts": ["x", "y"]}}, r"columns\['prompts'\] collides"),
        ({"columns": {"completions": ["x", "y"]}}, r"columns\['completions'\] collides"),
        ({"columns": {"k": ["x"]}}, r"columns\['k'\] has 1 values for 2 prompts"),
        ({"columns": {"k": "xy"}}, r"columns\['k'\] must be a list"),
        ({"columns": ["k"]}, r"columns must be an object"),
        ({"reward": ["r"]}, r"unknown reward \['r'\]"),
    ],
)
def test_bad_fields_are_a_400_naming_them_and_not_retried(
    servers: list, change: dict, message: str
) -> None:
    recorder = Recorder(ones)
    servers.append(server := serve(recorder))
    client = HttpReward(url=server.url, retries=3, backoff=0.01)
    with pytest.raises(RewardError, match=r"HTTP 400\): " + message):
        client._post_with_retries(json.dumps({**GOOD, **change}).encode())
    assert server.status_counts == {400: 1}
    assert recorder.calls == []


def test_a_column_named_like_a_reward_parameter_is_a_400(servers: list) -> None:
    servers.append(server := serve(mean_red, task="generation"))  # mean_red(prompts, images)
    payload = {**GOOD, "task": "generation", "columns": {"images": [1, 2]}}
    with pytest.raises(RewardError, match=r"HTTP 400\): reward 'r' cannot take .*'images'"):
        HttpReward(url=server.url)._post_with_retries(json.dumps(payload).encode())
    assert server.status_counts == {400: 1}


def test_deeply_nested_json_is_a_400(servers: list) -> None:
    servers.append(server := serve(ones))
    body = b"[" * 200_000 + b"]" * 200_000
    status, reply = raw_exchange(server, post_headers(len(body)) + body)
    assert status == 400 and "nested too deeply" in reply
    with pytest.raises(RewardError, match=r"HTTP 400\): the body is not JSON"):
        HttpReward(url=server.url)._post_with_retries(b"\xff{")


def test_a_token_is_required_on_both_routes(
    servers: list, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    servers.append(server := serve(ones, token="s3cret-token"))
    assert server.requires_token
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_exchange(server, get)[0] == 401
    body = json.dumps(GOOD).encode()
    wrong = post_headers(len(body), "Authorization: Bearer nope\r\n") + body
    assert raw_exchange(server, wrong)[0] == 401
    right = post_headers(len(body), "Authorization: bearer s3cret-token\r\n") + body
    assert raw_exchange(server, right) == (200, '{"rewards": [1.0, 1.0]}')

    monkeypatch.delenv("PAIRUNI_REWARD_TOKEN", raising=False)
    client = HttpReward(url=server.url, retries=2, backoff=0.01)
    with pytest.raises(RewardError, match=r"HTTP 401.*\$PAIRUNI_REWARD_TOKEN is not set"):
        client(["p"], ["c"])
    monkeypatch.setenv("PAIRUNI_REWARD_TOKEN", "guess")
    with pytest.raises(RewardError, match=r"refused the token.*not the server's"):
        client.check_health()
    monkeypatch.setenv("MY_TOKEN", "s3cret-token")
    client = HttpReward(url=server.url, token_env="MY_TOKEN")
    client.check_health()
    assert client(["p"], ["c"]) == [1.0]
    assert server.status_counts == {401: 4, 200: 3}
    assert "s3cret" not in caplog.text and "guess" not in caplog.text


def test_check_health(servers: list) -> None:
    servers.append(server := serve(ones, name="judge"))
    client = HttpReward(url=server.url, reward="judge")
    client.check_health()
    client.check_health()  # idempotent: one GET each time, nothing else
    assert client.max_body_bytes == 64 * MIB
    with pytest.raises(RewardError, match=r"does not serve reward 'other', only \['judge'\]"):
        HttpReward(url=server.url, reward="other").check_health()
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        RewardError,
        match=rf"{down} is unreachable.*pairuni reward-server --reward judge --port "
        rf"{down.rpartition(':')[2]}.*kwargs.url",
    ):
        HttpReward(url=down, reward="judge").check_health()


def test_check_health_needs_a_reward_name_when_several_are_served(servers: list) -> None:
    rewards = {n: ServedReward(n, "any", ones, threading.Lock()) for n in ("a", "b")}
    server = RewardHTTPServer(rewards)
    server.start()
    servers.append(server)
    with pytest.raises(RewardError, match=r"hosts \['a', 'b'\]; set .*kwargs.reward"):
        HttpReward(url=server.url).check_health()


def test_server_options_are_validated_and_loopback_is_recognised() -> None:
    rewards = {"r": ServedReward("r", "any", ones, threading.Lock())}
    with pytest.raises(ValueError, match="backlog >= 1"):
        RewardHTTPServer(rewards, backlog=0)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("gpu-box")


def test_cli_takes_the_token_and_the_body_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("BENCH_TOKEN", "t0ken")  # the server process inherits it
    command = [sys.executable, "-m", "pairuni", "reward-server", "--reward", "format"]
    command += ["--port", str(port), "--token-env", "BENCH_TOKEN", "--max-body-mb", "0.5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = HttpReward(url=f"http://127.0.0.1:{port}", token_env="BENCH_TOKEN", timeout=5)
        deadline = time.monotonic() + 30
        while True:  # poll while the server process starts
            try:
                client.check_health()
                break
            except RewardError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.25)
        assert client.max_body_bytes == MIB // 2
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert "requests need the bearer token in $BENCH_TOKEN" in output
    assert "t0ken" not in output
