"""One complete PairGRPO step at the shape of real use: a random model shaped like Janus-Pro-1B
(language model 2048 x 24, SigLIP-L 384/16, VQ codebook 16,384, 576 image tokens, vocabulary
102,400), one pair, K answers and K images, through `PairGRPOTrainer`'s own stages. Reports the
seconds and the memory of each phase; a check of shapes and memory, not a speed comparison
(that is bench_rollout.py's).

CPU (the issue's setting: K = 2, bf16 compute; full fine-tuning and LoRA):

    .venv/bin/python benchmarks/bench_real_step.py --mode lora
    .venv/bin/python benchmarks/bench_real_step.py --mode full --master bf16   # what fits 24 GiB

GPU (K = 8, 512 new tokens; adds images/s of the rollout against HF `generate`):

    python benchmarks/bench_real_step.py --gpu --mode both

`--dry-run` shrinks every width and depth (576 image tokens stay) to check the script in seconds.
Full fine-tuning with float32 master weights needs ~16 bytes per trained parameter (27 GB for
the 1.65 B of the language model): the script says so and skips it where memory is short.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from janus_shapes import janus_pro_like, parameter_counts
from pairuni.config import PairUniConfig
from pairuni.training.trainer import PairGRPOTrainer

BYTES_PER_TRAINED = {"fp32": 16, "bf16": 12}  # weights + grads + AdamW moments (+ none for SR)


def log(message: str) -> None:
    print(f"[bench_real_step] {message}", file=sys.stderr, flush=True)


def rss_gib() -> float:
    """This process's resident memory now, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class Phases:
    """Seconds and memory of each named phase (GPU: peak allocated; CPU: RSS after, and the
    process's peak so far)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        row: dict[str, Any] = {"phase": name, "seconds": time.perf_counter() - start}
        if self.cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            row["rss_gib"] = rss_gib()
            row["peak_rss_gib"] = peak_rss_gib()
        self.rows.append(row)
        log(json.dumps(row))

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed


def write_pair(root: Path) -> Path:
    """One aligned pair with a 384 px image and a four-option question."""
    Image.new("RGB", (384, 384), (200, 40, 40)).save(root / "image.png")
    record = {
        "pair_id": "p0",
        "kind": "aligned",
        "gen_prompt": "a red apple on a blue plate, studio light, photograph",
        "und_image": "image.png",
        "und_question": "What colour is the fruit?",
        "und_options": ["red", "green", "blue", "yellow"],
        "und_answer": "A",
    }
    path = root / "pairs.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def trainer_config(args: argparse.Namespace, lora: bool, pairs: Path, out: Path) -> PairUniConfig:
    model: dict[str, Any] = {"trainable": ["language_model"], "gradient_checkpointing": True}
    if lora:
        model["lora"] = {"rank": 16, "alpha": 32}
    return PairUniConfig.model_validate(
        {
            "model": model,
            "rollout": {"max_new_tokens": args.max_new_tokens, "system_prompt": ""},
            "data": {"path": str(pairs)},
            "algo": {"num_generations_und": args.k, "num_generations_gen": args.k},
            "rewards": {
                "understanding": [{"name": "toy_letter_fraction"}],
                "generation": [{"name": "toy_redness"}],
            },
            "train": {
                "out_dir": str(out),
                "pairs_per_step": 1,
                "micro_batch_size": args.micro_batch,
                "precision": "bf16",
                "master_weights": "fp32" if lora else args.master,
                "bf16_update": "stochastic_rounding",
                "max_steps": 1,
            },
            "logging": {"progress_bar": False},
        }
    )


def memory_needed_gib(args: argparse.Namespace, lora: bool) -> float:
    """Weights + grads + AdamW of the trained part, bf16 weights of the rest (docs table)."""
    counts = parameter_counts("1b")
    trained = 0 if lora else counts["language_model"]
    frozen = counts["total"] - trained
    return (trained * BYTES_PER_TRAINED[args.master] + frozen * 2) / 2**30


def hf_images_per_second(policy: Any, k: int) -> dict[str, float]:
    """rollout_image (with log-probs) vs HF generate(generation_mode="image") on K images."""
    prompts = ["a red apple on a blue plate"]
    batch = policy.encode_generation(prompts)
    rows = torch.zeros(k, dtype=torch.long)
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)

    def ours() -> None:
        policy.rollout_image(prompts, k, generator=0, decode=False)

    def hf() -> None:
        policy.model.generate(
            input_ids=batch["input_ids"][rows].to(policy.device),
            attention_mask=batch["attention_mask"][rows].to(policy.device),
            generation_mode="image",
            do_sample=True,
            guidance_scale=5.0,
        )

    times = {}
    for name, fn in (("ours", ours), ("hf", hf)):
        fn()  # warm-up
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times[name] = k / (time.perf_counter() - start)
    return {"ours_images_per_s": times["ours"], "hf_images_per_s": times["hf"]}


def run_step(args: argparse.Namespace, lora: bool, work: Path) -> dict[str, Any]:
    device = torch.device("cuda" if args.gpu else "cpu")
    label = "LoRA r16" if lora else f"full, {args.master} master"
    if not args.gpu and not args.dry_run:
        need, have = memory_needed_gib(args, lora), available_gib()
        if need > 0.92 * have:
            log(f"{label}: skipped, needs ~{need:.1f} GiB before activations, {have:.1f} free")
            return {"mode": label, "skipped": f"needs ~{need:.1f} GiB, {have:.1f} GiB free"}
    phases = Phases(device.type == "cuda")
    pairs = write_pair(work)
    config = trainer_config(args, lora, pairs, work / "run")
    with phases.phase("build model (random, bf16)"):
        policy = janus_pro_like("1b", device, torch.bfloat16, args.dry_run, config.model)
        policy.rollout_config = config.rollout
    with phases.phase("trainer setup (master weights, optimizer)"):
        trainer = PairGRPOTrainer(config, policy=policy)
    trained = sum(p.numel() for p in trainer.params)
    trainer._rollout_text = phases.wrap(f"rollout: {args.k} answers", trainer._rollout_text)
    trainer._rollout_image = phases.wrap(f"rollout: {args.k} images", trainer._rollout_image)
    trainer._optimizer_step = phases.wrap("optimizer step", trainer._optimizer_step)
    start = time.perf_counter()
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    with phases.phase("rewards + advantages"):
        advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    with phases.phase("update: loss fwd+bwd and step"):
        metrics = trainer._update(rollouts, advantages, 0)
    step_s = time.perf_counter() - start
    out: dict[str, Any] = {
        "mode": label,
        "device": str(device),
        "k": args.k,
        "max_new_tokens": args.max_new_tokens,
        "trained_parameters": trained,
        "step_seconds": step_s,
        "phases": phases.rows,
        "loss": metrics.get("loss"),
        "answer_tokens": int(rollouts["und"].rollout.completion_mask.sum()),
        "image_tokens": int(rollouts["gen"].rollout.image_ids.numel()),
    }
    if args.gpu:
        out.update(hf_images_per_second(policy, args.k))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["full", "lora", "both"], default="both")
    parser.add_argument("--master", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--gpu", action="store_true", help="on CUDA: K = 8, 512 new tokens")
    parser.add_argument("--dry-run", action="store_true", help="shrunk widths: a quick check")
    parser.add_argument("--k", type=int, default=None, help="samples per task (CPU 2, GPU 8)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="CPU 64, GPU 512")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    args.k = args.k or (8 if args.gpu else 2)
    args.max_new_tokens = args.max_new_tokens or (512 if args.gpu else 64)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    modes = {"full": [False], "lora": [True], "both": [False, True]}[args.mode]
    results = []
    for lora in modes:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run_step(args, lora, Path(tmp)))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
