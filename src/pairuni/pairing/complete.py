"""The completion job (`pairuni pairs complete`): single-task records -> completed quadruples.

    summary = complete_records(records, "understanding", "quads.jsonl", annotator, cfg)

Files beside the output `<out>`:

- `<out>`: the quadruples, append-only. Each line carries `source_sha256`, the hash of what it
  completes (the question, options and answer, or the prompt, and the image's bytes), so a
  record is done when a line matches its (task, id, content): both tasks may share one file
  even when their ids collide, and an edited record is completed again.
- `<out>.dropped.jsonl`: records the annotator gave up on (invalid replies, failed checks) or
  that the API refused (HTTP 400 / 413 / 422), with the reason and a hash of the settings that
  produced the drop: a re-run with the same settings skips them, changed settings try again
  (`retry_dropped` tries them regardless).
- `<out>.ledger.json`: every request sent for this output, cumulative across runs: sent,
  retried, succeeded, failed by status, tokens, cost, records. It is rewritten durably with
  every commit, and a request is counted before it is sent, so after a kill -9 `sent` is never
  below the truth.
- `<out>.summary.json`: this run's `CompletionSummary`.

Durability without an fsync per record on the event loop: results are committed in groups by
one background task (cache entries, output lines, dropped lines, then the ledger; each file
written once and fsync'ed once per group, in a worker thread) while requests go on. A record is
acknowledged (counted, shown on the progress bar) only after its group is on disk, so a job
killed at any moment resumes with no loss and no duplicates.

The cache (`cfg.cache_dir`) holds finished completions keyed by the record's content and
everything else that shapes a completion (model, endpoint, template text and version, verify,
send_image, temperature, max_tokens): a re-run, or another output file, never pays twice for the
same completion. Service failures and refusals are never cached.

A job stops early, keeping what it finished, on a reply no retry can change (HTTP 401 / 403 /
404: `SetupError`) or after `stop_after_failures` records in a row failed or were refused. It
ends with `CompletionFailed` (a one-paragraph explanation: cause, URL, what to do) whenever a
record is left undone because of the service, or when the API refused every record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from pairuni.data.errors import DataError, data_error_from_validation
from pairuni.data.io import complete_lines, lock_exclusive, record_to_json_line
from pairuni.data.schema import GenerationSample, Quadruple, Record, UnderstandingSample
from pairuni.pairing.annotators import Outcome, RequestStats, SetupError, Task
from pairuni.pairing.config import CompleteConfig

logger = logging.getLogger(__name__)

SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "understanding": ("question", "options", "answer"),
    "generation": ("prompt",),
}
"""The fields a completion of each source task completes (with the image)."""

BOOKKEEPING_FIELDS = ("source_sha256",)
"""Columns the job adds to a quadruple line for itself (not data: pairs do not carry them)."""


class DroppedRecord(Record):
    """A record the annotator could not complete, and why."""

    id: str
    task: str
    reason: str
    source_sha256: str | None = None
    """The content that was dropped (see `source_sha256`)."""
    settings: str | None = None
    """Hash of the annotator settings that dropped it; other settings try the record again."""
    max_attempts: int | None = None
    refused: bool = False
    """The API refused the request (HTTP 400 / 413 / 422)."""
    status: str | None = None


class CompletionFailed(RuntimeError):
    """The job left records undone because of the service (or could not run at all). `str()` is
    one paragraph for a person: the cause, the URL, what to do. `summary` holds the counts."""

    def __init__(self, message: str, summary: CompletionSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def _busy_message(path: Path) -> str:
    return (
        f"{path}: another process is writing to this file; run one completion job per "
        "output file at a time (the two tasks may share a file, one after the other)"
    )


@dataclass
class CompletionSummary:
    total: int = 0
    already_done: int = 0
    """Records already in the output (same content) or in the dropped log (same settings)."""
    redone: int = 0
    """Records whose earlier completion in the output no longer matches their content."""
    completed: int = 0
    dropped: int = 0
    """Written to the dropped log this run (refusals included)."""
    refused: int = 0
    """Of `dropped`: refused by the API (HTTP 400 / 413 / 422)."""
    refused_before: int = 0
    """Of `already_done`: refused by the API in an earlier run with the same settings."""
    failed_transient: int = 0
    """Records the service kept failing on: not written anywhere; a re-run retries them."""
    cache_hits: int = 0
    requests: int = 0
    """Requests sent this run, retries included."""
    retried: int = 0
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    """Failed requests by HTTP status (or `timeout`, `connection`)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    stopped: str = ""
    """Why the job stopped early (empty when it ran through)."""
    warnings: list[str] = field(default_factory=list)
    ledger: str = ""
    """The cumulative request ledger of the output file."""

    def line(self) -> str:
        failed = ", ".join(f"{k} x{v}" for k, v in sorted(self.failed.items())) or "none"
        return (
            f"completed {self.completed}, dropped {self.dropped} (refused {self.refused}), "
            f"service failures {self.failed_transient}, already done {self.already_done}, "
            f"redone after an edit {self.redone}, cache hits {self.cache_hits}; requests "
            f"{self.requests} sent ({self.retried} retries), {self.succeeded} succeeded, failed: "
            f"{failed}; tokens {self.prompt_tokens} in / {self.completion_tokens} out, cost "
            f"{self.cost:.4f}"
        )


