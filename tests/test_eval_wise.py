"""WISE: the prompt sets and their layouts, score parsing, WiScore and Overall by hand, and the
judge against a real local HTTP server that speaks the OpenAI chat-completions protocol.

The expected numbers follow the official PKU-YuanGroup/WISE rules that wise.py names: the
parser of gpt_eval.py at 5663144 (2026-04-08) and dd0b900 (2025-06-03), Calculate.py (76b1dce)
and calculate_verified.py (d6bfe42), and the data layouts before and after d6bfe42."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError
from pairuni.eval.wise import (
    CATEGORY_RANGES,
    VERIFIED_RANGES,
    JudgeConfig,
    JudgeError,
    WiseJudge,
    WiseJudgement,
    WisePrompt,
    judge_images,
    load_wise,
    official_scores,
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


# --------------------------------------------------------------------------- parsing


def triple(scores: dict[str, int] | None) -> tuple[int, int, int] | None:
    if scores is None:
        return None
    return (scores["consistency"], scores["realism"], scores["aesthetic_quality"])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Consistency: 2\nRealism: 1\nAesthetic Quality: 0", (2, 1, 0)),
        ("**Consistency**: 1\n**Realism**: 1\n**Aesthetic Quality**: 2", (1, 1, 2)),
        ("consistency 0 realism: 2 aesthetic quality: 1", (0, 2, 1)),
        # The official dict is overwritten in reply order: the last Consistency wins.
        ("Consistency: 1\nRealism: 1\nAesthetic Quality: 1\nConsistency: 2", (2, 1, 1)),
    ],
)
def test_official_pattern(reply: str, expected: tuple[int, int, int]) -> None:
    assert triple(official_scores(reply)) == expected
    assert triple(parse_scores(reply)) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # `\d` is any digit: 3 and 9 are kept although the rubric stops at 2.
        ("Consistency: 3\nRealism: 9\nAesthetic Quality: 0", (3, 9, 0)),
        # `\d` is ONE digit: "10" reads as its first digit, 1.
        ("Consistency: 10\nRealism: 2\nAesthetic Quality: 1", (1, 2, 1)),
    ],
)
def test_out_of_rubric_scores_are_kept_as_officially(
    reply: str, expected: tuple[int, int, int]
) -> None:
    assert triple(official_scores(reply)) == expected
    assert triple(parse_scores(reply)) == expected
    # The lenient reading keeps them too: one digit 0-9, like the official `\d`.
    bold = reply.replace("Consistency:", "**Consistency:**").replace("Realism:", "**Realism:**")
    assert triple(parse_scores(bold)) == expected


def test_an_out_of_rubric_wiscore_enters_the_mean_and_is_counted() -> None:
    # (3, 9, 0): (0.7*3 + 0.2*9 + 0.1*0) / 2 = (2.1 + 1.8) / 2 = 1.95, above the rubric's 1;
    # with (0, 0, 0) the CULTURE mean is 1.95 / 2 = 0.975.
    result = score_wise([judgement(1, "CULTURE", (3, 9, 0)), judgement(2, "CULTURE", (0, 0, 0))])
    assert result.metrics["CULTURE"] == pytest.approx(0.975)
    assert result.details["out_of_rubric"] == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # 5663144's fallback: lines holding only a 0-2 digit, the first three in metric order.
        ("2\n1\n0", (2, 1, 0)),
        (" 1 \n\n0\n2\n2", (1, 0, 2)),
        ("2\n1", None),  # only two such lines
        ("3\n1\n0", None),  # 3 is not a 0-2 line: two lines remain
        ("2 1 0", None),  # one line
        # Any named metric rules the fallback out: only Consistency is read, so no scores
        # (the bare lines would have given all three).
        ("Consistency: 2\n1\n0\n2", None),
    ],
)
def test_bare_number_replies(reply: str, expected: tuple[int, int, int] | None) -> None:
    assert triple(parse_scores(reply)) == expected


def test_a_colon_inside_the_bold_is_read_although_the_official_parser_fails() -> None:
    reply = "**Consistency:** 1\n**Realism:** 2\n**Aesthetic Quality:** 0"
    # Officially: after "Consistency" the optional colon is followed by "**", not a digit, and
    # the reply names metrics, so the bare-number fallback is not tried either: no scores.
    assert official_scores(reply) == {}
    assert triple(parse_scores(reply)) == (1, 2, 0)  # our documented departure
    assert triple(parse_scores("Consistency：2\nRealism：0\nAesthetic Quality：1")) == (2, 0, 1)
    mixed = "**Consistency:** 1\nRealism: 2\nAesthetic Quality: 0"  # officially: no consistency
    assert triple(parse_scores(mixed)) == (1, 2, 0)


def test_a_reply_the_official_parser_reads_keeps_the_official_numbers() -> None:
    # Officially the bold-colon line is invisible: (1, 1, 1). Read leniently alone, the last
    # Consistency would be that line's 2; the official reading must win.
    reply = "Consistency: 1\nRealism: 1\nAesthetic Quality: 1\n**Consistency:** 2"
    assert triple(parse_scores(reply)) == (1, 1, 1)


def test_a_json_object_is_read_as_a_departure() -> None:
    reply = '{"consistency": 1, "realism": 0, "aesthetic_quality": 2}'
    assert official_scores(reply) == {}
    assert triple(parse_scores(reply)) == (1, 0, 2)


@pytest.mark.parametrize(
    "reply",
    [
        "Consistency: 2\nRealism: 1",
        "I refuse",
        '{"consistency": 10, "realism": 0, "aesthetic_quality": 2}',  # not one digit
    ],
)
def test_unusable_replies(reply: str) -> None:
    assert parse_scores(reply) is None


# --------------------------------------------------------------------------- scoring


def judgement(
    prompt_id: int, category: str, scores: tuple[int, int, int], prompt_set: str = "original"
) -> WiseJudgement:
    return WiseJudgement(prompt_id, category, *scores, reply="", prompt_set=prompt_set)


def test_six_categories_give_the_official_weighted_overall() -> None:
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
    # 7 of the 1000 prompts are judged: the official Calculate.py would print no Overall.
    assert result.details["missing_prompts"] == 993
    assert result.details["official_overall"] is False
    assert result.markdown_row("m") == "| m | 0.50 | 0.80 | 0.50 | 0.70 | 0.30 | 0.45 | 0.55 |"


def test_a_partial_run_renormalises_the_weights_of_the_categories_present() -> None:
    js = [
        judgement(1, "CULTURE", (2, 2, 2)),  # 1.0
        judgement(2, "CULTURE", (0, 0, 0)),  # 0.0 -> cultural 0.5
        judgement(401, "TIME", (2, 1, 0)),  # 0.8
    ]
    result = score_wise(js)
    # (0.4 * 0.5 + 0.167 * 0.8) / (0.4 + 0.167) = 0.3336 / 0.567 = 0.58836...
    assert result.metrics["overall"] == pytest.approx(0.3336 / 0.567)
    assert result.details["per_category"]["TIME"] == 1
    assert result.details["official_overall"] is False
    assert result.markdown_row("m") == "| m | 0.50 | 0.80 | – | – | – | – | 0.59 |"
    only_culture = score_wise(js[:2]).metrics
    assert only_culture["overall"] == pytest.approx(0.5)  # one category: its own mean


# One constant score per category (WiScore 1.0, 0.8, 0.5, 0.7, 0.3, 0.45), so that each category
# mean is that WiScore whatever its size.
CONSTANT_SCORES = {
    "CULTURE": (2, 2, 2),
    "TIME": (2, 1, 0),
    "SPACE": (1, 1, 1),
    "BIOLOGY": (2, 0, 0),
    "PHYSICS": (0, 2, 2),
    "CHEMISTRY": (1, 0, 2),
}


def full_run(ranges: tuple[tuple[str, int, int], ...], prompt_set: str) -> list[WiseJudgement]:
    return [
        judgement(i, name, CONSTANT_SCORES[name], prompt_set)
        for name, low, high in ranges
        for i in range(low, high + 1)
    ]


def test_a_complete_run_is_the_official_overall() -> None:
    result = score_wise(full_run(CATEGORY_RANGES, "original"))
    # 0.4*1.0 + 0.167*0.8 + 0.133*0.5 + 0.1*(0.7 + 0.3 + 0.45) = 0.4 + 0.1336 + 0.0665 + 0.145
    # = 0.7451, also the plain mean of the 1000 WiScores (the weights are prompt shares:
    # (400*1.0 + 167*0.8 + 133*0.5 + 100*1.45) / 1000).
    assert result.metrics["overall"] == pytest.approx(0.7451)
    assert result.details["missing_prompts"] == 0
    assert result.details["official_overall"] is True


def test_the_verified_set_has_its_own_categories_and_weights() -> None:
    result = score_wise(full_run(VERIFIED_RANGES, "verified"))
    # calculate_verified.py: 0.4*1.0 + 0.12*(0.8 + 0.5 + 0.7 + 0.3 + 0.45) = 0.4 + 0.33 = 0.73
    assert result.metrics["overall"] == pytest.approx(0.73)
    assert result.details["prompt_set"] == "verified"
    assert result.details["official_overall"] is True
    with pytest.raises(ValueError, match="mix the prompt sets original, verified"):
        score_wise(
            [judgement(641, "SPACE", (1, 1, 1)), judgement(641, "BIOLOGY", (1, 1, 1), "verified")]
        )


# --------------------------------------------------------------------------- layouts


def record(prompt_id: int, text: str) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "Prompt": text, "Explanation": f"e{prompt_id}",
            "Category": "c", "Subcategory": "s"}  # fmt: skip


def write_set(folder: Path, suffix: str, ids: dict[str, list[int]], tag: str) -> None:
    """One set's three files; each prompt's text is `<tag><id>` so that tests see which file a
    prompt came from."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, stem_ids in ids.items():
        items = [record(i, f"{tag}{i}") for i in stem_ids]
        (folder / f"{stem}{suffix}.json").write_text(json.dumps(items))


