"""A reward over HTTP: the small server that hosts rewards (`pairuni reward-server`); the `http`
reward that calls it is `http_client.py`.

Heavy reward models (HPS, a VLM judge) can live in another process or machine:

    pairuni reward-server --reward 'hps_v21:{checkpoint: HPS_v2.1_compressed.pt, tokenizer_dir: t}'
    # config: rewards.generation: [{name: http, kwargs: {url: "http://host:8000"}}]

API (JSON; with a token configured both routes need `Authorization: Bearer <token>`):
    GET  /health -> {"status": "ok", "rewards": {name: task}}, header X-Max-Body-Bytes: the cap
    POST /score  {"reward": name (optional when one is served), "task": "understanding" |
                  "generation", "prompts": [str], "outputs": [str] (text, or base64 PNG for
                  generation), "columns": {name: [value]}}
              -> 200 {"rewards": [float | null]}; 400 {"error"} for a bad request, 401 for a
                 missing or wrong token, 413 for a body over the cap (none retried); 408 when
                 the body stalled past the timeout and 500 {"error"} when the reward raised
                 (both retried by the client).
Every answer closes the connection: a request is a whole batch, so a new TCP connection costs
nothing next to it, and no idle keep-alive connection can hold one of the server's threads.
"""

from __future__ import annotations

import base64
import hmac
import inspect
import io
import ipaddress
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from pairuni.rewards.base import (
    RewardFn,
    build_reward,
    check_reward_values,
    get_reward,
    is_file_spec,
)

logger = logging.getLogger(__name__)

MIB = 1 << 20
DEFAULT_BACKLOG = 1024
DEFAULT_THREADS = 32
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY_MB = 64
DEFAULT_MAX_BODY_BYTES = DEFAULT_MAX_BODY_MB * MIB
TOKEN_ENV = "PAIRUNI_REWARD_TOKEN"
MAX_BODY_HEADER = "X-Max-Body-Bytes"
# The reward's positional parameters: a column of that name would be passed twice.
RESERVED_COLUMNS = ("prompts", "completions")
_DRAIN_SECONDS = 5.0
_HEALTH_TIMEOUT = 5.0


def decode_image(data: str, index: int) -> Any:
    """A base64 PNG (or any format PIL reads) -> PIL image; errors name the output index."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except Exception as err:
        raise ValueError(f"outputs[{index}] is not a base64-encoded image: {err}") from None
    return image


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB" if size >= MIB else f"{size / 1024:.1f} KiB"


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


class _Rejected(Exception):
    """A request answered with an error status instead of being scored."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number"}
    names.update({dict: "an object", list: "an array"})
    return names.get(type(value), type(value).__name__)


def check_request_batch(prompts: Any, outputs: Any, columns: Any) -> None:
    """The lists a reward is called with, checked so that a bad request is a 400 naming the
    field and index (the reward raising on it would be a 500, which the client retries)."""
    if not isinstance(prompts, list) or not isinstance(outputs, list):
        raise ValueError("prompts and outputs must be lists")
    if len(prompts) != len(outputs):
        raise ValueError(f"{len(prompts)} prompts but {len(outputs)} outputs")
    for field, items in (("prompts", prompts), ("outputs", outputs)):
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise ValueError(f"{field}[{index}] must be a string, got {_json_type(item)}")
    if not isinstance(columns, dict):
        raise ValueError(f"columns must be an object of name -> list, got {_json_type(columns)}")
    for key, values in columns.items():
        if key in RESERVED_COLUMNS:
            raise ValueError(
                f"columns[{key!r}] collides with the reward's positional parameter {key!r}; "
                "rename the column"
            )
        if not isinstance(values, list):
            raise ValueError(f"columns[{key!r}] must be a list, got {_json_type(values)}")
        if len(values) != len(prompts):
            raise ValueError(
                f"columns[{key!r}] has {len(values)} values for {len(prompts)} prompts"
            )


