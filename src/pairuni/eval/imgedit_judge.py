"""ImgEdit's judge: the per-type prompts, reading the three scores of a reply, the client of
an OpenAI-compatible endpoint, and the resumable, concurrent judging of a run's edits.

Follows `Benchmark/Basic/basic_bench.py` and `step1_get_avgscore.py` of PKU-YuanGroup/ImgEdit
(snapshot 547185d; see `imgedit` for the rules and the departures): one user message holding the
edit type's prompt with `<edit_prompt>` replaced by the instruction, then the source image, then
the edited image, as data URLs; no system message; `model="gpt-4o"` and the server's default
temperature. Replies are read as step1 reads them first, leniently otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pairuni.configbase import Section
from pairuni.eval.errors import EvalSetupError
from pairuni.eval.imgedit_prompts import (
    CRITERIA,
    EDIT_TYPES,
    PAIRUNI_PROMPTS,
    PLACEHOLDER,
    TYPE_ALIASES,
)
from pairuni.eval.layout import BenchmarkDataError
from pairuni.eval.wise import JudgeError, fatal_errors

if TYPE_CHECKING:
    from pairuni.eval.config import EvalConfig
    from pairuni.eval.imgedit import ImgEditSample

logger = logging.getLogger(__name__)

DOWNLOAD = "https://github.com/PKU-YuanGroup/ImgEdit"
OFFICIAL_PROMPTS_SHA256 = "9edc442f0f5e8156bdb279e39285a4691e780d5db6b9f09ff366cb8afdd7a513"
"""sha256 of the official prompts.json (c14480a; canonical JSON: sorted keys, no spaces), to say
whether a `--judge-prompts` file holds the official texts."""


# --------------------------------------------------------------------------- judge prompts


@dataclass(frozen=True)
class JudgePrompts:
    """Edit type -> the judge's prompt with `<edit_prompt>` where the instruction goes, and
    where the texts come from (`pairuni`, `official` or `custom:<file>`)."""

    texts: Mapping[str, str]
    source: str = "pairuni"

    def render(self, edit_type: str, instruction: str) -> str:
        return self.texts[edit_type].replace(PLACEHOLDER, instruction)

    def digest(self, edit_type: str) -> str:
        """A short hash of the type's prompt: a cached verdict counts only under the same one."""
        return hashlib.sha256(self.texts[edit_type].encode()).hexdigest()[:16]


def pairuni_prompts() -> JudgePrompts:
    return JudgePrompts(dict(PAIRUNI_PROMPTS), "pairuni")


def load_judge_prompts(path: str | Path | None) -> JudgePrompts:
    """The prompts of a JSON file `{edit type: prompt text}` (the official
    Benchmark/Basic/prompts.json), or pairuni's own when `path` is None. Every type needs a
    prompt holding `<edit_prompt>`."""
    if path is None:
        return pairuni_prompts()
    file = Path(path).expanduser()
    try:
        top = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalSetupError(
            f"{file}: no judge prompts file here (eval.imgedit.judge_prompts / --judge-prompts); "
            f"take Benchmark/Basic/prompts.json from {DOWNLOAD}"
        ) from None
    except json.JSONDecodeError as err:
        raise EvalSetupError(
            f"{file}: line {err.lineno}: not valid JSON ({err.msg}); use the official prompts.json"
        ) from None
    if not isinstance(top, dict):
        raise EvalSetupError(f"{file}: not a JSON object of {{edit type: prompt text}}")
    texts = {TYPE_ALIASES.get(k, k): v for k, v in top.items()}
    for key, text in texts.items():
        if key not in EDIT_TYPES:
            raise EvalSetupError(
                f"{file}: key {key!r} is not an edit type; use {', '.join(EDIT_TYPES)}"
            )
        if not isinstance(text, str) or PLACEHOLDER not in text:
            raise EvalSetupError(
                f"{file}: key {key!r}: the prompt has no {PLACEHOLDER} where the edit "
                "instruction goes; add it (the official prompts end with 'editing instruction "
                f"is : {PLACEHOLDER}.')"
            )
    missing = [t for t in EDIT_TYPES if t not in texts]
    if missing:
        raise EvalSetupError(
            f"{file}: no prompt for {', '.join(missing)}; give one per edit type (mixing "
            "prompt sources would make the types incomparable)"
        )
    canonical = json.dumps(top, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    official = hashlib.sha256(canonical.encode()).hexdigest() == OFFICIAL_PROMPTS_SHA256
    if not official:
        logger.warning(
            "ImgEdit: %s is not the official prompts.json; scores are not "
            "comparable with published ones",
            file,
        )
    return JudgePrompts(texts, "official" if official else f"custom:{file}")


# --------------------------------------------------------------------------- reading scores

Scores = tuple[int, int, int]
SCORE_LINE = re.compile(r"^(?P<label>[^:：]*?)\s*[:：]\s*(?P<value>\d+)\s*(?:/\s*5)?\s*\.?$")
MARKUP = re.compile(r"[*_#`>\"']")


def official_scores(reply: str) -> list[int]:
    """step1_get_avgscore.py's reading: every line that splits at ": " into two parts, the
    second all digits (ASCII digits here: the official `isdigit` also passes '²', which `int`
    then rejects)."""
    values = []
    for line in reply.splitlines():
        parts = line.strip().split(": ")
        if len(parts) == 2 and parts[1].isascii() and parts[1].isdigit():
            values.append(int(parts[1]))
    return values


def normal_label(text: str) -> str:
    text = text.lower().replace("&", " and ")
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text).split())


