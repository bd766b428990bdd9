"""The completion job (`pairuni pairs complete`): single-task records -> completed quadruples.

    summary = complete_records(records, "understanding", "quads.jsonl", annotator, cfg)

- Output is append-only (`JsonlAppender`: one fsync'ed line per quadruple), so a job killed at
  any moment resumes with no loss and no duplicates; records dropped after `max_attempts`
  go to `<out>.dropped.jsonl` with their reason and are not retried on resume.
- A persistent cache (one JSON file per completion) is keyed by (record hash, template version,
  model): a re-run, or a resume after a kill between the answer and the output line, never pays
  twice. Drops caused by a failing service are not cached, so a re-run tries them again.
- Requests run concurrently (at most `max_concurrency`), rate-limited, with retries and backoff
  (see `annotators.OpenAIChat`); a progress bar shows the records; the summary totals tokens and
  cost and is written to `<out>.summary.json`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pairuni.data.schema import GenerationSample, Quadruple, Record, UnderstandingSample
from pairuni.pairing.annotators import Outcome, Task
from pairuni.pairing.config import CompleteConfig


class DroppedRecord(Record):
    """A record the annotator could not complete, and why."""

    id: str
    task: str
    reason: str


@dataclass
class CompletionSummary:
    total: int = 0
    already_done: int = 0
    completed: int = 0
    dropped: int = 0
    failed_transient: int = 0
    """Records the service kept failing on: not written anywhere; a re-run retries them."""
    cache_hits: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def line(self) -> str:
        return (
            f"completed {self.completed}, dropped {self.dropped}, service failures "
            f"{self.failed_transient}, already done {self.already_done}, cache hits "
            f"{self.cache_hits}, requests {self.requests}, tokens {self.prompt_tokens} in / "
            f"{self.completion_tokens} out, cost {self.cost:.4f}"
        )


def record_hash(record: UnderstandingSample | GenerationSample) -> str:
    """sha256 of the record's content with its image replaced by the image's sha256, so the same
    data under another path or file shares cache entries."""
    data = record.model_dump(mode="json", exclude={"image"})
    data["image_sha256"] = record.image.sha256() if record.image is not None else None
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class CompletionCache:
    """One JSON file per finished completion under `folder`, written atomically."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(rec_hash: str, template_version: str, model: str) -> str:
        return hashlib.sha256(f"{rec_hash}\0{template_version}\0{model}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is recomputed

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(value, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def to_quadruple(
    task: Task, record: UnderstandingSample | GenerationSample, fields: dict[str, Any]
) -> Quadruple:
    """The record plus its completed half."""
    data = record.model_dump(mode="python", by_alias=True)
    data.update(fields)
    data["origin"] = task
    return Quadruple.model_validate(data)


def complete_records(
    records: list[UnderstandingSample] | list[GenerationSample],
    task: Task,
    out: str | Path,
    annotator: Any,
    cfg: CompleteConfig,
    *,
    progress: bool = True,
) -> CompletionSummary:
    """Complete every record not yet in `out` (or its dropped log); see the module docstring."""
    return asyncio.run(_complete(records, task, Path(out), annotator, cfg, progress))


async def _complete(
    records: list[Any],
    task: Task,
    out: Path,
    annotator: Any,
    cfg: CompleteConfig,
    progress: bool,
) -> CompletionSummary:
    from pairuni.data.io import JsonlAppender

    summary = CompletionSummary(total=len(records))
    cache = CompletionCache(cfg.cache_dir)
    version = annotator.template_version(task)
    with (
        JsonlAppender(out, Quadruple) as done,
        JsonlAppender(out.with_name(out.name + ".dropped.jsonl"), DroppedRecord) as dropped,
    ):
        todo = [r for r in records if r.id not in done.done_ids and r.id not in dropped.done_ids]
        summary.already_done = len(records) - len(todo)
        bar = _bar(len(todo), progress, f"complete {task}")
        semaphore = asyncio.Semaphore(cfg.max_concurrency)

        async def one(record: Any) -> None:
            if record.image is None:  # a quadruple needs its image
                dropped.append(DroppedRecord(id=record.id, task=task, reason="no image"))
                summary.dropped += 1
                return
            key = CompletionCache.key(record_hash(record), version, annotator.name)
            cached = cache.get(key)
            if cached is not None:
                summary.cache_hits += 1
                outcome = Outcome(fields=cached.get("fields"), reason=cached.get("reason", ""))
            else:
                async with semaphore:
                    image = record.image.read_bytes() if record.image is not None else None
                    outcome = await annotator.complete(task, record.model_dump(mode="json"), image)
                _count(summary, outcome, cfg)
                if not outcome.transient:
                    cache.put(key, {"fields": outcome.fields, "reason": outcome.reason})
            # the event loop runs one callback at a time: appends never interleave
            if outcome.fields is not None:
                done.append(to_quadruple(task, record, outcome.fields))
                summary.completed += 1
            elif outcome.transient:
                summary.failed_transient += 1
            else:
                dropped.append(DroppedRecord(id=record.id, task=task, reason=outcome.reason))
                summary.dropped += 1
            if bar is not None:
                bar.update(1)

        try:
            await asyncio.gather(*(one(r) for r in todo))
        finally:
            if bar is not None:
                bar.close()
    out.with_name(out.name + ".summary.json").write_text(
        json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8"
    )
    return summary


def _count(summary: CompletionSummary, outcome: Outcome, cfg: CompleteConfig) -> None:
    summary.requests += outcome.requests
    summary.prompt_tokens += outcome.prompt_tokens
    summary.completion_tokens += outcome.completion_tokens
    summary.cost = (
        summary.prompt_tokens * cfg.price_input_per_mtok
        + summary.completion_tokens * cfg.price_output_per_mtok
    ) / 1e6


def _bar(total: int, progress: bool, desc: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="record")
