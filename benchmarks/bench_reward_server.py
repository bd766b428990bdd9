"""The reward server under a burst: a real `pairuni reward-server` on loopback, many clients.

    .venv/bin/python benchmarks/bench_reward_server.py                  # 8 x 25 threads, new + old
    .venv/bin/python benchmarks/bench_reward_server.py --rounds 20 --configs new
    .venv/bin/python benchmarks/bench_reward_server.py --json /tmp/bench/reward_server.json

- server: `python -m pairuni reward-server --reward format` in its own process (a cheap regex
  reward, so the figures are the server's own cost), once per configuration: `new` (this
  version's defaults: backlog 1024, 32 threads, 30 s timeout, 64 MiB cap) and `old` (the
  previous behaviour: `--backlog 5 --threads 0 --timeout 0 --max-body-mb 1024`, i.e. Python's
  listen backlog, a thread per connection, no socket timeout, a 1 GiB cap); `threads0` (new
  but a thread per connection, to see what the thread cap costs).
- clients: `--clients` processes x `--threads` threads, released together by a barrier; each
  thread sends `--rounds` requests one after the other (`--batch` text samples each) through
  the `http` reward with retries=0, so that every reset or timeout counts as a failure.
- reported per configuration: requests, failures by kind, latency p50 / p95 / max (from the
  thread's send to its answer, queueing included), throughput (answers / wall time of the
  burst), the server's peak RSS; then one `--oversize-mb` body (0 skips it): the status, the time
  to the answer and the server's RSS growth.
- image sizes: base64 PNG bytes of real photos (scikit-learn's sample images, resized) and of
  noise (incompressible: the upper bound) at 384 and 1024 px, and how many fit in 64 MiB.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pairuni.rewards.base import RewardError
from pairuni.rewards.http_client import HttpReward
from pairuni.rewards.server import MIB

CONFIGS = {
    "new": [],
    "threads0": ["--threads", "0"],
    "old": ["--backlog", "5", "--threads", "0", "--timeout", "0", "--max-body-mb", "1024"],
}
ANSWER = "<think>because</think><answer>B</answer>"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(flags: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "pairuni", "reward-server", "--reward", "format"]
    command += ["--port", str(port), *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # poll while the server process imports and binds
        try:
            HttpReward(url=url).check_health()
            return process, url
        except RewardError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.2)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) / 1024


def error_kind(err: Exception) -> str:
    found = re.search(r"last error: ([\w ]+?)[:(]|\(HTTP (\d+)\)", str(err))
    if not found:
        return type(err).__name__
    return found.group(1) or f"HTTP {found.group(2)}"


def client_process(url: str, threads: int, rounds: int, batch: int, barrier: Any, out: Any) -> None:
    """One client process: `threads` threads, each sending `rounds` requests in turn."""
    logging.disable(logging.WARNING)  # a failed attempt is counted, not logged
    client = HttpReward(url=url, retries=0, timeout=60)
    prompts, answers = ["q"] * batch, [ANSWER] * batch
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def run() -> None:
        for _ in range(rounds):
            start = time.perf_counter()
            try:
                client(prompts, answers)
                ok = True
            except RewardError as err:
                ok, kind = False, error_kind(err)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[kind] += 1

    workers = [threading.Thread(target=run) for _ in range(threads)]
    barrier.wait()
    began = time.time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put({"latencies": latencies, "errors": dict(errors), "began": began, "ended": time.time()})


def burst(url: str, args: argparse.Namespace) -> dict[str, Any]:
    context = mp.get_context("spawn")
    barrier, out = context.Barrier(args.clients), context.Queue()
    task = (url, args.threads, args.rounds, args.batch, barrier, out)
    processes = [context.Process(target=client_process, args=task) for _ in range(args.clients)]
    for process in processes:
        process.start()
    parts = [out.get(timeout=900) for _ in processes]
    for process in processes:
        process.join()
    latencies = sorted(x for p in parts for x in p["latencies"])
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    wall = max(p["ended"] for p in parts) - min(p["began"] for p in parts)

    def quantile(q: float) -> float:
        return latencies[min(int(q * len(latencies)), len(latencies) - 1)] if latencies else 0.0

    return {
        "requests": len(latencies) + sum(errors.values()),
        "failures": sum(errors.values()),
        "failure_kinds": dict(errors),
        "p50_ms": round(1000 * quantile(0.50), 1),
        "p95_ms": round(1000 * quantile(0.95), 1),
        "max_ms": round(1000 * (latencies[-1] if latencies else 0.0), 1),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else 0.0,
        "throughput_rps": round(len(latencies) / wall, 1),
        "wall_s": round(wall, 2),
    }


def oversize(url: str, pid: int, size_mb: int) -> dict[str, Any]:
    """Send one body of `size_mb` MB of garbage; the answer's status and the RSS it cost."""
    host, port = url.rpartition("/")[2].split(":")
    body = b"x" * (size_mb * 10**6)
    before = rss_mib(pid)
    start = time.perf_counter()
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request("POST", "/score", body, {"Content-Type": "application/json"})
        status = connection.getresponse().status
    except OSError as err:
        status = type(err).__name__
    finally:
        connection.close()
    seconds = time.perf_counter() - start
    time.sleep(0.5)  # let the handler finish before reading its RSS
    return {
        "body_mb": size_mb,
        "status": status,
        "answer_s": round(seconds, 2),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(rss_mib(pid, "VmHWM"), 1),
    }


def image_sizes() -> list[dict[str, Any]]:
    """base64 PNG sizes at 384 and 1024 px: real photos (if scikit-learn ships them), noise."""
    sources: dict[str, Image.Image] = {}
    try:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        for path in sorted(folder.glob("*.jpg")):
            sources[f"photo {path.stem}"] = Image.open(path).convert("RGB")
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    rows = []
    for side in (384, 1024):
        images = {name: im.resize((side, side), Image.LANCZOS) for name, im in sources.items()}
        images["noise"] = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        for name, image in images.items():
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            size = len(base64.b64encode(buffer.getvalue()))
            rows.append(
                {
                    "image": name,
                    "side": side,
                    "kib": round(size / 1024),
                    "per_64mib": 64 * MIB // size,
                }
            )
    return rows


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError, AttributeError):  # not Linux: keep platform's name
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument("--threads", type=int, default=25, help="threads per client process")
    parser.add_argument("--rounds", type=int, default=5, help="requests per thread, in turn")
    parser.add_argument("--batch", type=int, default=8, help="samples per request")
    parser.add_argument("--configs", nargs="+", default=["new", "old"], choices=list(CONFIGS))
    parser.add_argument("--oversize-mb", type=int, default=300, help="0: skip that check")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": machine(), "load_before": os.getloadavg()}
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    for name in args.configs:
        process, url = start_server(CONFIGS[name])
        try:
            row = burst(url, args)
            row["server_peak_rss_mib"] = round(rss_mib(process.pid, "VmHWM"), 1)
            if args.oversize_mb:
                row["oversize"] = oversize(url, process.pid, args.oversize_mb)
        finally:
            process.terminate()
            process.wait(timeout=30)
        results[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    results["image_sizes"] = image_sizes()
    results["load_after"] = os.getloadavg()
    for row in results["image_sizes"]:
        print(
            f"  {row['side']} px {row['image']}: {row['kib']} KiB base64, "
            f"{row['per_64mib']} per 64 MiB"
        )
    print(json.dumps({k: results[k] for k in ("machine", "load_before", "load_after")}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
