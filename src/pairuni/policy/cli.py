"""`pairuni generate`, `pairuni answer` and `pairuni tiny-model`: a first sanity check of a
checkpoint. Kept free of module-level torch / transformers imports so `pairuni --help` is instant.

Try them offline on a tiny random model:

    pairuni tiny-model /tmp/tiny-janus
    pairuni generate --model /tmp/tiny-janus --prompt "a red square" -n 8 --out grid.png
    pairuni answer --model /tmp/tiny-janus --image grid.png --question "What is shown?"
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pairuni.cliutils import ConfigOption, SetOption, fail, load_config_or_exit

if TYPE_CHECKING:
    from pairuni.policy.base import UnifiedPolicy

ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Checkpoint directory in HF format (e.g. a download of "
        "deepseek-community/Janus-Pro-1B); default: model.path of the config.",
    ),
]
DTypeOption = Annotated[
    str | None,
    typer.Option(help="float32 | bfloat16 | float16 (default: model.dtype of the config)."),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(help="auto | cpu | cuda | cuda:N | mps (default: model.device of the config)."),
]
SeedOption = Annotated[int, typer.Option(help="Random seed of the sampling.")]


def _load_policy(
    model: Path | None,
    config: Path | None,
    set_: list[str] | None,
    model_updates: dict[str, Any],
    rollout_updates: dict[str, Any],
) -> UnifiedPolicy:
    """The run config (defaults <- file <- --set <- these options) -> a loaded policy."""
    from pydantic import ValidationError

    from pairuni.policy.config import ModelConfig, RolloutConfig
    from pairuni.policy.janus import CheckpointError
    from pairuni.policy.registry import load_policy

    cfg = load_config_or_exit(config, set_)
    updates = {k: v for k, v in model_updates.items() if v is not None}
    sampling = {k: v for k, v in rollout_updates.items() if v is not None}
    if model is not None:
        updates["path"] = str(model)
    try:
        model_cfg = ModelConfig.model_validate({**cfg.model.model_dump(), **updates})
        rollout_cfg = RolloutConfig.model_validate({**cfg.rollout.model_dump(), **sampling})
    except ValidationError as err:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
    if model_cfg.path is None:
        fail("no checkpoint: pass --model DIR (or set model.path in the config)")
    try:
        return load_policy(model_cfg.path, model_cfg, rollout_cfg)
    except (CheckpointError, ValueError) as err:
        fail(str(err))


def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to draw.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Image grid to write (PNG, JPEG...).")],
    model: ModelOption = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, help="Images.")] = 8,
    cfg_scale: Annotated[
        float | None, typer.Option("--cfg", min=1.0, help="CFG weight (1 = off; default 5).")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, help="Sampling temperature (default 1).")
    ] = None,
    greedy: Annotated[bool, typer.Option(help="Argmax instead of sampling.")] = False,
    columns: Annotated[int | None, typer.Option(min=1, help="Grid columns.")] = None,
    seed: SeedOption = 0,
    dtype: DTypeOption = None,
    device: DeviceOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Sample N images for a prompt (CFG, KV cache) and save them as one grid image.

    No checkpoint at hand? `pairuni tiny-model DIR` writes a tiny random one (its images are noise).
    """
    from pairuni.policy.images import make_grid

    if temperature == 0:
        fail("--temperature must be > 0; use --greedy for argmax decoding")
    policy = _load_policy(
        model,
        config,
        set_,
        {"dtype": dtype, "device": device},
        {"cfg_scale": cfg_scale, "image_temperature": temperature},
    )
    start = time.perf_counter()
    rollout = policy.rollout_image([prompt], num_images, greedy=greedy, generator=seed)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(rollout.images, columns).save(out)
    mean_logp = rollout.logprobs.mean().item()
    typer.echo(
        f"wrote {out}: {num_images} images of {rollout.images[0].size[0]} px in {seconds:.1f} s "
        f"(mean token log-prob {mean_logp:.3f})"
    )