def lenient_scores(reply: str) -> list[tuple[str, int]]:
    """(label, score) of every part of the reply that reads `Label: n` once markdown is
    stripped (also `n/5`, a full-width colon, a JSON `"Label": n`), except the reasoning. Parts
    are lines, or pieces of a line cut at `,`, `;`, `{` and `}` (one-line replies)."""
    found = []
    for part in re.split(r"[\n,;{}]", reply):
        match = SCORE_LINE.match(MARKUP.sub(" ", part).strip().lstrip("-• ").strip())
        if match and normal_label(match["label"]) not in ("brief reasoning", "reasoning"):
            found.append((normal_label(match["label"]), int(match["value"])))
    return found


def criterion_of(label: str, labels: Sequence[str]) -> str | None:
    """The criterion a reply's label names: itself, or the longest one it starts with (judges
    echo rubric headings such as `Visual Seamlessness (Edge & Texture Blend)`)."""
    starts = [c for c in labels if label == c or label.startswith(c + " ")]
    return max(starts, key=len) if starts else None


def read_scores(reply: str, edit_type: str) -> tuple[Scores | None, str | None]:
    """The three scores of a reply, or (None, why not). The official reading wins whenever it
    finds exactly three 1-5 scores; else the type's labels are looked for by name (the last
    line of each wins), else any three score lines are taken in order."""
    official = official_scores(reply)
    if len(official) == 3 and all(1 <= v <= 5 for v in official):
        return (official[0], official[1], official[2]), None
    found = lenient_scores(reply)
    labels = [normal_label(label) for label in CRITERIA[edit_type]]
    named: dict[str, int] = {}
    for label, value in found:
        criterion = criterion_of(label, labels)
        if criterion is not None:
            named[criterion] = value
    values = [named[label] for label in labels] if len(named) == 3 else [v for _, v in found]
    if len(values) != 3:
        return None, f"no three scores in the reply (read {len(values)} score lines)"
    outside = [v for v in values if not 1 <= v <= 5]
    if outside:
        return None, f"a score outside 1-5 ({outside[0]})"
    return (values[0], values[1], values[2]), None


def image_score(scores: Sequence[int]) -> float:
    """step1_get_avgscore.py: the mean of an image's scores, rounded to 2 decimals."""
    return round(sum(scores) / len(scores), 2)


# --------------------------------------------------------------------------- the judge


