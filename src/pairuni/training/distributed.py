"""The few collective operations the trainer needs, over accelerate's process state.

The trainer does not wrap the model in DDP: the policy calls sub-modules (language model, heads)
directly, which DDP's forward hooks would not see. Instead every micro-batch loss is already a
share of the GLOBAL loss (its normalisers count the whole step on all processes), so the global
gradient is the plain SUM of the processes' accumulated gradients: `all_reduce_grads` does that
once per optimiser update (one flat buffer per dtype, like DDP's buckets); under
`train.sharding: fsdp` FSDP reduce-scatters them instead (`sharding.py`). With one process every
operation here is the identity.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class Collective:
    """Rank, world size, device and the reductions of one process of a (possibly single) job."""

    def __init__(self, cpu: bool = False) -> None:
        from accelerate import Accelerator

        self.accelerator: Any = Accelerator(cpu=cpu)
        self.rank = int(self.accelerator.process_index)
        self.world_size = int(self.accelerator.num_processes)
        self.is_main = bool(self.accelerator.is_main_process)

    @property
    def device(self) -> torch.device:
        return torch.device(self.accelerator.device)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate each process's (N_r, ...) tensor along dim 0, in rank order."""
        if self.world_size == 1:
            return tensor
        return self.accelerator.gather(tensor.to(self.device).contiguous()).to(tensor.device)

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
        torch.distributed.all_reduce(out, op=ops[op])
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
            torch.distributed.all_reduce(flat)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    def broadcast_object(self, value: Any) -> Any:
        """The main process's `value` on every process."""
        if self.world_size == 1:
            return value
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]
