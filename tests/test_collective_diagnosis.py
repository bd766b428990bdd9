"""The collective-timeout diagnosis names the process that holds the job up, wherever it froze.

CI caught the case a comparison of entries alone misses: the peer published "entering
collective #N" and was stopped before its share was sent, so both processes had entered #N and
the message named nobody. These tests drive the diagnosis with a store in memory (the real
store and two processes are exercised by tests/test_trainer_distributed.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from pairuni.training.distributed import STORE_PREFIX, Collective


class MemoryStore:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.values[key] = value.encode()

    def get(self, key: str) -> bytes:
        if key not in self.values:
            raise RuntimeError(f"no key {key}")
        return self.values[key]

    def set_timeout(self, timeout: Any) -> None:
        pass


def process(rank: int, store: MemoryStore) -> Collective:
    """A Collective of a 2-process job without a process group: only its bookkeeping runs."""
    collective = Collective.__new__(Collective)
    collective.rank, collective.world_size, collective.is_main = rank, 2, rank == 0
    collective.timeout_s, collective.stage = 6.0, "update of step 3"
    collective.entered = collective.completed = 0
    collective._store = store
    return collective


def run_collectives(collective: Collective, count: int) -> None:
    for _ in range(count):
        collective._collective("gradient all_reduce", lambda: None)


def test_a_peer_frozen_inside_the_same_collective_is_named() -> None:
    store = MemoryStore()
    waiting, frozen = process(0, store), process(1, store)
    run_collectives(waiting, 4)
    run_collectives(frozen, 4)
    frozen._mark("gradient all_reduce")  # entered #5, stopped before its share went out
    waiting._mark("gradient all_reduce")
    message = str(waiting.diagnose("gradient all_reduce", RuntimeError("timed out")))
    assert "rank 1 (last seen" in message and "inside collective #5" in message
    assert "stopped answering" in message


def test_a_peer_behind_is_named_where_it_was_last_seen() -> None:
    store = MemoryStore()
    waiting, late = process(0, store), process(1, store)
    run_collectives(waiting, 4)
    run_collectives(late, 3)
    late._mark("barrier")  # entered #4, stuck before it
    late.completed = 3
    waiting._mark("gradient all_reduce")
    message = str(waiting.diagnose("gradient all_reduce", RuntimeError("timed out")))
    assert "rank 1 (last seen" in message and "entering collective #4, barrier" in message


def test_a_peer_that_came_out_of_the_collective_is_not_blamed() -> None:
    store = MemoryStore()
    waiting, done = process(0, store), process(1, store)
    run_collectives(done, 5)
    waiting.entered, waiting.completed = 5, 4
    message = str(waiting.diagnose("gradient all_reduce", RuntimeError("connection reset")))
    assert "rank 1" not in message and message.startswith("a collective failed")


def test_records_from_before_completion_counts_still_read() -> None:
    """A record without `completed` (written by an older pairuni) counts as inside its entry."""
    store = MemoryStore()
    waiting = process(0, store)
    waiting.entered = 5
    record = {"entered": 5, "op": "barrier", "stage": "save", "time": time.time()}
    store.set(f"{STORE_PREFIX}1", json.dumps(record))
    assert "rank 1 (last seen" in str(waiting.diagnose("barrier", RuntimeError("timed out")))
