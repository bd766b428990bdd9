"""A reward over HTTP: a small server that hosts rewards, and the `http` reward that calls it.

Heavy reward models (HPS, a VLM judge) can live in another process or machine:

    pairuni reward-server --reward 'hps_v21:{checkpoint: HPS_v2.1_compressed.pt, tokenizer_dir: t}'
    # config: rewards.generation: [{name: http, kwargs: {url: "http://host:8000"}}]

API (JSON):
    GET  /health -> {"status": "ok", "rewards": {name: task}}
    POST /score  {"reward": name (optional when one is served), "task": "understanding" |
                  "generation", "prompts": [str], "outputs": [str] (text, or base64 PNG for
                  generation), "columns": {name: [value]}}
              -> 200 {"rewards": [float | null]}; 400 {"error"} for a bad request (not retried);
                 500 {"error"} when the reward raised (retried by the client).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from pairuni.rewards.base import (
    RewardError,
    RewardFn,
    build_reward,
    check_reward_values,
    get_reward,
    is_file_spec,
    register_reward,
)

logger = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 30


def encode_output(output: Any) -> str:
    """A text completion as it is; a PIL image as base64 PNG."""
    if isinstance(output, str):
        return output
    if hasattr(output, "save") and hasattr(output, "mode"):
        buffer = io.BytesIO()
        output.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    raise TypeError(f"cannot send a {type(output).__name__} to a reward server: text or PIL only")


def decode_image(data: str, index: int) -> Any:
    """A base64 PNG (or any format PIL reads) -> PIL image; errors name the output index."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except Exception as err:
        raise ValueError(f"outputs[{index}] is not a base64-encoded image: {err}") from None
    return image


@dataclass
class ServedReward:
    name: str
    task: str
    fn: RewardFn
    lock: threading.Lock


