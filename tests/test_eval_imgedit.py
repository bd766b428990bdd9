"""ImgEdit Basic bench: the loader on the published layout, score reading, the official scores
worked out independently, and whole runs through `run_eval` with a fake editing policy and a
real local HTTP judge (OpenAI chat-completions protocol on 127.0.0.1): resume of edits and of
verdicts, a judge outage, unreadable replies, the official prompts file, and the error without
an editing backend.

The expected numbers follow PKU-YuanGroup/ImgEdit's Benchmark/Basic scripts: per image the
mean of its scores rounded to 2 decimals (step1_get_avgscore.py), per type the mean of those
(step2_typescore.py), Overall the mean over all images."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.eval.config import EvalConfig
from pairuni.eval.errors import EvalSetupError
from pairuni.eval.generation import batch_seed
from pairuni.eval.imgedit import ImgEditRepliesError, load_imgedit
from pairuni.eval.imgedit_judge import (
    JudgeUnavailableError,
    image_score,
    load_judge_prompts,
    read_scores,
)
from pairuni.eval.imgedit_prompts import CRITERIA, EDIT_TYPES, PAIRUNI_PROMPTS, PLACEHOLDER
from pairuni.eval.layout import BenchmarkDataError, BenchmarkNotFoundError
from pairuni.eval.runner import run_eval

KEY_ENV = "IMGEDIT_TEST_KEY"
SECRET = "sk-imgedit-test-not-a-key"

# --------------------------------------------------------------------------- a tiny bench

FOLDERS = {"add": "for_add", "style": "style", "compose": "compose/human"}


def write_bench(
    root: Path,
    per_type: int = 3,
    json_at: str = "basic_edit.json",
    images_at: str = "singleturn",
    extra: dict[str, int] | None = None,
) -> dict[str, dict[str, str]]:
    """`per_type` items of each edit type (plus `extra[type]`) in the published layout:
    basic_edit.json of {key: {id, prompt, edit_type}} and the source JPEGs under
    `images_at/<category>/`. Keys are numbers (not in file order), instructions end with `#<key>`
    so the judge server knows which item it is asked about."""
    records: dict[str, dict[str, str]] = {}
    number = 0
    for t_index, edit_type in enumerate(EDIT_TYPES):
        for n in range(per_type + (extra or {}).get(edit_type, 0)):
            key = str(2000 - 37 * number)
            number += 1
            folder = FOLDERS.get(edit_type, "daily object")  # a space, as in the release
            source = f"{folder}/{int(key):09d}.jpg"
            path = root / images_at / source
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 12), (int(key) % 256, 40 * n, 20 * t_index)).save(path)
            records[key] = {"id": source, "prompt": f"Do a {edit_type} edit #{key}",
                            "edit_type": edit_type}  # fmt: skip
    (root / json_at).parent.mkdir(parents=True, exist_ok=True)
    (root / json_at).write_text(json.dumps(records, indent=4), encoding="utf-8")
    return records


def scores_of(key: str) -> tuple[int, int, int]:
    k = int(key)
    return (1 + k % 5, 1 + (k * 7) % 5, 1 + (k * 3) % 5)


def reply_for(key: str, edit_type: str) -> str:
    """A judge reply in the official layout, or (for some keys) with markdown the official parser
    misses: bold with the colon inside, and `n/5`."""
    labels, scores = CRITERIA[edit_type], scores_of(key)
    if int(key) % 4 == 1:
        lines = [f"**{label}:** {score}" for label, score in zip(labels, scores, strict=True)]
    elif int(key) % 4 == 2:
        lines = [f"{label}: {score}/5" for label, score in zip(labels, scores, strict=True)]
    else:
        lines = [f"{label}: {score}" for label, score in zip(labels, scores, strict=True)]
    return "\n".join(["Brief reasoning: looks fine, small flaws.", *lines])


def expected_metrics(records: dict[str, dict[str, str]], keys: set[str]) -> dict[str, float]:
    """The official scores computed independently: Decimal rounding of each image's mean
    (half-even, as Python's round; the means here are thirds, never ties), then plain means."""

    def image(key: str) -> float:
        mean = Decimal(sum(scores_of(key))) / Decimal(3)
        return float(mean.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))

    by_type: dict[str, list[float]] = {}
    for key in keys:
        by_type.setdefault(records[key]["edit_type"], []).append(image(key))
    metrics = {t: fmean(v) for t, v in by_type.items()}
    metrics["overall"] = fmean(image(k) for k in keys)
    metrics["type_mean"] = fmean(metrics[t] for t in by_type)
    return metrics


