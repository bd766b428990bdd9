"""Lumina-DiMOO samplers: batched rows against one row at a time, and the trajectory log-prob
pass against the rollout, on the same model in one run.

    .venv/bin/python benchmarks/bench_dimoo.py                     # CPU: a small random model
    python benchmarks/bench_dimoo.py --gpu                         # DiMOO-8B's shape (4096 x 32)

DiMOO's own sampler takes one prompt at a time; the baseline here is that loop over our sampler
(batch 1, the same settings and seeds), so the ratio measures batching alone. Images: `--batch`
prompts (default 8), `--image-steps` MaskGIT steps (default 35, the paper's) with guidance;
text: `--batch` answers of `--answer-length` masks in `--text-steps` steps. Then the
`trajectory` estimator (with gradient, one backward) on the batched image rollout, and the
maximum |trajectory - recorded| (must be < 1e-5 in float32).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


def build(args: argparse.Namespace, folder: Path):
    from pairuni.policy.config import ModelConfig, RolloutConfig
    from pairuni.policy.dimoo.policy import DimooPolicy
    from pairuni.policy.dimoo.tiny import write_tiny_dimoo

    shape = (
        {"d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288}
        if args.gpu
        else {
            "d_model": args.d_model,
            "n_layers": args.layers,
            "n_heads": 8,
            "n_kv_heads": 8,
            "mlp_hidden_size": 4 * args.d_model,
        }
    )
    path = write_tiny_dimoo(folder / "model", init_std=0.02, num_shards=1, **shape)
    rollout = RolloutConfig(
        max_new_tokens=args.answer_length,
        cfg_scale=5.0,
        dimoo={
            "image_size": args.image_size,
            "image_steps": args.image_steps,
            "text_steps": args.text_steps,
        },
    )
    model = ModelConfig(
        dtype="bfloat16" if args.gpu else "float32", device="cuda" if args.gpu else "cpu"
    )
    return DimooPolicy.load(path, model, rollout), shape


def timed(fn, sync) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def image_loop(policy, prompts, seed: int) -> list:
    """DiMOO's own way: one prompt at a time."""
    return [policy.rollout_image([p], 1, generator=seed, decode=False) for p in prompts]


def text_loop(policy, images, seed: int) -> list:
    return [policy.rollout_text([im], ["what is shown?"], 1, generator=seed) for im in images]


def replay(policy, rollout) -> torch.Tensor:
    """The trajectory estimator with gradient and one backward (what an update pays)."""
    logp = policy.image_logprobs(rollout)
    logp.sum().backward()
    return logp.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=256, help="px; 512 on --gpu")
    parser.add_argument("--image-steps", type=int, default=35)
    parser.add_argument("--text-steps", type=int, default=8)
    parser.add_argument("--answer-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.gpu and args.image_size == 256:
        args.image_size = 512
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    sync = torch.cuda.synchronize if args.gpu else (lambda: None)
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        policy, shape = build(args, Path(tmp))
        prompts = [f"a picture number {i} of {'red ' * (i % 4)}squares" for i in range(args.batch)]
        images = [
            Image.new("RGB", (args.image_size, args.image_size), (40 * i, 90, 20))
            for i in range(args.batch)
        ]
        report: dict = {"shape": shape, "args": vars(args), "load_avg_before": os.getloadavg()[0]}
        runs: dict[str, list[float]] = {
            k: [] for k in ("img_batched", "img_loop", "txt_batched", "txt_loop", "trajectory")
        }
        policy.rollout_image(prompts[:1], 1, generator=0, decode=False)  # warm-up
        questions = ["what is shown?"] * args.batch
        for rep in range(args.repeats):
            t, ro = timed(
                partial(policy.rollout_image, prompts, 1, generator=rep, decode=False), sync
            )
            runs["img_batched"].append(t)
            t, _ = timed(partial(image_loop, policy, prompts, rep), sync)
            runs["img_loop"].append(t)
            t, _ = timed(partial(policy.rollout_text, images, questions, 1, generator=rep), sync)
            runs["txt_batched"].append(t)
            t, _ = timed(partial(text_loop, policy, images, rep), sync)
            runs["txt_loop"].append(t)
            t, logp = timed(partial(replay, policy, ro), sync)
            runs["trajectory"].append(t)
            policy.model.backbone.zero_grad(set_to_none=True)
            report["max_abs_trajectory_minus_recorded"] = float((logp - ro.logprobs).abs().max())
        best = {k: min(v) for k, v in runs.items()}
        report["seconds_min"] = best
        report["images_per_s"] = {
            "batched": args.batch / best["img_batched"],
            "one_at_a_time": args.batch / best["img_loop"],
        }
        report["answers_per_s"] = {
            "batched": args.batch / best["txt_batched"],
            "one_at_a_time": args.batch / best["txt_loop"],
        }
        report["speedup_images"] = best["img_loop"] / best["img_batched"]
        report["speedup_text"] = best["txt_loop"] / best["txt_batched"]
        report["trajectory_over_rollout"] = best["trajectory"] / best["img_batched"]
    emit(report, args.out)


def emit(report: dict, out: str | None) -> None:
    """Print the report (with the load average at the end) and write it to `out` if given."""
    report["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
