"""`pairuni demo`: the whole PairUni pipeline on ShapesWorld, on a laptop CPU.

Stages (each one's result is kept in `<out>/demo-state.json`, so a re-run skips what is done and
an interrupted training resumes from its last checkpoint):

1. data: ShapesWorld understanding and generation samples (`pairuni shapes data`);
2. pairs: k-means medoids + greedy retrieval over weight-free pixel features, the oracle
   completing the selected samples (`pairuni pairs build` / `complete`);
3. base model: `pairuni shapes pretrain` (cached under `.cache/pairuni/shapes-base/`);
4. evaluate the base model on held-out samples (MC accuracy, GenEval-style score);
5. train with PairGRPO (`pairuni train` with the embedded `demo.yaml`);
6. evaluate the trained model on the same held-out samples;
7. report: metrics, reward curves, a before/after sample grid and a one-page HTML report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

STATE_FILE = "demo-state.json"
EVAL_SEED = 4242
"""Seed of the held-out evaluation records: differs from the RL data (0) and SFT data (1009)."""
VALIDATION_SEED = 5353
"""Seed of the validation records (`eval_split: validation`): what a recipe is chosen on, so
that the test split (EVAL_SEED) stays unseen by the choice."""
SPLIT_SEEDS = {"test": EVAL_SEED, "validation": VALIDATION_SEED}


BASE_MODELS = {
    "janus": "pairuni.shapes.pretrain:PretrainConfig",
    "dimoo": "pairuni.shapes.pretrain_dimoo:DimooPretrainConfig",
}
"""`DemoSettings.backend` -> the settings class of its ShapesWorld base model."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run. `quick()` is the CI smoke run: same stages, toy sizes."""

    n_und: int = 1200
    n_gen: int = 1200
    num_clusters: int = 300
    retrieve_threshold: float = 0.6
    n_eval_und: int = 400
    n_eval_gen: int = 300
    max_steps: int | None = None
    quick: bool = False
    eval_split: str = "test"
    """`test` (the held-out records every reported score uses) or `validation` (other records
    of the same size, for choosing a recipe: `pairuni shapes sweep`)."""
    backend: str = "janus"
    """The base model's architecture: `janus` (autoregressive) or `dimoo` (masked diffusion,
    `pairuni shapes pretrain --backend dimoo`); the training config follows it
    (`training_overrides`)."""
    base_overrides: tuple[str, ...] = ()
    """"key=value" settings of the base model (`PretrainConfig`, `--base-set`): another base
    model is built (and cached under its own settings hash) instead of the default one."""

    def __post_init__(self) -> None:
        if self.eval_split not in SPLIT_SEEDS:
            raise ValueError(f"eval_split must be one of {', '.join(SPLIT_SEEDS)}")
        if self.backend not in BASE_MODELS:
            raise ValueError(f"backend {self.backend!r}: use {' or '.join(BASE_MODELS)}")

    @property
    def eval_seed(self) -> int:
        return SPLIT_SEEDS[self.eval_split]

    def recipe(self) -> dict[str, Any]:
        """The settings as recorded with an ablation's runs; `eval_split` only when it is not
        the default, so folders written before it existed stay comparable."""
        fields = asdict(self)
        if fields["eval_split"] == "test":
            del fields["eval_split"]
        if fields["backend"] == "janus":
            del fields["backend"]
        if fields["base_overrides"]:
            fields["base_overrides"] = list(fields["base_overrides"])
        else:
            del fields["base_overrides"]
        return fields

    def pretrain_config(self) -> Any:
        """The base model's settings: the defaults (quick ones for the quick run) with
        `base_overrides` applied (a bad key raises ConfigError)."""
        from pairuni.importing import import_object

        kind = import_object(BASE_MODELS[self.backend])
        return kind.from_overrides(self.base_overrides, quick=self.quick)

    def training_overrides(self) -> list[str]:
        """`--set` items that fit demo.yaml (written for the Janus base model) to this backend:
        for DiMOO, its backend, its one trainable module and the rollout settings its base
        model was built and evaluated with (image size, answer length, unmasking steps)."""
        if self.backend == "janus":
            return []
        base = self.pretrain_config()
        return [
            "model.backend=dimoo",
            "model.trainable=[language_model]",
            f"rollout.max_new_tokens={base.answer_length}",
            f"rollout.dimoo.image_size={base.image_size}",
            f"rollout.dimoo.text_steps={base.text_steps}",
            f"rollout.dimoo.image_steps={base.image_steps}",
        ]

    @classmethod
    def quick_run(cls) -> DemoSettings:
        return cls(
            n_und=60,
            n_gen=60,
            num_clusters=12,
            n_eval_und=12,
            n_eval_gen=6,
            max_steps=2,
            quick=True,
        )


def demo_training_config(overrides: Sequence[str] = ()) -> Any:
    """The embedded `demo.yaml` with `overrides` applied (a PairUniConfig)."""
    from pairuni.config import load_config

    with resources.as_file(resources.files("pairuni.shapes") / "demo.yaml") as path:
        return load_config(path, list(overrides))


