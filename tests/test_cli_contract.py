"""One CLI contract for `ovrsis` and `piseg`: a refused input ends with one `error:` line (printed
verbatim, brackets included) and exit 2, the command tree is the documented one, and every error
exit goes through pipeline/cli/terminal.py."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app as ovrsis
from pipeline.cli.terminal import EXIT_REFUSED
from piseg.cli import app as piseg

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ovrsis", "taxonomy", "pipeline", "flows", "audit", "piseg")
TERMINAL = ROOT / "pipeline" / "cli" / "terminal.py"
runner = CliRunner()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def refused(app: typer.Typer, args: list[str]) -> str:
    """Run a command that must be refused; the one `error:` line it printed, which is its last."""
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_REFUSED, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(error_lines(result.stderr)) == 1, result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def test_categories_refuses_a_missing_captions_file_naming_it_verbatim(tmp_path):
    captions = tmp_path / "[red]captions[/red] [0, 1).jsonl"  # markup and a range: printed as they are
    line = refused(ovrsis, ["categories", "-t", "ovrsis95k", "-c", str(captions), "-o", str(tmp_path / "out.jsonl")])
    assert line == f"error: {captions}: captions file not found"


def test_audit_stats_refuses_a_missing_records_folder(tmp_path):
    records = tmp_path / "no-build"
    line = refused(ovrsis, ["audit", "stats", "--records", str(records), "--report", str(tmp_path / "report")])
    assert str(records / "records.jsonl") in line
    assert not (tmp_path / "report").exists()


def test_build_refuses_a_missing_configuration(tmp_path, monkeypatch):
    # `ovrsis build` sets Prefect's defaults in the environment: undo them after the test
    for name, value in (
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"),
        ("PREFECT_LOGGING_LEVEL", "WARNING"),
    ):
        monkeypatch.setenv(name, os.environ.get(name, value))
    config = tmp_path / "missing.yaml"
    assert refused(ovrsis, ["build", "--config", str(config)]) == f"error: {config}: configuration file not found"


def test_piseg_predict_refuses_a_bad_tile_size_with_its_brackets(tmp_path):
    line = refused(
        piseg,
        ["predict", str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "c.pt"), "--classes", "road"]
        + ["--tile-size", "8", "--out", str(tmp_path / "out")],
    )
    assert line == "error: --tile-size must be at least 16 and --overlap in [0, tile size), got 8 and 128"
    assert not (tmp_path / "out").exists()  # refused before any work


def test_ovrsis_command_tree():
    expected = {
        "categories",
        "annotate",
        "build",
        "serve",
        "evaluate-build",
        "shards",
        "cache",
        "audit",
        "export",
        "models",
        "view",
        "release",
    }
    group = typer.main.get_command(ovrsis)
    assert set(group.commands) == expected
    groups = {name: set(command.commands) for name, command in group.commands.items() if hasattr(command, "commands")}
    assert groups == {
        "shards": {"verify", "export", "import"},
        "cache": {"stats", "prune"},
        "audit": {"server", "backend", "push", "pull", "status", "stats", "round"},
        "export": {"vectors", "stac", "hf"},
        "models": {"fetch", "check"},
        "release": {"create", "diff"},
    }
    result = runner.invoke(ovrsis, ["--help"])
    assert result.exit_code == 0
    for name in expected:
        assert re.search(rf"^\W*{re.escape(name)}\s", result.stdout, re.MULTILINE), name


def command_paths(command: object, prefix: list[str]) -> list[str]:
    """Every leaf command under `command`, as typed: `ovrsis audit push`."""
    if not hasattr(command, "commands"):
        return [" ".join(prefix)]
    return [path for name, sub in command.commands.items() for path in command_paths(sub, [*prefix, name])]


@pytest.mark.parametrize(("name", "app"), [("ovrsis", ovrsis), ("piseg", piseg)])
def test_every_command_is_in_the_readme(name: str, app: typer.Typer) -> None:
    """A command a user can run but not read about is a command nobody finds: each one, as typed, is in
    the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [path for path in command_paths(typer.main.get_command(app), [name]) if path not in readme]
    assert not missing, f"commands missing from README.md: {missing}"


def package_sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py")) if path != TERMINAL]


def test_error_lines_and_exit_codes_come_from_the_terminal_module():
    sources = package_sources()
    assert len(sources) > 50
    bare_exit = re.compile(r"typer\.Exit\(\s*(code\s*=\s*)?\d")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "[red]error:[/red]" in line or bare_exit.search(line) or "EXIT_PARTIAL" in line  # exit 1: set_aside only
    ]
    assert offenders == [], "use pipeline.cli.terminal (fail, set_aside, the EXIT_ constants):\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "module",
    [
        "flows.cli",
        "flows.commands",
        "pipeline.cli.commands",
        "audit.cli",
        "pipeline.export.cli",
        "pipeline.models.cli",
        "piseg.cli",
    ],
)
def test_every_cli_module_exports_a_typer_app(module):
    assert isinstance(importlib.import_module(module).app, typer.Typer)


def test_the_terminal_module_imports_no_heavy_library():
    heavy = ("torch", "transformers", "rasterio", "prefect", "label_studio_sdk", "sentence_transformers", "spacy")
    code = (
        f"import sys, json; import pipeline.cli.terminal; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("message", ["plain", "[bold]not bold[/bold] in [0, 1)", ValueError("x [/red] y")])
def test_fail_prints_the_message_verbatim(message, capsys):
    from pipeline.cli.terminal import fail

    with pytest.raises(typer.Exit) as stopped:
        fail(message)
    assert stopped.value.exit_code == EXIT_REFUSED
    assert capsys.readouterr().err == f"error: {message}\n"
