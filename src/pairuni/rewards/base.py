"""The reward protocol, the registry of rewards by name, and their weighted combination.

Every reward has one signature (TRL's, see docs/rewards.md):

    fn(prompts: list[str], completions: list[str] | list[PIL.Image.Image], **columns)
        -> list[float | None]

`columns` are the dataset's other columns, each a list aligned with `prompts` (`und_options`,
`und_answer`, `category`, ...). `None` means "not applicable to this sample": it is excluded
from the weighted sum and from the reward's metrics. A reward is registered under a name with
the task whose outputs it scores (`understanding`: text answers, `generation`: images, `any`).

A registered object is either a function (its keyword-only parameters are the config `kwargs`,
bound once) or a class (instantiated once with the config `kwargs`; the instance is the reward,
so it can hold a model that it loads lazily).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import logging
import math
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Task = Literal["understanding", "generation"]
RewardTask = Literal["understanding", "generation", "any"]
TASKS: tuple[Task, ...] = ("understanding", "generation")
OnError = Literal["raise", "nan"]


class RewardFn(Protocol):
    """What the trainer calls: `N` prompts, `N` outputs, aligned columns -> `N` rewards."""

    def __call__(
        self, prompts: list[str], completions: list[Any], **columns: list[Any]
    ) -> list[float | None]: ...


class RewardError(RuntimeError):
    """A reward that cannot be built or that failed on a batch; the message names it."""


@dataclass(frozen=True)
class RegisteredReward:
    """One registry entry: a function or a class, and the task whose outputs it scores."""

    name: str
    task: RewardTask
    target: Callable[..., Any]
    description: str


_REGISTRY: dict[str, RegisteredReward] = {}
_BUILTINS_LOADED = False


def register_reward(
    name: str, task: RewardTask
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a reward function or class under `name` for `task`."""
    if task not in ("understanding", "generation", "any"):
        raise ValueError(f"reward {name!r}: task must be understanding, generation or any")

    def decorate(target: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].target is not target:
            raise ValueError(f"a reward named {name!r} is already registered; pick another name")
        doc = inspect.getdoc(target) or ""
        _REGISTRY[name] = RegisteredReward(name, task, target, doc.split("\n\n")[0])
        return target

    return decorate


BUILTIN_REWARD_MODULES = (
    "pairuni.rewards.understanding",
    "pairuni.rewards.generation",
    "pairuni.rewards.http_client",
    "pairuni.rewards.toy",
    "pairuni.shapes.rewards",
)
"""The modules whose `register_reward` decorators register the built-in rewards, named by
module path: the ShapesWorld rewards live with the miniature (`pairuni.shapes`), which the
reward core never imports by name."""


