"""Annotators for cross-modal semantic completion, selectable by name (`openai`, `local`, `oracle`).

Every annotator implements one async method:

    outcome = await annotator.complete(task, record, image_bytes)

`task` is the *source* task: `understanding` records gain a `prompt`; `generation` records gain
`question`, `options` and `answer`. An `Outcome` carries the new fields (or the reason the record
was dropped) and the tokens spent.

`openai` and `local` are LLM annotators: a prompt template (a YAML file with `version`,
`system`, `generate`, `verify`) is rendered, the reply must be JSON that passes the schema below,
and, with verification on, the model then checks its output against the original record; a
failed check or invalid output is regenerated up to `max_attempts` times, then the record is
dropped with the reason. `oracle` is the ShapesWorld oracle (exact, from the record's `scene`).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pairuni.data.schema import OPTION_LETTERS
from pairuni.pairing.config import CompleteConfig

logger = logging.getLogger(__name__)

Task = Literal["understanding", "generation"]
TEMPLATES_DIR = Path(__file__).parent / "templates"


# --------------------------------------------------------------------------- output schemas


class PromptOutput(BaseModel):
    """What an understanding record gains: a generation prompt."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1)


class QAOutput(BaseModel):
    """What a generation record gains: a multiple-choice question with a letter answer."""

    model_config = ConfigDict(extra="ignore")
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2, max_length=len(OPTION_LETTERS))
    answer: str

    @model_validator(mode="after")
    def _answer_is_a_letter(self) -> QAOutput:
        if len(set(self.options)) != len(self.options):
            raise ValueError("options must be distinct")
        letters = OPTION_LETTERS[: len(self.options)]
        if self.answer.strip().upper() not in letters:
            raise ValueError(f"answer must be one of the letters {', '.join(letters)}")
        self.answer = self.answer.strip().upper()
        return self


class VerifyOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    consistent: bool
    problems: str = ""


OUTPUT_SCHEMAS: dict[str, type[BaseModel]] = {
    "understanding": PromptOutput,
    "generation": QAOutput,
}


