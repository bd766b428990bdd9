"""WISE: the prompt loader, score parsing, WiScore by hand, and the judge against a real local
HTTP server that speaks the OpenAI chat-completions protocol."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError
from pairuni.eval.wise import (
    JudgeConfig,
    JudgeError,
    WiseJudge,
    WiseJudgement,
    WisePrompt,
    judge_images,
    load_wise,
    parse_scores,
    score_wise,
    wiscore,
)

SECRET = "sk-test-not-a-real-key-123"


def test_wiscore_formula() -> None:
    assert wiscore(2, 2, 2) == pytest.approx(1.0)
    assert wiscore(0, 0, 0) == 0.0
    # (0.7 * 2 + 0.2 * 1 + 0.1 * 0) / 2 = 1.6 / 2
    assert wiscore(2, 1, 0) == pytest.approx(0.8)
    assert wiscore(1, 2, 2) == pytest.approx((0.7 + 0.4 + 0.2) / 2)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Consistency: 2\nRealism: 1\nAesthetic Quality: 0", (2, 1, 0)),
        ("**Consistency**: 1\n**Realism**: 1\n**Aesthetic Quality**: 2", (1, 1, 2)),
        ("consistency：0 realism 2 aesthetic quality: 1", (0, 2, 1)),
        ('{"consistency": 1, "realism": 0, "aesthetic_quality": 2}', (1, 0, 2)),
        ("Consistency: 1\nRealism: 1\nAesthetic Quality: 1\nConsistency: 2", (2, 1, 1)),
    ],
)
def test_parse_scores(reply: str, expected: tuple[int, int, int]) -> None:
    scores = parse_scores(reply)
    assert scores is not None
    assert (scores["consistency"], scores["realism"], scores["aesthetic_quality"]) == expected


@pytest.mark.parametrize(
    "reply",
    ["Consistency: 2\nRealism: 1", "Consistency: 3\nRealism: 1\nAesthetic Quality: 0", "I refuse"],
)
def test_unusable_replies(reply: str) -> None:
    assert parse_scores(reply) is None


def judgement(prompt_id: int, category: str, scores: tuple[int, int, int]) -> WiseJudgement:
    return WiseJudgement(prompt_id, category, *scores, reply="")


def test_score_categories_and_weighted_overall() -> None:
    js = [
        judgement(1, "CULTURE", (2, 2, 2)),  # 1.0
        judgement(2, "CULTURE", (0, 0, 0)),  # 0.0 -> cultural 0.5
        judgement(401, "TIME", (2, 1, 0)),  # 0.8
        judgement(568, "SPACE", (1, 1, 1)),  # 0.5
        judgement(701, "BIOLOGY", (2, 0, 0)),  # 0.7
        judgement(801, "PHYSICS", (0, 2, 2)),  # 0.3
        judgement(901, "CHEMISTRY", (1, 0, 2)),  # 0.45
        WiseJudgement(902, "CHEMISTRY", None, None, None, "failed"),  # left out
    ]
    result = score_wise(js)
    m = result.metrics
    assert m["CULTURE"] == pytest.approx(0.5)
    assert m["CHEMISTRY"] == pytest.approx(0.45)
    expected = 0.4 * 0.5 + 0.167 * 0.8 + 0.133 * 0.5 + 0.1 * (0.7 + 0.3 + 0.45)
    assert m["overall"] == pytest.approx(expected)
    assert result.details["failed"] == 1
    assert result.markdown_row("m") == "| m | 0.50 | 0.80 | 0.50 | 0.70 | 0.30 | 0.45 | 0.55 |"
    assert "overall" not in score_wise(js[:3]).metrics


def write_wise(root: Path) -> None:
    (root / "data").mkdir(parents=True)
    cultural = [
        {"prompt_id": 2, "Prompt": "p2", "Explanation": "e2", "Subcategory": "Festival"},
        {"prompt_id": 1, "Prompt": "p1", "Explanation": "e1", "Subcategory": "Festival"},
    ]
    science = [{"prompt_id": 950, "Prompt": "p950", "Explanation": "e", "Subcategory": "Chem"}]
    (root / "data" / "cultural_common_sense.json").write_text(json.dumps(cultural))
    (root / "data" / "natural_science.json").write_text(json.dumps(science))


def test_loader(tmp_path: Path) -> None:
    write_wise(tmp_path)
    prompts = load_wise(tmp_path)
    assert [(p.prompt_id, p.category) for p in prompts] == [
        (1, "CULTURE"),
        (2, "CULTURE"),
        (950, "CHEMISTRY"),
    ]
    assert prompts[0].explanation == "e1"


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match="PKU-YuanGroup/WISE"):
        load_wise(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.json").write_text(json.dumps([{"prompt_id": "7", "Prompt": "p"}]))
    with pytest.raises(BenchmarkDataError, match=r"x.json: item 0: field 'prompt_id'"):
        load_wise(tmp_path)


# --------------------------------------------------------------------------- a scripted server


class ScriptedServer:
    """A local OpenAI-compatible endpoint: POST /v1/chat/completions answers from a script of
    (HTTP status, reply text) pairs, in order, and records every request."""

    def __init__(self, script: list[tuple[int, str]]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body})
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, text = server.script.pop(0)
                payload = (
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                    if status == 200
                    else {"error": {"message": text, "type": "server_error"}}
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.setenv("WISE_TEST_KEY", SECRET)
    servers: list[ScriptedServer] = []

    def start(script: list[tuple[int, str]]) -> ScriptedServer:
        server = ScriptedServer(script)
        server.thread.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


def make_judge(server: ScriptedServer, retries: int) -> WiseJudge:
    config = JudgeConfig(
        base_url=server.base_url,
        model="judge-model",
        api_key_env="WISE_TEST_KEY",
        max_retries=retries,
        retry_delay_s=0.5,
        timeout_s=10,
    )
    return WiseJudge(config, sleep=lambda s: None)


PROMPT = WisePrompt("401", 401, "The tallest tower in {Paris}", "The Eiffel Tower", "TIME", "")


def test_judge_retries_errors_and_bad_replies_without_logging_the_key(
    serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(
        [
            (500, "overloaded"),
            (200, "I cannot rate this."),
            (200, "Consistency: 2\nRealism: 1\nAesthetic Quality: 1"),
        ]
    )
    judge = make_judge(server, retries=3)
    with caplog.at_level(logging.DEBUG):
        verdict = judge.judge(PROMPT, Image.new("RGB", (8, 8), (255, 0, 0)))
    assert (verdict.consistency, verdict.realism, verdict.aesthetic_quality) == (2, 1, 1)
    assert verdict.wiscore == pytest.approx((1.4 + 0.2 + 0.1) / 2)
    assert len(server.requests) == 3
    assert SECRET not in caplog.text
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"

    request = server.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert body["max_tokens"] == 2000
    system, user = body["messages"]
    assert system["role"] == "system" and "Vincennes" in system["content"][0]["text"]
    text, image = user["content"]
    assert 'PROMPT: "The tallest tower in {Paris}"' in text["text"]
    assert 'EXPLANATION: "The Eiffel Tower"' in text["text"]
    assert "Aesthetic Quality (0-2)" in text["text"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")


def test_judge_gives_up_after_retries(serve) -> None:
    server = serve([(200, "nonsense"), (200, "still nonsense")])
    verdict = make_judge(server, retries=1).judge(PROMPT, Image.new("RGB", (4, 4)))
    assert verdict.failed and verdict.wiscore is None and len(server.requests) == 2


def test_a_refused_key_stops_at_once_with_advice(serve) -> None:
    server = serve([(401, "invalid api key"), (200, "never sent")])
    with pytest.raises(JudgeError, match=r"AuthenticationError.*WISE_TEST_KEY.*judge-model"):
        make_judge(server, retries=3).judge(PROMPT, Image.new("RGB", (4, 4)))
    assert len(server.requests) == 1


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(RuntimeError, match="NO_SUCH_KEY_VAR"):
        WiseJudge(JudgeConfig(api_key_env="NO_SUCH_KEY_VAR"))


def test_judge_images_writes_incrementally_and_resumes(serve, tmp_path: Path) -> None:
    prompts = [
        WisePrompt("1", 1, "p1", "e1", "CULTURE", ""),
        WisePrompt("2", 2, "p2", "e2", "CULTURE", ""),
    ]
    images = {p.id: Image.new("RGB", (4, 4)) for p in prompts}
    server = serve(
        [
            (200, "Consistency: 2\nRealism: 2\nAesthetic Quality: 2"),
            (200, "garbage"),  # prompt 2 fails (no retries) ...
            (200, "Consistency: 1\nRealism: 0\nAesthetic Quality: 0"),  # ... and is redone
        ]
    )
    judge = make_judge(server, retries=0)
    out = tmp_path / "wise.jsonl"
    first = judge_images(prompts, images, judge, out)
    assert [j.failed for j in first] == [False, True]
    second = judge_images(prompts, images, judge, out)
    assert len(server.requests) == 3  # prompt 1 was not asked again
    assert [j.wiscore for j in second] == [pytest.approx(1.0), pytest.approx(0.35)]
    assert score_wise(second).metrics["CULTURE"] == pytest.approx((1.0 + 0.35) / 2)