LEGACY_IDS = {
    "cultural_common_sense": [2, 1],
    "spatio-temporal_reasoning": [500, 641],
    "natural_science": [950],
}
# In the verified set 500 is TIME (401-520), 521 SPACE (521-640) and 641 BIOLOGY (641-760); in
# the original set 641 is SPACE (568-700).
VERIFIED_IDS = {
    "cultural_common_sense": [1],
    "spatio-temporal_reasoning": [500, 521],
    "natural_science": [641],
}


def write_legacy(folder: Path) -> None:
    """The originals and their rewrites side by side, reusing every prompt_id, as in the
    official data/ folder."""
    write_set(folder, "", LEGACY_IDS, "orig")
    write_set(folder, "_rewrite", LEGACY_IDS, "short")


def test_the_layout_before_2026_04_19_loads_originals_or_rewrites(tmp_path: Path) -> None:
    write_legacy(tmp_path / "data")
    prompts = load_wise(tmp_path)
    assert [(p.id, p.category, p.prompt) for p in prompts] == [
        ("1", "CULTURE", "orig1"),
        ("2", "CULTURE", "orig2"),
        ("500", "TIME", "orig500"),
        ("641", "SPACE", "orig641"),
        ("950", "CHEMISTRY", "orig950"),
    ]
    assert prompts[0].explanation == "e1"
    rewrites = load_wise(tmp_path, "rewrite")
    assert [(p.id, p.prompt_id, p.category, p.prompt) for p in rewrites][:2] == [
        ("rewrite-1", 1, "CULTURE", "short1"),
        ("rewrite-2", 2, "CULTURE", "short2"),
    ]
    assert {p.prompt_set for p in rewrites} == {"rewrite"}