# --------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """The result of completing one record."""

    fields: dict[str, Any] | None
    """The new fields, or None when the record is dropped."""
    reason: str = ""
    """Why the record was dropped (or the last rejected attempt's problem)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    transient: bool = False
    """Dropped because the service kept failing (not cached: a re-run tries again)."""
    refused: bool = False
    """The API refused the request (HTTP 400 / 413 / 422): logged as dropped under the current
    settings only, never cached, so changed settings try the record again."""
    status: str = ""
    """For a service failure or a refusal: the last HTTP status (or `timeout`, `connection`)."""


class Annotator(Protocol):
    name: str
    """The model that produces completions."""
    version: str
    """The template version (or annotator version)."""

    def settings(self, task: Task) -> dict[str, Any]:
        """Everything besides the record that shapes a completion (model, endpoint, template,
        sampling settings): the cache key. Optional: without it, the name and version."""
        ...

    async def complete(self, task: Task, record: dict[str, Any], image: bytes | None) -> Outcome:
        """Complete one record of the source `task`."""
        ...


# --------------------------------------------------------------------------- templates


@dataclass
class Template:
    version: str
    system: str
    generate: str
    verify: str

    @classmethod
    def load(cls, path: Path) -> Template:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the prompt template ({err})") from None
        missing = [k for k in ("version", "system", "generate", "verify") if not data.get(k)]
        if not isinstance(data, dict) or missing:
            raise ValueError(f"{path}: the template needs the keys {', '.join(missing)}")
        return cls(str(data["version"]), data["system"], data["generate"], data["verify"])


def load_templates(folder: str | None) -> dict[str, Template]:
    """The `understanding` and `generation` templates of `folder` (default: the packaged ones)."""
    base = Path(folder) if folder else TEMPLATES_DIR
    return {task: Template.load(base / f"{task}.yaml") for task in ("understanding", "generation")}


def render(text: str, record: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """Fill {question}, {answer}, {prompt}, {options_block} and any record field."""
    values = {k: v for k, v in record.items() if isinstance(v, str | int | float)}
    values.update(extra or {})
    options = values.get("options", record.get("options")) or []
    values["options_block"] = "".join(
        f"{OPTION_LETTERS[i]}. {opt}\n" for i, opt in enumerate(options)
    )
    if options:
        values["options_block"] = "Options:\n" + values["options_block"]
    for key in ("question", "answer", "prompt"):
        values.setdefault(key, "")
    return text.format_map(_Missing(values))


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes, by magic number (PNG when unknown)."""
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"GIF8"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def parse_json_reply(text: str) -> Any:
    """The JSON object in a reply (tolerating ```json fences and text around it)."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    body = fenced.group(1) if fenced else text
    start, stop = body.find("{"), body.rfind("}")
    if start < 0 or stop < start:
        raise ValueError("the reply holds no JSON object")
    return json.loads(body[start : stop + 1])


# --------------------------------------------------------------------------- chat backends


@dataclass
class ChatReply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatBackend(Protocol):
    model_name: str
    stats: RequestStats
    endpoint: str
    """Where requests go, for messages (a URL, or the local model's folder)."""
    before_send: Callable[[], Awaitable[None]] | None
    """Awaited before every request is sent (the completion job records it durably first)."""

    async def chat(self, messages: list[dict[str, Any]]) -> ChatReply: ...


@dataclass
class RequestStats:
    """Every request a backend sent, including retries, and how each ended."""

    sent: int = 0
    retried: int = 0
    """Requests that repeat an earlier one that failed (429, 5xx, timeout, connection)."""
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    """By HTTP status (`400`, `429`, `503`, ...) or `timeout` / `connection`."""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def copy(self) -> RequestStats:
        return RequestStats(
            self.sent,
            self.retried,
            self.succeeded,
            Counter(self.failed),
            self.prompt_tokens,
            self.completion_tokens,
        )

    def since(self, start: RequestStats) -> RequestStats:
        """What was added after `start` (a `copy()` taken earlier)."""
        failed = Counter(self.failed)
        failed.subtract(start.failed)
        return RequestStats(
            self.sent - start.sent,
            self.retried - start.retried,
            self.succeeded - start.succeeded,
            +failed,
            self.prompt_tokens - start.prompt_tokens,
            self.completion_tokens - start.completion_tokens,
        )


class ServiceUnavailable(RuntimeError):
    """The API kept failing (429 / 5xx / timeouts / connection errors) after every retry."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class RequestRefused(RuntimeError):
    """The API refused this record's request (HTTP 400 / 413 / 422, e.g. a rejected image or a
    setting the model does not accept)."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class SetupError(RuntimeError):
    """A reply that no retry and no other record can change (HTTP 401, 403, 404, ...): the key,
    the URL or the model is wrong. It stops the whole job."""

    def __init__(self, status: int, detail: str, endpoint: str) -> None:
        super().__init__(f"HTTP {status} from {endpoint}: {detail}")
        self.status = status
        self.detail = detail
        self.endpoint = endpoint


@dataclass
class RateLimiter:
    """At most `per_minute` request starts per minute (evenly spaced); `hold(s)` pauses every
    request start for `s` seconds (a server's Retry-After)."""

    per_minute: float | None
    _next: float = 0.0
    _hold_until: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def hold(self, seconds: float) -> None:
        self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    async def wait(self) -> None:
        while (pause := self._hold_until - time.monotonic()) > 0:
            await asyncio.sleep(pause)
        if not self.per_minute:
            return
        async with self._lock:
            now = time.monotonic()
            delay = max(0.0, self._next - now)
            self._next = max(now, self._next) + 60.0 / self.per_minute
        if delay:
            await asyncio.sleep(delay)