# --------------------------------------------------------------------------- content keys


_COMPUTE: Any = object()
"""Default of `image_sha` arguments: hash the record's image (pass the hash when known)."""


def image_sha256(record: Any) -> str | None:
    image = getattr(record, "image", None)
    return image.sha256() if image is not None else None


def source_sha256(task: str, record: Any, image_sha: str | None = _COMPUTE) -> str:
    """sha256 of what a completion of `task` completes: the question, options and answer
    (understanding) or the prompt (generation), and the image's bytes. The same for a source
    record and for the quadruple made from it. `image_sha`: the image's sha256 if known."""
    if image_sha is _COMPUTE:
        image_sha = image_sha256(record)
    data = {f: getattr(record, f, None) for f in SOURCE_FIELDS[task]}
    data.update(task=task, image_sha256=image_sha)
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def source_texts(task: str, record: Any) -> str:
    """The completed text fields alone (how a line written before `source_sha256` matches)."""
    data = {f: getattr(record, f, None) for f in SOURCE_FIELDS[task]}
    return json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)


def completes(quad: Quadruple, record: Any, image_sha: str | None = _COMPUTE) -> bool:
    """Whether `quad` is a completion of `record` as it is now (content, not only the id)."""
    recorded = (quad.model_extra or {}).get("source_sha256")
    if recorded is not None:
        return recorded == source_sha256(quad.origin, record, image_sha)
    return source_texts(quad.origin, quad) == source_texts(quad.origin, record)


def record_hash(
    record: UnderstandingSample | GenerationSample, image_sha: str | None = _COMPUTE
) -> str:
    """sha256 of the record's content with its image replaced by the image's sha256, so the same
    data under another path or file shares cache entries."""
    data = record.model_dump(mode="json", exclude={"image"})
    data["image_sha256"] = image_sha256(record) if image_sha is _COMPUTE else image_sha
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def settings_of(annotator: Any, task: Task) -> dict[str, Any]:
    """What besides the record shapes the annotator's completions (see `Annotator.settings`)."""
    settings = getattr(annotator, "settings", None)
    if callable(settings):
        return settings(task)
    version = getattr(annotator, "template_version", None)
    return {
        "annotator": getattr(annotator, "name", type(annotator).__name__),
        "version": version(task) if callable(version) else getattr(annotator, "version", ""),
    }


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- the cache


