"""`JsonlAppender`: durable appends, resume without duplicates, recovery from a kill."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pairuni.data import DataError, GenerationSample, JsonlAppender, Pair, read_records


def sample(i: int) -> GenerationSample:
    return GenerationSample(id=f"g{i}", prompt=f"{i} red cubes", scene={"count": i})


def test_append_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "out" / "gen.jsonl"
    with JsonlAppender(path, GenerationSample) as out:
        assert out.done_ids == set()
        out.extend(sample(i) for i in range(3))
        assert out.written == 3
    assert read_records(path, GenerationSample).records == [sample(i) for i in range(3)]
    assert len(path.read_text().splitlines()) == 3


def test_resume_exposes_done_ids_and_refuses_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    with JsonlAppender(path, GenerationSample) as out:
        out.extend(sample(i) for i in range(2))
    with JsonlAppender(path, GenerationSample) as out:
        assert out.done_ids == {"g0", "g1"}
        todo = [s for s in (sample(i) for i in range(4)) if s.id not in out.done_ids]
        out.extend(todo)
        with pytest.raises(ValueError, match="'g3' is already written"):
            out.append(sample(3))
    assert [r.id for r in read_records(path, GenerationSample)] == ["g0", "g1", "g2", "g3"]


def test_recovers_from_a_truncated_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gen.jsonl"
    with JsonlAppender(path, GenerationSample) as out:
        out.extend(sample(i) for i in range(3))
    whole = path.read_bytes()
    torn = json.dumps(sample(3).model_dump())[:17]  # a kill in the middle of a write
    path.write_bytes(whole + torn.encode())
    with caplog.at_level(logging.WARNING), JsonlAppender(path, GenerationSample) as out:
        assert out.dropped_bytes == 17
        assert out.done_ids == {"g0", "g1", "g2"}
        assert path.read_bytes() == whole  # cut back to the last complete line
        out.append(sample(3))
    assert "dropped a partial last line (line 4, 17 bytes)" in caplog.text
    assert [r.id for r in read_records(path, GenerationSample)] == ["g0", "g1", "g2", "g3"]


def test_complete_record_without_newline_is_redone(tmp_path: Path) -> None:
    # A whole JSON object whose newline never reached the disk counts as torn: it is redone.
    path = tmp_path / "gen.jsonl"
    path.write_text(
        json.dumps({"id": "g0", "prompt": "p"}) + "\n" + json.dumps({"id": "g1", "prompt": "p"})
    )
    with JsonlAppender(path, GenerationSample) as out:
        assert out.done_ids == {"g0"}


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    path.write_text('{"id": "g0", "prompt": "p"}\n{"id": \n{"id": "g2", "prompt": "p"}\n')
    with pytest.raises(DataError, match=r"gen\.jsonl, line 2: invalid JSON"):
        JsonlAppender(path, GenerationSample)


def test_invalid_record_and_duplicate_in_file(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    path.write_text('{"id": "g0", "prompt": ""}\n')
    with pytest.raises(DataError, match=r"line 1, field prompt"):
        JsonlAppender(path, GenerationSample)
    path.write_text('{"id": "g0", "prompt": "p"}\n{"id": "g0", "prompt": "q"}\n')
    with pytest.raises(DataError, match=r"line 2, field id: duplicate id 'g0'"):
        JsonlAppender(path, GenerationSample)


def test_key_defaults_and_checks(tmp_path: Path) -> None:
    with JsonlAppender(tmp_path / "pairs.jsonl", Pair) as out:
        assert out.key == "pair_id"
    with JsonlAppender(tmp_path / "g.jsonl", GenerationSample, key="prompt") as out:
        out.append(sample(0))
        assert out.done_ids == {"0 red cubes"}
    with pytest.raises(ValueError, match="key="):
        JsonlAppender(tmp_path / "x.jsonl", GenerationSample, key="nope")
    with pytest.raises(ValueError, match=r"plain \.jsonl"):
        JsonlAppender(tmp_path / "x.jsonl.gz", GenerationSample)


def test_wrong_type_and_closed(tmp_path: Path) -> None:
    out = JsonlAppender(tmp_path / "g.jsonl", GenerationSample)
    with pytest.raises(TypeError, match="expected a GenerationSample"):
        out.append("not a record")  # type: ignore[arg-type]
    out.close()
    with pytest.raises(ValueError, match="closed"):
        out.append(sample(0))


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    with (
        JsonlAppender(path, GenerationSample),
        pytest.raises(RuntimeError, match="another process"),
    ):
        JsonlAppender(path, GenerationSample)
    with JsonlAppender(path, GenerationSample):
        pass  # the lock went with the first writer


_WRITER = """
import sys
from pairuni.data import GenerationSample, JsonlAppender
with JsonlAppender(sys.argv[1], GenerationSample) as out:
    i = len(out.done_ids)
    while True:
        out.append(GenerationSample(id=f"g{i}", prompt="x" * 2000))
        i += 1
"""


def test_survives_sigkill(tmp_path: Path) -> None:
    """A real kill -9 mid-run: reopening yields only whole records and resumes after them."""
    path = tmp_path / "killed.jsonl"
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
    deadline = time.monotonic() + 30
    while (not path.exists() or path.stat().st_size < 50_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert path.stat().st_size >= 50_000, "the writer did not start in time"
    with JsonlAppender(path, GenerationSample) as out:
        done = len(out.done_ids)
        assert out.done_ids == {f"g{i}" for i in range(done)}
        out.append(GenerationSample(id=f"g{done}", prompt="after the kill"))
    records = read_records(path, GenerationSample)
    assert [r.id for r in records] == [f"g{i}" for i in range(done + 1)]
