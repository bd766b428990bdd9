"""The `pairuni` command line: help, config commands, errors without tracebacks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from pairuni.cli import app

runner = CliRunner()


def test_console_script_help_lists_commands() -> None:
    exe = shutil.which("pairuni", path=str(Path(sys.executable).parent))
    assert exe is not None, "the `pairuni` console script is not installed in this environment"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "config" in result.stdout


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("pairuni ")


def test_config_show_applies_overrides() -> None:
    result = runner.invoke(app, ["config", "show", "--set", "algo.beta=0.04"])
    assert result.exit_code == 0, result.output
    assert "beta: 0.04" in result.stdout


def test_config_check_reports_bad_key_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("algo:\n  betta: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    assert "algo.betta: unknown key; did you mean 'beta'" in result.output
    assert "Traceback" not in result.output


def test_config_docs_check(tmp_path: Path) -> None:
    out = tmp_path / "config.md"
    assert runner.invoke(app, ["config", "docs", "--out", str(out), "--check"]).exit_code == 1
    assert runner.invoke(app, ["config", "docs", "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["config", "docs", "--out", str(out), "--check"]).exit_code == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert runner.invoke(app, ["config", "docs", "--out", str(out), "--check"]).exit_code == 1