class DemoState:
    """The results of finished stages, saved after each one (atomically)."""

    def __init__(self, out: Path, filename: str = STATE_FILE) -> None:
        self.path = out / filename
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if name in self.data:
            return self.data[name]["result"]
        start = time.perf_counter()
        result = fn()
        self.data[name] = {"result": result, "seconds": round(time.perf_counter() - start, 1)}
        self._save()
        return result

    def replace(self, name: str, result: Any) -> None:
        """Overwrite a finished stage's result (keeping its recorded time) and save."""
        self.data[name] = {**self.data[name], "result": result}
        self._save()

    def _save(self) -> None:
        from pairuni.data.io import atomic_output

        with atomic_output(self.path) as temp:
            temp.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | Path = ".cache/pairuni",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage into `out_dir`; returns the state (each stage's result and time)."""
    settings = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = DemoState(out)
    cfg = demo_training_config([*settings.training_overrides(), *overrides])
    if settings.max_steps is not None:
        cfg.train.max_steps = settings.max_steps
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("data", lambda: make_data(out, settings, cfg.seed)),
        ("pairs", lambda: make_pairs(out, settings, cfg.seed, Path(cache_dir))),
        ("base_model", lambda: make_base_model(Path(cache_dir), settings)),
        (
            "evaluate_base",
            lambda: evaluate_model(state.data["base_model"]["result"]["path"], cfg, settings),
        ),
        ("train", lambda: train_model(out, cfg, state)),
        (
            "evaluate_trained",
            lambda: evaluate_model(state.data["train"]["result"]["model"], cfg, settings),
        ),
        ("report", lambda: _report(out, cfg, state, settings)),
    ]
    for number, (name, fn) in enumerate(stages, 1):
        echo(f"[{number}/{len(stages)}] {name.replace('_', ' ')}")
        state.run(name, fn)
    return state.data


# ----------------------------------------------------------------------------- stages


def make_data(out: Path, settings: DemoSettings, seed: int) -> dict[str, Any]:
    """ShapesWorld understanding and generation samples under `out/data`."""
    from pairuni.shapes.build import write_dataset

    und, gen = write_dataset(out / "data", settings.n_und, settings.n_gen, seed=seed)
    return {"understanding": str(und), "generation": str(gen)}


def make_pairs(
    out: Path,
    settings: DemoSettings,
    seed: int,
    cache: Path,
    folder: Path | None = None,
    pairing: Sequence[str] = (),
) -> dict[str, Any]:
    """PairUG pairs from `out/data` into `folder/pairs.jsonl` (default `out/pairs`; oracle
    completion), with `pairing` ("key=value" items of the pairing section, e.g.
    `retrieve.threshold=0.5`) over the demo's selection and retrieval settings."""
    from pairuni.pairing.annotators import make_annotator
    from pairuni.pairing.build import run_build
    from pairuni.pairing.complete import complete_records
    from pairuni.pairing.config import PairingConfig
    from pairuni.pairing.sources import load_samples

    data = out / "data"
    pc = PairingConfig.model_validate(
        {
            "sources": {
                "understanding": [str(data / "understanding.jsonl")],
                "generation": [str(data / "generation.jsonl")],
            },
            "complete": {"backend": "oracle", "cache_dir": str(cache / "completions")},
            "features": {"extractor": "pixels", "cache_dir": str(cache / "features")},
            "select": {"num_clusters": settings.num_clusters, "seed": seed},
            "retrieve": {"threshold": settings.retrieve_threshold},
        }
    )
    if pairing:
        pc = _with_pairing_overrides(pc, pairing)
    pairs = (folder or out / "pairs") / "pairs.jsonl"
    pairs.parent.mkdir(parents=True, exist_ok=True)
    quads = out / "pairs" / "quadruples.jsonl"
    result = run_build(pc, str(pairs), [str(quads)] if quads.exists() else [], progress=True)
    if result.needs_completion:
        annotator = make_annotator(pc.complete, seed=seed)
        for task in ("understanding", "generation"):
            todo = pairs.with_name(f"{pairs.name}.needs-completion.{task}.jsonl")
            if todo.exists():
                samples = load_samples([str(todo)], task, pc.sources)  # type: ignore[arg-type]
                complete_records(samples.records, task, quads, annotator, pc.complete)
                todo.unlink()
        result = run_build(pc, str(pairs), [str(quads)], progress=True)
    from pairuni.pairing.stats import write_report

    write_report(pairs, pairs.parent / "report")
    return {
        "path": str(pairs),
        "aligned": result.stats["aligned"],
        "retrieved": result.stats["retrieved"],
    }


