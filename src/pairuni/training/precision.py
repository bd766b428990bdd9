"""Numeric precision of training: the compute dtype, where the master weights live, and an AdamW
whose updates survive bfloat16 weights (docs/training.md, "Precision and memory").

Why this exists: bfloat16 has 8 significant bits. A weight of 0.02 has a spacing (ulp) of
1.2e-4 there, so an AdamW step of ~lr = 1e-6 (the paper's learning rate) is below half an ulp
and rounds away: plain AdamW on bf16 weights leaves ~98 % of the elements untouched. Two cures:

- float32 master weights (the default): the trainable parameters are float32, the forward and
  backward passes run under bfloat16 autocast. 16 bytes per trainable parameter.
- bfloat16 weights with a compensated update (`train.master_weights: bf16`): `CompensatedAdamW`
  computes the AdamW step in float32 from float32 moments and either keeps each weight's rounding
  error in a bfloat16 compensation buffer (Kahan-style, `kahan`: the weight plus its buffer is the
  master value, 14 bytes per parameter) or rounds stochastically (`stochastic_rounding`: unbiased
  in expectation, 12 bytes per parameter).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch

from pairuni.training.config import Bf16Update, Precision


def compute_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The dtype matmuls run in: `auto` is bfloat16 on a GPU that supports it, else float32 (a
    CPU without bf16 units runs bf16 autocast slower than float32)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def autocast(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on `device`, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def stochastic_round_to_bf16(
    values: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """float32 -> bfloat16, rounding up with probability equal to the distance to the lower
    neighbour (in units of the bf16 spacing), so that E[result] = values.

    bfloat16 is the top 16 bits of a float32; adding 16 random low bits to the magnitude and
    truncating rounds away from zero with exactly that probability (the sign bit is untouched).
    """
    bits = values.float().contiguous().view(torch.int32)
    noise = torch.randint(
        0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator
    )
    rounded = (bits + noise) & -65536  # clear the low 16 bits (0xFFFF0000 as int32)
    # inf and nan keep their bits: the noise could turn an inf into a nan
    finite = torch.isfinite(values)
    rounded = torch.where(finite, rounded, bits)
    return rounded.view(torch.float32).to(torch.bfloat16)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2 parameters), else the tensor itself."""
    local = getattr(tensor, "_local_tensor", None)
    return local if local is not None else tensor


class CompensatedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, torch.optim.AdamW's formula) for low-precision weights.

    The moments are float32 whatever the weight's dtype (a bfloat16 second moment with
    beta2 = 0.999 stops updating: its increment is below its own rounding). The step is computed
    in float32 from the weight's float32 master value, then stored:

    - float32 weights: as is (bitwise what torch.optim.AdamW computes, single-tensor path);
    - `kahan`: rounded to the weight's dtype, the rounding error kept in `state["compensation"]`
      (same dtype), so master = weight + compensation loses nothing between steps;
    - `stochastic_rounding`: rounded stochastically (bfloat16 only), seeded from
      (seed, step, parameter index) so that a resumed run rounds exactly as the uninterrupted one.

    Works with FSDP2 (DTensor) parameters and as `ZeroRedundancyOptimizer`'s optimizer class.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        rounding: Bf16Update = "kahan",
        seed: int = 0,
    ) -> None:
        if rounding not in ("kahan", "stochastic_rounding"):
            raise ValueError(f"rounding must be kahan or stochastic_rounding, got {rounding!r}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.rounding = rounding
        self.seed = seed

    def _init_state(self, param: torch.Tensor) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
            if self.rounding == "kahan" and param.dtype != torch.float32:
                state["compensation"] = torch.zeros_like(param)
        return state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                index += 1
                if param.grad is None:
                    continue
                state = self._init_state(param)
                state["step"] += 1
                step = float(state["step"])
                master = self._master(param, state)
                if group["weight_decay"]:
                    master.mul_(1 - group["lr"] * group["weight_decay"])
                grad = param.grad.float()
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"] / (1 - beta1**step)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
                master.addcdiv_(state["exp_avg"], denom, value=-step_size)
                self._store(param, master, state, int(step), index)
        return loss

    def _master(self, param: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """The float32 value the update applies to (a copy for low-precision weights)."""
        if param.dtype == torch.float32:
            return param
        master = param.float()
        if "compensation" in state:
            master.add_(state["compensation"].float())
        return master

    def _store(
        self,
        param: torch.Tensor,
        master: torch.Tensor,
        state: dict[str, Any],
        step: int,
        index: int,
    ) -> None:
        if param.dtype == torch.float32:
            return  # updated in place
        if "compensation" in state:
            param.copy_(master)  # round to nearest
            state["compensation"].copy_(master - param.float())
            return
        if param.dtype != torch.bfloat16:
            raise TypeError(
                f"stochastic rounding is implemented for bfloat16 weights, got {param.dtype}; "
                "use train.bf16_update: kahan"
            )
        local = _local(param)
        generator = torch.Generator(device=local.device)
        generator.manual_seed(hash((self.seed, step, index)) % 2**63)
        local.copy_(stochastic_round_to_bf16(_local(master), generator))


def master_value(param: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The float32 value a parameter stands for: itself, plus its Kahan compensation if any."""
    value = param.detach().float()
    comp = optimizer.state.get(param, {}).get("compensation")
    return value + comp.float() if comp is not None else value
