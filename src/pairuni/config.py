"""The run configuration: pydantic sections loaded from YAML with dotted command-line overrides.

    cfg = load_config("configs/tiny.yaml", ["algo.num_generations_und=4"])

Unknown keys, wrong types and impossible combinations raise `ConfigError`, whose message names
the key, where it came from (the file or `--set`) and how to fix it.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import PydanticUndefined, to_jsonable_python

from pairuni.configbase import Section
from pairuni.eval.config import EvalConfig
from pairuni.pairing.config import PairingConfig
from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.rewards.config import RewardsConfig
from pairuni.rl.config import AlgoConfig
from pairuni.training.config import DataConfig, LoggingConfig, SFTConfig, TrainConfig


class PairUniConfig(Section):
    """The root of a pairuni config file: one key per section."""

    seed: int = 0
    """One seed for everything: data order, rollouts, initialisation of anything random."""

    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    """PairGRPO: advantages, pair weights, clipped surrogate, KL, loss aggregation."""

    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    """Rewards per task (names, weights, kwargs) and what to do when one fails."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The policy checkpoint: path, dtype, device, trainable modules, gradient checkpointing."""

    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """Sampling of understanding answers and images (temperatures, CFG, max new tokens)."""

    data: DataConfig = Field(default_factory=DataConfig)
    """The pair file and the data mode of each step's batch (the paper's data ablations)."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    """The training loop: batch sizes, AdamW, schedule, precision, checkpoints."""

    sft: SFTConfig = Field(default_factory=SFTConfig)
    """`pairuni sft`: the two tasks' loss weights, unconditional-prompt share, answer format."""

    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Metrics sinks, sample image grids, gradient agreement."""

    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Benchmarks (`pairuni eval`): data directories, GenEval detector, WISE judge, run settings."""

    pairing: PairingConfig = Field(default_factory=PairingConfig)
    """Building the PairUG file (`pairuni pairs`): sources, completion, features, selection."""

    @model_validator(mode="after")
    def _check_trainable_tasks(self) -> PairUniConfig:
        mode, algo = self.data.mode, self.algo
        if mode == "understanding_only" and algo.und_loss_weight == 0:
            raise ValueError(
                "data.mode=understanding_only with algo.und_loss_weight=0 trains nothing; "
                "set algo.und_loss_weight above 0 or pick another data.mode"
            )
        if mode == "generation_only" and algo.gen_loss_weight == 0:
            raise ValueError(
                "data.mode=generation_only with algo.gen_loss_weight=0 trains nothing; "
                "set algo.gen_loss_weight above 0 or pick another data.mode"
            )
        return self


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key, where it came from, and the fix."""


SET_ORIGIN = "--set"


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    schema: type[BaseModel] = PairUniConfig,
) -> Any:
    """Build a config from an optional YAML file, then apply `key.sub=value` overrides in order.

    Override values are parsed as YAML, so `8` is an int, `true` a bool, `[a, b]` a list and
    `null` None.
    """
    raw: dict[str, Any] = {}
    source = "the defaults"
    if path is not None:
        source = str(path)
        raw = read_yaml_mapping(Path(path))
    set_keys: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        apply_override(raw, key, value)
        set_keys.add(key)
    try:
        # config_dir: relative paths written in the file resolve from its folder (pairing section)
        config_dir = Path(path).absolute().parent if path is not None else None
        return schema.model_validate(raw, context={"config_dir": config_dir, "set_keys": set_keys})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, schema, source, set_keys)) from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file is an empty mapping)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({err}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (e.g. `algo:`), "
            f"got a {type(data).__name__}"
        )
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """Split `algo.beta=0.04` into ("algo.beta", 0.04)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"{SET_ORIGIN} {item!r}: expected KEY=VALUE with a dotted key, "
            "e.g. --set algo.num_generations_und=8"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested mapping, creating the sections it passes through."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"{SET_ORIGIN} {key}: {prefix!r} is a value, not a section, so it has no key "
                f"{parts[depth + 1]!r}"
            )
        node = child
    node[parts[-1]] = value


def format_validation_error(
    err: ValidationError, schema: type[BaseModel], source: str, set_keys: set[str]
) -> str:
    """Turn pydantic's errors into one line per problem: key, origin, what is wrong, the fix."""
    lines = []
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        key = ".".join(loc) or "<top level>"
        origin = origin_of(key, source, set_keys)
        lines.append(f"{origin}: {key}: {describe_problem(problem, schema, loc)}")
    header = f"invalid config ({len(lines)} problem{'s' if len(lines) > 1 else ''}):"
    return "\n".join([header, *("  " + line for line in lines)])


