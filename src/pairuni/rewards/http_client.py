"""The `http` reward: scores a batch by POSTing it to a `pairuni reward-server`
(`server.py`, which documents the API), with retries on transient failures, bodies split to fit
the server's cap, an optional bearer token and a health check before training starts."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from pairuni.rewards.base import RewardError, check_reward_values, register_reward
from pairuni.rewards.server import (
    _HEALTH_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    MAX_BODY_HEADER,
    MIB,
    TOKEN_ENV,
    _mib,
)

logger = logging.getLogger(__name__)
# 408: the body reached the server too slowly, like a timeout of our own; 5xx: the reward failed.
_RETRIED_HTTP = frozenset({408, *range(500, 600)})


def encode_output(output: Any) -> str:
    """A text completion as it is; a PIL image as base64 PNG."""
    if isinstance(output, str):
        return output
    if hasattr(output, "save") and hasattr(output, "mode"):
        buffer = io.BytesIO()
        output.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    raise TypeError(f"cannot send a {type(output).__name__} to a reward server: text or PIL only")


@register_reward("http", task="any")
class HttpReward:
    """A reward computed by a `pairuni reward-server`: the batch is sent in chunks of
    `batch_size`, halved until each body fits the server's cap; 408 and 5xx answers, timeouts
    and connection errors are retried `retries` times with exponential backoff (backoff,
    2 * backoff, ...); other 4xx answers fail at once. The bearer token is read from the
    environment variable `token_env` and sent only when it is set."""

    def __init__(
        self,
        url: str = "",
        reward: str | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        token_env: str = TOKEN_ENV,
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
        self.token_env = token_env
        # The server's body cap, learnt by check_health(); until then chunks are sized for the
        # default cap and a lone sample over it is sent anyway (the server may allow more).
        self.max_body_bytes: int | None = None

    def check_health(self) -> None:
        """GET /health once (short timeout, with the token): raise a RewardError saying how to
        fix it when the server is down, refuses the token or does not serve `reward`."""
        request = urllib.request.Request(f"{self.url}/health", headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout, _HEALTH_TIMEOUT)) as r:
                info, cap = json.loads(r.read()), r.headers.get(MAX_BODY_HEADER, "")
        except urllib.error.HTTPError as err:
            if err.code == 401:
                raise RewardError(
                    f"reward server {self.url} refused the token (HTTP 401): {self._token_hint()}"
                ) from None
            raise RewardError(
                f"reward server {self.url}/health answered HTTP {err.code}: {_error_detail(err)}; "
                f"is {self.url} a pairuni reward server? {self._start_hint()}"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RewardError(
                f"reward server {self.url} is unreachable ({type(reason).__name__}: {reason}); "
                f"{self._start_hint()}"
            ) from None
        except ValueError:
            raise RewardError(
                f"{self.url}/health did not answer JSON: not a pairuni reward server? "
                f"{self._start_hint()}"
            ) from None
        self._check_served(info)
        self.max_body_bytes = int(cap) if cap.isdigit() else None

    def _check_served(self, info: Any) -> None:
        served = info.get("rewards") if isinstance(info, dict) else None
        if not isinstance(served, dict):
            raise RewardError(f"{self.url}/health lists no rewards: not a pairuni reward server?")
        if self.reward is None and len(served) != 1:
            raise RewardError(
                f"reward server {self.url} hosts {sorted(served)}; set the http reward's "
                "kwargs.reward to one of them"
            )
        if self.reward is not None and self.reward not in served:
            raise RewardError(
                f"reward server {self.url} does not serve reward {self.reward!r}, only "
                f"{sorted(served)}; fix kwargs.reward or start the server with "
                f"`--reward {self.reward}`"
            )

    def _start_hint(self) -> str:
        try:
            port = urllib.parse.urlsplit(self.url).port or 8000
        except ValueError:
            port = 8000
        return (
            f"start it with `pairuni reward-server --reward {self.reward or 'NAME'} --port "
            f"{port}` (add --host to listen beyond loopback), or fix the http reward's kwargs.url"
        )

    def _token_hint(self) -> str:
        if self.token_env and os.environ.get(self.token_env):
            return f"the token in ${self.token_env} is not the server's"
        return (
            f"no token was sent (${self.token_env or '<kwargs.token_env>'} is not set); set it to "
            "the server's token, or name another variable with kwargs.token_env"
        )

    def _headers(self) -> dict[str, str]:
        # Read at each request rather than kept on the object: the token stays out of reprs
        # and pickles, and a rotated token is picked up.
        headers = {"Content-Type": "application/json"}
        token = os.environ.get(self.token_env) if self.token_env else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def __call__(
        self, prompts: list[str], completions: list[Any], **columns: Any
    ) -> list[float | None]:
        is_image = bool(completions) and not isinstance(completions[0], str)
        task = "generation" if is_image else "understanding"
        values: list[float | None] = []
        for start in range(0, len(prompts), self.batch_size):
            part = slice(start, start + self.batch_size)
            outputs = [encode_output(o) for o in completions[part]]
            chunk_columns = {k: list(v[part]) for k, v in columns.items()}
            values.extend(self._score_fitting(task, list(prompts[part]), outputs, chunk_columns))
        return values

    def _score_fitting(
        self, task: str, prompts: list[str], outputs: list[str], columns: dict[str, list[Any]]
    ) -> list[float | None]:
        """Score one chunk, halving it until its body fits the server's cap."""
        payload: dict[str, Any] = {
            "task": task,
            "prompts": prompts,
            "outputs": outputs,
            "columns": columns,
        }
        if self.reward is not None:
            payload["reward"] = self.reward
        body = _json_body(payload)
        cap = self.max_body_bytes or DEFAULT_MAX_BODY_BYTES
        if len(body) <= cap or (len(prompts) == 1 and self.max_body_bytes is None):
            return self._score_body(body, len(prompts))
        if len(prompts) == 1:
            raise RewardError(
                f"one sample makes a {_mib(len(body))} request, above the cap of {_mib(cap)} of "
                f"reward server {self.url}; restart it with --max-body-mb "
                f"{math.ceil(len(body) / MIB)} or more"
            )
        half = len(prompts) // 2
        head = {k: v[:half] for k, v in columns.items()}
        tail = {k: v[half:] for k, v in columns.items()}
        first = self._score_fitting(task, prompts[:half], outputs[:half], head)
        return first + self._score_fitting(task, prompts[half:], outputs[half:], tail)

    def _score_body(self, body: bytes, size: int) -> list[float | None]:
        response = self._post_with_retries(body)
        rewards = response.get("rewards") if isinstance(response, dict) else None
        if not isinstance(rewards, list):
            raise RewardError(f"reward server {self.url} answered without a `rewards` list")
        return check_reward_values(f"http {self.url}", rewards, size)

    def _post_with_retries(self, body: bytes) -> Any:
        attempts = self.retries + 1
        last_error = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(
                f"{self.url}/score", data=body, headers=self._headers()
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return json.loads(reply.read())
            except urllib.error.HTTPError as err:
                detail = _error_detail(err)
                if err.code == 401:
                    detail = f"{detail}; {self._token_hint()}"
                if err.code not in _RETRIED_HTTP:
                    raise RewardError(
                        f"reward server {self.url} rejected the request (HTTP {err.code}): {detail}"
                    ) from None
                last_error = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
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
