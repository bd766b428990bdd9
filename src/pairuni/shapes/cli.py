"""`pairuni shapes ...`: make ShapesWorld data. Heavy imports stay inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pairuni.cliutils import BackendOption, BaseSetOption, SetOption, fail

ThreadsOption = Annotated[
    int | None,
    typer.Option(help="torch CPU threads (default: torch's). 1 is faster on a busy machine."),
]
StepsOption = Annotated[
    int | None, typer.Option(help="PairGRPO steps per run (default: demo.yaml's 40).")
]
QuickRunOption = Annotated[
    bool, typer.Option("--quick", help="Toy sizes and 2 steps per run (tests, CI).")
]
CacheDirOption = Annotated[
    Path, typer.Option(help="Cache of the base model, pixel features and oracle completions.")
]


def set_threads(threads: int | None) -> None:
    """torch's CPU threads from --threads (None: torch's default)."""
    if threads is None:
        return
    if threads < 1:
        fail(f"--threads {threads} must be at least 1")
    import torch

    torch.set_num_threads(threads)


def demo_settings_or_exit(
    quick: bool, steps: int | None, base_set: list[str] | None, backend: str = "janus"
) -> Any:
    """The DemoSettings of a demo / ablation / sweep: quick or full sizes, `--steps`, the base
    model's `--backend` and `--base-set` items (checked now, so a bad one exits before
    anything runs)."""
    from dataclasses import replace

    from pairuni.config import ConfigError
    from pairuni.shapes.demo import DemoSettings

    if steps is not None and steps < 1:
        fail(f"--steps {steps} must be at least 1")
    settings = DemoSettings.quick_run() if quick else DemoSettings()
    try:
        settings = replace(settings, backend=backend, base_overrides=tuple(base_set or ()))
    except ValueError as err:
        fail(f"--backend: {err}")
    if steps is not None:
        settings = replace(settings, max_steps=steps)
    try:
        settings.pretrain_config()
    except ConfigError as err:
        fail(f"--base-set: {err}")
    return settings


shapes_app = typer.Typer(
    help="ShapesWorld: a synthetic world of coloured shapes with exact rewards (docs/shapes.md).",
    no_args_is_help=True,
)


@shapes_app.command("data")
def shapes_data(
    out: Annotated[Path, typer.Option(help="Directory for the JSONL files and images/.")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML of the `shapes` settings (ShapesConfig keys, at the top level or under "
            "`shapes:`), e.g. the shapes.yaml an earlier call wrote; options given override it."
        ),
    ] = None,
    n_und: Annotated[
        int | None, typer.Option("--n-und", help="Understanding samples [default: 2000].")
    ] = None,
    n_gen: Annotated[
        int | None, typer.Option("--n-gen", help="Generation samples [default: 2000].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed; the same seed writes the same data [default: 0].")
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Image side in pixels (32 or 64 are tested) [default: 32].")
    ] = None,
    max_objects: Annotated[
        int | None,
        typer.Option("--max-objects", help="Most objects in an understanding scene (1-4) [4]."),
    ] = None,
) -> None:
    """Write understanding.jsonl, generation.jsonl, their PNG images and shapes.yaml (the
    settings, which `--config` reads back to write the same data) under OUT."""
    from pairuni.shapes.build import write_dataset

    given = {
        "n_und": n_und,
        "n_gen": n_gen,
        "seed": seed,
        "image_size": size,
        "max_objects": max_objects,
    }
    settings = _shapes_settings(config, {k: v for k, v in given.items() if v is not None})
    data_seed = 0 if settings.seed is None else settings.seed
    und, gen = write_dataset(
        out,
        settings.n_und,
        settings.n_gen,
        data_seed,
        image_size=settings.image_size,
        max_objects=settings.max_objects,
    )
    _write_settings(out / "shapes.yaml", settings.model_copy(update={"seed": data_seed}))
    typer.echo(
        f"wrote {und} ({settings.n_und} samples), {gen} ({settings.n_gen} samples) and "
        f"{out / 'shapes.yaml'}"
    )


def _shapes_settings(config: Path | None, options: dict[str, int]) -> Any:
    """The ShapesConfig of `--config` (if any) with the given options on top; exits naming
    the file, the key and what is wrong (the config loader's reader and messages)."""
    from pydantic import ValidationError

    from pairuni.config import ConfigError, format_validation_error, read_yaml_mapping
    from pairuni.shapes.config import ShapesConfig

    raw: dict[str, Any] = {}
    if config is not None:
        try:
            loaded = read_yaml_mapping(config)
        except ConfigError as err:
            fail(str(err))
        raw = loaded.get("shapes", loaded)
    source = f"--config {config} and the options" if config else "the options"
    try:
        return ShapesConfig.model_validate({**raw, **options})
    except ValidationError as err:
        fail(format_validation_error(err, ShapesConfig, source, set()))


def _write_settings(path: Path, settings: Any) -> None:
    import yaml

    text = yaml.safe_dump({"shapes": settings.model_dump(mode="json")}, sort_keys=False)
    path.write_text(text, encoding="utf-8")


@shapes_app.command("grid")
def shapes_grid(
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path(
        "docs/img/shapes_samples.png"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the samples shown.")] = 0,
) -> None:
    """Draw one generation sample per GenEval category with its prompt (for the docs)."""
    from pairuni.shapes.build import sample_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(seed).save(out, optimize=True)
    typer.echo(f"wrote {out}")


@shapes_app.command("pretrain")
def shapes_pretrain(
    out: Annotated[Path, typer.Option(help="Directory for the base model (HF format).")],
    seed: Annotated[int, typer.Option(help="Seed of weights, batches and evaluation.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny settings for tests/CI: same path, low quality.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if OUT holds a model of these settings.")
    ] = False,
    threads: ThreadsOption = None,
    backend: Annotated[
        str,
        typer.Option(
            help="`janus` (autoregressive, HF format) or `dimoo` (masked diffusion, "
            "Lumina-DiMOO's released layout)."
        ),
    ] = "janus",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="Change one setting, e.g. --set sft_steps=4000 (repeatable; YAML values; "
            "the keys are PretrainConfig's, docs/shapes.md).",
        ),
    ] = None,
) -> None:
    """Build the ShapesWorld base model: VQ tokenizer + SFT on both tasks, then evaluate it.

    The result is cached: a second call with the same settings returns at once.
    """

    from pairuni.config import ConfigError
    from pairuni.importing import import_object
    from pairuni.shapes.demo import BASE_MODELS
    from pairuni.shapes.pretrain import pretrain

    set_threads(threads)
    if backend not in BASE_MODELS:
        fail(f"--backend {backend!r}: use {' or '.join(BASE_MODELS)}")
    try:
        kind = import_object(BASE_MODELS[backend])
        config = kind.from_overrides(set_ or [], quick=quick, seed=seed)
    except ConfigError as err:
        fail(str(err))
    try:
        report = pretrain(out, config, force=force)
    except FileExistsError as err:
        fail(str(err))
    if report["cached"]:
        typer.echo(f"{out} already holds this base model (settings {report['settings_hash']})")
    scores = report["eval"]
    typer.echo(
        f"base model in {out}: VQ recovery {report['vq']['recovery_rate_heldout']:.1%}, "
        f"MC accuracy {scores['understanding_greedy']['accuracy']:.1%} greedy / "
        f"{scores['understanding_t1']['accuracy']:.1%} at T=1, "
        f"GenEval {scores['generation_cfg']['overall']:.1%} (CFG "
        f"{scores['generation_cfg']['cfg_scale']:g}); {report['seconds']['total']:.0f} s"
    )