# --------------------------------------------------------------------------- the judge server


class WideServer(ThreadingHTTPServer):
    request_queue_size = 64  # concurrent clients never meet a full listen backlog


class JudgeServer:
    """A local OpenAI-compatible endpoint: POST /v1/chat/completions answers `answer(key, text)`
    -> (HTTP status, reply) for the item whose `#key` the prompt holds, and records every
    request."""

    def __init__(self, answer: Callable[[str, str], tuple[int, str]]) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.keys: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][0]["content"][0]["text"]
                key = re.findall(r"#(\d+)", text)[-1]
                with server.lock:
                    server.requests.append({"body": body, "auth": self.headers["Authorization"]})
                    server.keys.append(key)
                status, reply = server.answer(key, text)
                payload = (
                    {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": reply}}]}
                    if status == 200
                    else {"error": {"message": reply, "type": "server_error"}}
                )  # fmt: skip
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = WideServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., JudgeServer]]:
    monkeypatch.setenv(KEY_ENV, SECRET)
    servers: list[JudgeServer] = []

    def start(answer: Callable[[str, str], tuple[int, str]]) -> JudgeServer:
        server = JudgeServer(answer)
        server.thread.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


def good_judge(records: dict[str, dict[str, str]]) -> Callable[[str, str], tuple[int, str]]:
    return lambda key, text: (200, reply_for(key, records[key]["edit_type"]))


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was just free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def eval_config(root: Path, base_url: str, **imgedit: Any) -> EvalConfig:
    judge = {"base_url": base_url, "model": "judge-model", "api_key_env": KEY_ENV,
             "retry_delay_s": 0.0, "max_retries": 1, "concurrency": 4, "timeout_s": 60}  # fmt: skip
    judge.update(imgedit.pop("judge", {}))
    return EvalConfig(data_root=root, gen_batch_size=4, imgedit={"judge": judge, **imgedit})


# --------------------------------------------------------------------------- a fake editor


class FakeEditor:
    """Edits by tinting the source with a colour drawn from the batch's generator (so outputs
    depend on the seeding); records each call."""

    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def edit_images(self, images, instructions, *, greedy=False, generator=None):
        import torch

        self.calls.append((list(instructions), generator.initial_seed()))
        out = []
        for image in images:
            tint = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=generator))
            out.append(Image.blend(image, Image.new("RGB", image.size, tint), 0.5))
        return out


def edited_keys(editor: FakeEditor) -> list[str]:
    return [re.findall(r"#(\d+)", i)[0] for call, _ in editor.calls for i in call]


def run(cfg: EvalConfig, out: Path, policy: Any = None, **kwargs: Any) -> Any:
    return run_eval(cfg, model_path=None, out_dir=out, benchmarks="imgedit",
                    policy=policy or FakeEditor(), **kwargs)  # fmt: skip


# --------------------------------------------------------------------------- the loader


def test_the_published_layout_loads_sorted_by_key(tmp_path: Path) -> None:
    records = write_bench(tmp_path / "imgedit")
    samples = load_imgedit(tmp_path / "imgedit")
    assert [s.id for s in samples] == sorted(records, key=int)
    first = samples[0]
    assert first.source == records[first.id]["id"]
    assert first.image == tmp_path / "imgedit" / "singleturn" / first.source
    assert first.prompt == records[first.id]["prompt"]
    assert {s.edit_type for s in samples} == set(EDIT_TYPES)
    assert sum(s.edit_type == "adjust" for s in samples) == 3