class ImgEditJudgeConfig(Section):
    """The ImgEdit judge: any OpenAI-compatible chat-completions endpoint that accepts two
    images in one message."""

    base_url: str | None = None
    """API base URL, e.g. `https://api.openai.com/v1` or a local vLLM server's
    `http://127.0.0.1:8000/v1` (serving ImgEdit-Judge, for instance). `null` uses the openai
    client's default (OPENAI_BASE_URL or api.openai.com)."""

    model: str = "gpt-4o"
    """Judge model name. ImgEdit's published numbers use `gpt-4o` (basic_bench.py) with the
    official prompts; another judge gives numbers that are not comparable with them."""

    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key (never in a config file, never
    logged)."""

    concurrency: int = Field(8, ge=1)
    """Requests in flight at once (the official script runs 32 threads)."""

    max_retries: int = Field(2, ge=0)
    """Retries per image after a failed request or a reply without three 1-5 scores (the
    official script asks once). An image whose every attempt failed to connect stops the run
    (the judge is down); one whose replies stay unreadable is recorded as failed."""

    retry_delay_s: float = Field(2.0, ge=0.0)
    """Seconds before the first retry; doubles at each further retry."""

    timeout_s: float = Field(120.0, gt=0.0)
    """Timeout of one request, in seconds."""

    temperature: float | None = Field(None, ge=0.0)
    """Sampling temperature sent to the judge. `null` sends none (the server's default), as the
    official script does."""

    max_tokens: int | None = Field(None, ge=1)
    """Most tokens the judge may reply with. `null` sends no limit, as the official script."""


class ImgEditConfig(Section):
    """How ImgEdit is judged: the judge endpoint, its prompts, and how many failures to allow."""

    judge: ImgEditJudgeConfig = Field(default_factory=ImgEditJudgeConfig)
    """The OpenAI-compatible judge."""

    judge_prompts: Path | None = None
    """JSON file of the judge prompts, `{edit type: prompt text}` with `<edit_prompt>` where the
    instruction goes: the official `Benchmark/Basic/prompts.json` of PKU-YuanGroup/ImgEdit
    (`--judge-prompts`). `null`: pairuni's own wording of the same criteria, whose numbers are
    not comparable with published ones."""

    max_failed: int = Field(0, ge=0)
    """Images whose judge replies stayed unreadable that the run may leave out of the means
    (they are listed in `<out>/imgedit/rejects.json` either way). More failures stop the run
    with the list; a rerun asks the judge about them again."""


class JudgeUnavailableError(JudgeError):
    """The judge did not answer at all (connection refused, timeouts, server errors)."""


@dataclass(frozen=True)
class EditVerdict:
    """The judge's scores for one edited image (None when its replies were unreadable: `problem`
    says why), with what they were made from: the prompt's and the image's digests and the
    judge model. A cached verdict is reused only when all three still match."""

    key: str
    edit_type: str
    scores: Scores | None
    reply: str
    problem: str | None
    prompt_digest: str
    image_digest: str
    judge_model: str

    @property
    def failed(self) -> bool:
        return self.scores is None

    @property
    def score(self) -> float | None:
        return None if self.scores is None else image_score(self.scores)


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


SOURCE_MIME = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


def source_part(path: Path) -> str:
    """The source image as a data URL of its own bytes (re-encoded as PNG for other formats)."""
    mime = SOURCE_MIME.get(path.suffix.lower())
    if mime is not None:
        return data_url(path.read_bytes(), mime)
    import io

    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format="PNG")
    return data_url(buffer.getvalue(), "image/png")


def build_messages(text: str, source_url: str, edited_png: bytes) -> list[dict[str, Any]]:
    """basic_bench.py's chat: one user turn of the prompt, the source, then the edited image."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": source_url}},
                {"type": "image_url", "image_url": {"url": data_url(edited_png, "image/png")}},
            ],
        }
    ]


def item_errors() -> tuple[type[Exception], ...]:
    """Refusals of one request that another attempt would not change (bad image, too long)."""
    from openai import BadRequestError, UnprocessableEntityError

    return (BadRequestError, UnprocessableEntityError)