def parse_reward_arg(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME` or `NAME:{yaml mapping of kwargs}` (NAME may be `file.py:function`)."""
    name, sep, rest = text.partition(":{")
    if not sep:
        return text.strip(), {}
    try:
        kwargs = yaml.safe_load("{" + rest)
    except yaml.YAMLError as err:
        raise ValueError(f"--reward {text!r}: kwargs are not a YAML mapping: {err}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--reward {text!r}: kwargs must be a mapping, e.g. NAME:{{key: value}}")
    return name.strip(), kwargs


def build_served_rewards(specs: list[str]) -> dict[str, ServedReward]:
    """Build the rewards a server hosts from `--reward` arguments."""
    served: dict[str, ServedReward] = {}
    for text in specs:
        name, kwargs = parse_reward_arg(text)
        task = "any" if is_file_spec(name) else get_reward(name).task
        key = name.rpartition(":")[2] if is_file_spec(name) else name
        if key in served:
            raise ValueError(f"--reward {key!r} given twice")
        served[key] = ServedReward(key, task, build_reward(name, kwargs), threading.Lock())
    return served


class _Handler(BaseHTTPRequestHandler):
    server: RewardHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _reply(self, status: int, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout); it retries or reports the failure itself.
            logger.warning("client %s left before the reply was sent", self.address_string())

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            tasks = {name: r.task for name, r in self.server.rewards.items()}
            self._reply(200, {"status": "ok", "rewards": tasks})
        else:
            self._reply(404, {"error": f"no route {self.path}; use GET /health or POST /score"})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/score":
            self._reply(404, {"error": f"no route {self.path}; use POST /score"})
            return
        try:
            reward, prompts, outputs, columns = self._parse_request()
        except ValueError as err:
            self._reply(400, {"error": str(err)})
            return
        try:
            with reward.lock:  # a model reward need not be thread-safe
                values = reward.fn(prompts, outputs, **columns)
            checked = check_reward_values(reward.name, values, len(prompts))
        except Exception as err:
            logger.exception("reward %r failed", reward.name)
            self._reply(
                500, {"error": f"reward {reward.name!r} failed: {type(err).__name__}: {err}"}
            )
            return
        clean = [None if v is None or math.isnan(v) else v for v in checked]
        self._reply(200, {"rewards": clean})

    def _parse_request(self) -> tuple[ServedReward, list[str], list[Any], dict[str, list[Any]]]:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            raise ValueError("the request needs a JSON body (Content-Length missing or too big)")
        try:
            request = json.loads(self.rfile.read(length))
        except json.JSONDecodeError as err:
            raise ValueError(f"the body is not JSON: {err}") from None
        if not isinstance(request, dict):
            raise ValueError("the body must be a JSON object")
        reward = self._pick_reward(request.get("reward"))
        task = request.get("task")
        if task not in ("understanding", "generation"):
            raise ValueError(f"task must be 'understanding' or 'generation', got {task!r}")
        if reward.task not in ("any", task):
            raise ValueError(f"reward {reward.name!r} scores {reward.task} outputs, not {task}")
        prompts, outputs = request.get("prompts"), request.get("outputs")
        columns = request.get("columns") or {}
        if not isinstance(prompts, list) or not isinstance(outputs, list):
            raise ValueError("prompts and outputs must be lists")
        if len(prompts) != len(outputs):
            raise ValueError(f"{len(prompts)} prompts but {len(outputs)} outputs")
        if not isinstance(columns, dict) or any(
            not isinstance(v, list) or len(v) != len(prompts) for v in columns.values()
        ):
            raise ValueError("columns must map names to lists as long as prompts")
        if task == "generation":
            outputs = [decode_image(o, i) for i, o in enumerate(outputs)]
        return reward, prompts, outputs, columns

    def _pick_reward(self, name: Any) -> ServedReward:
        rewards = self.server.rewards
        if name is None and len(rewards) == 1:
            return next(iter(rewards.values()))
        if name not in rewards:
            raise ValueError(f"unknown reward {name!r}; this server hosts {sorted(rewards)}")
        return rewards[name]


class RewardHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server hosting rewards by name. `start()` serves in a daemon thread."""

    daemon_threads = True

    def __init__(self, rewards: Mapping[str, ServedReward], host: str = "127.0.0.1", port: int = 0):
        if not rewards:
            raise ValueError("a reward server needs at least one reward")
        self.rewards = dict(rewards)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, poll_interval: float = 0.1) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, args=(poll_interval,), daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


_RETRIED_HTTP = range(500, 600)


@register_reward("http", task="any")
class HttpReward:
    """A reward computed by a `pairuni reward-server`: the batch is sent in chunks of
    `batch_size`; 5xx answers, timeouts and connection errors are retried `retries` times with
    exponential backoff (backoff, 2 * backoff, ...); 4xx answers fail at once."""

    def __init__(
        self,
        url: str = "",
        reward: str | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"kwargs.url must be an http(s) URL of a reward server, got {url!r}")
        if batch_size < 1 or timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("need batch_size >= 1, timeout > 0, retries >= 0, backoff >= 0")
        self.url = url.rstrip("/")
        self.reward = reward
        self.batch_size = batch_size
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def __call__(
        self, prompts: list[str], completions: list[Any], **columns: Any
    ) -> list[float | None]:
        values: list[float | None] = []
        for start in range(0, len(prompts), self.batch_size):
            part = slice(start, start + self.batch_size)
            chunk_columns = {k: list(v[part]) for k, v in columns.items()}
            values.extend(self._score_chunk(prompts[part], completions[part], chunk_columns))
        return values

    def _score_chunk(
        self, prompts: list[str], outputs: list[Any], columns: dict[str, list[Any]]
    ) -> list[float | None]:
        is_image = bool(outputs) and not isinstance(outputs[0], str)
        payload: dict[str, Any] = {
            "task": "generation" if is_image else "understanding",
            "prompts": list(prompts),
            "outputs": [encode_output(o) for o in outputs],
            "columns": columns,
        }
        if self.reward is not None:
            payload["reward"] = self.reward
        body = _json_body(payload)
        response = self._post_with_retries(body)
        rewards = response.get("rewards") if isinstance(response, dict) else None
        if not isinstance(rewards, list):
            raise RewardError(f"reward server {self.url} answered without a `rewards` list")
        return check_reward_values(f"http {self.url}", rewards, len(prompts))

    def _post_with_retries(self, body: bytes) -> Any:
        attempts = self.retries + 1
        last_error = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(
                f"{self.url}/score", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return json.loads(reply.read())
            except urllib.error.HTTPError as err:
                detail = _error_detail(err)
                if err.code not in _RETRIED_HTTP:
                    raise RewardError(
                        f"reward server {self.url} rejected the request (HTTP {err.code}): {detail}"
                    ) from None
                last_error = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last_error = f"{type(reason).__name__}: {reason}"
            logger.warning(
                "reward server %s, attempt %d/%d failed: %s",
                self.url,
                attempt + 1,
                attempts,
                last_error,
            )
        raise RewardError(
            f"reward server {self.url} failed after {attempts} attempts; last error: {last_error}"
        )


def _json_body(payload: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(payload, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        bad = [k for k, v in payload.get("columns", {}).items() if not _json_ok(v)]
        raise RewardError(
            f"cannot send the batch as JSON ({err}); columns that are not JSON: {bad or 'none'}"
        ) from None


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read()).get("error", err.reason))
    except Exception:
        return str(err.reason)