def test_a_clone_with_the_benchmark_tar_extracted_loads_and_alter_means_adjust(
    tmp_path: Path,
) -> None:
    records = write_bench(tmp_path, 1, "Benchmark/Basic/basic_edit.json", "Benchmark/singleturn")
    path = tmp_path / "Benchmark" / "Basic" / "basic_edit.json"
    for record in records.values():  # the first release (c14480a) named `adjust` `alter`
        if record["edit_type"] == "adjust":
            record["edit_type"] = "alter"
    path.write_text(json.dumps(records))
    samples = load_imgedit(tmp_path)
    assert sorted(s.edit_type for s in samples) == sorted(EDIT_TYPES)
    assert all(s.image.is_file() for s in samples)


def mutate(path: Path, key: str, change: Callable[[dict[str, Any]], Any]) -> None:
    records = json.loads(path.read_text())
    records[key] = change(records[key])
    path.write_text(json.dumps(records))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: {**r, "edit_type": "recolor"},
            r"field 'edit_type' is 'recolor'; use one of add",
        ),
        (lambda r: {k: v for k, v in r.items() if k != "prompt"}, r"field 'prompt' is missing"),
        (lambda r: {**r, "prompt": 3}, r"field 'prompt' must be a non-empty string, got 3"),
        (lambda r: {**r, "id": "../etc/passwd"}, r"field 'id' is '../etc/passwd'; give the source"),
        (lambda r: ["not", "an", "object"], r"field 'id' is missing \(the record is not an obj"),
    ],
)
def test_a_bad_record_names_the_file_the_key_and_the_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    records = write_bench(tmp_path, 1)
    key = next(iter(records))
    mutate(tmp_path / "basic_edit.json", key, change)
    with pytest.raises(BenchmarkDataError, match=rf"basic_edit.json: key '{key}': {message}"):
        load_imgedit(tmp_path)


def test_other_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError, match="ImgEdit: the ImgEdit directory does not"):
        load_imgedit(tmp_path / "absent")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(BenchmarkNotFoundError, match=r"no basic_edit.json .*Benchmark.tar"):
        load_imgedit(tmp_path / "empty")
    records = write_bench(tmp_path / "a", 1)
    text = (tmp_path / "a" / "basic_edit.json").read_text()
    first = next(iter(records))
    doubled = text.replace(f'"{first}":', f'"{first}": {{}}, "{first}":', 1)
    (tmp_path / "a" / "basic_edit.json").write_text(doubled)
    with pytest.raises(BenchmarkDataError, match=rf"key '{first}': field 'key' repeats"):
        load_imgedit(tmp_path / "a")
    records = write_bench(tmp_path / "b", 1)
    gone = list(records)[3]
    (tmp_path / "b" / "singleturn" / records[gone]["id"]).unlink()
    with pytest.raises(BenchmarkDataError, match=rf"field 'id' of 1 of 9 records .*'{gone}'"):
        load_imgedit(tmp_path / "b")
    records = write_bench(tmp_path / "c", 1)
    one = next(iter(records.values()))
    (tmp_path / "c" / "basic_edit.json").write_text(json.dumps({"a/b": one}))
    with pytest.raises(BenchmarkDataError, match=r"key 'a/b': field 'key' is not a plain file"):
        load_imgedit(tmp_path / "c")