def answer(
    image: Annotated[Path, typer.Option("--image", "-i", help="The image to ask about.")],
    question: Annotated[str, typer.Option("--question", "-q", help="The question.")],
    model: ModelOption = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="A multiple-choice option (repeat; lettered A, B, ...)."),
    ] = None,
    num_answers: Annotated[int, typer.Option("--num-answers", "-n", min=1)] = 1,
    max_new_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0)] = None,
    greedy: Annotated[bool, typer.Option(help="Argmax instead of sampling.")] = False,
    raw: Annotated[
        bool,
        typer.Option(help="Ask the bare question, without the <think>/<answer> instruction."),
    ] = False,
    seed: SeedOption = 0,
    dtype: DTypeOption = None,
    device: DeviceOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Answer a question about an image (the training chat format, or --raw) and print it."""
    from PIL import Image, UnidentifiedImageError

    if temperature == 0:
        fail("--temperature must be > 0; use --greedy for argmax decoding")
    if not image.is_file():
        fail(f"image {image} does not exist")
    try:
        picture = Image.open(image).convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        fail(f"{image}: not a readable image ({err})")
    rollout_updates: dict[str, Any] = {
        "text_temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "und_prompt_template": "{question}" if raw else None,
    }
    policy = _load_policy(model, config, set_, {"dtype": dtype, "device": device}, rollout_updates)
    try:
        rollout = policy.rollout_text(
            [picture],
            [question],
            num_answers,
            options=[option or None],
            greedy=greedy,
            generator=seed,
        )
    except ValueError as err:
        fail(str(err))
    for i, text in enumerate(rollout.texts):
        prefix = f"[{i + 1}] " if num_answers > 1 else ""
        typer.echo(f"{prefix}{text.strip()}")


def merge_lora(
    adapter: Annotated[
        Path, typer.Argument(help="A LoRA checkpoint: train.out_dir/checkpoint-N/model.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the merged model.")],
    dtype: Annotated[
        str, typer.Option(help="float32 | bfloat16: the dtype of the merged weights.")
    ] = "float32",
    device: DeviceOption = "cpu",
) -> None:
    """Merge a LoRA checkpoint's adapters into its base model and write an ordinary checkpoint
    of the base model's family: Janus in the HF format (transformers loads it), Lumina-DiMOO
    in its released layout (DiMOO's own code loads it). `generate`, `answer` and `eval` also
    load the adapter folder itself, on its base model."""
    from pairuni.policy.config import ModelConfig
    from pairuni.policy.lora import is_adapter_dir
    from pairuni.policy.registry import load_errors, load_policy

    if not is_adapter_dir(adapter):
        fail(f"{adapter} holds no adapter_config.json: it is not a LoRA checkpoint folder")
    try:
        policy: Any = load_policy(adapter, ModelConfig(dtype=dtype, device=device or "cpu"))
    except (*load_errors(), ValueError) as err:
        fail(str(err))
    policy.merged().save(out)
    typer.echo(f"wrote the merged model to {out}")


def tiny_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    image_size: Annotated[
        int, typer.Option(min=8, help="Understanding image side, px (Janus only).")
    ] = 32,
    patch_size: Annotated[int, typer.Option(min=1, help="Patch side, px (Janus only).")] = 8,
    backend: Annotated[
        str, typer.Option(help="janus | dimoo: the model family of the checkpoint.")
    ] = "janus",
    seed: Annotated[int, typer.Option(help="Seed of the random weights (dimoo).")] = 0,
) -> None:
    """Write a tiny random checkpoint to try the commands offline: Janus (< 1 M parameters, HF
    layout) or Lumina-DiMOO (--backend dimoo: the released layout with the real id layout,
    about 17 MB)."""
    if backend == "dimoo":
        from pairuni.policy.dimoo.tiny import write_tiny_dimoo

        path = write_tiny_dimoo(out, seed=seed)
        typer.echo(f"wrote a tiny random Lumina-DiMOO checkpoint to {path}")
        return
    if backend != "janus":
        fail(f"--backend {backend!r}: choose janus or dimoo")
    from pairuni.policy.tiny import build_tiny_janus

    if image_size % patch_size:
        fail(f"--image-size {image_size} is not a multiple of --patch-size {patch_size}")
    path = build_tiny_janus(out, image_size=image_size, patch_size=patch_size)
    typer.echo(f"wrote a tiny random Janus checkpoint to {path}")


def convert_janus(
    src: Annotated[
        Path,
        typer.Argument(help="DeepSeek's original release (deepseek-ai/Janus-Pro-1B or -7B)."),
    ],
    dst: Annotated[Path, typer.Argument(help="New folder for the Hugging Face layout.")],
    shard_gb: Annotated[
        float, typer.Option(min=0.01, help="Largest safetensors shard, in GiB.")
    ] = 5.0,
) -> None:
    """Convert DeepSeek's original Janus / Janus-Pro checkpoint (model_type multi_modality,
    PyTorch .bin weights) to the Hugging Face layout pairuni loads (that of
    deepseek-community/Janus-Pro-1B): config, safetensors, tokenizer, processor with the chat
    template. Offline; no remote code; the weights' dtype is kept."""
    from pairuni.policy.janus import CheckpointError
    from pairuni.policy.janus_original import convert_original_janus

    start = time.perf_counter()
    try:
        result = convert_original_janus(
            src, dst, max_shard_bytes=int(shard_gb * 1024**3), progress=typer.echo
        )
    except CheckpointError as err:
        fail(str(err))
    tied = ", head tied to the embeddings" if result.tied_embeddings else ""
    typer.echo(
        f"wrote {result.path}: {result.num_parameters / 1e6:.1f} M parameters in "
        f"{len(result.weight_files)} safetensors file(s), {result.dtype}{tied}, in "
        f"{time.perf_counter() - start:.0f} s. Use it with --model {result.path}"
    )