def _with_pairing_overrides(pc: Any, items: Sequence[str]) -> Any:
    """`pc` with "key=value" items (`--set` syntax, keys inside the pairing section) applied,
    validated again (an unknown key is refused, as the section forbids extras)."""
    from pairuni.config import apply_override, parse_override
    from pairuni.pairing.config import PairingConfig

    raw = pc.model_dump(mode="json")
    for item in items:
        apply_override(raw, *parse_override(item))
    return PairingConfig.model_validate(raw)


def make_base_model(cache: Path, settings: DemoSettings) -> dict[str, Any]:
    """The ShapesWorld base model, built once per settings hash under `cache/shapes-base`."""
    from pairuni.shapes.pretrain import pretrain

    config = settings.pretrain_config()
    path = cache / "shapes-base" / config.settings_hash()
    report = pretrain(path, config)
    return {
        "path": str(path),
        "backend": settings.backend,
        "cached": bool(report.get("cached")),
        "seconds": report.get("seconds", {}).get("total"),
    }


def heldout(settings: DemoSettings) -> tuple[list[dict], list[Any], list[dict]]:
    """Held-out understanding records with their rendered images, and generation records."""
    from pairuni.shapes.build import generation_record, understanding_record
    from pairuni.shapes.render import render_scene
    from pairuni.shapes.scene import Scene

    seed = settings.eval_seed
    und = [understanding_record(i, seed) for i in range(settings.n_eval_und)]
    images = [render_scene(Scene.from_dict(r["scene"]), 32) for r in und]
    gen = [generation_record(i, seed) for i in range(settings.n_eval_gen)]
    return und, images, gen


def load_demo_policy(path: str, cfg: Any) -> Any:
    """The policy of a base or trained model folder, with the backend its config.json names."""
    from pairuni.policy.registry import load_policy

    return load_policy(path, cfg.model, cfg.rollout)


SAMPLED_EVAL_SEEDS = 3
"""Sampling seeds of the temperature-1 MC accuracy (its mean is less noisy than one draw)."""


def evaluate_model(model_path: str, cfg: Any, settings: DemoSettings) -> dict[str, Any]:
    """MC accuracy (greedy, and at the rollout temperature averaged over `SAMPLED_EVAL_SEEDS`
    draws) and the GenEval-style score of `model_path` on the held-out sets.

    Both MC numbers are kept because RL trains the sampled policy: greedy accuracy can fall
    while the accuracy of what the policy samples rises (docs/results/shapes.md)."""
    from pairuni.shapes.pretrain import evaluate_generation, evaluate_understanding

    policy = load_demo_policy(model_path, cfg)
    und, images, gen = heldout(settings)
    seed = settings.eval_seed
    sampled = [
        evaluate_understanding(policy, und, images, greedy=False, seed=seed + draw)
        for draw in range(SAMPLED_EVAL_SEEDS)
    ]
    accuracies = [s["accuracy"] for s in sampled]
    per_item = [
        sum(column) / len(column) for column in zip(*(s["items"] for s in sampled), strict=True)
    ]
    return {
        "understanding": evaluate_understanding(policy, und, images, greedy=True, seed=seed),
        "understanding_sampled": {
            "accuracy": sum(accuracies) / len(accuracies),
            "per_draw": accuracies,
            "items": per_item,  # each question's accuracy over the draws
            "temperature": cfg.rollout.text_temperature,
        },
        "generation": evaluate_generation(policy, gen, seed=seed),
    }


def train_model(
    out: Path, cfg: Any, state: DemoState, pairs_stage: str = "pairs"
) -> dict[str, Any]:
    """PairGRPO from the state's base model on the pairs of its stage `pairs_stage` into
    `out/train` (resumes)."""
    from pairuni.training.runs import head_checkpoint
    from pairuni.training.trainer import PairGRPOTrainer

    cfg.model.path = state.data["base_model"]["result"]["path"]
    cfg.data.path = state.data[pairs_stage]["result"]["path"]
    cfg.train.out_dir = str(out / "train")
    cfg.train.save_every = min(cfg.train.save_every, cfg.train.max_steps)
    cfg.train.existing_run = "overwrite"  # the folder is the demo's own: a run killed early
    trainer = PairGRPOTrainer(cfg, resume=head_checkpoint(Path(cfg.train.out_dir)) is not None)
    trainer.train()
    final = head_checkpoint(Path(cfg.train.out_dir))
    assert final is not None, "the trainer saves a checkpoint at its last step"
    return {
        "model": str(final / "model"),
        "steps": trainer.step,
        "metrics": str(Path(cfg.train.out_dir) / "metrics.jsonl"),
    }


def _report(out: Path, cfg: Any, state: DemoState, settings: DemoSettings) -> dict[str, Any]:
    from pairuni.shapes.report import write_demo_report

    return write_demo_report(out / "report", cfg, state.data, sample_prompts(settings))


def sample_prompts(settings: DemoSettings) -> list[str]:
    """The first held-out generation prompt of each GenEval category (the report's samples)."""
    by_category: dict[str, str] = {}
    for record in heldout(settings)[2]:
        by_category.setdefault(record["category"], record["prompt"])
    return list(by_category.values())
