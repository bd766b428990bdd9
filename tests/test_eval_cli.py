"""`pairuni eval` and `pairuni eval compare` on the command line: a real run on the tiny Janus,
--rescore without the model, the comparison table, and errors without tracebacks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.eval.layout import BenchmarkNotFoundError
from pairuni.eval.mmstar import load_mmstar

runner = CliRunner()


def write_mmstar(root: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buffer, format="PNG")
    rows = [
        {
            "index": index,
            "question": "What colour is it?\nOptions: A: red, B: blue, C: green, D: white",
            "image": {"bytes": buffer.getvalue(), "path": None},
            "answer": gold,
            "category": "coarse perception",
            "l2_category": "colour",
        }
        for index, gold in enumerate("ABA")
    ]
    root.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "mmstar.parquet")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from pairuni.policy.tiny import build_tiny_janus

    torch.set_num_threads(2)
    return build_tiny_janus(tmp_path_factory.mktemp("tiny") / "janus")


def test_help_lists_the_run_options_and_compare() -> None:
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0, result.output
    for word in ("--model", "--benchmarks", "--out", "--rescore", "--limit", "compare"):
        assert word in result.output
    assert "eval" in runner.invoke(app, ["--help"]).output


def test_run_then_rescore_without_the_model(tiny_dir: Path, tmp_path: Path) -> None:
    write_mmstar(tmp_path / "data" / "mmstar")
    out = tmp_path / "run"
    common = [
        "--set",
        f"eval.data_root={tmp_path / 'data'}",
        "--set",
        "eval.rollout.max_new_tokens=2",
    ]
    args = ["eval", "--model", str(tiny_dir), "--benchmarks", "mmstar", "--out", str(out)]
    result = runner.invoke(app, [*args, "--name", "tiny", "--set", "model.device=cpu", *common])
    assert result.exit_code == 0, result.output
    assert "## Understanding (paper Table 1)" in result.output
    assert "| Model | MMStar |" in result.output and "| tiny |" in result.output
    predictions = [json.loads(x) for x in (out / "mmstar" / "predictions.jsonl").open()]
    assert [p["id"] for p in predictions] == ["0", "1", "2"]
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["name"] == "tiny" and results["settings"]["rollout.cfg_scale"] == 5.0

    # score again from the cache: no --model, and the checkpoint is gone
    moved = tiny_dir.with_name("moved")
    tiny_dir.rename(moved)
    try:
        rescored = runner.invoke(app, ["eval", "--rescore", "--out", str(out), *common])
    finally:
        moved.rename(tiny_dir)
    assert rescored.exit_code == 0, rescored.output
    again = json.loads((out / "results.json").read_text())
    assert again["benchmarks"] == results["benchmarks"]


def write_run(root: Path, name: str, mmstar: float, pope_f1: float, cfg: float) -> Path:
    root.mkdir(parents=True)
    results = {
        "format": 1,
        "settings": {"name": name, "rollout.cfg_scale": cfg, "seed": 0},
        "benchmarks": {
            "mmstar": {
                "benchmark": "MMStar",
                "metrics": {"acc": mmstar, "category/math/acc": 0.25},
                "columns": [{"header": "MMStar", "key": "acc", "digits": 1, "scale": 100.0}],
            },
            "pope": {
                "benchmark": "POPE",
                "metrics": {"mean/f1": pope_f1},
                "columns": [{"header": "POPE", "key": "mean/f1", "digits": 1, "scale": 100.0}],
            },
        },
    }
    (root / "results.json").write_text(json.dumps(results))
    return root


def test_compare_prints_a_b_and_the_delta(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "Janus-Pro-1B", 0.461, 0.862, 5.0)
    b = write_run(tmp_path / "b", "PairUni-1B", 0.464, 0.864, 3.0)
    result = runner.invoke(app, ["eval", "compare", str(a), str(b), "--markdown"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "| Benchmark | Metric | A: Janus-Pro-1B | B: PairUni-1B | B − A |"
    assert lines[2] == "| MMStar | MMStar | 46.1 | 46.4 | +0.3 |"
    assert lines[3] == "| POPE | POPE | 86.2 | 86.4 | +0.2 |"
    assert "rollout.cfg_scale: 5.0 -> 3.0" in result.output  # settings that differ are listed

    rich = runner.invoke(app, ["eval", "compare", str(a / "results.json"), str(b), "--all"])
    assert rich.exit_code == 0, rich.output
    row = next(line for line in rich.output.splitlines() if "category/math/acc" in line)
    assert "0.2500" in row and "+0.0000" in row
    assert "46.1" in rich.output and "+0.3" in rich.output


def test_compare_of_a_folder_without_results_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "compare", str(tmp_path), str(tmp_path)])
    assert result.exit_code == 2
    assert "results.json" in result.output and "Traceback" not in result.output


def test_unknown_benchmark_lists_the_valid_ones(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--benchmarks", "mmstar,vqav2", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert (
        "unknown benchmark 'vqav2'; valid benchmarks: mmmu, mmstar, mme, pope, geneval, wise"
        in (result.output)
    )
    assert "Traceback" not in result.output


def test_missing_benchmark_directory_prints_the_loaders_message(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkNotFoundError) as expected:
        list(load_mmstar(tmp_path / "mmstar"))
    args = ["eval", "--benchmarks", "mmstar", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--set", f"eval.data_root={tmp_path}"])
    assert result.exit_code == 2
    assert f"error: {expected.value}" in result.output
    assert "Traceback" not in result.output


def test_missing_model_is_named(tmp_path: Path) -> None:
    write_mmstar(tmp_path / "mmstar")
    args = ["eval", "--benchmarks", "mmstar", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--set", f"eval.data_root={tmp_path}"])
    assert result.exit_code == 2
    assert "no checkpoint given: pass --model DIR (or set model.path)" in result.output


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_files_of_an_uninterrupted_one(
    tiny_dir: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 200)).save(buffer, format="PNG")
    image = {"bytes": buffer.getvalue(), "path": None}
    rows = [
        {"index": i, "question": "Which?\nOptions: A: x, B: y", "answer": "A", "image": image,
         "category": "math", "l2_category": "m"}
        for i in range(12)
    ]  # fmt: skip
    (tmp_path / "data" / "mmstar").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "mmstar" / "mmstar.parquet")
    settings = [
        f"eval.data_root={tmp_path / 'data'}", "eval.und_batch_size=1",
        "eval.rollout.max_new_tokens=16", "eval.greedy_understanding=false", "model.device=cpu",
    ]  # fmt: skip
    overrides = [arg for s in settings for arg in ("--set", s)]

    def command(out: Path) -> list[str]:
        base = ["eval", "--model", str(tiny_dir), "--benchmarks", "mmstar", "--out", str(out)]
        return [*base, *overrides]

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "pairuni", *command(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    predictions = killed / "mmstar" / "predictions.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if predictions.is_file() and len(predictions.read_bytes().splitlines()) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(predictions.read_bytes().splitlines())
    assert 3 <= written < 12, "the kill came too late to interrupt the run"

    assert runner.invoke(app, command(killed)).exit_code == 0
    whole = tmp_path / "whole"
    assert runner.invoke(app, command(whole)).exit_code == 0
    for name in ("mmstar/predictions.jsonl", "results.json", "run.json"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name


def test_a_damaged_prediction_line_is_named(tmp_path: Path) -> None:
    write_mmstar(tmp_path / "mmstar")
    out = tmp_path / "run"
    (out / "mmstar").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"limit": None}))
    lines = ['{"id": "0", "response": "A"}', '{"id": "1"}', '{"id": "2", "response": "B"}']
    (out / "mmstar" / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    args = ["eval", "--rescore", "--out", str(out), "--set", f"eval.data_root={tmp_path}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "predictions.jsonl: line 2: field 'response' is missing" in result.output
    assert "Traceback" not in result.output
