"""The completion pipeline against a real OpenAI-compatible HTTP server on loopback, scripted to
answer, to fail (429, 500, timeouts, malformed JSON, schema-violating JSON, failed
verifications) and with the client killed mid-run."""

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

from pairuni.data.io import read_records
from pairuni.data.schema import GenerationSample, Quadruple, UnderstandingSample
from pairuni.pairing.annotators import LLMAnnotator, OpenAIChat, parse_json_reply, render
from pairuni.pairing.complete import complete_records
from pairuni.pairing.config import CompleteConfig

SECRET = "sk-test-secret-never-written"
OK_FIELDS = {
    "prompt": "a caption",
    "question": "q?",
    "options": ["a", "b", "c", "d"],
    "answer": "C",
}


class ScriptedServer:
    """POST /v1/chat/completions. The record is found by its `[rN]` tag in the messages, the
    kind (generate / verify) by the verify template's wording; `script[kind][N]` lists the
    actions of successive calls (then `ok`). Every request is logged as (kind, N, action)."""

    def __init__(self, script: dict | None = None, delay: float = 0.0) -> None:
        self.script = script or {}
        self.delay = delay
        self.log: list[tuple[str, int, str]] = []
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
            n = sum(1 for k, r, _ in self.log if k == kind and r == rid)
            actions = self.script.get(kind, {}).get(rid, [])
            action = actions[n] if n < len(actions) else "ok"
            self.log.append((kind, rid, action))
        time.sleep(self.delay)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.reply(handler, kind, action)  # a timed-out client may have gone away

    def reply(self, handler: BaseHTTPRequestHandler, kind: str, action: str) -> None:
        if action in ("400", "429", "500"):
            return self.send(handler, int(action), {"error": {"message": action, "type": "x"}})
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
    def send(handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
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
        summary = run(und_records(tmp_path, 9), "understanding", tmp_path / "o.jsonl", server, cfg)
    finally:
        server.close()
    done = sorted(q.id for q in read_records(tmp_path / "o.jsonl", Quadruple))
    assert done == ["u0", "u1", "u2", "u3", "u4", "u5"]
    assert summary.completed == 6 and summary.dropped == 2 and summary.failed_transient == 1
    expected_generate = {0: 3, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 3, 7: 4, 8: 1}
    assert {r: server.requests("generate", r) for r in range(9)} == expected_generate
    assert server.requests("verify", 6) == 3 and server.requests("verify", 3) == 1
    dropped = [json.loads(line) for line in (tmp_path / "o.jsonl.dropped.jsonl").open()]
    dropped = {d["id"]: d["reason"] for d in dropped}
    assert set(dropped) == {"u6", "u8"}
    assert "verification failed: a hallucinated dog" in dropped["u6"]
    assert "dropped after 3 attempts" in dropped["u6"]
    assert dropped["u8"].startswith("request refused: HTTP 400")
    # re-run: u6 is done (dropped), u7 is tried again; nothing else is requested
    server = ScriptedServer()
    try:
        again = run(
            und_records(tmp_path, 9),
            "understanding",
            tmp_path / "o.jsonl",
            server,
            make_cfg(server, tmp_path),
        )
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
    from pairuni.pairing.annotators import OracleAdapter, _to_hf_message, make_annotator

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
