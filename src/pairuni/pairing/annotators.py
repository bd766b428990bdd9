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
import json
import logging
import os
import random
import re
import time
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


class Annotator(Protocol):
    name: str
    """Part of the cache key: the model that produced a completion."""
    version: str
    """Part of the cache key: the template version (or annotator version)."""

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

    async def chat(self, messages: list[dict[str, Any]]) -> ChatReply: ...


class ServiceUnavailable(RuntimeError):
    """The API kept failing (429 / 5xx / timeouts) after every retry."""


class RequestRefused(RuntimeError):
    """The API refused this record's request (HTTP 400 / 413 / 422, e.g. a rejected image)."""


@dataclass
class RateLimiter:
    """At most `per_minute` request starts per minute (evenly spaced)."""

    per_minute: float | None
    _next: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def wait(self) -> None:
        if not self.per_minute:
            return
        async with self._lock:
            now = time.monotonic()
            delay = max(0.0, self._next - now)
            self._next = max(now, self._next) + 60.0 / self.per_minute
        if delay:
            await asyncio.sleep(delay)


class OpenAIChat:
    """Any OpenAI-compatible chat-completions API (OpenAI, vLLM, SGLang) via `openai`.

    Retries 429, 5xx, timeouts and connection errors with exponential backoff and full jitter:
    the n-th retry waits uniform(0, min(backoff_max_s, backoff_initial_s * 2^n)).
    """

    def __init__(self, cfg: CompleteConfig) -> None:
        import openai

        key = os.environ.get(cfg.api_key_env)
        if key is None and cfg.base_url is None:
            raise ValueError(
                f"the API key environment variable {cfg.api_key_env} is not set; export it "
                "(the key is never written anywhere) or set pairing.complete.api_key_env"
            )
        self.cfg = cfg
        self.model_name = cfg.model
        self.client = openai.AsyncOpenAI(
            base_url=cfg.base_url,
            api_key=key or "unused",  # local servers accept any key
            timeout=cfg.timeout_s,
            max_retries=0,  # retries are ours, with jitter and a visible count
        )
        self.limiter = RateLimiter(cfg.requests_per_minute)
        self.retries = 0

    async def chat(self, messages: list[dict[str, Any]]) -> ChatReply:
        import openai

        kwargs: dict[str, Any] = {"model": self.cfg.model, "messages": messages}
        if self.cfg.max_tokens is not None:
            kwargs["max_completion_tokens"] = self.cfg.max_tokens
        if self.cfg.temperature is not None:
            kwargs["temperature"] = self.cfg.temperature
        for attempt in range(self.cfg.max_retries + 1):
            await self.limiter.wait()
            try:
                response = await self.client.chat.completions.create(**kwargs)
            except (
                openai.APITimeoutError,
                openai.APIConnectionError,
                openai.RateLimitError,
            ) as err:
                problem = f"{type(err).__name__}"
            except openai.APIStatusError as err:
                if err.status_code in (400, 413, 422):  # this record's request is refused
                    raise RequestRefused(f"HTTP {err.status_code}: {_short(err)}") from None
                if err.status_code < 500:
                    raise  # 401 / 403 / 404...: a setup problem that stops the whole job
                problem = f"HTTP {err.status_code}"
            else:
                usage = response.usage
                return ChatReply(
                    text=response.choices[0].message.content or "",
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                )
            if attempt == self.cfg.max_retries:
                raise ServiceUnavailable(f"{problem} after {attempt + 1} tries")
            self.retries += 1
            cap = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2**attempt)
            await asyncio.sleep(random.uniform(0, cap))
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
        self.processor = AutoProcessor.from_pretrained(cfg.local_model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.local_model_dir).eval()
        self.max_new_tokens = cfg.max_tokens or 512
        self._lock = asyncio.Lock()

    async def chat(self, messages: list[dict[str, Any]]) -> ChatReply:
        async with self._lock:  # one generate at a time: the model is not re-entrant
            return await asyncio.to_thread(self._generate, messages)

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
                return outcome
            except RequestRefused as err:
                outcome.reason = f"request refused: {err}"
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


class OracleAdapter:
    """The ShapesWorld oracle (`pairuni.shapes.oracle.OracleAnnotator`) as an Annotator."""

    def __init__(self, seed: int = 0) -> None:
        from pairuni.shapes.oracle import OracleAnnotator

        self.oracle = OracleAnnotator(seed=seed)
        self.name = "shapes-oracle"
        self.version = "oracle-2"

    def template_version(self, task: Task) -> str:
        return self.version

    async def complete(self, task: Task, record: dict[str, Any], image: bytes | None) -> Outcome:
        try:
            if task == "understanding":
                done = self.oracle.complete_understanding(record)
            else:
                done = self.oracle.complete_generation(record)
        except (KeyError, ValueError, TypeError) as err:
            return Outcome(fields=None, reason=f"oracle cannot complete the record: {err}")
        # the caption's GenEval metadata lets the generation reward score images drawn for it
        keys = (
            ("prompt", "geneval") if task == "understanding" else ("question", "options", "answer")
        )
        return Outcome(fields={k: done[k] for k in keys})


def make_annotator(cfg: CompleteConfig, seed: int = 0) -> Any:
    """The annotator named by `cfg.backend`."""
    if cfg.backend == "oracle":
        return OracleAdapter(seed)
    if cfg.backend == "local":
        return LLMAnnotator(LocalChat(cfg), cfg)
    return LLMAnnotator(OpenAIChat(cfg), cfg)