RETRIED_STATUSES = frozenset({408, 409, 429})
"""Client errors worth retrying (besides every 5xx): timeout, conflict, rate limit."""
REFUSED_STATUSES = frozenset({400, 413, 422})
"""This record's request is refused: retrying the same request cannot help."""
MAX_RETRY_AFTER_S = 600.0
"""The longest Retry-After honoured; a server asking for more (a spent daily quota) fails the
request at once, with the wait in the reason."""


def retry_after_s(headers: Any) -> float | None:
    """The wait a reply asks for: `retry-after-ms`, or `retry-after` in seconds or as an HTTP
    date; None when absent or unreadable."""
    if headers is None:
        return None
    try:
        value = headers.get("retry-after-ms")
        if value is not None:
            return max(0.0, float(value) / 1000.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _error_detail(err: Any) -> str:
    """The server's own error message (`{"error": {"message": ...}}`) or the exception text."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if isinstance(message, str) and message.strip():
            return " ".join(message.split())[:300]
    return _short(err)


class OpenAIChat:
    """Any OpenAI-compatible chat-completions API (OpenAI, vLLM, SGLang) via `openai`.

    Retries 429, 408, 409, 5xx, timeouts and connection errors with exponential backoff and full
    jitter: the n-th retry waits uniform(0, min(backoff_max_s, backoff_initial_s * 2^n)), or the
    server's Retry-After when it asks for longer (every request then pauses that long); a
    Retry-After above `MAX_RETRY_AFTER_S` gives up at once. 400 / 413 / 422 refuse the record;
    401, 403, 404 and other client errors raise `SetupError`. Every request sent is counted in
    `stats`.
    """

    def __init__(self, cfg: CompleteConfig) -> None:

        key = os.environ.get(cfg.api_key_env)
        if key is None and cfg.base_url is None:
            raise ValueError(
                f"the API key environment variable {cfg.api_key_env} is not set; export it "
                "(the key is never written anywhere) or set pairing.complete.api_key_env"
            )
        self.cfg = cfg
        self.model_name = cfg.model
        self._key = key or "unused"  # local servers accept any key
        self.client = self._new_client()
        self.endpoint = str(self.client.base_url).rstrip("/")
        self.limiter = RateLimiter(cfg.requests_per_minute)
        self.stats = RequestStats()
        self.before_send: Callable[[], Awaitable[None]] | None = None

    def _new_client(self) -> Any:
        import openai

        return openai.AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=self._key,
            timeout=self.cfg.timeout_s,
            max_retries=0,  # retries are ours, with jitter and a visible count
        )

    async def aclose(self) -> None:
        """Close the connections (they belong to the running event loop); the next request,
        in this loop or another, opens new ones."""
        client, self.client = self.client, self._new_client()
        await client.close()

    @property
    def retries(self) -> int:
        return self.stats.retried

    async def chat(self, messages: list[dict[str, Any]]) -> ChatReply:
        import openai

        kwargs: dict[str, Any] = {"model": self.cfg.model, "messages": messages}
        if self.cfg.max_tokens is not None:
            kwargs["max_completion_tokens"] = self.cfg.max_tokens
        if self.cfg.temperature is not None:
            kwargs["temperature"] = self.cfg.temperature
        for attempt in range(self.cfg.max_retries + 1):
            await self.limiter.wait()
            if self.before_send is not None:
                await self.before_send()
            self.stats.sent += 1
            if attempt:
                self.stats.retried += 1
            wait: float | None = None
            try:
                response = await self.client.chat.completions.create(**kwargs)
            except openai.APITimeoutError:
                status, problem = "timeout", "timed out"
            except openai.APIConnectionError as err:
                cause = err.__cause__ or err.__context__
                status, problem = "connection", f"connection error ({_short(cause or err)})"
            except openai.APIStatusError as err:
                status = str(err.status_code)
                final = err.status_code < 500 and err.status_code not in RETRIED_STATUSES
                if final:
                    self.stats.failed[status] += 1
                if err.status_code in REFUSED_STATUSES:
                    raise RequestRefused(f"HTTP {status}: {_error_detail(err)}", status) from None
                if final:
                    raise SetupError(err.status_code, _error_detail(err), self.endpoint) from None
                problem = f"HTTP {status} ({_error_detail(err)})"
                wait = retry_after_s(getattr(err.response, "headers", None))
            else:
                usage = response.usage
                self.stats.succeeded += 1
                reply = ChatReply(
                    text=response.choices[0].message.content or "",
                    prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
                    completion_tokens=(usage.completion_tokens or 0) if usage else 0,
                )
                self.stats.prompt_tokens += reply.prompt_tokens
                self.stats.completion_tokens += reply.completion_tokens
                return reply
            self.stats.failed[status] += 1
            if attempt == self.cfg.max_retries:
                raise ServiceUnavailable(f"{problem} after {attempt + 1} tries", status)
            if wait is not None and wait > MAX_RETRY_AFTER_S:
                raise ServiceUnavailable(
                    f"{problem}; the server asks to wait {wait:.0f} s (Retry-After)", status
                )
            cap = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2**attempt)
            delay = random.uniform(0, cap)
            if wait is not None:
                self.limiter.hold(wait)  # the server's wait applies to every request
                delay = max(delay, wait)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


class LocalChat:
    """A transformers image-text-to-text model from a local folder, run in a worker thread."""

    def __init__(self, cfg: CompleteConfig) -> None:
        if not cfg.local_model_dir or not Path(cfg.local_model_dir).is_dir():
            raise ValueError(
                "backend `local` needs pairing.complete.local_model_dir: a local folder with a "
                "transformers image-text-to-text model and its processor"
            )
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_name = f"local:{Path(cfg.local_model_dir).name}"
        self.endpoint = str(Path(cfg.local_model_dir).resolve())
        self.stats = RequestStats()
        self.before_send: Callable[[], Awaitable[None]] | None = None
        self.processor = AutoProcessor.from_pretrained(cfg.local_model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.local_model_dir).eval()
        self.max_new_tokens = cfg.max_tokens or 512
        self._lock = asyncio.Lock()

    async def chat(self, messages: list[dict[str, Any]]) -> ChatReply:
        async with self._lock:  # one generate at a time: the model is not re-entrant
            if self.before_send is not None:
                await self.before_send()
            self.stats.sent += 1
            reply = await asyncio.to_thread(self._generate, messages)
        self.stats.succeeded += 1
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        return reply

    def _generate(self, messages: list[dict[str, Any]]) -> ChatReply:
        import torch

        converted = [_to_hf_message(m) for m in messages]
        inputs = self.processor.apply_chat_template(
            converted,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        new = out[0, inputs["input_ids"].shape[1] :]
        text = self.processor.decode(new, skip_special_tokens=True)
        return ChatReply(text, int(inputs["input_ids"].shape[1]), int(new.shape[0]))


def _to_hf_message(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style content parts -> transformers chat-template parts."""
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": [{"type": "text", "text": content}]}
    parts = []
    for part in content:
        if part["type"] == "image_url":
            parts.append({"type": "image", "url": part["image_url"]["url"]})
        else:
            parts.append(part)
    return {"role": message["role"], "content": parts}


# --------------------------------------------------------------------------- annotators


class LLMAnnotator:
    """Template -> JSON -> schema -> verification, regenerating up to `max_attempts` times."""

    def __init__(self, backend: ChatBackend, cfg: CompleteConfig) -> None:
        self.backend = backend
        self.cfg = cfg
        self.templates = load_templates(cfg.templates_dir)
        self.name = backend.model_name
        self.version = "+".join(t.version for t in self.templates.values())

    def template_version(self, task: Task) -> str:
        return self.templates[task].version

    @property
    def stats(self) -> RequestStats:
        return self.backend.stats

    @property
    def endpoint(self) -> str:
        return self.backend.endpoint

    def attach(self, before_send: Callable[[], Awaitable[None]] | None) -> None:
        """Have `before_send` awaited before every request (None detaches it)."""
        self.backend.before_send = before_send

    async def aclose(self) -> None:
        """Release the backend's connections (called at the end of each completion job)."""
        aclose = getattr(self.backend, "aclose", None)
        if aclose is not None:
            await aclose()

    def settings(self, task: Task) -> dict[str, Any]:
        """Everything besides the record that shapes a completion: part of the cache key."""
        template = self.templates[task]
        text = "\0".join((template.system, template.generate, template.verify))
        return {
            "annotator": "llm",
            "model": self.backend.model_name,
            "endpoint": self.backend.endpoint,
            "template_version": template.version,
            "template_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "verify": self.cfg.verify,
            "send_image": self.cfg.send_image,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    async def complete(self, task: Task, record: dict[str, Any], image: bytes | None) -> Outcome:
        template = self.templates[task]
        outcome = Outcome(fields=None)
        for attempt in range(1, self.cfg.max_attempts + 1):
            try:
                fields = await self._generate(template, task, record, image, outcome)
                if self.cfg.verify:
                    await self._verify(template, record, fields, image, outcome)
            except ServiceUnavailable as err:
                outcome.reason, outcome.transient = f"service unavailable: {err}", True
                outcome.status = err.status
                return outcome
            except RequestRefused as err:
                outcome.reason, outcome.refused = f"request refused: {err}", True
                outcome.status = err.status
                return outcome
            except _Rejected as err:
                outcome.reason = f"attempt {attempt}: {err}"
                continue
            outcome.fields = fields
            return outcome
        outcome.reason = f"dropped after {self.cfg.max_attempts} attempts; last: {outcome.reason}"
        return outcome

    async def _ask(
        self, template: Template, text: str, image: bytes | None, outcome: Outcome
    ) -> str:
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if image is not None and self.cfg.send_image:
            url = f"data:{image_mime(image)};base64," + base64.b64encode(image).decode()
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        messages = [
            {"role": "system", "content": template.system},
            {"role": "user", "content": content},
        ]
        reply = await self.backend.chat(messages)
        outcome.requests += 1
        outcome.prompt_tokens += reply.prompt_tokens
        outcome.completion_tokens += reply.completion_tokens
        return reply.text

    async def _generate(
        self,
        template: Template,
        task: Task,
        record: dict[str, Any],
        image: bytes | None,
        outcome: Outcome,
    ) -> dict[str, Any]:
        text = await self._ask(template, render(template.generate, record), image, outcome)
        try:
            parsed = OUTPUT_SCHEMAS[task].model_validate(parse_json_reply(text))
        except (ValueError, ValidationError) as err:
            raise _Rejected(f"invalid output ({_short(err)})") from None
        return parsed.model_dump()

    async def _verify(
        self,
        template: Template,
        record: dict[str, Any],
        fields: dict[str, Any],
        image: bytes | None,
        outcome: Outcome,
    ) -> None:
        text = await self._ask(template, render(template.verify, record, fields), image, outcome)
        try:
            verdict = VerifyOutput.model_validate(parse_json_reply(text))
        except (ValueError, ValidationError) as err:
            raise _Rejected(f"invalid verification reply ({_short(err)})") from None
        if not verdict.consistent:
            raise _Rejected(f"verification failed: {verdict.problems or 'inconsistent'}")


class _Rejected(Exception):
    """An attempt whose output is unusable; the record may be regenerated."""


def _short(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


ANNOTATORS = {"oracle": "pairuni.shapes.annotator:OracleAdapter"}
"""`pairing.complete.backend` names served by an annotator of another package -> its
"module:class", called with the seed (the ShapesWorld oracle lives with the miniature, which
the pairing core does not import by name)."""


def make_annotator(cfg: CompleteConfig, seed: int = 0) -> Any:
    """The annotator named by `cfg.backend`."""
    if cfg.backend in ANNOTATORS:
        from pairuni.importing import import_object

        return import_object(ANNOTATORS[cfg.backend])(seed)
    if cfg.backend == "local":
        return LLMAnnotator(LocalChat(cfg), cfg)
    return LLMAnnotator(OpenAIChat(cfg), cfg)