def test_the_current_layout_loads_each_set_with_its_categories(tmp_path: Path) -> None:
    write_legacy(tmp_path / "WISE_legacy" / "data")
    verified = tmp_path / "data_verified"
    write_set(verified, "_verified", VERIFIED_IDS, "ver")
    # merge.json repeats the three files' prompts: it must not be read beside them.
    merged = [record(i, f"ver{i}") for ids in VERIFIED_IDS.values() for i in ids]
    (verified / "merge.json").write_text(json.dumps(merged))
    assert [p.prompt for p in load_wise(tmp_path)] == [f"orig{i}" for i in (1, 2, 500, 641, 950)]
    prompts = load_wise(tmp_path, "verified")
    assert [(p.id, p.category) for p in prompts] == [
        ("verified-1", "CULTURE"),
        ("verified-500", "TIME"),
        ("verified-521", "SPACE"),
        ("verified-641", "BIOLOGY"),
    ]
    for name in VERIFIED_IDS:
        (verified / f"{name}_verified.json").unlink()
    assert [p.id for p in load_wise(verified, "verified")][-1] == "verified-641"  # merge.json


def test_a_folder_of_another_set_is_refused_with_the_setting_to_use(tmp_path: Path) -> None:
    write_set(tmp_path / "data_verified", "_verified", VERIFIED_IDS, "ver")
    with pytest.raises(BenchmarkNotFoundError, match=r"holds the verified set; set eval\.wise_set"):
        load_wise(tmp_path)
    shorts = tmp_path / "shorts"
    write_set(shorts, "_rewrite", LEGACY_IDS, "short")
    with pytest.raises(BenchmarkNotFoundError, match=r"shorts holds the rewrite set"):
        load_wise(shorts)
    with pytest.raises(BenchmarkNotFoundError, match=r"no verified prompt files.*rewrite set"):
        load_wise(shorts, "verified")


def test_two_folders_holding_one_set_are_ambiguous(tmp_path: Path) -> None:
    write_set(tmp_path / "data", "", LEGACY_IDS, "a")
    write_set(tmp_path, "", LEGACY_IDS, "b")
    with pytest.raises(BenchmarkNotFoundError, match=r"both .*data and .* hold WISE original"):
        load_wise(tmp_path)


