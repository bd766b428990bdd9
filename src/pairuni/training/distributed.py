"""The few collective operations the trainer needs, over accelerate's process state.

The trainer does not wrap the model in DDP: the policy calls sub-modules (language model, heads)
directly, which DDP's forward hooks would not see. Instead every micro-batch loss is already a
share of the GLOBAL loss (its normalisers count the whole step on all processes), so the global
gradient is the plain SUM of the processes' accumulated gradients: `all_reduce_grads` does that
once per optimiser update (one flat buffer per dtype, like DDP's buckets); under
`train.sharding: fsdp` FSDP reduce-scatters them instead (`sharding.py`). With one process every
operation here is the identity.

A process that stops answering (SIGSTOP, a device that hangs) would stall the others for torch's
default 30 minutes and then fail with a message that names nobody. Here every collective has
the timeout `train.collective_timeout_s`; before each one a process records in the job's store
how many collectives it has entered (and which), so that the process that times out can name
the ranks that never arrived and where they were last seen (`CollectiveTimeoutError`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

T = TypeVar("T")
STORE_PREFIX = "pairuni/progress/"
HEARTBEAT_S = 2.0


class CollectiveTimeoutError(RuntimeError):
    """A collective that failed or timed out; the message names the ranks that did not arrive."""


class Collective:
    """Rank, world size, device and the reductions of one process of a (possibly single) job."""

    def __init__(self, cpu: bool = False, timeout_s: float = 600.0) -> None:
        from accelerate import Accelerator, InitProcessGroupKwargs

        timeout = datetime.timedelta(seconds=timeout_s)
        self.accelerator: Any = Accelerator(
            cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)]
        )
        self.rank = int(self.accelerator.process_index)
        self.world_size = int(self.accelerator.num_processes)
        self.is_main = bool(self.accelerator.is_main_process)
        self.timeout_s = timeout_s
        self.entered = 0  # collectives this process has entered
        self.completed = 0  # ... and come out of
        self.stage = "start"  # what the trainer is doing (named in timeout messages)
        self._store = self._job_store() if self.world_size > 1 else None

    def _job_store(self) -> Any:
        """The key-value store every process of the job reaches (torchrun's or the process
        group's); None where there is none."""
        try:
            from torch.distributed import distributed_c10d

            return distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError, ValueError):
            return None

    # ------------------------------------------------------------------ progress and diagnosis

    def _mark(self, op: str) -> None:
        self.entered += 1
        self._publish(op)

    def _publish(self, op: str) -> None:
        if self._store is None:
            return
        record = {
            "entered": self.entered,
            "completed": self.completed,
            "op": op,
            "stage": self.stage,
            "time": time.time(),
        }
        with contextlib.suppress(RuntimeError):
            self._store.set(f"{STORE_PREFIX}{self.rank}", json.dumps(record))

    def _peer_records(self) -> dict[int, dict[str, Any] | None]:
        """Every other rank's last published progress (None: it published nothing, or the
        store did not answer within a few seconds)."""
        found: dict[int, dict[str, Any] | None] = {}
        if self._store is None:
            return found
        with contextlib.suppress(RuntimeError, AttributeError):
            self._store.set_timeout(datetime.timedelta(seconds=5))
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            try:
                found[rank] = json.loads(self._store.get(f"{STORE_PREFIX}{rank}"))
            except (RuntimeError, ValueError):
                found[rank] = None
        return found

    def diagnose(self, op: str, error: BaseException) -> CollectiveTimeoutError:
        """The error to raise when collective `op` failed: who did not arrive, and where they
        were last seen."""
        behind = [
            who
            for rank, record in self._peer_records().items()
            if (who := self._describe_peer(rank, record, time.time())) is not None
        ]
        waited = f"rank {self.rank} waited in collective #{self.entered} ({op} during {self.stage})"
        if behind:
            who = "; ".join(behind)
            cause = f"{who} stopped answering: {waited} for train.collective_timeout_s="
        else:
            cause = f"a collective failed: {waited}, train.collective_timeout_s="
        return CollectiveTimeoutError(
            f"{cause}{self.timeout_s:g} s and got {type(error).__name__}: "
            f"{str(error).strip()[:300]}. A stopped process (SIGSTOP, a hung device, a "
            "debugger) or one that died stops the job; if a step can legitimately take longer "
            "on one process, raise train.collective_timeout_s"
        )

    def _describe_peer(self, rank: int, record: dict[str, Any] | None, now: float) -> str | None:
        """Where a peer was last seen, if it has not come out of the collective this process
        waits in (None: it has, so it is not the one holding the job up). A peer stopped
        INSIDE that collective (it published entering it, then froze before its share was
        sent) counts too: comparing entries alone would miss it."""
        if record is None:
            return f"rank {rank} (its progress could not be read)"
        completed = int(record.get("completed", record["entered"] - 1))
        if completed >= self.entered:
            return None
        age = now - float(record["time"])
        where = "inside" if record["entered"] >= self.entered else "entering"
        return (
            f"rank {rank} (last seen {age:.0f} s ago {where} collective "
            f"#{record['entered']}, {record['op']} during {record['stage']})"
        )

    def _collective(self, op: str, call: Callable[[], T]) -> T:
        self._mark(op)
        try:
            result = call()
        except RuntimeError as err:  # torch's DistBackendError / gloo's timeouts
            raise self.diagnose(op, err) from err
        self.completed = self.entered
        self._publish(op)
        return result

    def close(self) -> None:
        """End the job's process group once every process got here. Left to the interpreter's
        exit, gloo's worker threads can be torn down in the wrong order and abort a process
        that finished its work ("terminate called without an active exception", exit -6)."""
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return
        self.barrier()
        self.accelerator.end_training()

    def run_on_main(self, stage: str, work: Callable[[], T]) -> T | None:
        """`work()` on the main process (an evaluation) while the others wait for it however
        long it takes, as long as the main process's heartbeat is alive: a long evaluation is
        not cut by the collective timeout, a stopped main process still is. Returns work's
        result on the main process, None on the others."""
        self.stage = stage
        if self.world_size == 1 or self._store is None:
            result = work() if self.is_main else None
            self.barrier()
            return result
        self._mark(f"main-only {stage}")
        done_key = f"pairuni/done/{self.entered}"
        if not self.is_main:
            self._wait_for_main(done_key, stage)
            self.completed = self.entered
            self._publish(f"main-only {stage}")
            return None
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop, stage), daemon=True)
        beat.start()
        outcome = "failed"
        try:
            result = work()
            outcome = "ok"
            self.completed = self.entered
            return result
        finally:
            stop.set()
            beat.join()
            self._publish(f"main-only {stage}")
            self._store.set(done_key, outcome)

    def _heartbeat(self, stop: threading.Event, stage: str) -> None:
        # a few beats per timeout: at one beat per timeout, any delay of a beat (a loaded
        # machine) made the waiting processes give up on a main process that was alive
        interval = min(HEARTBEAT_S, self.timeout_s / 4)
        while not stop.wait(interval):
            self._publish(f"main-only {stage}")

    def _wait_for_main(self, done_key: str, stage: str) -> None:
        while True:
            try:
                if self._store.check([done_key]):
                    if self._store.get(done_key) != b"ok":
                        raise CollectiveTimeoutError(
                            f"the main process (rank 0) failed during {stage}; its own error "
                            "says why"
                        )
                    return
            except RuntimeError as err:
                raise self.diagnose(f"waiting for {stage}", err) from err
            record = self._peer_records().get(0)
            age = time.time() - float(record["time"]) if record else 0.0
            if age > self.timeout_s:
                raise self.diagnose(
                    f"waiting for {stage}", TimeoutError(f"no heartbeat for {age:.0f} s")
                )
            time.sleep(0.5)

    @property
    def device(self) -> torch.device:
        return torch.device(self.accelerator.device)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate each process's (N_r, ...) tensor along dim 0, in rank order."""
        if self.world_size == 1:
            return tensor
        local = tensor.to(self.device).contiguous()
        return self._collective("gather", lambda: self.accelerator.gather(local)).to(tensor.device)

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Element-wise `sum`, `min` or `max` over processes (a new tensor)."""
        if self.world_size == 1:
            return tensor.clone()
        ops = {
            "sum": torch.distributed.ReduceOp.SUM,
            "min": torch.distributed.ReduceOp.MIN,
            "max": torch.distributed.ReduceOp.MAX,
        }
        out = tensor.detach().to(self.device).clone()
        self._collective(f"all_reduce {op}", lambda: torch.distributed.all_reduce(out, op=ops[op]))
        return out.to(tensor.device)

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum `.grad` over processes in place (parameters without a gradient get zeros)."""
        if self.world_size == 1:
            return
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            by_dtype.setdefault(param.grad.dtype, []).append(param)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            self._collective("gradient all_reduce", lambda f=flat: torch.distributed.all_reduce(f))
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def barrier(self) -> None:
        if self.world_size > 1:
            self._collective("barrier", self.accelerator.wait_for_everyone)

    def broadcast_object(self, value: Any) -> Any:
        """The main process's `value` on every process."""
        if self.world_size == 1:
            return value
        holder = [value]
        self._collective(
            "broadcast", lambda: torch.distributed.broadcast_object_list(holder, src=0)
        )
        return holder[0]
