"""Sharded training: `train.sharding` = `none`, `zero1` or `fsdp` (docs/distributed.md).

    none   every process holds the model, its gradients and the AdamW state; the trainer sums the
           gradients itself (`Collective.all_reduce_grads`).
    zero1  the same, but the AdamW state is partitioned over the processes with torch's
           `ZeroRedundancyOptimizer`: each process steps its share of the parameters and
           broadcasts them (ZeRO stage 1).
    fsdp   PyTorch FSDP2 (`fully_shard`): parameters, gradients and AdamW state are sharded
           (ZeRO stage 3). Gradients are reduce-scattered by FSDP (as a SUM: every micro-batch
           loss is already a share of the global loss), so the trainer's all-reduce is skipped.

A policy calls sub-modules directly (for Janus: the language model, `lm_head`, the input
embeddings, the generation head...) rather than one `forward`, so every module it calls is its own
FSDP unit (the policy lists them: `TrainablePolicy.fsdp_layout`) and the root (the whole model) is
initialised explicitly: FSDP only gathers a unit's parameters in that unit's own forward hook.

Checkpoints have the same format in every mode: the full model in Hugging Face format (gathered on
rank 0 under FSDP) and the full AdamW state keyed by parameter index, as `optimizer.state_dict()`
of an unsharded AdamW writes it. A run can therefore resume under another mode or process count.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch

from pairuni.training.distributed import Collective

if TYPE_CHECKING:
    from pairuni.policy.base import FsdpLayout, TrainablePolicy

logger = logging.getLogger(__name__)

Sharding = Literal["none", "zero1", "fsdp"]


class ShardingError(ValueError):
    """A sharding mode that cannot run with this config or policy; the message says the fix."""


def incompatibilities(
    sharding: Sharding, trainable: list[str], grad_agreement_every: int
) -> list[str]:
    """Why `sharding` cannot run with these settings (empty when it can), each with its fix."""
    problems = []
    if sharding == "fsdp" and "vqmodel" in trainable:
        problems.append(
            "model.trainable contains vqmodel, which the policy calls through "
            "decode_image_tokens (not a forward) so FSDP cannot gather it; remove vqmodel from "
            "model.trainable or use train.sharding: zero1"
        )
    if sharding == "fsdp" and grad_agreement_every > 0:
        problems.append(
            "logging.grad_agreement_every needs each task's full gradient, which FSDP keeps "
            "only as reduce-scattered shards; set logging.grad_agreement_every: 0 or use "
            "train.sharding: zero1 / none"
        )
    return problems


def check_launcher(requested: Sharding, env: Mapping[str, str] | None = None) -> None:
    """Refuse an `accelerate launch` config whose FSDP / DeepSpeed plugin would be silently
    ignored: pairuni shards the model itself (the policy calls sub-modules, so the model is never
    passed to `accelerator.prepare`)."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ShardingError(
            "the accelerate config enables DeepSpeed, which pairuni does not use "
            "(docs/distributed.md); launch with a MULTI_GPU config such as "
            "configs/accelerate/zero1-8gpu.yaml and set train.sharding: zero1 (ZeRO-1) or fsdp "
            "(ZeRO-3)"
        )
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true" and requested != "fsdp":
        raise ShardingError(
            f"the accelerate config enables FSDP but train.sharding is {requested}; pairuni "
            "applies FSDP itself: set train.sharding: fsdp (the accelerate fsdp_config is "
            "ignored) or launch with a MULTI_GPU config such as configs/accelerate/ddp-8gpu.yaml"
        )


def _ignore_collective_forwards(collective: bool) -> None:
    """The `FsdpLayout.collective_forwards` of a policy that needs no telling (or no FSDP)."""


