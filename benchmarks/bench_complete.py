"""Semantic-completion throughput: pairuni's `complete_records` against a bare `openai` client.

    .venv/bin/python benchmarks/bench_complete.py                  # 2,000 records, 3 runs each
    .venv/bin/python benchmarks/bench_complete.py --records 3000 --runs 5 --latency 0.2

A loopback OpenAI-compatible server (HTTP/1.1 keep-alive, asyncio, in its own process so that it
does not share the client's interpreter) answers every POST /v1/chat/completions after
`--latency` seconds with a valid completion. Both contenders send the same request per record
(system + user message, the record's PNG as a data URL) with at most `--concurrency` requests in
flight:

- **bare**: `openai.AsyncOpenAI(max_retries=0)`, an `asyncio.Semaphore`, `asyncio.gather`; the
  reply is parsed as JSON and kept in memory: no output, no cache, no durability;
- **pairuni**: `complete_records(..., verify=False)` into a fresh output file and cache folder:
  templates, schema validation, the cache, the append-only output, the request ledger and
  everything durable (fsync'ed) before a record is acknowledged.

The runs alternate (bare, pairuni, bare, ...) so that load changes hit both. Ideal records/s is
concurrency / latency. The machine is usually shared: compare the ratio, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPLY = json.dumps({"prompt": "a red square above a blue circle"})


# --------------------------------------------------------------------------- the server


async def _serve(latency: float) -> None:
    body_template = {
        "id": "bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": REPLY},
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
    payload = json.dumps(body_template).encode()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                await asyncio.sleep(latency)
                writer.write(head + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1"


# --------------------------------------------------------------------------- the contenders


def make_records(folder: Path, n: int) -> list:
    import numpy as np
    from PIL import Image

    from pairuni.data.schema import UnderstandingSample

    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        records.append(
            UnderstandingSample(
                id=f"r{i}",
                image=str(path),
                question=f"How many shapes are in picture {i}?",
                options=["one", "two", "three", "four"],
                answer="B",
            )
        )
    return records


async def _bare(records: list, url: str, concurrency: int) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=120)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(record) -> dict:
        async with semaphore:
            data = record.image.read_bytes()
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            text = f"Question: {record.question}\nAnswer: {record.answer}\nWrite a prompt."
            messages = [
                {"role": "system", "content": "You annotate data."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": uri}},
                        {"type": "text", "text": text},
                    ],
                },
            ]
            reply = await client.chat.completions.create(model="bench-model", messages=messages)
            return json.loads(reply.choices[0].message.content)

    results = await asyncio.gather(*(one(r) for r in records))
    await client.close()
    return sum(1 for r in results if r.get("prompt"))


def run_bare(records: list, url: str, concurrency: int) -> tuple[float, int]:
    start = time.perf_counter()
    done = asyncio.run(_bare(records, url, concurrency))
    return time.perf_counter() - start, done


def run_pairuni(records: list, url: str, concurrency: int, folder: Path) -> tuple[float, int]:
    from pairuni.pairing.annotators import make_annotator
    from pairuni.pairing.complete import complete_records
    from pairuni.pairing.config import CompleteConfig

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PAIRUNI_BENCH_KEY"] = "bench"
    cfg = CompleteConfig(
        base_url=url,
        model="bench-model",
        api_key_env="PAIRUNI_BENCH_KEY",
        verify=False,
        max_concurrency=concurrency,
        cache_dir=str(folder / "cache"),
    )
    annotator = make_annotator(cfg)
    start = time.perf_counter()
    summary = complete_records(
        records, "understanding", folder / "quads.jsonl", annotator, cfg, progress=False
    )
    return time.perf_counter() - start, summary.completed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--only", choices=["bare", "pairuni"], default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.latency))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-complete-"))
    server, url = start_server(args.latency)
    try:
        records = make_records(work, args.records)
        rates: dict[str, list[float]] = {"bare": [], "pairuni": []}
        contenders = [args.only] if args.only else ["bare", "pairuni"]
        for run in range(args.runs):
            for name in contenders:
                if name == "bare":
                    seconds, done = run_bare(records, url, args.concurrency)
                else:
                    seconds, done = run_pairuni(records, url, args.concurrency, work / f"run{run}")
                assert done == len(records), f"{name} completed {done} of {len(records)}"
                rates[name].append(len(records) / seconds)
                print(
                    f"run {run} {name:8s} {seconds:6.2f} s  {rates[name][-1]:6.1f} records/s",
                    flush=True,
                )
        ideal = args.concurrency / args.latency
        report = {"ideal": ideal, "load_avg": os.getloadavg()[0]}
        for name, values in rates.items():
            if values:
                report[name] = {
                    "median": statistics.median(values),
                    "runs": [round(v, 1) for v in values],
                }
        if rates["bare"] and rates["pairuni"]:
            report["ratio"] = report["pairuni"]["median"] / report["bare"]["median"]
        print(json.dumps(report, indent=2))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