class CompletionCache:
    """Finished completions under `folder`, keyed by `key(record hash, task, settings)`.

    Append-only segment files `folder/v2/<pid>-<random>.jsonl`, one per writing job, so several
    jobs may share the folder; a line is `{"key": ..., "fields": ..., "reason": ...,
    "max_attempts": ...}`, written in groups and fsync'ed by the job's committer. A torn last
    line (a kill mid-write) is ignored. A completion wins over a drop of the same key; a cached
    drop counts only for at most its `max_attempts`.
    """

    PREFIX = b'{"key": "'

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.segments = self.folder / "v2"
        self._handle: IO[bytes] | None = None
        self.path: Path | None = None

    @staticmethod
    def key(rec_hash: str, task: str, settings: dict[str, Any]) -> str:
        return _digest({"record": rec_hash, "task": task, "settings": settings})

    def lookup(self, keys: set[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        if not keys or not self.segments.is_dir():
            return found
        start = len(self.PREFIX)
        for segment in sorted(self.segments.glob("*.jsonl")):
            try:
                handle = open(segment, "rb")  # noqa: SIM115 (closed below)
            except OSError:
                continue
            with handle:
                for raw in handle:
                    if not raw.endswith(b"\n") or not raw.startswith(self.PREFIX):
                        continue
                    key = raw[start : start + 64].decode("ascii", "replace")
                    if key not in keys or found.get(key, {}).get("fields") is not None:
                        continue
                    try:
                        value = json.loads(raw)
                    except json.JSONDecodeError:
                        continue
                    old = found.get(key)
                    if (
                        old is None
                        or value.get("fields") is not None
                        or ((value.get("max_attempts") or 0) > (old.get("max_attempts") or 0))
                    ):
                        found[key] = value
        return found

    @staticmethod
    def line(key: str, value: dict[str, Any]) -> bytes:
        return (json.dumps({"key": key, **value}, ensure_ascii=False) + "\n").encode()

    def append(self, lines: list[bytes]) -> None:
        """Write `lines` durably (one write, one fsync)."""
        if not lines:
            return
        if self._handle is None:
            self.segments.mkdir(parents=True, exist_ok=True)
            self.path = self.segments / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
            self._handle = open(self.path, "ab")  # noqa: SIM115 (closed in close())
            _fsync_dir(self.segments)
        self._handle.write(b"".join(lines))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# --------------------------------------------------------------------------- files


class _AppendLog:
    """An append-only JSONL file owned by this job (an exclusive lock): a torn last line left by
    a kill is cut off on open; `rows` holds (line number, object) of every line before it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.name.lower().endswith(".gz"):
            raise ValueError(f"{path}: the output is plain .jsonl (gzip cannot be appended to)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[bytes] | None = open(path, "a+b")  # noqa: SIM115 (closed in close())
        try:
            lock_exclusive(self._handle, path, lambda: CompletionFailed(_busy_message(path)))
            self.rows = self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> list[tuple[int, dict[str, Any]]]:
        assert self._handle is not None
        rows: list[tuple[int, dict[str, Any]]] = []
        for number, raw in complete_lines(self._handle, self.path):
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(self.path, number, None, f"invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(self.path, number, None, "a line must be a JSON object")
            rows.append((number, row))
        return rows

    def write(self, lines: list[bytes]) -> None:
        """Append `lines` durably (one write, one fsync)."""
        if not lines:
            return
        if self._handle is None:
            raise ValueError(f"{self.path}: the file is closed")
        self._handle.write(b"".join(lines))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # also releases the lock
            self._handle = None

    def __enter__(self) -> _AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write_json_atomic(path: Path, value: Any) -> None:
    """tmp file, fsync, rename, fsync of the folder: a reader (or a kill) never sees half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the ledger


def _zero_counts() -> dict[str, Any]:
    return {
        "requests": {"sent": 0, "retried": 0, "succeeded": 0, "failed": {}},
        "tokens": {"prompt": 0, "completion": 0},
        "cost": 0.0,
        "records": {
            "completed": 0,
            "dropped": 0,
            "refused": 0,
            "service_failures": 0,
            "cache_hits": 0,
        },
    }


def _add_counts(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add_counts(a.get(k, 0), b.get(k, 0)) for k in {**a, **b}}
    if isinstance(a, dict) or isinstance(b, dict):
        return a if isinstance(a, dict) else b
    return (a or 0) + (b or 0)


class RequestLedger:
    """`<out>.ledger.json`: what every run for this output file sent and got, added up.

    `totals` accumulates over runs; `last_run` is the current (or last) run with its `state`:
    `running` while it runs (and after a kill), then `finished` or `failed`.
    """

    def __init__(self, path: Path, *, endpoint: str, model: str) -> None:
        self.path = path
        prior: dict[str, Any] = {}
        if path.is_file():
            try:
                prior = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(prior, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as err:
                aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
                logger.warning("%s: unreadable (%s); moved to %s, counting anew", path, err, aside)
                os.replace(path, aside)
                prior = {}
        self.base = _add_counts(_zero_counts(), prior.get("totals") or {})
        self.runs = int(prior.get("runs") or 0) + 1
        self.previous_interrupted = (prior.get("last_run") or {}).get("state") == "running"
        self.started = _now()
        self.endpoint = endpoint
        self.model = model

    def document(self, run: dict[str, Any], state: str, reserved_unsent: int = 0) -> dict[str, Any]:
        """`reserved_unsent`: of `sent`, requests counted ahead that may not have gone out (a
        killed run's `sent` is high by at most that much, never low)."""
        return {
            "format": 1,
            "output": self.path.name[: -len(".ledger.json")],
            "updated": _now(),
            "runs": self.runs,
            "totals": _add_counts(self.base, run),
            "last_run": {
                "started": self.started,
                "state": state,
                "reserved_unsent": reserved_unsent,
                "endpoint": self.endpoint,
                "model": self.model,
                **run,
            },
        }

    def write(self, document: dict[str, Any]) -> None:
        _write_json_atomic(self.path, document)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --------------------------------------------------------------------------- group commit


@dataclass
class _Entry:
    kind: str
    """completed / dropped / refused / cache_hit / service_failure"""
    out: bytes | None = None
    dropped: bytes | None = None
    cache: bytes | None = None


class _Committer:
    """One background task that makes results durable in groups, off the event loop.

    Each round takes everything queued (entries, and requests waiting to be sent), writes the
    cache lines, output lines, dropped lines and then the ledger, each with one write and one
    fsync, in a worker thread; then it acknowledges the entries. While a round is on disk the
    next one fills up.

    Requests are counted before they are sent, by reservation: every ledger written counts
    `headroom` requests beyond those already let through (`granted`), so a request goes out at
    once while the reservation on disk covers it and waits for the next round only when it
    does not. Rounds renew the reservation before it runs out. After a kill the ledger's `sent`
    is therefore never below the truth, and above it by at most `headroom`.
    """

    def __init__(
        self,
        write: Callable[[list[_Entry], dict[str, Any]], None],
        document: Callable[[int, int, Counter[str]], dict[str, Any]],
        on_ack: Callable[[_Entry], None],
        on_error: Callable[[BaseException], None],
        headroom: int,
    ) -> None:
        self.write = write
        self.document = document
        self.on_ack = on_ack
        self.on_error = on_error
        self.headroom = max(1, headroom)
        self.entries: list[_Entry] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.durable: Counter[str] = Counter()
        self.released = 0
        """Requests let through so far."""
        self.granted = 0
        """Requests counted by the ledger on disk: at most this many may have been let through."""
        self.error: BaseException | None = None
        self.closing = False
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def add(self, entry: _Entry) -> None:
        self.entries.append(entry)
        self.wake.set()

    def _low(self) -> bool:
        """The reservation on disk is half used: renew it."""
        return not self.closing and self.granted - self.released <= self.headroom // 2

    async def before_send(self) -> None:
        """Return once this request is counted in the ledger on disk."""
        if self.error is not None:
            raise CompletionFailed(f"the job cannot write its files: {self.error}")
        if self.released < self.granted and not self.waiters:
            self.released += 1
            if self._low():
                self.wake.set()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        self.wake.set()
        await future

    async def _run(self) -> None:
        while True:
            if not self.entries and not self.waiters and not self._low():
                if self.closing:
                    return
                await self.wake.wait()
            self.wake.clear()
            entries, self.entries = self.entries, []
            kinds = Counter(e.kind for e in entries)
            granted = self.released + len(self.waiters) + self.headroom
            document = self.document(granted, self.released, self.durable + kinds)
            try:
                await asyncio.to_thread(self.write, entries, document)
            except Exception as err:  # a full disk, a removed folder: stop the job
                self.error = err
                failure = CompletionFailed(f"the job cannot write its files: {err}")
                for waiter in self.waiters:
                    if not waiter.done():
                        waiter.set_exception(failure)
                self.on_error(err)
                return
            self.durable += kinds
            self.granted = granted
            while self.waiters and self.released < self.granted:
                waiter = self.waiters.pop(0)
                if not waiter.done():
                    self.released += 1
                    waiter.set_result(None)
            for entry in entries:
                self.on_ack(entry)

    async def close(self) -> None:
        self.closing = True
        self.wake.set()
        await self.task


# --------------------------------------------------------------------------- the job


def to_quadruple(
    task: Task,
    record: UnderstandingSample | GenerationSample,
    fields: dict[str, Any],
    source_sha256: str | None = None,
) -> Quadruple:
    """The record plus its completed half (and, when given, the hash of the content it
    completes, as the `source_sha256` column)."""
    data = record.model_dump(mode="python", by_alias=True)
    data.update(fields)
    data["origin"] = task
    if source_sha256 is not None:
        data["source_sha256"] = source_sha256
    return Quadruple.model_validate(data)


def complete_records(
    records: list[UnderstandingSample] | list[GenerationSample],
    task: Task,
    out: str | Path,
    annotator: Any,
    cfg: CompleteConfig,
    *,
    progress: bool = True,
    retry_dropped: bool = False,
) -> CompletionSummary:
    """Complete every record not yet in `out` (or its dropped log); see the module docstring.

    Raises `CompletionFailed` (with `.summary`) when records are left undone because of the
    service, when the API refused every record, or when the job had to stop."""
    job = _Job(list(records), task, Path(out), annotator, cfg, progress, retry_dropped)
    return job.run()


@dataclass
class _Todo:
    record: Any
    source_sha: str
    cache_key: str


class _Job:
    def __init__(
        self,
        records: list[Any],
        task: Task,
        out: Path,
        annotator: Any,
        cfg: CompleteConfig,
        progress: bool,
        retry_dropped: bool,
    ) -> None:
        self.records = records
        self.task = task
        self.out = out
        self.annotator = annotator
        self.cfg = cfg
        self.progress = progress
        self.retry_dropped = retry_dropped
        self.summary = CompletionSummary(total=len(records))
        self.settings = settings_of(annotator, task)
        self.settings_id = _digest(self.settings)[:16]
        self.stats: RequestStats = getattr(annotator, "stats", None) or RequestStats()
        self.start_stats = self.stats.copy()
        self.endpoint = str(getattr(annotator, "endpoint", None) or self.settings)
        self.cache = CompletionCache(cfg.cache_dir)
        self.ledger = RequestLedger(
            out.with_name(out.name + ".ledger.json"),
            endpoint=self.endpoint,
            model=str(getattr(annotator, "name", "")),
        )
        self.summary.ledger = str(self.ledger.path)
        self.acked: Counter[str] = Counter()
        """Entries on disk, by kind (see `_Entry.kind`)."""
        self.completed_before = 0
        self.stop = ""
        self.consecutive: list[Outcome] = []
        """Records in a row (latest last) that ended in a service failure or a refusal."""
        self.transient_reasons: Counter[str] = Counter()
        self.transient_statuses: Counter[str] = Counter()
        self.refusal_reasons: Counter[str] = Counter()
        self.workers: list[asyncio.Task[None]] = []
        self.committer: _Committer | None = None
        self.bar: Any = None

    # ------------------------------------------------------------------ planning

    def _plan(
        self, done_log: _AppendLog, dropped_log: _AppendLog
    ) -> tuple[list[_Todo], list[tuple[Any, str]]]:
        """(records to request or take from the cache, records without an image)."""
        done: dict[tuple[str, str], set[str]] = {}
        for number, row in done_log.rows:
            try:
                quad = Quadruple.model_validate(row)
            except ValidationError as err:
                raise data_error_from_validation(err, done_log.path, number) from None
            marker = row.get("source_sha256") or "texts:" + source_texts(quad.origin, quad)
            done.setdefault((quad.origin, quad.id), set()).add(marker)
        dropped: dict[tuple[str, str, str], dict[str, Any]] = {}
        if not self.retry_dropped:
            for _, row in dropped_log.rows:
                same_settings = row.get("settings") == self.settings_id
                attempts = row.get("max_attempts") or 0
                enough = row.get("refused") or attempts >= self.cfg.max_attempts
                if same_settings and enough and row.get("source_sha256"):
                    key = (str(row.get("task")), str(row.get("id")), row["source_sha256"])
                    dropped[key] = row
        todo: list[_Todo] = []
        no_image: list[tuple[Any, str]] = []
        for record in self.records:
            image_sha = image_sha256(record)
            content = source_sha256(self.task, record, image_sha)
            markers = done.get((self.task, record.id))
            if markers and (
                content in markers or "texts:" + source_texts(self.task, record) in markers
            ):
                self.summary.already_done += 1
                self.completed_before += 1
                continue
            earlier = dropped.get((self.task, record.id, content))
            if earlier is not None:
                self.summary.already_done += 1
                if earlier.get("refused"):
                    self.summary.refused_before += 1
                    self.refusal_reasons[str(earlier.get("reason"))] += 1
                continue
            if markers:
                self.summary.redone += 1
            if record.image is None:  # a quadruple needs its image
                no_image.append((record, content))
                continue
            key = CompletionCache.key(record_hash(record, image_sha), self.task, self.settings)
            todo.append(_Todo(record, content, key))
        return todo, no_image

    # ------------------------------------------------------------------ running

    def run(self) -> CompletionSummary:
        dropped_path = self.out.with_name(self.out.name + ".dropped.jsonl")
        with _AppendLog(self.out) as done_log, _AppendLog(dropped_path) as dropped_log:
            todo, no_image = self._plan(done_log, dropped_log)
            self.logs = (done_log, dropped_log)
            state = "failed"
            try:
                asyncio.run(self._run(todo, no_image))
                state = "finished"
            except KeyboardInterrupt:
                state = "interrupted"
                raise
            finally:
                self.cache.close()
                self._finish_stats()
                try:
                    self.ledger.write(self.ledger.document(self._run_counts(), state))
                except OSError as err:
                    logger.warning("%s: cannot write the ledger (%s)", self.ledger.path, err)
        summary_path = self.out.with_name(self.out.name + ".summary.json")
        _write_json_atomic(summary_path, asdict(self.summary))
        problem = self._problem()
        if problem:
            raise CompletionFailed(problem, self.summary)
        return self.summary

    async def _run(self, todo: list[_Todo], no_image: list[tuple[Any, str]]) -> None:
        self.committer = _Committer(
            self._write,
            self._document,
            self._ack,
            self._write_failed,
            headroom=self.cfg.max_concurrency,
        )
        attach = getattr(self.annotator, "attach", None)
        if callable(attach):
            attach(self.committer.before_send)
        self.bar = _bar(len(todo) + len(no_image), self.progress, f"complete {self.task}")
        try:
            for record, content in no_image:
                self._drop(record, content, Outcome(fields=None, reason="no image"))
            cached = self.cache.lookup({t.cache_key for t in todo})
            queue: deque[_Todo] = deque()
            for item in todo:
                hit = cached.get(item.cache_key)
                if hit is not None and hit.get("fields") is not None:
                    self._handle(item, Outcome(fields=hit["fields"]), from_cache=True)
                elif (
                    hit is not None
                    and not self.retry_dropped
                    and (hit.get("max_attempts") or 0) >= self.cfg.max_attempts
                ):
                    outcome = Outcome(fields=None, reason=hit.get("reason") or "dropped")
                    self._handle(item, outcome, from_cache=True)
                else:
                    queue.append(item)
            self.workers = [
                asyncio.create_task(self._worker(queue))
                for _ in range(min(self.cfg.max_concurrency, len(queue)))
            ]
            await asyncio.gather(*self.workers, return_exceptions=True)
        finally:
            await self.committer.close()
            if callable(attach):
                attach(None)
            aclose = getattr(self.annotator, "aclose", None)
            if callable(aclose):
                with contextlib.suppress(Exception):
                    await aclose()
            if self.bar is not None:
                self.bar.close()

    async def _worker(self, queue: deque[_Todo]) -> None:
        while queue and not self.stop:
            item = queue.popleft()
            try:
                image = item.record.image.read_bytes()
                outcome = await self.annotator.complete(
                    self.task, item.record.model_dump(mode="json"), image
                )
            except SetupError as err:
                self._halt(self._setup_message(err))
                return
            except CompletionFailed as err:
                self._halt(str(err))
                return
            except Exception as err:  # a bug or an unforeseen reply: stop with the reason
                logger.debug("completing %s failed", item.record.id, exc_info=True)
                self._halt(
                    f"completing record {item.record.id!r} failed unexpectedly "
                    f"({type(err).__name__}: {err}); the job stopped; {self._kept()}"
                )
                return
            self._handle(item, outcome)

    def _halt(self, message: str) -> None:
        if self.stop:
            return
        self.stop = message
        current = asyncio.current_task()
        for worker in self.workers:
            if worker is not current:
                worker.cancel()

    # ------------------------------------------------------------------ outcomes

    def _add(self, entry: _Entry) -> None:
        assert self.committer is not None
        self.committer.add(entry)

    def _handle(self, item: _Todo, outcome: Outcome, *, from_cache: bool = False) -> None:
        if outcome.fields is not None:
            quad = to_quadruple(self.task, item.record, outcome.fields, item.source_sha)
            cache = None
            if not from_cache:
                cache = CompletionCache.line(item.cache_key, {"fields": outcome.fields})
            kind = "cache_completed" if from_cache else "completed"
            self._add(_Entry(kind, out=record_to_json_line(quad) + b"\n", cache=cache))
            self.consecutive.clear()
        elif outcome.transient:
            self.transient_reasons[outcome.reason] += 1
            self.transient_statuses[outcome.status] += 1
            self._add(_Entry("service_failure"))  # nothing to write; the ledger follows
            self._count_failure(outcome)
        elif outcome.refused:
            self.refusal_reasons[outcome.reason] += 1
            self._drop(item.record, item.source_sha, outcome)  # never cached
            self._count_failure(outcome)
        else:
            cache = None
            if not from_cache:
                value = {
                    "fields": None,
                    "reason": outcome.reason,
                    "max_attempts": self.cfg.max_attempts,
                }
                cache = CompletionCache.line(item.cache_key, value)
            kind = "cache_dropped" if from_cache else "dropped"
            self._drop(item.record, item.source_sha, outcome, cache, kind)
            self.consecutive.clear()  # the service answers: a drop is about the record

    def _drop(
        self,
        record: Any,
        content: str,
        outcome: Outcome,
        cache: bytes | None = None,
        kind: str = "dropped",
    ) -> None:
        line = DroppedRecord(
            id=record.id,
            task=self.task,
            reason=outcome.reason,
            source_sha256=content,
            settings=self.settings_id,
            max_attempts=self.cfg.max_attempts,
            refused=outcome.refused,
            status=outcome.status or None,
        )
        kind = "refused" if outcome.refused else kind
        self._add(_Entry(kind, dropped=record_to_json_line(line) + b"\n", cache=cache))

    def _count_failure(self, outcome: Outcome) -> None:
        self.consecutive.append(outcome)
        limit = self.cfg.stop_after_failures
        if limit and len(self.consecutive) >= limit and not self.stop:
            self._halt(self._failure_message(stopped=True))

    def _ack(self, entry: _Entry) -> None:
        """An entry is on disk: count it."""
        self.acked[entry.kind] += 1
        s, acked = self.summary, self.acked
        s.completed = acked["completed"] + acked["cache_completed"]
        s.cache_hits = acked["cache_completed"] + acked["cache_dropped"]
        s.dropped = acked["dropped"] + acked["cache_dropped"] + acked["refused"]
        s.refused = acked["refused"]
        s.failed_transient = acked["service_failure"]
        if self.bar is not None:
            self.bar.update(1)

    def _write_failed(self, err: BaseException) -> None:
        self._halt(
            f"the job cannot write its files next to {self.out} ({err}); free some space or "
            f"fix the folder's permissions, then {self._kept()}"
        )

    # ------------------------------------------------------------------ files

    def _write(self, entries: list[_Entry], document: dict[str, Any]) -> None:
        """One group, in a worker thread: cache, output, dropped log, then the ledger."""
        done_log, dropped_log = self.logs
        self.cache.append([e.cache for e in entries if e.cache is not None])
        done_log.write([e.out for e in entries if e.out is not None])
        dropped_log.write([e.dropped for e in entries if e.dropped is not None])
        self.ledger.write(document)

    def _run_counts(
        self, sent: int | None = None, records: Counter[str] | None = None
    ) -> dict[str, Any]:
        """This run's part of the ledger: requests (`sent`: the reservation on disk while the
        run goes, else the exact count) and the records in `records` (default: those on
        disk)."""
        stats = self.stats.since(self.start_stats)
        kinds = self.acked if records is None else records
        counts = _zero_counts()
        counts["requests"] = {
            "sent": stats.sent if sent is None else max(stats.sent, sent),
            "retried": stats.retried,
            "succeeded": stats.succeeded,
            "failed": dict(sorted(stats.failed.items())),
        }
        counts["tokens"] = {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens}
        counts["cost"] = self._cost(stats)
        counts["records"] = {
            "completed": kinds["completed"] + kinds["cache_completed"],
            "dropped": kinds["dropped"] + kinds["cache_dropped"] + kinds["refused"],
            "refused": kinds["refused"],
            "service_failures": kinds["service_failure"],
            "cache_hits": kinds["cache_completed"] + kinds["cache_dropped"],
        }
        return counts

    def _document(self, granted: int, released: int, records: Counter[str]) -> dict[str, Any]:
        counts = self._run_counts(granted, records)
        unsent = counts["requests"]["sent"] - max(released, self.stats.since(self.start_stats).sent)
        return self.ledger.document(counts, "running", reserved_unsent=max(0, unsent))

    def _cost(self, stats: RequestStats) -> float:
        return (
            stats.prompt_tokens * self.cfg.price_input_per_mtok
            + stats.completion_tokens * self.cfg.price_output_per_mtok
        ) / 1e6

    def _finish_stats(self) -> None:
        counts = self._run_counts()["requests"]
        stats = self.stats.since(self.start_stats)
        s = self.summary
        s.requests, s.retried, s.succeeded = counts["sent"], stats.retried, stats.succeeded
        s.failed = dict(sorted(stats.failed.items()))
        s.prompt_tokens, s.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        s.cost = self._cost(stats)
        s.stopped = self.stop
        if s.refused and not self._problem_is_refusal():
            n = s.refused
            s.warnings.append(
                f"{n} record{'s were' if n != 1 else ' was'} refused by the API "
                f"({self._top(self.refusal_reasons)}); they are listed in "
                f"{self.out.name}.dropped.jsonl and are tried again when the settings change (or "
                "with --retry-dropped)"
            )
        if self.ledger.previous_interrupted:
            s.warnings.append(
                "the previous run on this output was interrupted; what it had sent up to then "
                f"is counted in {self.ledger.path.name}"
            )

    # ------------------------------------------------------------------ messages

    def _problem_is_refusal(self) -> bool:
        """Every record was refused (now or, with the same settings, before): a setting."""
        s = self.summary
        others_dropped = s.already_done - self.completed_before - s.refused_before
        return (
            bool(s.refused + s.refused_before)
            and s.completed + self.completed_before == 0
            and s.dropped == s.refused
            and others_dropped == 0
        )

    def _problem(self) -> str:
        if self.stop:
            return self.stop
        if self.summary.failed_transient:
            return self._failure_message(stopped=False)
        if self._problem_is_refusal():
            return self._refusal_message()
        return ""

    @staticmethod
    def _top(reasons: Counter[str]) -> str:
        return reasons.most_common(1)[0][0] if reasons else "-"

    def _kept(self) -> str:
        return (
            "run the same command again: the records completed so far are kept and only the "
            "rest are requested"
        )

    def _failure_message(self, *, stopped: bool) -> str:
        recent = self.consecutive if stopped else []
        if recent and all(o.refused for o in recent):
            return self._refusal_message(stopped=len(recent))
        statuses = Counter(o.status for o in recent if o.transient) or self.transient_statuses
        status = statuses.most_common(1)[0][0] if statuses else ""
        cfg = self.cfg
        if status == "connection":
            cause = f"could not connect to {self.endpoint}"
            fix = "start the server, or correct pairing.complete.base_url"
        elif status == "timeout":
            cause = f"requests to {self.endpoint} timed out (timeout_s = {cfg.timeout_s:g})"
            fix = "check the server's load, or raise pairing.complete.timeout_s"
        elif status == "429":
            cause = f"{self.endpoint} kept rate-limiting the requests (HTTP 429)"
            fix = (
                "check the account's quota, lower pairing.complete.max_concurrency or set "
                "pairing.complete.requests_per_minute"
            )
        else:
            cause = f"{self.endpoint} kept failing" + (f" (HTTP {status})" if status else "")
            fix = "check the server and its logs (it may be down or overloaded)"
        if stopped:
            head = (
                f"the job stopped after {len(recent)} records in a row failed "
                f"(pairing.complete.stop_after_failures = {cfg.stop_after_failures})"
            )
        else:
            head = (
                f"{self.summary.failed_transient} of {self.summary.total} records could not be "
                "completed"
            )
        last = self._top(self.transient_reasons).removeprefix("service unavailable: ")
        return f"{head}: {cause}; last error: {last}. To fix: {fix}; then {self._kept()}."

    def _refusal_message(self, stopped: int = 0) -> str:
        cfg = self.cfg
        reason = self._top(self.refusal_reasons).removeprefix("request refused: ").rstrip(".")
        s = self.summary
        if stopped:
            head = f"the job stopped after the API refused {stopped} records in a row"
        elif s.refused:
            head = f"the API refused every record it was sent ({s.refused + s.refused_before})"
        else:
            head = (
                f"nothing was sent: the API refused all {s.refused_before} records in an earlier "
                "run with these same settings"
            )
        return (
            f"{head}: {self.endpoint} answered {reason}. When every request is refused, the "
            f"cause is usually a setting the model does not accept (model {cfg.model!r}, "
            f"temperature {_yaml(cfg.temperature)}, max_tokens {_yaml(cfg.max_tokens)}, "
            f"send_image {_yaml(cfg.send_image)}). To fix: change it in pairing.complete (e.g. "
            f"temperature: null for a model that accepts only its default), then {self._kept()}; "
            "records refused under other settings are tried again (after a fix on the server's "
            "side, add --retry-dropped)."
        )

    def _setup_message(self, err: SetupError) -> str:
        cfg = self.cfg
        where = f"the server at {err.endpoint}"
        if err.status == 401:
            cause = f"{where} rejected the API key (HTTP 401: {err.detail})"
            state = "set" if os.environ.get(cfg.api_key_env) else "not set"
            fix = (
                f"export a valid key in the environment variable {cfg.api_key_env} (now "
                f"{state}; pairing.complete.api_key_env names it), or point "
                "pairing.complete.base_url at the server the key belongs to"
            )
        elif err.status == 403:
            cause = f"{where} refused access (HTTP 403: {err.detail})"
            fix = f"use a key allowed to call model {cfg.model!r}, or another model"
        elif err.status == 404:
            cause = f"{where} answered HTTP 404 ({err.detail})"
            fix = (
                f"check pairing.complete.model ({cfg.model!r}) and pairing.complete.base_url "
                "(an OpenAI-compatible server's URL ends in /v1)"
            )
        else:
            cause = f"{where} answered HTTP {err.status} ({err.detail})"
            fix = "check pairing.complete (model, base_url, api_key_env)"
        return f"{cause}; the job stopped. To fix: {fix}; then {self._kept()}."


def _yaml(value: Any) -> str:
    """A setting as it is written in a config file (null, true, 0.7)."""
    return json.dumps(value)


def _bar(total: int, progress: bool, desc: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="record")