ABLATE_HELP = "\n\n".join(
    [
        "Train the demo's PairGRPO recipe under each data / weighting setting and compare.",
        # one line per paragraph: this typer keeps a docstring's line breaks and rewraps them
        "The paper's Tables 5-9 and its gradient analysis (Fig. 8) in miniature on "
        "ShapesWorld. Every run starts from the same base model, data and pairs as `pairuni "
        "demo` and differs from the demo's recipe only in the ablated key; each seed sets the "
        "RL seed (rollout sampling, shuffles).",
        "\b\nSettings (--settings, comma separated; default: all six):\n"
        "  unpaired            data.mode=unpaired (paper: Unpair)\n"
        "  random_pairs        data.mode=random_pairs (Random Pair)\n"
        "  pairgrpo_no_weight  pairs, algo.pair_weighting=none (PairUni w/o sim)\n"
        "  pairgrpo_sqrt       pairs, algo.pair_weighting=sqrt (PairUni, PairGRPO)\n"
        "  understanding_only  data.mode=understanding_only (Fig. 8)\n"
        "  generation_only     data.mode=generation_only (Fig. 8)\n"
        "Also (not in the default six):\n"
        "  pairgrpo_linear     pairs, algo.pair_weighting=linear (Table 7)\n"
        "  threshold_0.5       sqrt, on pairs built with retrieve.threshold=0.5 (Table 8)\n"
        "  threshold_0.7       sqrt, on pairs built with retrieve.threshold=0.7 (Table 8)\n"
        "  random_selection    sqrt, on pairs with randomly drawn aligned pairs (Table 9)\n"
        "  cfg_logprob_off     pairs, sqrt, rollout.cfg_in_logprob=false (ours)",
        "Outputs in OUT: results.json (every run's scores, grad_cosine values and reward "
        "curves, the settings and the command); table.md (mean ± sample std over seeds of MC "
        "accuracy, GenEval-style overall and the median gradient cosine, and a per-category "
        "breakdown); grad_agreement.png (the distribution of grad_cosine per setting); "
        "curves.png (mean reward per task against the step, per setting). Runs train into "
        "OUT/runs/SETTING/seedK/train. Finished runs are skipped on a re-run and an "
        "interrupted training resumes from its last checkpoint.",
    ]
)