def load_builtin_rewards() -> None:
    """Import the modules that register the built-in rewards (they import torch lazily)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for module in BUILTIN_REWARD_MODULES:
        importlib.import_module(module)


def registered_rewards() -> dict[str, RegisteredReward]:
    """Every registered reward by name, built-ins included."""
    load_builtin_rewards()
    return dict(_REGISTRY)


def get_reward(name: str) -> RegisteredReward:
    """The registry entry of `name`; a clear error listing the registered names otherwise."""
    registry = registered_rewards()
    if name not in registry:
        known = ", ".join(sorted(registry))
        raise KeyError(
            f"unknown reward {name!r}; registered rewards: {known}. A reward of your own is "
            "given as `path/to/file.py:function`"
        )
    return registry[name]


def is_file_spec(name: str) -> bool:
    """True for `path/to/file.py:function` (a user reward), false for a registered name."""
    path, sep, func = name.rpartition(":")
    return bool(sep) and path.endswith(".py") and func.isidentifier()


def load_reward(spec: str) -> Callable[..., Any]:
    """Import `function` from `path/to/file.py:function` and check it can be called as a reward.

    The file is imported as a fresh module each time (not cached in sys.modules under a
    package name), so two files may both be called `reward.py`.
    """
    if not is_file_spec(spec):
        raise RewardError(
            f"reward spec {spec!r}: expected `path/to/file.py:function` (a .py file, a colon and "
            "a Python identifier)"
        )
    path_text, _, func_name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RewardError(f"reward spec {spec!r}: file {path} does not exist")
    module_name = f"pairuni_user_reward_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardError(f"reward spec {spec!r}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise RewardError(f"reward spec {spec!r}: importing {path} failed: {err!r}") from err
    target = getattr(module, func_name, None)
    if target is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and n[0] != "_")
        raise RewardError(
            f"reward spec {spec!r}: {path} has no {func_name!r}; callables there: "
            f"{', '.join(public) or 'none'}"
        )
    check_reward_signature(target, spec)
    return target


def check_reward_signature(target: Any, where: str) -> None:
    """A reward (or a class whose instances are rewards) must accept prompts, completions and
    arbitrary column keywords."""
    if not callable(target):
        raise RewardError(f"reward {where!r} is a {type(target).__name__}, not a callable")
    func = target.__call__ if inspect.isclass(target) else target
    params = list(inspect.signature(func).parameters.values())
    if inspect.isclass(target):
        params = params[1:]  # self
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    takes_columns = any(p.kind is p.VAR_KEYWORD for p in params)
    if len(positional) < 2 or not takes_columns:
        raise RewardError(
            f"reward {where!r} has the signature {inspect.signature(func)}; a reward must be "
            "`def fn(prompts, completions, **columns) -> list[float | None]`"
        )


def bindable_kwargs(target: Callable[..., Any]) -> set[str] | None:
    """Names the config may set for a reward: a class's constructor parameters, or a function's
    parameters after (prompts, completions). None when a class takes arbitrary keywords."""
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if inspect.isclass(target):
        params = list(inspect.signature(target.__init__).parameters.values())[1:]
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
    else:
        params = list(inspect.signature(target).parameters.values())[2:]
    return {p.name for p in params if p.kind in keyword_kinds}


def build_reward(name: str, kwargs: Mapping[str, Any] | None = None) -> RewardFn:
    """A ready-to-call reward from a registered name or a `file.py:function` spec plus kwargs."""
    kwargs = dict(kwargs or {})
    target = load_reward(name) if is_file_spec(name) else get_reward(name).target
    allowed = bindable_kwargs(target)
    if allowed is not None:
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise RewardError(
                f"reward {name!r}: unknown kwargs {unknown}; it accepts {sorted(allowed) or 'none'}"
            )
    if inspect.isclass(target):
        try:
            return target(**kwargs)
        except (TypeError, ValueError) as err:
            raise RewardError(
                f"reward {name!r}: cannot be built from kwargs {kwargs}: {err}"
            ) from err
    return functools.partial(target, **kwargs) if kwargs else target


@dataclass
class BuiltReward:
    """One reward of a RewardSet: a name for logs and metrics, its weight and the callable."""

    name: str
    weight: float
    fn: RewardFn


class RewardTimeoutError(RewardError):
    """A reward call that did not return within `rewards.timeout_s`."""


def call_reward(
    reward: BuiltReward,
    prompts: list[str],
    outputs: list[Any],
    columns: Mapping[str, list[Any]],
    timeout_s: float | None = None,
) -> list[float | None]:
    """Call one reward (awaiting it when it is async) and check what it returned. With a
    timeout the call runs in a worker thread: a reward that never returns raises
    `RewardTimeoutError` after `timeout_s` (its thread is left behind, as a daemon, since
    Python cannot stop a thread)."""

    def call() -> Any:
        result = reward.fn(list(prompts), list(outputs), **columns)
        return _run_coroutine(result) if inspect.isawaitable(result) else result

    result = call() if timeout_s is None else _call_with_timeout(reward.name, call, timeout_s)
    return check_reward_values(reward.name, result, len(prompts))


def _call_with_timeout(name: str, call: Callable[[], Any], timeout_s: float) -> Any:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=run, name=f"reward-{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RewardTimeoutError(
            f"reward {name!r} did not return within rewards.timeout_s={timeout_s:g} s (a reward "
            "server that hangs, a model stuck on its device); raise rewards.timeout_s if it "
            "legitimately takes longer"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _run_coroutine(awaitable: Any) -> Any:
    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


def check_reward_values(name: str, values: Any, expected: int) -> list[float | None]:
    """A list of `expected` floats or Nones; anything else is an error naming the reward."""
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise RewardError(
            f"reward {name!r} returned a {type(values).__name__}; it must return a list of "
            f"{expected} floats or None"
        )
    if len(values) != expected:
        raise RewardError(
            f"reward {name!r} returned {len(values)} values for a batch of {expected}; it must "
            "return one float or None per completion"
        )
    checked: list[float | None] = []
    for index, value in enumerate(values):
        if value is None:
            checked.append(None)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RewardError(
                f"reward {name!r} returned {value!r} at index {index}; expected a float or None"
            ) from None
        if math.isinf(number):
            raise RewardError(
                f"reward {name!r} returned {number} at index {index}; a reward must be finite "
                "(return None, or NaN, for a sample it cannot score)"
            )
        checked.append(number)
    return checked


class RewardSet:
    """The weighted rewards of both tasks, built from config (`rewards.understanding` /
    `rewards.generation`: lists of {name, weight, kwargs}).

        total, per_reward, metrics = reward_set("generation", prompts, images, columns)

    total (N,): sum over rewards of weight * value, skipping None/NaN values (TRL's nansum); a
    sample whose every reward is None/NaN gets NaN, which the advantage code excludes.
    per_reward: name -> (N,) unweighted values, NaN where None. metrics: `rewards/{name}/mean`,
    `rewards/{name}/std` (over values that are not NaN), `rewards/{name}/none` (how many were
    None or NaN), `rewards/{name}/errors` (1 if it raised under on_reward_error="nan"), and
    `reward/{task}/mean|std` of the total.
    """

    def __init__(
        self,
        rewards: Mapping[Task, Sequence[BuiltReward]],
        on_reward_error: OnError = "raise",
        timeout_s: float | None = None,
    ) -> None:
        self.rewards: dict[Task, list[BuiltReward]] = {t: list(rewards.get(t, [])) for t in TASKS}
        self.on_reward_error = on_reward_error
        self.timeout_s = timeout_s
        self._warned_all_none: set[str] = set()
        for task, items in self.rewards.items():
            names = [r.name for r in items]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise RewardError(
                    f"rewards.{task} lists {duplicates} more than once; metrics are keyed by name"
                )

    @classmethod
    def from_config(cls, config: Any) -> RewardSet:
        """Build every reward of a `RewardsConfig` (models load lazily, on first call)."""
        built: dict[Task, list[BuiltReward]] = {}
        for task in TASKS:
            built[task] = []
            for index, spec in enumerate(getattr(config, task)):
                try:
                    fn = build_reward(spec.name, spec.kwargs)
                except RewardError as err:
                    raise RewardError(f"rewards.{task}[{index}]: {err}") from err
                built[task].append(BuiltReward(spec.key, spec.weight, fn))
        return cls(
            built,
            on_reward_error=config.on_reward_error,
            timeout_s=getattr(config, "timeout_s", None),
        )

    def check_ready(self) -> None:
        """Ask every reward that can tell (`check_health()`, e.g. the `http` reward) whether it
        is ready; a RewardError naming the task and reward otherwise. Called before the first
        rollout so that a server that is down fails the run at once."""
        for task, items in self.rewards.items():
            for reward in items:
                check = getattr(reward.fn, "check_health", None)
                if not callable(check):
                    continue
                try:
                    check()
                except RewardError as err:
                    raise RewardError(f"rewards.{task} {reward.name!r}: {err}") from err

    def __call__(
        self,
        task: Task,
        prompts: list[str],
        outputs: list[Any],
        columns: Mapping[str, list[Any]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """Score one task's batch. Shapes: total (N,), each per-reward tensor (N,), float32."""
        import torch

        if task not in self.rewards:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        columns = dict(columns or {})
        _check_batch(prompts, outputs, columns)
        n = len(prompts)
        per_reward: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        total = torch.zeros(n, dtype=torch.float32)
        any_value = torch.zeros(n, dtype=torch.bool)
        for reward in self.rewards[task]:
            values = self._score_one(task, reward, prompts, outputs, columns, metrics)
            tensor = torch.tensor(
                [math.nan if v is None else v for v in values], dtype=torch.float32
            )
            per_reward[reward.name] = tensor
            valid = ~torch.isnan(tensor)
            total = total + torch.where(valid, reward.weight * tensor, torch.zeros_like(tensor))
            any_value |= valid
            metrics.update(_summary(f"rewards/{reward.name}", tensor))
        total = torch.where(any_value, total, torch.full_like(total, math.nan))
        summary = _summary(f"reward/{task}", total)
        metrics.update({k: v for k, v in summary.items() if not k.endswith("/none")})
        return total, per_reward, metrics

    def _score_one(
        self,
        task: Task,
        reward: BuiltReward,
        prompts: list[str],
        outputs: list[Any],
        columns: Mapping[str, list[Any]],
        metrics: dict[str, float],
    ) -> list[float | None]:
        metrics[f"rewards/{reward.name}/errors"] = 0.0
        try:
            values = call_reward(reward, prompts, outputs, columns, self.timeout_s)
        except Exception as err:
            first = prompts[0][:80] if prompts else ""
            message = (
                f"reward {reward.name!r} failed on a {task} batch of {len(prompts)} samples "
                f"(first prompt: {first!r}): {type(err).__name__}: {err}"
            )
            if self.on_reward_error == "raise":
                raise RewardError(
                    message + "; set rewards.on_reward_error=nan to skip such batches"
                ) from err
            logger.warning("%s; its values are NaN for this batch", message)
            metrics[f"rewards/{reward.name}/errors"] = 1.0
            return [None] * len(prompts)
        if values and all(v is None for v in values) and reward.name not in self._warned_all_none:
            self._warned_all_none.add(reward.name)
            logger.warning(
                "reward %r returned None for all %d %s samples of a batch: it gives no signal "
                "there (is it the right reward for this data?); warned once, counted in "
                "rewards/%s/none",
                reward.name,
                len(values),
                task,
                reward.name,
            )
        nan_count = sum(1 for v in values if v is not None and math.isnan(v))
        if nan_count:
            logger.warning(
                "reward %r returned NaN for %d of %d %s samples; they are excluded like None",
                reward.name,
                nan_count,
                len(values),
                task,
            )
        return values


def _check_batch(prompts: list[str], outputs: list[Any], columns: Mapping[str, list[Any]]) -> None:
    n = len(prompts)
    if len(outputs) != n:
        raise ValueError(f"{len(outputs)} outputs for {n} prompts; they must be aligned")
    for key, column in columns.items():
        if len(column) != n:
            raise ValueError(f"column {key!r} has {len(column)} values for {n} prompts")


def _summary(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """mean / std (population, over non-NaN values; NaN when there are none) and NaN count."""
    import torch

    valid = values[~torch.isnan(values)]
    mean = valid.mean().item() if valid.numel() else math.nan
    std = valid.std(unbiased=False).item() if valid.numel() else math.nan
    return {
        f"{prefix}/mean": mean,
        f"{prefix}/std": std,
        f"{prefix}/none": float(values.numel() - valid.numel()),
    }
