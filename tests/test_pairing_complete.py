"""The completion pipeline against a real OpenAI-compatible HTTP server on loopback, scripted to
answer, to fail (400, 401, 429 with Retry-After, 500, timeouts, malformed JSON, schema-violating
JSON, failed verifications, a rejected setting, a total outage) and with the client killed
mid-run: resumes, the cache key, the request ledger, exit codes and messages, durability."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.data.io import read_records
from pairuni.data.schema import GenerationSample, Quadruple, UnderstandingSample
from pairuni.pairing.annotators import LLMAnnotator, OpenAIChat, parse_json_reply, render
from pairuni.pairing.complete import CompletionFailed, complete_records
from pairuni.pairing.config import CompleteConfig

SECRET = "sk-test-secret-never-written"
TEMPERATURE_REFUSED = (
    "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default "
    "(1) value is supported."
)
MESSAGES = {
    "400": TEMPERATURE_REFUSED,
    "401": "Incorrect API key provided.",
    "404": "The model `test-model` does not exist.",
}
OK_FIELDS = {
    "prompt": "a caption",
    "question": "q?",
    "options": ["a", "b", "c", "d"],
    "answer": "C",
}


class ScriptedServer:
    """POST /v1/chat/completions. The record is found by its `[rN]` tag in the messages, the
    kind (generate / verify) by the verify template's wording; `script[kind][N]` lists the
    actions of successive calls (then `ok`); `rule(body)`, when given, may override the action
    (None keeps it). An action is `ok`, `timeout`, `malformed`, `schema`, `fail` (a failed
    verification), an HTTP status (`400`, `401`, `429`, `500`, ...) or `429ra` (429 with
    `Retry-After: 1`). Every request is logged as (kind, N, action), its arrival time in
    `times`, its body in `bodies`."""

    def __init__(
        self, script: dict | None = None, delay: float = 0.0, rule=None, on_request=None
    ) -> None:
        self.script = script or {}
        self.delay = delay
        self.rule = rule
        self.on_request = on_request
        self.log: list[tuple[str, int, str]] = []
        self.times: list[float] = []
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        text = json.dumps(body["messages"])
        rid = int(re.search(r"\[r(\d+)\]", text).group(1))
        kind = "verify" if "Check the completion" in text else "generate"
        with self.lock:
            if self.on_request is not None:
                self.on_request(len(self.log) + 1)
            n = sum(1 for k, r, _ in self.log if k == kind and r == rid)
            actions = self.script.get(kind, {}).get(rid, [])
            action = actions[n] if n < len(actions) else "ok"
            if self.rule is not None:
                action = self.rule(body) or action
            self.log.append((kind, rid, action))
            self.times.append(time.monotonic())
            self.bodies.append(body)
        time.sleep(self.delay)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.reply(handler, kind, action)  # a timed-out client may have gone away

    def reply(self, handler: BaseHTTPRequestHandler, kind: str, action: str) -> None:
        if action == "429ra":
            error = {"error": {"message": "slow down", "type": "rate_limit"}}
            return self.send(handler, 429, error, {"Retry-After": "1"})
        if action.isdigit():
            error = {"error": {"message": MESSAGES.get(action, action), "type": "x"}}
            return self.send(handler, int(action), error)
        if action == "timeout":
            time.sleep(1.0)
        content = {
            "ok": json.dumps(OK_FIELDS if kind == "generate" else {"consistent": True}),
            "timeout": json.dumps(OK_FIELDS),
            "malformed": "sure! {not json",
            "schema": json.dumps({"question": "q", "options": ["only one"], "answer": "Z"}),
            "fail": json.dumps({"consistent": False, "problems": "a hallucinated dog"}),
        }[action]
        self.send(
            handler,
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "test-model",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            },
        )

    @staticmethod
    def send(
        handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def requests(self, kind: str, rid: int) -> int:
        return sum(1 for k, r, _ in self.log if k == kind and r == rid)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("PAIRUNI_TEST_KEY", SECRET)


def make_cfg(server: ScriptedServer, tmp_path: Path, **kw) -> CompleteConfig:
    base = {
        "base_url": server.url,
        "model": "test-model",
        "api_key_env": "PAIRUNI_TEST_KEY",
        "max_concurrency": 4,
        "max_retries": 3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 0.4,
        "max_attempts": 3,
        "cache_dir": str(tmp_path / "cache"),
        "price_input_per_mtok": 2.0,
        "price_output_per_mtok": 8.0,
    }
    return CompleteConfig(**{**base, **kw})


def und_records(tmp_path: Path, n: int) -> list[UnderstandingSample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp_path / f"u{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        out.append(
            UnderstandingSample(
                id=f"u{i}",
                image=str(path),
                question=f"How many cats [r{i}]?",
                options=["1", "2"],
                answer="B",
            )
        )
    return out


def run(records, task, out, server, cfg):
    annotator = LLMAnnotator(OpenAIChat(cfg), cfg)
    return complete_records(records, task, out, annotator, cfg, progress=False)


def test_happy_path_tokens_cost_and_cache(tmp_path, env):
    server = ScriptedServer()
    try:
        cfg = make_cfg(server, tmp_path)
        recs = und_records(tmp_path, 5)
        summary = run(recs, "understanding", tmp_path / "a.jsonl", server, cfg)
        assert summary.completed == 5 and summary.requests == 10  # generate + verify each
        assert (summary.prompt_tokens, summary.completion_tokens) == (100, 50)
        assert summary.cost == pytest.approx((100 * 2.0 + 50 * 8.0) / 1e6)
        quads = list(read_records(tmp_path / "a.jsonl", Quadruple))
        assert sorted(q.id for q in quads) == [f"u{i}" for i in range(5)]
        assert all(q.prompt == "a caption" and q.origin == "understanding" for q in quads)
        # a re-run into another file pays nothing: every completion comes from the cache
        again = run(recs, "understanding", tmp_path / "b.jsonl", server, cfg)
        assert again.cache_hits == 5 and again.requests == 0 and len(server.log) == 10
        # a new template version is a new cache key
        tdir = tmp_path / "templates"
        tdir.mkdir()
        for task in ("understanding", "generation"):
            src = Path(__file__).parents[1] / f"src/pairuni/pairing/templates/{task}.yaml"
            data = yaml.safe_load(src.read_text())
            data["version"] += "-edited"
            (tdir / f"{task}.yaml").write_text(yaml.safe_dump(data))
        cfg2 = make_cfg(server, tmp_path, templates_dir=str(tdir))
        assert run(recs[:1], "understanding", tmp_path / "c.jsonl", server, cfg2).requests == 2
    finally:
        server.close()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".jsonl", ".json"):
            assert SECRET not in path.read_text(errors="ignore")


def test_failures_retries_regeneration_and_drops(tmp_path, env):
    script = {
        "generate": {
            0: ["429", "429"],  # two rate limits, then ok
            1: ["500"],  # a server error, then ok
            2: ["timeout"],  # a timeout, then ok
            3: ["malformed"],  # not JSON: regenerated
            4: ["schema"],  # JSON that breaks the schema: regenerated
            7: ["500"] * 10,  # the service never recovers: not written, not cached
            8: ["400"],  # the request is refused: dropped at once, not retried
        },
        "verify": {
            5: ["fail"],  # failed verification once: regenerated
            6: ["fail", "fail", "fail"],  # fails every attempt: dropped with the reason
        },
    }
    server = ScriptedServer(script)
    try:
        cfg = make_cfg(server, tmp_path)
        with pytest.raises(CompletionFailed, match=r"1 of 9 records could not be completed") as e:
            run(und_records(tmp_path, 9), "understanding", tmp_path / "o.jsonl", server, cfg)
        summary = e.value.summary
        assert server.url in str(e.value) and "run the same command again" in str(e.value)
        done = sorted(q.id for q in read_records(tmp_path / "o.jsonl", Quadruple))
        assert done == ["u0", "u1", "u2", "u3", "u4", "u5"]
        assert summary.completed == 6 and summary.dropped == 2 and summary.failed_transient == 1
        assert summary.refused == 1  # u8
        expected_generate = {0: 3, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 3, 7: 4, 8: 1}
        assert {r: server.requests("generate", r) for r in range(9)} == expected_generate
        assert server.requests("verify", 6) == 3 and server.requests("verify", 3) == 1
        dropped = [json.loads(line) for line in (tmp_path / "o.jsonl.dropped.jsonl").open()]
        dropped = {d["id"]: d["reason"] for d in dropped}
        assert set(dropped) == {"u6", "u8"}
        assert "verification failed: a hallucinated dog" in dropped["u6"]
        assert "dropped after 3 attempts" in dropped["u6"]
        assert dropped["u8"].startswith("request refused: HTTP 400")
        # re-run with the same settings (the same server, now healthy): u6 and u8 are done
        # (dropped), u7 is tried again; nothing else is requested
        server.script, server.log = {}, []
        again = run(und_records(tmp_path, 9), "understanding", tmp_path / "o.jsonl", server, cfg)
    finally:
        server.close()
    assert again.already_done == 8 and again.completed == 1
    assert {r for _, r, _ in server.log} == {7}


def test_generation_task_validates_multiple_choice(tmp_path, env):
    server = ScriptedServer({"generate": {0: ["schema"]}})
    img = und_records(tmp_path, 1)[0].image
    recs = [
        GenerationSample(id="g0", prompt="two cats [r0]", image=img),
        GenerationSample(id="g1", prompt="no image [r1]"),
    ]
    try:
        summary = run(recs, "generation", tmp_path / "g.jsonl", server, make_cfg(server, tmp_path))
    finally:
        server.close()
    assert summary.completed == 1 and summary.dropped == 1
    (quad,) = read_records(tmp_path / "g.jsonl", Quadruple)
    assert (quad.question, quad.options, quad.answer) == ("q?", ["a", "b", "c", "d"], "C")
    assert quad.prompt == "two cats [r0]" and quad.origin == "generation"
    assert server.requests("generate", 0) == 2 and server.requests("generate", 1) == 0


def _kill_job(tmp_path: Path, server: ScriptedServer, n: int) -> subprocess.Popen:
    recs = und_records(tmp_path, n)
    (tmp_path / "in.jsonl").write_text(
        "\n".join(r.model_dump_json(by_alias=True) for r in recs) + "\n"
    )
    cfg = {"pairing": {"complete": make_cfg(server, tmp_path, max_concurrency=2).model_dump()}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "pairuni",
        "pairs",
        "complete",
        "understanding",
        "-c",
        str(tmp_path / "c.yaml"),
        "--input",
        str(tmp_path / "in.jsonl"),
        "--out",
        str(tmp_path / "out.jsonl"),
        "--no-progress",
    ]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "PAIRUNI_TEST_KEY": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_killed_mid_run_resumes_exactly_once_without_rerequesting(tmp_path, env):
    n = 14
    server = ScriptedServer(delay=0.1)
    try:
        proc = _kill_job(tmp_path, server, n)
        out = tmp_path / "out.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_bytes().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = {
            json.loads(line)["id"] for line in out.read_bytes().splitlines() if line.endswith(b"}")
        }
        assert 3 <= len(done_before) < n
        log_at_kill = len(server.log)
        # the ledger a kill -9 leaves: whole, "running", never below what the server got, and
        # never counting a record that is not on disk
        killed = ledger_of(out)
        assert killed["last_run"]["state"] == "running" and killed["runs"] == 1
        assert killed["totals"]["requests"]["sent"] >= log_at_kill
        assert killed["totals"]["records"]["completed"] <= len(done_before)
        summary = run(
            und_records(tmp_path, n), "understanding", out, server, make_cfg(server, tmp_path)
        )
    finally:
        server.close()
    ids = [q.id for q in read_records(out, Quadruple)]
    assert sorted(ids) == sorted(f"u{i}" for i in range(n))  # every record exactly once
    after = server.log[log_at_kill:]
    assert not {f"u{r}" for _, r, _ in after} & done_before  # never re-requested
    assert summary.already_done == len(done_before)
    # the resumed run adds to the killed run's spend
    ledger = ledger_of(out)
    assert ledger["runs"] == 2 and ledger["last_run"]["state"] == "finished"
    assert ledger["totals"]["requests"]["sent"] >= len(server.log)
    assert ledger["totals"]["requests"]["sent"] == (
        killed["totals"]["requests"]["sent"] + ledger["last_run"]["requests"]["sent"]
    )
    assert any("previous run on this output was interrupted" in w for w in summary.warnings)


def test_parse_render_and_key_hygiene():
    assert parse_json_reply('Here:\n```json\n{"prompt": "x"}\n```') == {"prompt": "x"}
    assert parse_json_reply('noise {"a": {"b": 1}} trailing') == {"a": {"b": 1}}
    with pytest.raises(ValueError):
        parse_json_reply("no json here")
    text = render(
        "Q: {question}\n{options_block}A: {answer} {unknown}",
        {"question": "why?", "options": ["x", "y"], "answer": "B"},
    )
    assert text == "Q: why?\nOptions:\nA. x\nB. y\nA: B {unknown}"
    with pytest.raises(ValueError, match=r"\*name\* of an environment variable"):
        CompleteConfig(api_key_env="sk-abc123")


def test_backends_by_name_and_local_backend_errors(tmp_path):
    from pairuni.pairing.annotators import _to_hf_message, make_annotator
    from pairuni.shapes.annotator import OracleAdapter

    assert isinstance(make_annotator(CompleteConfig(backend="oracle")), OracleAdapter)
    with pytest.raises(ValueError, match="local_model_dir"):
        make_annotator(CompleteConfig(backend="local"))
    with pytest.raises(ValueError, match="PAIRUNI_UNSET_KEY is not set"):
        make_annotator(CompleteConfig(api_key_env="PAIRUNI_UNSET_KEY"))
    message = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "hi"},
        ],
    }
    assert _to_hf_message(message)["content"] == [
        {"type": "image", "url": "data:image/png;base64,AAAA"},
        {"type": "text", "text": "hi"},
    ]


# --------------------------------------------------------------------------- issue 13


def ledger_of(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".ledger.json").read_text())


def test_retries_are_counted_and_shown_and_retry_after_is_honoured(tmp_path, env):
    # r0: a 429 asking to wait 1 s, then a 500, then ok; r1: a timeout, then ok; r2: ok
    server = ScriptedServer({"generate": {0: ["429ra", "500"], 1: ["timeout"]}})
    try:
        cfg = make_cfg(server, tmp_path, verify=False)
        out = tmp_path / "o.jsonl"
        summary = run(und_records(tmp_path, 3), "understanding", out, server, cfg)
    finally:
        server.close()
    assert summary.completed == 3
    # every request sent is counted, not only the successful replies
    assert (summary.requests, summary.retried, summary.succeeded) == (6, 3, 3)
    assert summary.failed == {"429": 1, "500": 1, "timeout": 1}
    assert "6 sent (3 retries)" in summary.line() and "429 x1" in summary.line()
    # Retry-After: 1 is honoured although the backoff is at most 0.05 s
    r0 = [t for (kind, r, _), t in zip(server.log, server.times, strict=True) if r == 0]
    assert r0[1] - r0[0] >= 0.95
    ledger = ledger_of(out)
    assert ledger["totals"]["requests"] == {
        "sent": 6,
        "retried": 3,
        "succeeded": 3,
        "failed": {"429": 1, "500": 1, "timeout": 1},
    }
    assert ledger["totals"]["tokens"] == {"prompt": 30, "completion": 15}
    assert ledger["last_run"]["state"] == "finished"


def test_every_request_is_in_the_ledger_on_disk_before_it_arrives(tmp_path, env):
    """What a kill -9 leaves is never below what the server received: each request is counted
    in the ledger file before it is sent."""
    out = tmp_path / "o.jsonl"
    seen: list[tuple[int, int]] = []

    def on_request(n: int) -> None:  # the server's n-th request: what does the file say?
        try:
            sent = ledger_of(out)["totals"]["requests"]["sent"]
        except FileNotFoundError:
            sent = 0
        seen.append((n, sent))

    server = ScriptedServer(delay=0.01, on_request=on_request)
    try:
        cfg = make_cfg(server, tmp_path, verify=False, max_concurrency=3)
        run(und_records(tmp_path, 24), "understanding", out, server, cfg)
    finally:
        server.close()
    assert len(seen) == 24
    assert all(sent >= n for n, sent in seen), seen
    final = ledger_of(out)
    assert final["totals"]["requests"]["sent"] == 24 and final["last_run"]["reserved_unsent"] == 0


def test_ledger_adds_up_across_runs(tmp_path, env):
    server = ScriptedServer()
    try:
        cfg = make_cfg(server, tmp_path, verify=False)
        out = tmp_path / "o.jsonl"
        run(und_records(tmp_path, 2), "understanding", out, server, cfg)
        run(und_records(tmp_path, 5), "understanding", out, server, cfg)  # 3 new
    finally:
        server.close()
    ledger = ledger_of(out)
    assert ledger["runs"] == 2 and len(server.log) == 5
    assert ledger["totals"]["requests"]["sent"] == 5
    assert ledger["totals"]["records"]["completed"] == 5
    assert ledger["totals"]["cost"] == pytest.approx((50 * 2.0 + 25 * 8.0) / 1e6)
    assert ledger["last_run"]["requests"]["sent"] == 3


@pytest.mark.parametrize(
    "change",
    [
        {"verify": False},
        {"send_image": False},
        {"temperature": 0.3},
        {"max_tokens": 64},
        "base_url",
    ],
    ids=["verify", "send_image", "temperature", "max_tokens", "base_url"],
)
def test_cache_key_covers_every_setting_that_shapes_a_completion(tmp_path, env, change):
    server, other = ScriptedServer(), ScriptedServer()
    try:
        recs = und_records(tmp_path, 2)
        cfg = make_cfg(server, tmp_path)
        assert run(recs, "understanding", tmp_path / "a.jsonl", server, cfg).requests == 4
        same = run(recs, "understanding", tmp_path / "b.jsonl", server, cfg)
        assert same.cache_hits == 2 and same.requests == 0
        changed = make_cfg(other if change == "base_url" else server, tmp_path)
        if change != "base_url":
            changed = changed.model_copy(update=change)
        again = run(recs, "understanding", tmp_path / "c.jsonl", server, changed)
    finally:
        server.close()
        other.close()
    assert again.cache_hits == 0 and again.requests > 0


def test_a_refused_setting_is_not_cached_and_a_fixed_config_completes(tmp_path, env):
    """A model that rejects `temperature`: every record is refused (exit non-zero with the
    server's words); fixing the config completes them without touching the cache folder."""

    def rule(body):
        return "400" if "temperature" in body else None

    server = ScriptedServer(rule=rule)
    out = tmp_path / "o.jsonl"
    recs = und_records(tmp_path, 4)
    try:
        bad = make_cfg(server, tmp_path, temperature=0.7)
        with pytest.raises(CompletionFailed) as e:
            run(recs, "understanding", out, server, bad)
        message = str(e.value)
        assert "refused every record" in message and "Unsupported value: 'temperature'" in message
        assert server.url in message and "temperature 0.7" in message and ".." not in message
        assert e.value.summary.refused == 4 and not out.read_text()
        # the same settings again: refused records are remembered, nothing is sent
        with pytest.raises(CompletionFailed):
            run(recs, "understanding", out, server, bad)
        sent = len(server.log)
        assert sent == 4
        fixed = run(recs, "understanding", out, server, make_cfg(server, tmp_path))
    finally:
        server.close()
    assert fixed.completed == 4 and fixed.already_done == 0
    assert len(list(read_records(out, Quadruple))) == 4


def test_a_run_of_refusals_stops_the_job_early(tmp_path, env):
    server = ScriptedServer(rule=lambda body: "400")
    try:
        cfg = make_cfg(server, tmp_path, stop_after_failures=5, max_concurrency=2, verify=False)
        with pytest.raises(CompletionFailed, match="stopped after the API refused 5 records"):
            run(und_records(tmp_path, 40), "understanding", tmp_path / "o.jsonl", server, cfg)
    finally:
        server.close()
    assert len(server.log) <= 5 + 2


def test_edited_records_are_completed_again(tmp_path, env):
    server = ScriptedServer()
    out = tmp_path / "o.jsonl"
    try:
        cfg = make_cfg(server, tmp_path, verify=False)
        recs = und_records(tmp_path, 3)
        run(recs, "understanding", out, server, cfg)
        edited = und_records(tmp_path, 3)  # the same records, rebuilt
        edited[0] = edited[0].model_copy(update={"answer": "A"})  # an edited answer
        Image.new("RGB", (8, 8), (1, 2, 3)).save(edited[1].image.path)  # a replaced image
        server.log.clear()
        again = run(edited, "understanding", out, server, cfg)
    finally:
        server.close()
    assert again.already_done == 1 and again.redone == 2 and again.completed == 2
    assert sorted(r for _, r, _ in server.log) == [0, 1]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(q["id"] for q in lines[:3]) == ["u0", "u1", "u2"]
    assert sorted(q["id"] for q in lines[3:]) == ["u0", "u1"]  # the new versions, appended
    assert all(len(q["source_sha256"]) == 64 for q in lines)


def test_commits_are_batched_off_the_event_loop(tmp_path, env, monkeypatch):
    """Every fsync of the job runs in a worker thread, never on the running event loop."""
    import asyncio

    on_loop: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        try:
            asyncio.get_running_loop()
            on_loop.append(os.readlink(f"/proc/self/fd/{fd}"))
        except RuntimeError:
            pass
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    server = ScriptedServer(delay=0.02)
    try:
        cfg = make_cfg(server, tmp_path, max_concurrency=8)
        summary = run(und_records(tmp_path, 16), "understanding", tmp_path / "o.jsonl", server, cfg)
    finally:
        server.close()
    assert summary.completed == 16
    assert on_loop == []


# ------------------------------------------------------------------ the command line


def cli_complete(tmp_path: Path, cfg: CompleteConfig, recs: list, *extra: str):
    (tmp_path / "in.jsonl").write_text(
        "".join(r.model_dump_json(by_alias=True) + "\n" for r in recs)
    )
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"pairing": {"complete": cfg.model_dump(mode="json")}}))
    args = ["pairs", "complete", "understanding", "-c", str(config), "--no-progress"]
    args += ["--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")]
    return CliRunner().invoke(app, [*args, *extra])