# --------------------------------------------------------------------------- reading scores


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Brief reasoning: ok\nPrompt Compliance: 4\nVisual Naturalness: 3\n"
         "Physical & Detail Coherence: 2", (4, 3, 2)),
        # trailing spaces, as in the readme's example replies
        ("Prompt Compliance: 4  \nVisual Naturalness: 4  \nPhysical & Detail Coherence: 4  ",
         (4, 4, 4)),
        ("**Prompt Compliance:** 5\n**Visual Naturalness:** 1\n**Physical & Detail "
         "Coherence:** 1", (5, 1, 1)),
        ("Prompt Compliance：2\nVisual Naturalness：2\nPhysical and Detail Coherence：1",
         (2, 2, 1)),
        ("- Prompt Compliance: 3/5\n- Visual Naturalness: 2/5.\n- Physical & Detail Coherence: 1",
         (3, 2, 1)),
        # four score lines: the official script would average all four; the labels decide
        ("Prompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Coherence: 2\n"
         "Overall: 5", (4, 3, 2)),
        # one line: JSON, or parts cut at semicolons
        ('{"Prompt Compliance": 2, "Visual Naturalness": 1, "Physical & Detail Coherence": 1}',
         (2, 1, 1)),
        ("Prompt Compliance: 5; Visual Naturalness: 4; Physical & Detail Coherence: 4", (5, 4, 4)),
        # a rubric heading echoed as the label, with a fourth line
        ("Prompt Compliance: 3\nVisual Naturalness (Seamlessness): 2\n"
         "Physical & Detail Coherence: 2\nConfidence: 5", (3, 2, 2)),
        # other labels (a custom prompt): three score lines in reply order
        ("Accuracy: 2\nLook: 3\nPhysics: 1", (2, 3, 1)),
    ],
)  # fmt: skip
def test_three_scores_are_read(reply: str, expected: tuple[int, int, int]) -> None:
    assert read_scores(reply, "add") == (expected, None)


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("Prompt Compliance: 4\nVisual Naturalness: 3", "read 2 score lines"),
        ("I cannot rate this image.", "read 0 score lines"),
        ("Prompt Compliance: 7\nVisual Naturalness: 3\nPhysical & Detail Coherence: 2",
         "a score outside 1-5 (7)"),
        ("Prompt Compliance: 0\nVisual Naturalness: 0\nPhysical & Detail Coherence: 0",
         "a score outside 1-5 (0)"),
    ],
)  # fmt: skip
def test_unusable_replies_say_why(reply: str, problem: str) -> None:
    scores, why = read_scores(reply, "add")
    assert scores is None and problem in (why or "")


def test_an_image_score_is_the_mean_rounded_to_two_decimals_as_step1() -> None:
    assert image_score((1, 1, 1)) == 1
    assert image_score((1, 4, 5)) == 3.33  # 3.333...
    assert image_score((2, 2, 1)) == 1.67
    assert image_score((5, 4, 4)) == 4.33


def test_our_prompts_ask_for_the_official_labels_and_hold_the_placeholder() -> None:
    assert set(PAIRUNI_PROMPTS) == set(EDIT_TYPES)
    for edit_type, text in PAIRUNI_PROMPTS.items():
        assert text.count(PLACEHOLDER) == 1
        for label in CRITERIA[edit_type]:
            assert f"\n{label}: <a whole number from 1 to 5>" in text


# --------------------------------------------------------------------------- whole runs


