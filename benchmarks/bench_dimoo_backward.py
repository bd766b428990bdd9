"""Memory of the `trajectory` loss backward on Lumina-DiMOO: one backward through the whole replay
against one backward per replay group (`rollout.dimoo.trajectory_backward_groups`), on the same
model and rollout in one run.

    .venv/bin/python benchmarks/bench_dimoo_backward.py            # CPU: a small random model
    python benchmarks/bench_dimoo_backward.py --gpu                # DiMOO-8B's shape (4096 x 32)

The trajectory estimator scores the tokens committed at step t from the state before step t:
one forward per step and guidance branch (35 x 2 for the paper's images). Backpropagated at
once, every one of those forwards' activations is alive at the peak; backpropagated group by
group, one group's are. Each mode runs in its own process (CPU: the rise of the peak resident
size over the rollout's; GPU: `torch.cuda.max_memory_allocated` above the rollout's), and the
gradients of the modes are compared (they must agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
MODES = {"whole": None, "per_group": 1}


def peak_bytes(gpu: bool) -> int:
    if gpu:
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """One mode: load, roll out (no gradient), then the loss backward; writes its figures."""
    from bench_dimoo import build

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    policy, shape = build(args, Path(args.folder))
    policy.settings.trajectory_backward_groups = MODES[args.mode]
    prompts = [f"a picture number {i} of {'red ' * (i % 4)}squares" for i in range(args.batch)]
    rollout = policy.rollout_image(prompts, 1, generator=0, decode=False)
    if args.gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_bytes(args.gpu)
    start = time.perf_counter()
    stages = policy.logprob_stages("generation", rollout)
    if stages == 1:
        policy.image_logprobs(rollout).sum().backward()
    for stage in range(stages if stages > 1 else 0):
        logp, _ = policy.stage_logprobs("generation", rollout, stage)
        logp.sum().backward()
    if args.gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    grads = torch.cat([p.grad.reshape(-1).float().cpu() for p in policy.module.parameters()])
    torch.save(grads, Path(args.folder) / f"grads-{args.mode}.pt")
    report = {
        "mode": args.mode,
        "stages": stages,
        "backward_s": seconds,
        "peak_rise_bytes": peak_bytes(args.gpu) - before,
        "image_tokens": int(rollout.image_ids.shape[1]),
        "shape": shape,
    }
    (Path(args.folder) / f"report-{args.mode}.json").write_text(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--batch", type=int, default=2, help="images (the paper's rollout size)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=256, help="px; 512 on --gpu")
    parser.add_argument("--image-steps", type=int, default=35)
    parser.add_argument("--text-steps", type=int, default=2)
    parser.add_argument("--answer-length", type=int, default=16)
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu and args.image_size == 256:
        args.image_size = 512
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_dimoo import emit

    if args.mode:
        child(args)
        return
    report: dict = {"args": vars(args), "load_avg_before": os.getloadavg()[0], "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--folder", tmp]
            subprocess.run(cmd, check=True)
            report["modes"][mode] = json.loads((Path(tmp) / f"report-{mode}.json").read_text())
        whole, staged = (torch.load(Path(tmp) / f"grads-{m}.pt") for m in MODES)
        difference = float((whole - staged).abs().max()) / float(whole.abs().max())
        report["max_abs_grad_difference_over_max_grad"] = difference
    rises = {m: r["peak_rise_bytes"] for m, r in report["modes"].items()}
    report["peak_rise_whole_over_per_group"] = rises["whole"] / max(rises["per_group"], 1)
    emit(report, args.out)


if __name__ == "__main__":
    main()