@shapes_app.command("ablate", help=ABLATE_HELP)
def shapes_ablate(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder of the runs and results.")
    ] = Path("runs/ablate"),
    seeds: Annotated[int, typer.Option(help="Seeds per setting (0, 1, ..., N-1).")] = 3,
    settings: Annotated[
        str | None,
        typer.Option(help="Comma-separated settings to run (default: all six, listed above)."),
    ] = None,
    steps: StepsOption = None,
    quick: QuickRunOption = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Delete OUT first instead of resuming what is there.")
    ] = False,
    cache_dir: CacheDirOption = Path(".cache/pairuni"),
    threads: ThreadsOption = None,
    reevaluate: Annotated[
        bool,
        typer.Option(
            "--reevaluate",
            help="Evaluate the base model and every finished run's saved model again (after "
            "the evaluation changed); training is kept.",
        ),
    ] = False,
    set_: SetOption = None,
    base_set: BaseSetOption = None,
    backend: BackendOption = "janus",
) -> None:
    """The ablation; its --help text is ABLATE_HELP."""
    import shutil

    from pairuni.config import ConfigError
    from pairuni.data.errors import DataError
    from pairuni.rewards.base import RewardError
    from pairuni.shapes.ablate import (
        DEFAULT_SETTINGS,
        AblationError,
        check_settings,
        check_user_overrides,
        run_ablation,
        run_config,
    )
    from pairuni.training.trainer import TrainingSetupError

    names = list(DEFAULT_SETTINGS) if settings is None else [s.strip() for s in settings.split(",")]
    try:
        names = check_settings([name for name in names if name])
        check_user_overrides(set_ or [])
        run_config(names[0], 0, set_ or [])  # a bad --set fails here, before --fresh deletes
    except (AblationError, ConfigError) as err:
        fail(str(err))
    if seeds < 1:
        fail(f"--seeds {seeds} must be at least 1")
    demo_settings = demo_settings_or_exit(quick, steps, base_set, backend)
    set_threads(threads)
    if fresh and out.exists():
        shutil.rmtree(out)
    command = _ablate_command(out, seeds, names, steps, quick, set_ or [], base_set or [], backend)
    try:
        run_ablation(
            out,
            names,
            seeds,
            demo_settings,
            set_ or [],
            cache_dir,
            typer.echo,
            command,
            reevaluate=reevaluate and not fresh,
        )
    except (AblationError, ConfigError, DataError, RewardError, TrainingSetupError) as err:
        fail(f"{err}\n(finished runs are kept in {out}; fix the cause and run again)")
    typer.echo((out / "table.md").read_text(encoding="utf-8"))
    typer.echo(
        f"results: {out / 'results.json'}, plots: {out / 'grad_agreement.png'}, "
        f"{out / 'curves.png'}"
    )