def test_a_run_edits_judges_and_scores_as_an_independent_computation(serve, tmp_path: Path) -> None:
    # types of different sizes (as published), so that Overall (over images) and the mean of
    # the types differ
    records = write_bench(tmp_path / "imgedit", extra={"add": 3, "style": 1})
    assert len(records) == 31
    server = serve(good_judge(records))
    editor = FakeEditor()
    outcome = run(eval_config(tmp_path, server.base_url), tmp_path / "run", editor)
    entry = outcome.results["benchmarks"]["imgedit"]
    expected = expected_metrics(records, set(records))
    for name, value in expected.items():
        assert entry["metrics"][name] == pytest.approx(value, abs=1e-12), name
    assert expected["overall"] != pytest.approx(expected["type_mean"])
    # batched: 31 items in batches of 4, each seeded from its first key
    order = sorted(records, key=int)
    assert [len(call) for call, _ in editor.calls] == [4] * 7 + [3]
    assert [seed for _, seed in editor.calls] == [
        batch_seed(0, "imgedit", order[i]) for i in range(0, 31, 4)
    ]
    assert sorted(server.keys) == sorted(records)  # every edit judged once
    # the request: the prompt with the instruction, the source JPEG, then the edited PNG
    body = server.requests[0]["body"]
    assert "temperature" not in body and "max_tokens" not in body
    assert server.requests[0]["auth"] == f"Bearer {SECRET}"
    (message,) = body["messages"]
    text, source, edited = message["content"]
    key = re.findall(r"#(\d+)", text["text"])[-1]
    edit_type = records[key]["edit_type"]
    assert text["text"] == PAIRUNI_PROMPTS[edit_type].replace(PLACEHOLDER, records[key]["prompt"])
    assert source["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert edited["image_url"]["url"].startswith("data:image/png;base64,")
    assert (tmp_path / "run" / "imgedit" / "images" / f"{key}.png").is_file()
    md = outcome.paths.results_md.read_text()
    assert "## ImgEdit (paper Table 4)" in md and "| Hybrid | Action | Overall |" in md
    assert "pairuni's own wording" in md and "Published ImgEdit numbers use gpt-4o" in md
    # a second run, and a rescore, ask the judge nothing and edit nothing
    again = FakeEditor()
    run(eval_config(tmp_path, server.base_url), tmp_path / "run", again)
    run(eval_config(tmp_path, server.base_url), tmp_path / "run", rescore=True)
    assert again.calls == [] and len(server.requests) == 31


def test_killed_editing_resumes_to_the_files_of_an_uninterrupted_run(serve, tmp_path: Path) -> None:
    records = write_bench(tmp_path / "imgedit", 2)
    server = serve(good_judge(records))
    cfg = eval_config(tmp_path, server.base_url)
    first = FakeEditor()
    stopped = run(cfg, tmp_path / "killed", first, max_batches=2)
    assert stopped.stopped and len(edited_keys(first)) == 8
    rest = FakeEditor()
    run(cfg, tmp_path / "killed", rest)
    assert sorted(edited_keys(first) + edited_keys(rest)) == sorted(records)  # nothing redone
    run(cfg, tmp_path / "whole")
    for name in ["imgedit/predictions.jsonl"] + [f"imgedit/images/{k}.png" for k in records]:
        killed, whole = tmp_path / "killed" / name, tmp_path / "whole" / name
        assert killed.read_bytes() == whole.read_bytes(), name


def test_a_judge_outage_keeps_the_verdicts_and_a_resume_asks_only_the_rest(
    serve, tmp_path: Path
) -> None:
    records = write_bench(tmp_path / "imgedit")
    answered = []

    def flaky(key: str, text: str) -> tuple[int, str]:
        if len(answered) >= 10:  # the judge goes down after ten answers
            return 503, "overloaded"
        answered.append(key)
        return 200, reply_for(key, records[key]["edit_type"])

    down = serve(flaky)
    with pytest.raises(JudgeUnavailableError) as info:
        run(eval_config(tmp_path, down.base_url), tmp_path / "run")
    message = str(info.value)
    assert down.base_url in message and "did not answer" in message
    assert "run again to resume" in message
    up = serve(good_judge(records))
    outcome = run(eval_config(tmp_path, up.base_url), tmp_path / "run")
    assert set(up.keys).isdisjoint(answered)  # finished verdicts are not asked again
    assert sorted(up.keys + answered) == sorted(records)
    metrics = outcome.results["benchmarks"]["imgedit"]["metrics"]
    assert metrics["overall"] == pytest.approx(expected_metrics(records, set(records))["overall"])


def test_unreadable_replies_stop_the_run_with_the_list_unless_allowed(
    serve, tmp_path: Path
) -> None:
    records = write_bench(tmp_path / "imgedit")
    bad = sorted(records, key=int)[:3]

    def garbled(key: str, text: str) -> tuple[int, str]:
        return 200, "I'd rather not." if key in bad else reply_for(key, records[key]["edit_type"])

    server = serve(garbled)
    cfg = eval_config(tmp_path, server.base_url)
    with pytest.raises(ImgEditRepliesError) as info:
        run(cfg, tmp_path / "run")
    message = str(info.value)
    assert "3 of 27 edits have no readable verdict after 2 attempts" in message
    assert all(key in message for key in bad) and "eval.imgedit.max_failed=3" in message
    rejects = json.loads((tmp_path / "run" / "imgedit" / "rejects.json").read_text())
    assert sorted(r["key"] for r in rejects) == sorted(bad)
    assert (
        rejects[0]["reply"] == "I'd rather not." and "read 0 score lines" in rejects[0]["problem"]
    )
    assert server.keys.count(bad[0]) == 2  # asked again once (max_retries 1)
    asked = len(server.keys)
    allowed = run(eval_config(tmp_path, server.base_url, max_failed=3), tmp_path / "run")
    assert len(server.keys) == asked + 6  # only the failed ones are asked again (twice each)
    metrics = allowed.results["benchmarks"]["imgedit"]["metrics"]
    kept = set(records) - set(bad)
    for name, value in expected_metrics(records, kept).items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name


def official_like_prompts(path: Path) -> Path:
    texts = {
        t: f"Rate this {t} edit.\nediting instruction is : {PLACEHOLDER}.\n" for t in EDIT_TYPES
    }
    path.write_text(json.dumps(texts))
    return path


def test_a_prompts_file_is_sent_as_given_and_changing_it_judges_again(
    serve, tmp_path: Path
) -> None:
    records = write_bench(tmp_path / "imgedit", 1)
    server = serve(good_judge(records))
    run(eval_config(tmp_path, server.base_url), tmp_path / "run")
    assert len(server.requests) == 9
    prompts = official_like_prompts(tmp_path / "prompts.json")
    cfg = eval_config(tmp_path, server.base_url, judge_prompts=prompts)
    outcome = run(cfg, tmp_path / "run")
    assert len(server.requests) == 18  # verdicts under other prompts are not reused
    text = server.requests[-1]["body"]["messages"][0]["content"][0]["text"]
    key = server.keys[-1]
    assert text == (
        f"Rate this {records[key]['edit_type']} edit.\n"
        f"editing instruction is : {records[key]['prompt']}.\n"
    )
    assert outcome.results["benchmarks"]["imgedit"]["judge_prompts"] == f"custom:{prompts}"
    assert f"`{prompts}`, not the official prompts.json" in outcome.paths.results_md.read_text()


def test_a_bad_prompts_file_is_named_before_anything_is_edited(serve, tmp_path: Path) -> None:
    write_bench(tmp_path / "imgedit", 1)
    texts = {t: f"Rate {PLACEHOLDER}" for t in EDIT_TYPES}
    cases = [
        ({k: v for k, v in texts.items() if k != "action"}, r"no prompt for action"),
        ({**texts, "style": "Rate it"}, r"key 'style': the prompt has no <edit_prompt>"),
        ({**texts, "recolor": "x"}, r"key 'recolor' is not an edit type"),
    ]
    for content, message in cases:
        path = tmp_path / "prompts.json"
        path.write_text(json.dumps(content))
        with pytest.raises(EvalSetupError, match=message):
            load_judge_prompts(path)
        editor = FakeEditor()
        with pytest.raises(EvalSetupError, match=message):
            run(eval_config(tmp_path, "http://127.0.0.1:9/v1", judge_prompts=path),
                tmp_path / "run", editor)  # fmt: skip
        assert editor.calls == []
    assert load_judge_prompts(official_like_prompts(path)).source == f"custom:{path}"


def test_without_an_editing_backend_nothing_runs(serve, tmp_path: Path) -> None:
    records = write_bench(tmp_path / "imgedit", 1)
    server = serve(good_judge(records))

    class JanusLike:
        device = "cpu"

        def rollout_image(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(EvalSetupError) as info:
        run(eval_config(tmp_path, server.base_url), tmp_path / "run", JanusLike())
    assert "benchmark imgedit needs a backend that edits images: model.backend dimoo" in str(
        info.value
    )
    assert not (tmp_path / "run" / "imgedit").exists() and server.requests == []


def test_a_refused_key_stops_at_once_and_a_refused_request_fails_only_its_item(
    serve, tmp_path: Path
) -> None:
    from pairuni.eval.imgedit_judge import ImgEditJudge, ImgEditJudgeConfig
    from pairuni.eval.wise import JudgeError

    records = write_bench(tmp_path / "imgedit", 1)
    sample = load_imgedit(tmp_path / "imgedit")[0]
    png = (tmp_path / "imgedit" / "singleturn" / records[sample.id]["id"]).read_bytes()
    for status, outcome in ((401, "raises"), (400, "fails")):
        server = serve(lambda key, text, status=status: (status, "no"))
        config = ImgEditJudgeConfig(base_url=server.base_url, api_key_env=KEY_ENV,
                                    max_retries=3, retry_delay_s=0.0)  # fmt: skip
        judge = ImgEditJudge(config, sleep=lambda s: None)
        if outcome == "raises":
            with pytest.raises(JudgeError, match=rf"refused the request .*{KEY_ENV}"):
                judge.judge(sample, png)
        else:
            verdict = judge.judge(sample, png)
            assert verdict.failed and "refused this request (BadRequestError)" in verdict.problem
        assert len(server.requests) == 1  # neither is asked again


def test_a_missing_key_is_named_before_anything_is_edited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_bench(tmp_path / "imgedit", 1)
    monkeypatch.delenv(KEY_ENV, raising=False)
    editor = FakeEditor()
    with pytest.raises(EvalSetupError, match=rf"{KEY_ENV} \(eval\.imgedit\.judge\.api_key_env\)"):
        run(eval_config(tmp_path, "http://127.0.0.1:9/v1"), tmp_path / "run", editor)
    assert editor.calls == []


# --------------------------------------------------------------------------- the command line


def test_the_cli_rescores_with_judge_prompts_and_an_outage_exits_non_zero(
    serve, tmp_path: Path
) -> None:
    records = write_bench(tmp_path / "imgedit", 1)
    server = serve(good_judge(records))
    run(eval_config(tmp_path, server.base_url), tmp_path / "run")  # edits + verdicts exist
    prompts = official_like_prompts(tmp_path / "prompts.json")
    url = dead_url()
    settings = [
        f"eval.data_root={tmp_path}", f"eval.imgedit.judge.base_url={url}",
        f"eval.imgedit.judge.api_key_env={KEY_ENV}", "eval.imgedit.judge.retry_delay_s=0",
        "eval.imgedit.judge.max_retries=1", "eval.imgedit.judge.model=judge-model",
    ]  # fmt: skip
    args = ["eval", "--rescore", "--out", str(tmp_path / "run"), "--benchmarks", "imgedit"]
    args += [a for s in settings for a in ("--set", s)]
    # The old verdicts are valid: a rescore needs no judge at all.
    assert CliRunner().invoke(app, args).exit_code == 0
    result = CliRunner().invoke(app, [*args, "--judge-prompts", str(prompts)])
    assert result.exit_code == 2, result.output
    assert url in result.output and "did not answer" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_cli_with_a_janus_checkpoint_says_which_backend_edits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from pairuni.policy.tiny import build_tiny_janus

    torch.set_num_threads(2)
    model = build_tiny_janus(tmp_path / "janus")
    write_bench(tmp_path / "imgedit", 1)
    monkeypatch.setenv(KEY_ENV, SECRET)
    args = ["eval", "--model", str(model), "--benchmarks", "imgedit", "--out",
            str(tmp_path / "run"), "--set", f"eval.data_root={tmp_path}", "--set",
            f"eval.imgedit.judge.api_key_env={KEY_ENV}", "--set", "model.device=cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "benchmark imgedit needs a backend that edits images: model.backend dimoo" in (
        result.output
    )


@pytest.mark.slow
def test_the_tiny_dimoo_backend_edits_resumably_through_the_runner(serve, tmp_path: Path) -> None:
    import torch

    from pairuni.policy.config import ModelConfig, RolloutConfig
    from pairuni.policy.dimoo.policy import DimooPolicy
    from pairuni.policy.dimoo.tiny import write_tiny_dimoo

    torch.set_num_threads(2)
    checkpoint = write_tiny_dimoo(tmp_path / "tiny")
    records = write_bench(tmp_path / "imgedit", 1)
    server = serve(good_judge(records))
    small = {"image_size": 32, "image_steps": 3}
    cfg = eval_config(tmp_path, server.base_url).model_copy(
        update={"rollout": EvalConfig(rollout={"dimoo": small}).rollout}
    )

    def dimoo() -> DimooPolicy:
        model = ModelConfig(dtype="float32", device="cpu")
        return DimooPolicy.load(checkpoint, model, RolloutConfig(dimoo=small))

    assert run(cfg, tmp_path / "killed", dimoo(), max_batches=1).stopped
    resumed = run(cfg, tmp_path / "killed", dimoo())
    run(cfg, tmp_path / "whole", dimoo())
    for key in records:
        name = f"imgedit/images/{key}.png"
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    metrics = resumed.results["benchmarks"]["imgedit"]["metrics"]
    assert metrics["overall"] == pytest.approx(expected_metrics(records, set(records))["overall"])