def origin_of(key: str, source: str, set_keys: set[str]) -> str:
    """Where a key's value came from: the file, --set, or both (for a whole-section check)."""
    if key in set_keys or any(key.startswith(f"{k}.") for k in set_keys):
        return SET_ORIGIN
    if any(k.startswith(f"{key}.") for k in set_keys):
        return f"{source} with {SET_ORIGIN}"
    return source


def describe_problem(problem: Mapping[str, Any], schema: type[BaseModel], loc: list[str]) -> str:
    kind = problem["type"]
    if kind == "extra_forbidden":
        section = section_at(schema, loc[:-1])
        valid = sorted(section.model_fields) if section else []
        guess = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        return f"unknown key; {hint}valid keys here: {', '.join(valid)}"
    if kind == "value_error":
        return str(problem["ctx"]["error"]) if "ctx" in problem else problem["msg"]
    field_doc = field_summary(schema, loc)
    got = problem.get("input")
    return f"{problem['msg']} (got {got!r}). {field_doc}".strip()


def section_at(schema: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model reached by following `loc` (keys and list indices) from `schema`."""
    return nested_model(annotation_at(schema, loc))


def annotation_at(schema: type[BaseModel], loc: list[str]) -> Any:
    """The type annotation found by following `loc` from `schema`, or None."""
    annotation: Any = schema
    for part in loc:
        model = nested_model(annotation)
        item = list_item(annotation)
        if model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        elif item is not None and part.isdigit():
            annotation = item
        else:
            return None
    return annotation


def list_item(annotation: Any) -> Any:
    """The item type of a `list[...]` annotation, else None."""
    if typing.get_origin(annotation) is list and typing.get_args(annotation):
        return typing.get_args(annotation)[0]
    return None


def field_summary(schema: type[BaseModel], loc: list[str]) -> str:
    section = section_at(schema, loc[:-1])
    if section is None or not loc or loc[-1] not in section.model_fields:
        return ""
    info = section.model_fields[loc[-1]]
    return f"Expected {type_name(info.annotation)}; default {default_text(info)}."


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The section type of a field: `Model` or an optional `Model | None`, else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = models[0] if len(models) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def type_name(annotation: Any) -> str:
    """A short, readable rendering of a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info: Any) -> str:
    if info.default is not PydanticUndefined:
        value = info.default
    elif info.default_factory is not None:
        value = info.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    value = to_jsonable_python(value)  # paths, models in lists, enums -> plain YAML types
    return (
        "`"
        + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        + "`"
    )


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, ready to be saved beside a run and loaded again."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def render_config_docs(schema: type[BaseModel] = PairUniConfig) -> str:
    """docs/config.md: every section and key with its type, default and docstring."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `pairuni config docs --out docs/config.md` from the docstrings in",
        "     src/pairuni; a test fails when this file is out of date. Do not edit by hand. -->",
        "",
        "A config is a YAML file of sections; any key can be overridden on the command line with",
        "`--set section.key=value` (the value is parsed as YAML). Unknown keys and wrong types are",
        "errors that name the key and the file.",
        "",
    ]
    out += render_section(schema, prefix="", level=2)
    return "\n".join(out).rstrip() + "\n"


def render_leaf(key: str, info: Any, indent: str) -> list[str]:
    """One bullet per key; a list of records also documents the keys of each item."""
    doc = " ".join((info.description or "").split())
    lines = [
        f"{indent}- **`{key}`** ({type_name(info.annotation)}, default {default_text(info)}): {doc}"
    ]
    item = nested_model(list_item(info.annotation))
    if item is not None:
        for name, sub in item.model_fields.items():
            lines += render_leaf(f"{key}[].{name}", sub, indent=indent + "  ")
    return lines


def render_section(model: type[BaseModel], prefix: str, level: int) -> list[str]:
    lines: list[str] = []
    leaves: list[str] = []
    children: list[tuple[str, type[BaseModel], Any]] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        child = nested_model(info.annotation)
        if child is not None:
            children.append((key, child, info))
            continue
        leaves += render_leaf(key, info, indent="")
    if leaves:
        lines += [*leaves, ""]
    for key, child, info in children:
        lines += [f"{'#' * level} `{key}`", ""]
        if info.default is None:  # an optional section: say what leaving it out means
            lines += [" ".join((info.description or "").split()) + " Default `null`.", ""]
        doc = " ".join((child.__doc__ or "").split())
        if doc:
            lines += [doc, ""]
        lines += render_section(child, prefix=f"{key}.", level=level + 1)
    return lines