def _ablate_command(
    out: Path,
    seeds: int,
    names: list[str],
    steps: int | None,
    quick: bool,
    sets: list[str],
    base_sets: list[str],
    backend: str,
) -> str:
    """The canonical command line that reproduces this ablation."""
    import shlex

    parts = ["pairuni", "shapes", "ablate", "--out", str(out), "--seeds", str(seeds)]
    parts += ["--settings", ",".join(names)]
    parts += ["--steps", str(steps)] if steps is not None else []
    parts += ["--quick"] if quick else []
    for item in sets:
        parts += ["--set", item]
    for item in base_sets:
        parts += ["--base-set", item]
    parts += ["--backend", backend] if backend != "janus" else []
    return shlex.join(parts)


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"{option} {text!r}: give comma-separated numbers, e.g. {option} 1e-4,2e-4")


SWEEP_HELP = "\n\n".join(
    [
        "Choose the RL recipe (learning rate x KL) on a VALIDATION split (docs/shapes.md).",
        # one line per paragraph: this typer keeps a docstring's line breaks and rewraps them
        "Each grid point trains understanding-only and generation-only runs, as `pairuni shapes "
        "ablate` does, and scores them on validation records, never on the test split the "
        "ablation reports. The chosen point is the one whose smallest gain over the base model "
        "(MC accuracy sampled and greedy, GenEval-style overall) is largest.",
        "Writes OUT/sweep.md and OUT/sweep.json; each point's runs are in OUT/lr<x>_beta<y>/ "
        "and resume when re-run.",
    ]
)


@shapes_app.command("sweep", help=SWEEP_HELP)
def shapes_sweep(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder of the grid points and sweep.md.")
    ] = Path("runs/sweep"),
    lr: Annotated[
        str, typer.Option("--lr", help="Comma-separated learning rates (train.learning_rate).")
    ] = "5e-5,1e-4,2e-4",
    beta: Annotated[
        str, typer.Option("--beta", help="Comma-separated KL coefficients (algo.beta).")
    ] = "0,0.04",
    seeds: Annotated[int, typer.Option(help="Seeds per setting and grid point.")] = 3,
    steps: StepsOption = None,
    quick: QuickRunOption = False,
    cache_dir: CacheDirOption = Path(".cache/pairuni"),
    threads: ThreadsOption = None,
    set_: SetOption = None,
    base_set: BaseSetOption = None,
    backend: BackendOption = "janus",
) -> None:
    """The recipe sweep; its --help text is SWEEP_HELP."""
    from pairuni.config import ConfigError
    from pairuni.data.errors import DataError
    from pairuni.rewards.base import RewardError
    from pairuni.shapes.ablate import AblationError
    from pairuni.shapes.sweep import run_sweep
    from pairuni.training.trainer import TrainingSetupError

    if seeds < 1:
        fail(f"--seeds {seeds} must be at least 1")
    demo_settings = demo_settings_or_exit(quick, steps, base_set, backend)
    set_threads(threads)
    try:
        sweep = run_sweep(
            out,
            _numbers(lr, "--lr"),
            _numbers(beta, "--beta"),
            seeds,
            demo_settings,
            set_ or [],
            cache_dir,
            typer.echo,
        )
    except (AblationError, ConfigError, DataError, RewardError, TrainingSetupError) as err:
        fail(f"{err}\n(finished runs are kept in {out}; fix the cause and run again)")
    typer.echo((out / "sweep.md").read_text(encoding="utf-8"))
    typer.echo(f"chosen: {sweep['chosen']} (sweep.json: {out / 'sweep.json'})")
