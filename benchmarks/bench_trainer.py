"""Seconds per step: pairuni's PairGRPO trainer vs TRL's GRPOTrainer, understanding only.

Same tiny random Janus checkpoint, same questions and images, same batch (B prompts x K answers,
up to L new tokens at temperature 1), same reward, one policy update per rollout, no KL, no
gradient checkpointing, fp32 on the CPU. Both trainers run in this one process, in alternating
steps (TRL, pairuni, TRL, ...), so that the load of the machine affects them alike; the result
is the ratio of the median step times (pairuni / TRL; below 1 means pairuni is faster).

    python benchmarks/bench_trainer.py --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import pairuni.training.tiny_demo as demo
from pairuni.rewards import toy


def pairuni_trainer(root: Path, args: argparse.Namespace) -> Any:
    from pairuni.config import PairUniConfig
    from pairuni.training.trainer import PairGRPOTrainer

    cfg = PairUniConfig.model_validate(
        {
            "seed": 0,
            "model": {"path": str(root / "model"), "device": "cpu"},
            "rollout": {"max_new_tokens": args.max_new_tokens},
            "data": {"path": str(root / "pairs.jsonl"), "mode": "understanding_only"},
            "algo": {
                "num_generations_und": args.k,
                "num_generations_gen": 2,
                "loss_aggregation": "seq-mean-token-mean",
            },
            "rewards": {
                "understanding": [{"name": "toy_letter_fraction"}],
                "generation": [],
            },
            "train": {
                "out_dir": str(root / "pairuni-run"),
                "max_steps": 10_000,
                "pairs_per_step": args.prompts,
                "micro_batch_size": args.prompts * args.k,
                "learning_rate": 1e-4,
                "save_every": 10_000,
            },
            "logging": {"progress_bar": False},
        }
    )
    trainer = PairGRPOTrainer(cfg)
    trainer._start_run()
    return trainer


def pairuni_steps(trainer: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        batch = trainer._sample_batch(trainer.step)
        rollouts = trainer._rollout(batch)
        scores = trainer._score(batch, rollouts)
        advantages = trainer._advantages(batch, scores)
        metrics = trainer._metrics(batch, rollouts, scores, advantages)
        metrics.update(trainer._update(rollouts, advantages, 0))
        trainer.step += 1
        trainer._log(metrics, batch, rollouts, scores)
        times.append(time.perf_counter() - start)
    return times


def trl_trainer(
    root: Path, args: argparse.Namespace, ours: Any
) -> tuple[Any, list[float], list[float]]:
    """TRL's trainer with a callback that times each TRL step and, between two TRL steps, runs
    and times one pairuni step: the two alternate step by step under the same machine load."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pairuni.data import Pair, read_records

    pairs = read_records(root / "pairs.jsonl", Pair)
    policy = ours.policy
    template = policy.rollout_config.und_prompt_template
    prompts, images = [], []
    for pair in pairs:
        options = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(pair.und_options))
        text = template.replace("{question}", f"{pair.und_question}\n{options}")
        content = [{"type": "image"}, {"type": "text", "text": text}]
        prompts.append([{"role": "user", "content": content}])
        images.append(pair.und_image.open(pairs.base_dir))
    dataset = Dataset.from_dict({"prompt": prompts, "image": images})

    def letter_fraction(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return toy.letter_fraction([], texts)  # type: ignore[return-value]

    config = GRPOConfig(
        output_dir=str(root / "trl-run"),
        per_device_train_batch_size=args.prompts * args.k,
        num_generations=args.k,
        max_completion_length=args.max_new_tokens,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-4,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=10_000,
        save_strategy="no",
        temperature=1.0,
        beta=0.0,
        loss_type="grpo",
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        log_level="error",
    )
    trainer = GRPOTrainer(
        model=str(root / "model"),
        reward_funcs=letter_fraction,
        args=config,
        train_dataset=dataset,
        processing_class=policy.processor,
    )
    trl_times: list[float] = []
    our_times: list[float] = []

    class Interleave(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args_: Any, state: Any, *a: Any, **k: Any) -> None:
            elapsed = time.perf_counter() - self.start
            ours_elapsed = pairuni_steps(ours, 1)[0]
            if state.global_step > args.warmup:  # lazy initialisation is 5-40x slower
                trl_times.append(elapsed)
                our_times.append(ours_elapsed)

    trainer.add_callback(Interleave())
    return trainer, trl_times, our_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="questions per step (B)")
    parser.add_argument("--k", type=int, default=4, help="answers per question (K)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each trainer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from pairuni.policy.tiny import build_tiny_janus

        build_tiny_janus(root / "model")
        demo.write_demo_pairs(root, num_pairs=16)
        ours = pairuni_trainer(root, args)
        trl, theirs, mine = trl_trainer(root, args, ours)
        trl.train()
    a, b = statistics.median(mine), statistics.median(theirs)
    print(
        f"understanding-only GRPO, tiny Janus, {args.prompts} prompts x {args.k} answers, "
        f"{args.max_new_tokens} new tokens, {args.threads} threads, {len(mine)} steps each"
    )
    print(f"pairuni  median {a:.3f} s/step  (min {min(mine):.3f})")
    print(f"TRL      median {b:.3f} s/step  (min {min(theirs):.3f})")
    print(f"ratio pairuni / TRL = {a / b:.2f}")


if __name__ == "__main__":
    main()
