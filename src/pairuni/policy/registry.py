"""Policy backends by name: the one place that knows which classes exist.

`model.backend: auto` (the default) reads the checkpoint's config.json (`model_type: janus` ->
Janus, `llada` -> Lumina-DiMOO); a LoRA adapter folder (no config.json of its own) has the
backend of the base model it names.
Adding a backend means a class implementing `policy.base.UnifiedPolicy` (and `TrainablePolicy`
for `pairuni train`) and one entry here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairuni.importing import import_object

if TYPE_CHECKING:
    from pairuni.policy.base import UnifiedPolicy
    from pairuni.policy.config import ModelConfig, RolloutConfig

BACKENDS = {
    "janus": "pairuni.policy.janus:JanusPolicy",
    "dimoo": "pairuni.policy.dimoo.policy:DimooPolicy",
}
"""backend name -> "module:class" (imported on use: `pairuni --help` stays instant)."""


def resolve_backend(backend: str, path: str | Path | None) -> str:
    """The backend of `model.backend` (`auto`: from the checkpoint folder)."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(
                f"unknown model.backend {backend!r}; valid: auto, {', '.join(BACKENDS)}"
            )
        return backend
    if path is None:
        return "janus"
    from pairuni.policy.dimoo.model import backend_of
    from pairuni.policy.lora import adapter_base, is_adapter_dir

    if is_adapter_dir(path):  # a LoRA checkpoint: the backend of the model it adapts
        base = adapter_base(path)
        return (backend_of(base) or "janus") if base.is_dir() else "janus"
    return backend_of(path) or "janus"


LOAD_ERRORS = (
    "pairuni.policy.janus:CheckpointError",
    "pairuni.policy.lora:LoraError",
    "pairuni.policy.dimoo.model:DimooCheckpointError",
    "pairuni.policy.base:UnsupportedSettingError",
)
"""The exceptions a backend raises for a checkpoint it cannot load (a missing file or key, a
mismatched adapter): their messages name the file and the fix, so commands print them without
a traceback."""


def load_errors() -> tuple[type[Exception], ...]:
    """Every backend's checkpoint-loading exception classes (`LOAD_ERRORS`), imported."""
    return tuple(import_object(entry) for entry in LOAD_ERRORS)


def policy_class(backend: str) -> type:
    return import_object(BACKENDS[backend])


def load_policy(
    path: str | Path | None,
    model_config: ModelConfig,
    rollout_config: RolloutConfig | None = None,
    *,
    for_training: bool = False,
) -> UnifiedPolicy:
    """Load the checkpoint `path` (else `model_config.path`) with its backend's class."""
    path = path if path is not None else model_config.path
    backend = resolve_backend(model_config.backend, path)
    cls = policy_class(backend)
    return cls.load(path, model_config, rollout_config, for_training=for_training)


CHECKERS = {
    "janus": "pairuni.policy.janus:check_checkpoint_dir",
    "dimoo": "pairuni.policy.dimoo.model:check_checkpoint_dir",
}
"""backend name -> "module:function(path)" that checks a checkpoint folder without loading its
weights (raising one of `LOAD_ERRORS` that names the file and the fix)."""


def check_checkpoint(backend: str, path: str | Path) -> None:
    """Check the checkpoint `path` with its backend's checker (`backend` may be `auto`), so that
    a long command fails before it starts rather than after."""
    import_object(CHECKERS[resolve_backend(backend, path)])(path)


TINY_WRITERS = {
    "janus": "pairuni.policy.tiny:build_tiny_janus",
    "dimoo": "pairuni.policy.dimoo.tiny:write_tiny_dimoo",
}
"""backend name -> "module:function" that writes a tiny random checkpoint in the layout the
backend's class loads (`function(out_dir, **options) -> directory`), for offline tries and tests."""


def write_tiny(backend: str, out_dir: str | Path, **options: Any) -> Path:
    """Write `backend`'s tiny random checkpoint to `out_dir`; returns its directory."""
    if backend not in TINY_WRITERS:
        raise ValueError(
            f"no tiny checkpoint writer for backend {backend!r}; valid: {', '.join(TINY_WRITERS)}"
        )
    return Path(import_object(TINY_WRITERS[backend])(out_dir, **options))