def test_a_repeated_id_within_a_set_names_both_files(tmp_path: Path) -> None:
    write_set(tmp_path, "", {"cultural_common_sense": [5], "natural_science": [5]}, "x")
    with pytest.raises(
        BenchmarkDataError,
        match=r"natural_science.json: item 0: field 'prompt_id' 5 repeats \(also in .*cultural",
    ):
        load_wise(tmp_path)


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match="PKU-YuanGroup/WISE"):
        load_wise(tmp_path / "absent")
    with pytest.raises(BenchmarkNotFoundError, match="PKU-YuanGroup/WISE"):
        load_wise(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.json").write_text("[]")
    with pytest.raises(BenchmarkNotFoundError, match=r"found .*x.json, not named as the release"):
        load_wise(tmp_path)
    bad = [{"prompt_id": "7", "Prompt": "p"}]
    (tmp_path / "data" / "natural_science.json").write_text(json.dumps(bad))
    with pytest.raises(
        BenchmarkDataError, match=r"natural_science.json: item 0: field 'prompt_id'"
    ):
        load_wise(tmp_path)
    with pytest.raises(ValueError, match="valid: original, rewrite, verified"):
        load_wise(tmp_path, "v2")


class CountingJudge:
    """A judge stub that scores (1, 1, 1) and records which prompts it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def judge(self, prompt: WisePrompt, image: Any) -> WiseJudgement:
        self.asked.append(prompt.id)
        return WiseJudgement(prompt.prompt_id, prompt.category, 1, 1, 1, "", prompt.prompt_set)


def test_judgements_of_one_set_are_not_reused_for_another(tmp_path: Path) -> None:
    out = tmp_path / "judgements.jsonl"
    # A line written before prompt sets existed: it is an original-set judgement.
    old = {"prompt_id": 641, "category": "SPACE", "consistency": 2, "realism": 2}
    out.write_text(json.dumps({**old, "aesthetic_quality": 2, "reply": ""}) + "\n")
    original = WisePrompt("641", 641, "p", "e", "SPACE", "")
    verified = WisePrompt("verified-641", 641, "q", "e", "BIOLOGY", "", "verified")
    judge = CountingJudge()
    images = {"641": b"png", "verified-641": b"png"}
    assert [j.consistency for j in judge_images([original], images, judge, out)] == [2]
    assert judge.asked == []  # the old line counts for the original prompt
    verdicts = judge_images([verified], images, judge, out)
    assert judge.asked == ["verified-641"]  # ... but not for the verified one with the same id
    assert (verdicts[0].prompt_set, verdicts[0].category) == ("verified", "BIOLOGY")


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


def make_judge(server: ScriptedServer, retries: int, missing_scores: str = "retry") -> WiseJudge:
    config = JudgeConfig(
        base_url=server.base_url,
        model="judge-model",
        api_key_env="WISE_TEST_KEY",
        max_retries=retries,
        missing_scores=missing_scores,
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


def test_by_default_an_incomplete_reply_is_asked_three_times_then_left_out(serve) -> None:
    # gpt_eval.py of 5663144: MAX_EXTRACT_RETRIES = 3 attempts, then the image is skipped.
    defaults = JudgeConfig()
    assert (defaults.max_retries, defaults.missing_scores) == (2, "retry")
    server = serve([(200, "Consistency: 2\nRealism: 1")] * 3)
    verdict = make_judge(server, retries=defaults.max_retries).judge(PROMPT, b"png")
    assert verdict.failed and len(server.requests) == 3
    ok = WiseJudgement(402, "TIME", 2, 2, 2, "")
    result = score_wise([ok, verdict])
    assert result.metrics["TIME"] == pytest.approx(1.0)  # the failed image is not a 0
    assert result.details["failed"] == 1


def test_the_2025_rule_records_missing_metrics_as_zero(serve) -> None:
    # gpt_eval.py of dd0b900: the first reply is kept, `scores.get(metric, 0)`, no retry, and no
    # bare-number fallback (that came in 5663144).
    server = serve(
        [
            (200, "Consistency: 2\nRealism: 1"),  # (2, 1, 0): WiScore 1.6 / 2 = 0.8
            (200, "2\n1\n0"),  # no named metric: (0, 0, 0), WiScore 0
            (200, "**Consistency:** 1\nRealism: 2\nAesthetic Quality: 2"),  # (0, 2, 2): 0.3
        ]
    )
    judge = make_judge(server, retries=3, missing_scores="zero")
    verdicts = [judge.judge(PROMPT, b"png") for _ in range(3)]
    assert len(server.requests) == 3  # never asked again
    assert [(j.consistency, j.realism, j.aesthetic_quality) for j in verdicts] == [
        (2, 1, 0),
        (0, 0, 0),
        (0, 2, 2),
    ]
    assert verdicts[0].filled == ("aesthetic_quality",)
    result = score_wise(verdicts)
    assert result.metrics["TIME"] == pytest.approx((0.8 + 0.0 + 0.3) / 3)  # the zeros count
    assert result.details["zero_filled"] == 3