class ImgEditJudge:
    """Scores edits with the per-type prompts through the `openai` client, with retries."""

    def __init__(
        self,
        config: ImgEditJudgeConfig | None = None,
        prompts: JudgePrompts | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from openai import OpenAI

        self.config = config or ImgEditJudgeConfig()
        self.prompts = prompts or pairuni_prompts()
        key = os.environ.get(self.config.api_key_env)
        if not key:
            raise EvalSetupError(
                f"ImgEdit needs its judge's API key in the environment variable "
                f"{self.config.api_key_env} (eval.imgedit.judge.api_key_env), which is not set: "
                "export it, or set eval.imgedit.judge.api_key_env to the variable that holds it "
                "(and eval.imgedit.judge.base_url / .model for another OpenAI-compatible "
                "server), or drop imgedit from --benchmarks"
            )
        # Retries are ours (they also cover unreadable replies), so the client's are off.
        self.client = OpenAI(
            base_url=self.config.base_url,
            api_key=key,
            max_retries=0,
            timeout=self.config.timeout_s,
        )
        self.sleep = sleep

    @property
    def url(self) -> str:
        return self.config.base_url or str(self.client.base_url)

    def ask(self, sample: ImgEditSample, source_url: str, edited_png: bytes) -> str:
        """One request; the judge's reply text."""
        text = self.prompts.render(sample.edit_type, sample.prompt)
        options: dict[str, Any] = {}
        if self.config.temperature is not None:
            options["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            options["max_tokens"] = self.config.max_tokens
        response = self.client.chat.completions.create(
            model=self.config.model,
            messages=build_messages(text, source_url, edited_png),  # type: ignore[arg-type]
            **options,
        )
        return response.choices[0].message.content or ""

    def judge(self, sample: ImgEditSample, edited_png: bytes) -> EditVerdict:
        """The verdict on one edit. Unreadable replies are asked again, then give a failed
        verdict; an image whose every attempt got no answer raises `JudgeUnavailableError`
        (naming the URL); a refused key, model or URL raises `JudgeError` at once."""
        source_url = source_part(sample.image)
        delay, reply, problem = self.config.retry_delay_s, "", ""
        unanswered: list[str] = []
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.sleep(delay)
                delay *= 2
            try:
                reply = self.ask(sample, source_url, edited_png)
            except fatal_errors() as err:
                raise JudgeError(
                    f"the ImgEdit judge at {self.url} refused the request ({type(err).__name__}); "
                    f"check the API key in {self.config.api_key_env}, the model name "
                    f"{self.config.model!r} and eval.imgedit.judge.base_url"
                ) from None
            except item_errors() as err:
                problem = f"the judge refused this request ({type(err).__name__})"
                return self.verdict(sample, edited_png, None, "", problem)
            except Exception as err:  # connection errors, timeouts, 5xx, 429
                # Only the error type: never the request (its headers hold the key).
                logger.warning(
                    "ImgEdit judge: key %s attempt %d failed: %s",
                    sample.id,
                    attempt + 1,
                    type(err).__name__,
                )
                unanswered.append(type(err).__name__)
                continue
            scores, problem = read_scores(reply, sample.edit_type)  # type: ignore[assignment]
            if scores is not None:
                return self.verdict(sample, edited_png, scores, reply, None)
            logger.warning("ImgEdit judge: key %s attempt %d: %s", sample.id, attempt + 1, problem)
        if len(unanswered) == self.config.max_retries + 1:
            raise JudgeUnavailableError(
                f"the ImgEdit judge at {self.url} did not answer ({unanswered[-1]} on all "
                f"{len(unanswered)} attempts for key {sample.id}); check that the server is up "
                "and eval.imgedit.judge.base_url"
            )
        return self.verdict(sample, edited_png, None, reply, problem or "no usable reply")

    def verdict(
        self,
        sample: ImgEditSample,
        edited_png: bytes,
        scores: Scores | None,
        reply: str,
        problem: str | None,
    ) -> EditVerdict:
        return EditVerdict(
            sample.id,
            sample.edit_type,
            scores,
            reply,
            problem,
            self.prompts.digest(sample.edit_type),
            digest_bytes(edited_png),
            self.config.model,
        )


def build_imgedit_judge(cfg: EvalConfig) -> ImgEditJudge:
    """The judge of `eval.imgedit`, or an error naming the key to fix (run before generating)."""
    return ImgEditJudge(cfg.imgedit.judge, load_judge_prompts(cfg.imgedit.judge_prompts))


# --------------------------------------------------------------------------- judging a run


def read_verdicts(path: Path) -> dict[str, EditVerdict]:
    """key -> its last verdict in a judgements.jsonl (a torn last line is ignored)."""
    if not path.is_file():
        return {}
    verdicts: dict[str, EditVerdict] = {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    whole = lines if text.endswith("\n") else lines[:-1]  # the last one was cut by a kill
    for number, line in enumerate(whole, start=1):
        if not line.strip():
            continue
        verdict = verdict_record(line)
        if verdict is None:
            raise BenchmarkDataError(
                f"{path}: line {number}: not an ImgEdit verdict; delete the line (that edit "
                "is judged again)"
            )
        verdicts[verdict.key] = verdict
    return verdicts


def verdict_record(line: str) -> EditVerdict | None:
    try:
        obj = json.loads(line)
        scores = obj["scores"]
        return EditVerdict(**{**obj, "scores": tuple(scores) if scores is not None else None})
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def still_valid(
    verdict: EditVerdict | None, judge: ImgEditJudge, sample: ImgEditSample, image_digest: str
) -> bool:
    return (
        verdict is not None
        and not verdict.failed
        and verdict.edit_type == sample.edit_type
        and verdict.prompt_digest == judge.prompts.digest(sample.edit_type)
        and verdict.image_digest == image_digest
        and verdict.judge_model == judge.config.model
    )


def judge_edits(
    samples: Sequence[ImgEditSample],
    edited: Mapping[str, Path],
    judge: ImgEditJudge,
    out_path: str | Path,
) -> dict[str, EditVerdict]:
    """Judge the edit of every sample, `judge.config.concurrency` at a time, appending one JSON
    line per verdict to `out_path` as each arrives; returns key -> verdict.

    A verdict already in `out_path` is reused when it has scores and was made with the same
    prompt, image and judge model, so a killed run resumes without asking again; failed ones
    are asked again. When the judge stops answering, the verdicts that arrived are kept and
    `JudgeUnavailableError` (naming the URL) is raised.
    """
    from tqdm import tqdm

    out = Path(out_path)
    verdicts = read_verdicts(out)
    digests = {s.id: digest_bytes(edited[s.id].read_bytes()) for s in samples}
    todo = [s for s in samples if not still_valid(verdicts.get(s.id), judge, s, digests[s.id])]
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    with (
        out.open("a", encoding="utf-8") as handle,
        tqdm(
            total=len(samples), initial=len(samples) - len(todo), desc="ImgEdit judge", unit="edit"
        ) as bar,
    ):

        def one(sample: ImgEditSample) -> None:
            verdict = judge.judge(sample, edited[sample.id].read_bytes())
            line = json.dumps(asdict(verdict), ensure_ascii=False)
            with lock:  # whole lines, flushed one by one: a kill loses at most the last
                handle.write(line + "\n")
                handle.flush()
                verdicts[sample.id] = verdict
                bar.update(1)

        run_all(one, todo, judge.config.concurrency, out)
    return {s.id: verdicts[s.id] for s in samples}


def run_all(
    task: Callable[[ImgEditSample], None], items: Sequence[ImgEditSample], workers: int, out: Path
) -> None:
    """Run `task` on every item in a thread pool; on the first error, cancel what has not
    started, let the running ones finish (their verdicts are written), and raise it."""
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures: list[Future[None]] = [pool.submit(task, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:  # also on Ctrl-C: nothing new starts, what runs finishes and is written
        pool.shutdown(wait=True, cancel_futures=True)
    errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
    if errors:
        error = errors[0]
        if isinstance(error, JudgeError):
            raise type(error)(
                f"{error}. The verdicts that arrived are kept in {out}; run again to resume."
            ) from None
        raise error  # type: ignore[misc]