def _check_call(
    reward: ServedReward, prompts: list[str], outputs: list[Any], columns: dict[str, list[Any]]
) -> None:
    """A column the reward cannot take (one named like its own `images` parameter, say) is the
    request's fault: say so with a 400 instead of letting the call's TypeError be a 500."""
    try:
        signature = inspect.signature(reward.fn)
    except (TypeError, ValueError):
        return  # a callable inspect cannot read: the call itself will tell
    try:
        signature.bind(prompts, outputs, **columns)
    except TypeError as err:
        raise ValueError(f"reward {reward.name!r} cannot take these columns: {err}") from None


class _Handler(BaseHTTPRequestHandler):
    server: RewardHTTPServer
    protocol_version = "HTTP/1.1"
    _unread = 0  # bytes of the request body not read yet

    def setup(self) -> None:
        # Every read and write on this connection gives up after this long, so a client whose
        # body never arrives frees its thread instead of holding it forever.
        self.timeout = self.server.request_timeout
        super().setup()

    def handle_expect_100(self) -> bool:
        # A client that asks first (curl does for big bodies) gets its 401/413 before it sends
        # the body: `100 Continue` goes out only when the body will be read.
        refused = self._declared_length() > self.server.max_body_bytes or not (
            self.server.token_ok(self.headers.get("Authorization", ""))
        )
        return True if refused else super().handle_expect_100()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _reply(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.server.count(status)
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            # The client gave up (its timeout); it retries or reports the failure itself.
            logger.warning("client %s left before the reply was sent", self.address_string())

    def _reject(self, err: _Rejected) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        self._reply(err.status, {"error": str(err)}, headers)
        if self._unread:
            self._discard_body()

    def _discard_body(self) -> None:
        """Read and drop the unread body for a few seconds at most, 1 MiB at a time.

        Closing a socket with unread data makes the kernel send a reset, and a client that sends
        its whole body before reading the answer (http.client does) would see that reset, not
        our 401/413; so the rest is drained, bounded in time and never held in memory."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        try:
            self.connection.settimeout(_DRAIN_SECONDS)
            while self._unread > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(self._unread, MIB))
                if not chunk:
                    break
                self._unread -= len(chunk)
        except OSError:
            pass

    def _check_token(self) -> None:
        if not self.server.token_ok(self.headers.get("Authorization", "")):
            raise _Rejected(
                401,
                "missing or wrong bearer token: send `Authorization: Bearer <token>` (the http "
                f"reward reads it from the environment variable kwargs.token_env, {TOKEN_ENV} by "
                "default)",
            )

    def do_GET(self) -> None:
        try:
            self._check_token()
        except _Rejected as err:
            self._reject(err)
            return
        if self.path.rstrip("/") == "/health":
            tasks = {name: r.task for name, r in self.server.rewards.items()}
            cap = {MAX_BODY_HEADER: str(self.server.max_body_bytes)}
            self._reply(200, {"status": "ok", "rewards": tasks}, cap)
        else:
            self._reply(404, {"error": f"no route {self.path}; use GET /health or POST /score"})

    def do_POST(self) -> None:
        self._unread = self._declared_length()
        try:
            self._check_token()
            if self.path.rstrip("/") != "/score":
                raise _Rejected(404, f"no route {self.path}; use POST /score")
            reward, prompts, outputs, columns = self._parse_request(self._read_body())
        except _Rejected as err:
            self._reject(err)
            return
        except ValueError as err:
            self._reject(_Rejected(400, str(err)))
            return
        try:
            with reward.lock:  # a model reward need not be thread-safe
                values = reward.fn(prompts, outputs, **columns)
            checked = check_reward_values(reward.name, values, len(prompts))
        except Exception as err:
            # Only here is a 500 right: the reward itself failed, which may be transient.
            logger.exception("reward %r failed", reward.name)
            self._reply(
                500, {"error": f"reward {reward.name!r} failed: {type(err).__name__}: {err}"}
            )
            return
        clean = [None if v is None or math.isnan(v) else v for v in checked]
        self._reply(200, {"rewards": clean})

    def _declared_length(self) -> int:
        try:
            return max(int(self.headers.get("Content-Length") or 0), 0)
        except ValueError:
            return 0

    def _read_body(self) -> bytes:
        """The body, refused before it is read when it is over the cap."""
        length, cap = self._unread, self.server.max_body_bytes
        if length <= 0:
            raise _Rejected(400, "the request needs a JSON body and a Content-Length header")
        if length > cap:
            raise _Rejected(
                413,
                f"the body is {_mib(length)}, above this server's cap of {_mib(cap)}; restart "
                f"the server with --max-body-mb {math.ceil(length / MIB)} or more, or lower the "
                "http reward's batch_size",
            )
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self._unread = 0  # a stalled client: nothing to drain
            raise _Rejected(
                408, f"the body did not arrive within {self.server.request_timeout:g} s"
            ) from None
        self._unread = 0
        if len(body) < length:
            raise _Rejected(400, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _parse_request(
        self, body: bytes
    ) -> tuple[ServedReward, list[str], list[Any], dict[str, list[Any]]]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"the body is not JSON (not UTF-8): {err}") from None
        del body  # one copy of the body less at the peak, while it is parsed
        try:
            request = json.loads(text)
        except RecursionError:
            raise ValueError("the body is nested too deeply to be a reward request") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"the body is not JSON: {err}") from None
        del text
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
        check_request_batch(prompts, outputs, columns)
        _check_call(reward, prompts, outputs, columns)
        if task == "generation":
            outputs = [decode_image(o, i) for i, o in enumerate(outputs)]
        return reward, prompts, outputs, columns

    def _pick_reward(self, name: Any) -> ServedReward:
        rewards = self.server.rewards
        if name is None and len(rewards) == 1:
            return next(iter(rewards.values()))
        if not isinstance(name, str) or name not in rewards:
            raise ValueError(f"unknown reward {name!r}; this server hosts {sorted(rewards)}")
        return rewards[name]


class RewardHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server hosting rewards by name. `start()` serves in a daemon thread.

    backlog: connections the kernel queues while the server is busy (listen(2); Python's
    default of 5 resets a burst). threads: connections handled at once, 0 for no limit; the rest
    wait in the backlog, which bounds memory to about threads x 2.3 x body. timeout: seconds any
    read or write may wait, 0 for none. max_body_bytes: a larger body gets 413 and is never held
    in memory. token: when set, both routes require `Authorization: Bearer <token>`.
    """

    daemon_threads = True

    def __init__(
        self,
        rewards: Mapping[str, ServedReward],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        threads: int = DEFAULT_THREADS,
        timeout: float = DEFAULT_TIMEOUT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        token: str | None = None,
    ):
        if not rewards:
            raise ValueError("a reward server needs at least one reward")
        if backlog < 1 or threads < 0 or timeout < 0 or max_body_bytes < 1:
            raise ValueError(
                "need backlog >= 1, threads >= 0 (0: no limit), timeout >= 0 (0: none) and a "
                "body cap >= 1 byte"
            )
        self.rewards = dict(rewards)
        self.request_queue_size = backlog  # read by server_activate's listen()
        self.request_timeout = timeout or None
        self.max_body_bytes = max_body_bytes
        self._token = (token or "").encode("utf-8")
        self._slots = threading.BoundedSemaphore(threads) if threads else None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active = 0
        self.status_counts: Counter[int] = Counter()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requires_token(self) -> bool:
        return bool(self._token)

    @property
    def active_connections(self) -> int:
        """Connections being handled now (each holds one thread)."""
        return self._active

    def token_ok(self, authorization: str) -> bool:
        """Whether an `Authorization` header carries the token (always true without one)."""
        if not self._token:
            return True
        scheme, _, given = authorization.partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8"), self._token
        )

    def count(self, status: int) -> None:
        with self._lock:
            self.status_counts[status] += 1

    def process_request(self, request: Any, client_address: Any) -> None:
        # With every slot busy the accept loop waits here, so further connections queue in the
        # kernel's backlog (cheap) instead of as threads each holding a body in memory.
        if self._slots is not None:
            while not self._slots.acquire(timeout=0.1):
                if self._stopping.is_set():
                    self.shutdown_request(request)
                    return
        with self._lock:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._active -= 1
        if self._slots is not None:
            self._slots.release()

    def start(self, poll_interval: float = 0.1) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, args=(poll_interval,), daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopping.set()
        self.shutdown()
        self.server_close()