class ShardingPlan:
    """One run's sharding: wraps the policy, builds the optimiser, gathers state for checkpoints.

    With one process every mode runs unsharded (`effective` is `none`): there is nothing to shard
    over, and the result is the same.
    """

    def __init__(self, requested: Sharding, dist: Collective) -> None:
        check_launcher(requested)
        self.requested = requested
        self.dist = dist
        self.effective: Sharding = requested
        if requested != "none" and dist.world_size == 1:
            logger.warning(
                "train.sharding: %s with a single process shards nothing; running unsharded "
                "(launch with torchrun / accelerate launch on several GPUs to shard)",
                requested,
            )
            self.effective = "none"
        self.model: torch.nn.Module | None = None
        self.units: list[Any] = []
        self.collective_forwards: Callable[[bool], None] = _ignore_collective_forwards

    @property
    def all_reduces_grads(self) -> bool:
        """Whether the trainer must sum the gradients itself (FSDP reduce-scatters them)."""
        return self.effective != "fsdp"

    # ------------------------------------------------------------------ FSDP

    def wrap(self, policy: TrainablePolicy, trainable: list[str]) -> None:
        """Apply FSDP2 to the policy's module in place (no-op unless sharding is fsdp)."""
        if self.effective != "fsdp":
            return
        try:
            layout = policy.fsdp_layout(trainable)
        except NotImplementedError as err:
            raise ShardingError(
                f"train.sharding: fsdp cannot shard {type(policy).__name__} ({err}); use "
                "train.sharding: zero1 or none"
            ) from err
        self.model = policy.module
        self.units = shard_module(self.model, layout, self.dist)
        self.collective_forwards = layout.collective_forwards or _ignore_collective_forwards
        self.collective_forwards(True)

    @contextlib.contextmanager
    def gathered_for_rollout(self, enabled: bool = True) -> Iterator[None]:
        """Keep every FSDP unit's parameters gathered from its first forward until the block
        ends, instead of re-gathering each decoder layer at every generated token (one
        all-gather per unit per rollout call instead of one per token); reshard afterwards."""
        if self.effective != "fsdp" or not enabled:
            yield
            return
        for unit in self.units:
            unit.set_reshard_after_forward(False, recurse=False)
        # gathered once, the weights make no further collective: early stops are free again
        self.collective_forwards(False)
        try:
            yield
        finally:
            self.collective_forwards(True)
            for unit in self.units:
                unit.reshard()
                unit.set_reshard_after_forward(True, recurse=False)

    def full_model_state(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP the full state dict on CPU on rank 0 (collective: every rank calls it),
        None elsewhere and in the other modes (the policy saves its own weights)."""
        if self.effective != "fsdp":
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        assert self.model is not None
        state = get_model_state_dict(self.model, options=options)
        if not self.dist.is_main:
            return None
        # The gather returns a tied parameter (lm_head = input embeddings) once per name, as two
        # tensors; sharing one lets save_pretrained drop the duplicate as it does unsharded.
        first: dict[int, str] = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            if name in state:
                state[name] = state[first.setdefault(id(param), name)]
        return state

    # ------------------------------------------------------------------ optimiser

    def build_optimizer(
        self,
        groups: list[dict[str, Any]],
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
        **adamw: Any,
    ) -> torch.optim.Optimizer:
        """`optimizer_class` (AdamW) over `groups`; under zero1 partitioned over the processes."""
        if self.effective == "zero1":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(groups, optimizer_class=optimizer_class, **adamw)
        return optimizer_class(groups, **adamw)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The full AdamW state in `torch.optim.AdamW.state_dict()` format (parameter indices in
        group order) on rank 0, None on the other ranks. Collective under zero1 and fsdp."""
        if self.effective == "zero1":
            optimizer.consolidate_state_dict(to=0)  # type: ignore[attr-defined]
            return optimizer.state_dict() if self.dist.is_main else None
        if self.effective == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_optimizer_state_dict(self.model, optimizer, options=options)
            return by_index(state) if self.dist.is_main else None
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a full state written by `optimizer_state` (every rank passes the same dict)."""
        if self.effective != "fsdp":
            # ZeroRedundancyOptimizer.load_state_dict keeps its own partition of a full state
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        assert self.model is not None
        names = {id(p): name for name, p in self.model.named_parameters()}
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        set_optimizer_state_dict(
            self.model,
            optimizer,
            by_name(state, order),
            options=StateDictOptions(full_state_dict=True),
        )


def by_index(state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state dict (torch.distributed.checkpoint's full format) -> the
    index-keyed one of `Optimizer.state_dict()`: parameters numbered in group order."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**group, "params": ids})
    return {"state": {index[k]: v for k, v in state["state"].items()}, "param_groups": groups}


def by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of `by_index`: parameter i of the index-keyed dict is `names[i]`."""
    count = sum(len(group["params"]) for group in state["param_groups"])
    if count != len(names):
        raise ShardingError(
            f"the checkpoint's optimizer state holds {count} parameters but the model trains "
            f"{len(names)}; resume with the same model.trainable as the run that wrote it"
        )
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def shard_module(model: torch.nn.Module, layout: FsdpLayout, dist: Collective) -> list[Any]:
    """`fully_shard` every unit of `layout` in order, then the whole model as the root (with the
    `layout.replicated` modules' parameters ignored). Gradients are reduced as a SUM in float32.
    Returns the units, root last.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    # No param_dtype: each parameter is gathered in its storage dtype (float32 master weights,
    # bf16 frozen ones) and the trainer's autocast does the bf16 compute, exactly as unsharded.
    # reduce_dtype float32 so that gradients are summed over processes without bf16 rounding.
    mp = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)

    def shard(modules: Any, **kwargs: Any) -> Any:
        return fully_shard(modules, mesh=mesh, mp_policy=mp, **kwargs)

    units: list[Any] = []
    for unit in layout.units:
        if isinstance(unit, list):
            units += shard(unit)  # several modules, one FSDP state (returns the list)
        else:
            units.append(shard(unit))
    ignored: set[torch.nn.Parameter] = set()
    for module in layout.replicated:
        ignored |= set(module.parameters())
    units.append(shard(model, ignored_params=ignored))
    # The root's forward never runs (the policy calls units directly), so make it the root now;
    # otherwise the first unit called would claim to be root and the next would fail. FSDP2 has
    # no public call for this (torch 2.13).
    model._get_fsdp_state()._lazy_init()  # type: ignore[operator]
    for unit in units:
        # every micro-batch loss is a share of the global loss: gradients must be SUMMED.
        # force_sum avoids ReduceOp.PREMUL_SUM, which gloo lacks.
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return units


def grad_norm_value(norm: torch.Tensor) -> float:
    """`clip_grad_norm_`'s result as a float (a replicated DTensor under FSDP)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)
