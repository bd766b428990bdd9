"""Rollout speed: JanusPolicy vs transformers' `generate` vs a loop without KV cache.

Same model, batch, prompts and seed for every contender, timed in one run (so the ratios hold
even on a busy machine; absolute seconds do not). Each timing is the median of `--repeats` runs
after one warm-up.

CPU (random tiny Janus models, float32):

    .venv/bin/python benchmarks/bench_rollout.py --threads 2

GPU (a random model shaped like Janus-Pro-1B, bfloat16, K=8 images of 576 tokens; images/s and
the forward+backward time of the CFG image log-probs):

    python benchmarks/bench_rollout.py --gpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from janus_shapes import janus_pro_like
from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.policy.janus import JanusPolicy, position_ids_from_mask, sample_from_logits
from pairuni.policy.tiny import build_tiny_janus

PROMPTS = ["a red square above a blue circle", "three green triangles"]


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """Median wall-clock seconds of `fn` over `repeats` runs, after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_together(
    fns: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Median seconds of each function, their runs interleaved (a, b, a, b, ...) so that a
    change in machine load between runs hits every contender alike. One warm-up run each."""
    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def log(message: str) -> None:
    print(f"[bench_rollout] {message}", file=sys.stderr, flush=True)


def hf_image_generate(policy: JanusPolicy, k: int, seed: int) -> torch.Tensor:
    """transformers' `generate(generation_mode="image")` on the same prompts: tokens only."""
    batch = policy.encode_generation(PROMPTS)
    rows = torch.arange(len(PROMPTS)).repeat_interleave(k)
    torch.manual_seed(seed)
    return policy.model.generate(
        input_ids=batch["input_ids"][rows].to(policy.device),
        attention_mask=batch["attention_mask"][rows].to(policy.device),
        generation_mode="image",
        do_sample=True,
        temperature=policy.rollout_config.image_temperature,
        guidance_scale=policy.rollout_config.cfg_scale,
    )


@torch.no_grad()
def no_cache_image_loop(policy: JanusPolicy, k: int, seed: int) -> torch.Tensor:
    """The CFG sampler without a KV cache: every step re-runs the whole sequence."""
    model, cfg = policy.model, policy.rollout_config
    batch = policy.encode_generation(PROMPTS)
    rows = torch.arange(len(PROMPTS)).repeat_interleave(k)
    ids = batch["input_ids"][rows].to(policy.device)
    mask = batch["attention_mask"][rows].to(policy.device)
    ids2, mask2 = torch.cat([ids, policy.unconditional_ids(ids)]), torch.cat([mask, mask])
    prompt = model.get_input_embeddings()(ids2)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    codes = torch.empty(ids.shape[0], 0, dtype=torch.long, device=policy.device)
    for _ in range(policy.num_image_tokens):
        emb = torch.cat(
            [prompt, model.prepare_embeddings_for_image_generation(codes.repeat(2, 1))], 1
        )
        full_mask = torch.cat([mask2, mask2.new_ones(mask2.shape[0], codes.shape[1])], 1)
        hidden = model.model.language_model(
            inputs_embeds=emb,
            attention_mask=full_mask,
            position_ids=position_ids_from_mask(full_mask),
            use_cache=False,
        ).last_hidden_state[:, -1]
        cond, uncond = model.model.generation_head(hidden).float().chunk(2)
        tok, _ = sample_from_logits(
            uncond + cfg.cfg_scale * (cond - uncond), cfg.image_temperature, generator=gen
        )
        codes = torch.cat([codes, tok[:, None]], 1)
    return codes


def image_logprob_step(policy: JanusPolicy, rollout: Any) -> None:
    """Forward + backward of the teacher-forced CFG image log-probs (the training cost)."""
    policy.model.zero_grad(set_to_none=True)
    policy.image_logprobs(rollout).sum().backward()


def bench_cpu_images(
    workdir: Path,
    tokens_side: int,
    hidden: int,
    layers: int,
    k: int,
    repeats: int,
    with_no_cache: bool,
) -> dict[str, Any]:
    path = build_tiny_janus(
        workdir / f"img{tokens_side}",
        image_size=tokens_side * 4,
        patch_size=4,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=4,
        codebook_size=1024,
        vq_levels=2,
    )
    policy = JanusPolicy.load(path, ModelConfig(device="cpu"), RolloutConfig())
    both = timed_together(
        {
            "ours": lambda: policy.rollout_image(PROMPTS, k, generator=0, decode=False),
            "hf": lambda: hf_image_generate(policy, k, 0),
        },
        repeats,
    )
    ours, hf = both["ours"], both["hf"]
    row = {
        "tokens": tokens_side**2,
        "batch": len(PROMPTS) * k,
        "model": f"{hidden}x{layers}",
        "ours_s": ours,
        "hf_s": hf,
    }
    log(f"{tokens_side**2} tokens: ours {ours:.3f} s, HF {hf:.3f} s")
    if with_no_cache:  # one run: the model is warm, and this loop is slow by design
        start = time.perf_counter()
        no_cache_image_loop(policy, k, 0)
        row["no_cache_s"] = time.perf_counter() - start
        log(f"{tokens_side**2} tokens: no-cache loop {row['no_cache_s']:.3f} s")
    rollout = policy.rollout_image(PROMPTS, k, generator=0, decode=False)
    row["logprob_fwd_bwd_s"] = timed(lambda: image_logprob_step(policy, rollout), repeats)
    row["decode_s"] = timed(lambda: policy.decode_images(rollout.image_ids), repeats)
    return row


def bench_cpu_text(workdir: Path, k: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    path = build_tiny_janus(workdir / "text", hidden_size=128, num_layers=2)
    policy = JanusPolicy.load(
        path, ModelConfig(device="cpu"), RolloutConfig(max_new_tokens=new_tokens, system_prompt="")
    )
    images = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    questions = ["what colour is it?", "how many shapes?"]

    def ours() -> int:
        return policy.rollout_text(images, questions, k, generator=0).completion_ids.shape[1]

    batch = policy.encode_understanding(images, questions)
    rows = torch.arange(2).repeat_interleave(k)
    inputs = {key: value[rows] for key, value in batch.items()}

    def hf() -> int:
        torch.manual_seed(0)
        out = policy.model.generate(
            **inputs, do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )
        return out.shape[1] - inputs["input_ids"].shape[1]

    return {
        "batch": 2 * k,
        "ours_tokens": ours(),
        "hf_tokens": hf(),
        **{f"{name}_s": s for name, s in timed_together({"ours": ours, "hf": hf}, repeats).items()},
    }


def bench_gpu(k: int, repeats: int, dry_run: bool = False) -> dict[str, Any]:
    device = torch.device("cpu" if dry_run else "cuda")
    policy = janus_pro_like("1b", device, torch.bfloat16, dry_run)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    prompts = PROMPTS[:1]
    ours = timed(lambda: policy.rollout_image(prompts, k, generator=0, decode=False), repeats, sync)
    batch = policy.encode_generation(prompts)
    rows = torch.zeros(k, dtype=torch.long)

    def hf() -> None:
        policy.model.generate(
            input_ids=batch["input_ids"][rows].to(device),
            attention_mask=batch["attention_mask"][rows].to(device),
            generation_mode="image",
            do_sample=True,
            guidance_scale=5.0,
        )

    hf_s = timed(hf, repeats, sync)
    rollout = policy.rollout_image(prompts, k, generator=0, decode=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    logprob_s = timed(lambda: image_logprob_step(policy, rollout), repeats, sync)
    decode_s = timed(lambda: policy.decode_images(rollout.image_ids), repeats, sync)
    return {
        "k": k,
        "ours_s": ours,
        "hf_s": hf_s,
        "ours_images_per_s": k / ours,
        "hf_images_per_s": k / hf_s,
        "logprob_fwd_bwd_s": logprob_s,
        "decode_s": decode_s,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=4, help="samples per prompt (2 prompts)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 576], help="image tokens")
    parser.add_argument("--k576", type=int, default=1, help="samples per prompt at 576 tokens")
    parser.add_argument("--no-text", action="store_true", help="skip the text rollout part")
    parser.add_argument(
        "--gpu-dry-run", action="store_true", help="the GPU part, shrunk, on the CPU (a check)"
    )
    parser.add_argument("--gpu", action="store_true", help="run the Janus-Pro-1B-shaped GPU part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.gpu or args.gpu_dry_run:
        row = bench_gpu(8 if args.gpu else 2, args.repeats, dry_run=args.gpu_dry_run)
        print(
            "| K | ours s | HF s | ours/HF | ours img/s | HF img/s | log-prob fwd+bwd s |"
            " decode s | peak GiB |\n|---|---|---|---|---|---|---|---|---|"
        )
        print(
            f"| {row['k']} | {row['ours_s']:.2f} | {row['hf_s']:.2f} | "
            f"{row['ours_s'] / row['hf_s']:.2f} | {row['ours_images_per_s']:.2f} | "
            f"{row['hf_images_per_s']:.2f} | {row['logprob_fwd_bwd_s']:.2f} | "
            f"{row['decode_s']:.2f} | {row['peak_gib']:.1f} |"
        )
        return
    print(
        "| image tokens | batch | LLM | ours s | HF s | ours/HF | no-cache s | no-cache/ours |"
        " log-prob fwd+bwd s | decode s |\n|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for side, k in ((8, args.k), (24, args.k576)):
            if side * side not in args.sizes:
                continue
            r = bench_cpu_images(work, side, 128, 2, k, args.repeats, with_no_cache=True)
            print(
                f"| {r['tokens']} | {r['batch']} | {r['model']} | {r['ours_s']:.3f} | "
                f"{r['hf_s']:.3f} | {r['ours_s'] / r['hf_s']:.2f} | {r['no_cache_s']:.3f} | "
                f"{r['no_cache_s'] / r['ours_s']:.1f} | {r['logprob_fwd_bwd_s']:.3f} | "
                f"{r['decode_s']:.3f} |",
                flush=True,
            )
        if args.no_text:
            return
        text = bench_cpu_text(work, args.k, 64, args.repeats)
    print(
        "\n| text batch | new tokens (ours / HF) | ours s | HF s | ours/HF |\n|---|---|---|---|---|"
    )
    print(
        f"| {text['batch']} | {text['ours_tokens']} / {text['hf_tokens']} | "
        f"{text['ours_s']:.3f} | {text['hf_s']:.3f} | {text['ours_s'] / text['hf_s']:.2f} |"
    )


if __name__ == "__main__":
    main()