def assert_clean_failure(res, *words: str) -> str:
    """Exit 1 with a one-paragraph error (no traceback) containing `words`."""
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.output
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def test_cli_total_outage_exits_non_zero_with_the_url(tmp_path, env):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = CompleteConfig(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key_env="PAIRUNI_TEST_KEY",
        max_retries=1,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        cache_dir=str(tmp_path / "cache"),
    )
    res = cli_complete(tmp_path, cfg, und_records(tmp_path, 3))
    assert_clean_failure(
        res, f"127.0.0.1:{port}/v1", "could not connect", "base_url", "run the same command"
    )
    assert "requests 6 sent (3 retries)" in res.output


def test_cli_all_refused_exits_non_zero_with_the_servers_words(tmp_path, env):
    server = ScriptedServer(rule=lambda body: "400")
    try:
        res = cli_complete(tmp_path, make_cfg(server, tmp_path), und_records(tmp_path, 3))
    finally:
        server.close()
    assert_clean_failure(res, "HTTP 400", TEMPERATURE_REFUSED, server.url, "pairing.complete")


def test_cli_rejected_key_is_one_paragraph_not_a_traceback(tmp_path, env):
    server = ScriptedServer(rule=lambda body: "401")
    try:
        res = cli_complete(tmp_path, make_cfg(server, tmp_path), und_records(tmp_path, 12))
    finally:
        server.close()
    assert_clean_failure(res, "HTTP 401", "Incorrect API key", server.url, "PAIRUNI_TEST_KEY")
    assert len(res.output.splitlines()) <= 6 and SECRET not in res.output
    assert len(server.log) <= 4  # the job stops at the first 401 (4 requests in flight)


def test_cli_empty_input_exits_non_zero(tmp_path, env):
    server = ScriptedServer()
    try:
        res = cli_complete(tmp_path, make_cfg(server, tmp_path), [])
    finally:
        server.close()
    assert_clean_failure(res, "no understanding records to complete", "in.jsonl")
    assert not server.log
