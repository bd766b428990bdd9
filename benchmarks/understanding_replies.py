"""What a ShapesWorld model's understanding replies contain, beyond right or wrong: a diagnostic
(not a timing) for issue 16 item 2, "why understanding RL lowers greedy accuracy here".

For each model, on the held-out records of a split (the sweep's validation split by default):

- accuracy overall and per question category (the `mc_accuracy` reward, as the demo scores it);
- `in_options`: share of replies whose answer picks one of the offered options at all (an answer
  that names no option scores 0 however good the think);
- the think: the base model's SFT taught it to list the objects left to right
  ("small red circle, large blue square"), so the think is a readout of what the model sees.
  `think_objects` is the mean number of objects it lists (`true_objects`: the scenes' mean),
  `think_count_exact` the share where that number is right, `think_precision` / `think_recall`
  the share of listed descriptions that are in the scene / of the scene's objects that are
  listed (multiset match on size, colour and shape), `think_distinct` the share of distinct
  think texts (1 = every reply its own, near 0 = one reply for everything: a collapse).

    python benchmarks/understanding_replies.py \\
        --model base=.cache/pairuni/shapes-base/HASH/model \\
        --model rl=runs/sweep/lr0.0005_beta0/runs/understanding_only/seed1/train/model \\
        --out docs/results/understanding-replies.json

Results and their reading: docs/results/sweep.md ("Why understanding RL ...").
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pairuni.rewards.understanding import answer_region, mc_accuracy, parse_choice
from pairuni.shapes.demo import DemoSettings, demo_training_config, heldout, load_demo_policy
from pairuni.shapes.scene import Scene

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def think_items(reply: str) -> list[str]:
    """The object descriptions a reply's think lists ("small red circle, ..." -> 2 items)."""
    match = _THINK.search(reply)
    if not match:
        return []
    return [" ".join(item.split()) for item in match.group(1).split(",") if item.strip()]


def multiset_overlap(listed: Sequence[str], truth: Sequence[str]) -> int:
    return sum((Counter(listed) & Counter(truth)).values())


def reply_statistics(records: Sequence[dict[str, Any]], replies: Sequence[str]) -> dict[str, Any]:
    """The numbers of the module docstring for one model's replies to `records`."""
    correct = mc_accuracy(
        [r["question"] for r in records],
        list(replies),
        und_options=[r["options"] for r in records],
        und_answer=[r["answer"] for r in records],
    )
    by_category: dict[str, list[float]] = {}
    in_options, listed_n, true_n, exact, matched = [], [], [], [], 0
    for record, reply, score in zip(records, replies, correct, strict=True):
        by_category.setdefault(record["category"], []).append(float(score or 0.0))
        in_options.append(parse_choice(answer_region(reply), record["options"]) is not None)
        listed = think_items(reply)
        truth = [obj.describe() for obj in Scene.from_dict(record["scene"]).objects]
        listed_n.append(len(listed))
        true_n.append(len(truth))
        exact.append(len(listed) == len(truth))
        matched += multiset_overlap(listed, truth)
    n = len(records)
    return {
        "accuracy": sum(float(c or 0.0) for c in correct) / n,
        "per_category": {k: sum(v) / len(v) for k, v in sorted(by_category.items())},
        "in_options": sum(in_options) / n,
        "think_objects": sum(listed_n) / n,
        "true_objects": sum(true_n) / n,
        "think_count_exact": sum(exact) / n,
        "think_precision": matched / max(sum(listed_n), 1),
        "think_recall": matched / max(sum(true_n), 1),
        "think_distinct": len({m.group(1) if (m := _THINK.search(r)) else r for r in replies}) / n,
        "examples": list(replies[:5]),
    }


def model_replies(path: str, records: Sequence[dict], images: Sequence, greedy: bool) -> list[str]:
    import torch
    from PIL import Image

    policy = load_demo_policy(path, demo_training_config())
    generator = torch.Generator().manual_seed(0)
    replies: list[str] = []
    for start in range(0, len(records), 64):
        chunk = records[start : start + 64]
        rollout = policy.rollout_text(
            [Image.fromarray(im) for im in images[start : start + 64]],
            [r["question"] for r in chunk],
            options=[r["options"] for r in chunk],
            greedy=greedy,
            generator=generator,
        )
        replies += rollout.texts
    return replies


def render(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    rows = ["accuracy", "in_options", "think_objects", "true_objects", "think_count_exact"]
    rows += ["think_precision", "think_recall", "think_distinct"]
    categories = sorted(next(iter(results.values()))["per_category"])
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in rows:
        lines.append(f"| {key} | " + " | ".join(f"{results[n][key]:.3f}" for n in names) + " |")
    for category in categories:
        cells = " | ".join(f"{results[n]['per_category'][category]:.3f}" for n in names)
        lines.append(f"| accuracy: {category} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH (repeat)")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--sampled", action="store_true", help="temperature-1 draws, not greedy")
    parser.add_argument("--out", type=Path, help="JSON of every number (and the table beside)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    records, images, _ = heldout(DemoSettings(eval_split=args.split))
    results = {}
    for item in args.model:
        name, _, path = item.partition("=")
        results[name] = reply_statistics(
            records, model_replies(path, records, images, greedy=not args.sampled)
        )
    table = render(results)
    print(table)
    if args.out:
        models = dict(item.partition("=")[::2] for item in args.model)
        payload = {"split": args.split, "greedy": not args.sampled, "models": models}
        args.out.write_text(json.dumps({**payload, "results": results}, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
