"""The one error boundary of `ovrsis` and `piseg` (pipeline.cli.terminal.run_command): a full disk, a
refused permission, a project error or a damaged review ledger end with one `error:` line and exit 2,
a bug with its traceback and exit 70, Ctrl-C and SIGTERM with one line, 130 or 143 within seconds and
no child process left; a build with nothing usable exits 2 (issue 27, item 7)."""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import typer

from flows.sample_build import make_imagery, ovrsis, prefect_env, run_build, write_config
from ovrsis import errors
from pipeline.cli.terminal import EXIT_CRASHED, EXIT_REFUSED, problem_of, run_command

REPO = Path(__file__).resolve().parents[1]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error_line(result: subprocess.CompletedProcess, code: int = EXIT_REFUSED) -> str:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(error_lines(result.stderr)) == 1, result.stderr[-3000:]
    return error_lines(result.stderr)[0]


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A small tmpfs at FOLDER (root only): a real full disk or read-only file system."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def captions_file(path: Path, lines: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"c{i}", "caption": "cars on a road near trees"}) + "\n" for i in range(lines))
    )
    return path


def test_the_project_errors_have_one_root_that_the_boundary_maps_to_exit_2():
    """The project's errors live in ovrsis/errors.py under OvrsisError (one light module: catching one
    imports nothing heavy), and the boundary prints each as its message verbatim. An exception class
    defined anywhere else derives from the root too (the ML backend's one answer for an unreadable
    image), or is the stop signal itself."""
    strays = []
    for package in ("taxonomy", "pipeline", "flows", "audit", "piseg"):
        for source in sorted((REPO / package).rglob("*.py")):
            text = source.read_text()
            module = importlib.import_module(".".join(source.relative_to(REPO).with_suffix("").parts))
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, ast.ClassDef):
                    continue
                kind = getattr(module, node.name, None)
                if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                    continue
                if not issubclass(kind, errors.OvrsisError) and node.name != "Terminated":
                    strays.append(f"{source.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not strays, strays
    kinds = [k for k in vars(errors).values() if isinstance(k, type) and issubclass(k, Exception)]
    assert len(kinds) > 20 and all(issubclass(kind, errors.OvrsisError) for kind in kinds)
    for kind in kinds:
        assert problem_of(kind("[red]x.tif[/red]: bad")) == "[red]x.tif[/red]: bad", kind
    assert problem_of(ValueError("a bug")) is None


def run_categories(captions: Path, out: Path, **popen: object) -> subprocess.CompletedProcess:
    """`ovrsis categories` over CAPTIONS into OUT, output captured (POPEN: extra subprocess arguments)."""
    command = ovrsis("categories", "-t", "ovrsis95k", "-c", str(captions), "-o", str(out))
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **popen)


def test_a_full_disk_ends_with_one_line_naming_the_file(tmp_path):
    captions = captions_file(tmp_path / "captions.jsonl", 4000)
    with tmpfs(tmp_path / "small", "size=64k") as disk:
        result = run_categories(captions, disk / "categories.jsonl")
    line = assert_one_error_line(result)
    assert line.startswith("error: disk full: No space left on device (") and str(disk) in line, line


def test_a_file_size_limit_without_root_ends_with_one_line_naming_the_file(tmp_path):
    """RLIMIT_FSIZE: writes past it fail with EFBIG, no mount needed."""
    import resource

    captions = captions_file(tmp_path / "captions.jsonl", 4000)
    limit = 32 * 1024
    result = run_categories(
        captions,
        tmp_path / "categories.jsonl",
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert assert_one_error_line(result).endswith(": File too large"), result.stderr


def test_piseg_on_a_read_only_output_ends_with_one_permission_line(tmp_path):
    from piseg.training.synthetic import write_synthetic_shards

    shards = write_synthetic_shards(tmp_path / "shards")
    with tmpfs(tmp_path / "readonly", "ro,size=64k") as readonly:
        result = subprocess.run(
            [sys.executable, "-m", "piseg.cli", "train", "--shards", str(shards), "--backbone", "tiny"]
            + ["--iters", "1", "--out", str(readonly / "run")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    line = assert_one_error_line(result)
    assert line == f"error: permission denied: {readonly / 'run'}: Read-only file system", line


@pytest.fixture
def in_process(monkeypatch):
    """run_command in this process: a bare argv, and pytest's own signal handlers back afterwards."""
    monkeypatch.setattr(sys, "argv", ["ovrsis"])
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


def test_a_bug_keeps_its_traceback_and_exits_70(capsys, in_process):
    app = typer.Typer()

    @app.command()
    def broken() -> None:
        raise ZeroDivisionError("the bug")

    with pytest.raises(SystemExit) as ended:
        run_command(app)
    err = capsys.readouterr().err
    assert ended.value.code == EXIT_CRASHED
    assert "Traceback" in err and "ZeroDivisionError: the bug" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error (ZeroDivisionError), a bug")


def test_a_write_failing_on_a_full_disk_names_the_file_it_was_writing(tmp_path, capsys, in_process):
    """An ENOSPC from write() carries no file name: the boundary finds the file being written."""
    app = typer.Typer()
    target = tmp_path / "records.jsonl"

    @app.command()
    def write() -> None:
        with open(target, "w") as handle:
            handle.write("{}")
            raise OSError(28, os.strerror(28))  # what the flush of a full disk raises

    with pytest.raises(SystemExit) as ended:
        run_command(app)
    assert ended.value.code == EXIT_REFUSED
    assert capsys.readouterr().err == (
        f"error: disk full: No space left on device ({target}); free some space and rerun (finished work is kept)\n"
    )


# --- the build ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagery(tmp_path_factory):
    return make_imagery(tmp_path_factory.mktemp("imagery") / "rasters", count=3, size=512)


def nothing_annotated(out: Path) -> bool:
    return not (out / ".cache" / "stages").exists() and not (out / "records.jsonl").exists()


def test_a_ledger_that_is_a_directory_refuses_the_build_before_models_load(tmp_path, imagery, tiny_models_yaml):
    out = tmp_path / "out"
    (out / "audit" / "ledger.jsonl").mkdir(parents=True)
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, out)
    line = assert_one_error_line(run_build(config, tmp_path / "prefect", timeout=300))
    ledger = out / "audit" / "ledger.jsonl"
    assert line == f"error: {ledger}: the review ledger is not a regular file; move it away or restore the file"
    assert nothing_annotated(out)


def test_a_damaged_ledger_line_refuses_the_build_before_models_load(tmp_path, imagery, tiny_models_yaml):
    out = tmp_path / "out"
    (out / "audit").mkdir(parents=True)
    (out / "audit" / "ledger.jsonl").write_text("{not json\n")
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, out)
    line = assert_one_error_line(run_build(config, tmp_path / "prefect", timeout=300))
    assert line.startswith(f"error: {out / 'audit' / 'ledger.jsonl'}:1: damaged line"), line
    assert nothing_annotated(out)


def started_annotating(out: Path) -> bool:
    stages = out / ".cache" / "stages"
    return stages.exists() and any(stages.rglob("*.json.z"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "code", "line", "group"),
    [
        (signal.SIGINT, 130, "interrupted", False),
        (signal.SIGTERM, 143, "terminated", False),
        # the whole group, as a supervisor stops a job: Prefect's server goes first, and Prefect's own
        # handler, in place of ours while the flow runs, retried that dead server for minutes
        (signal.SIGTERM, 143, "terminated", True),
    ],
    ids=["SIGINT", "SIGTERM", "SIGTERM-to-the-group"],
)
def test_a_stopped_build_exits_at_once_with_one_line_and_no_child_left(
    tmp_path, imagery, tiny_models_yaml, stop, code, line, group
):
    out = tmp_path / "out"
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, out)
    process = subprocess.Popen(
        ovrsis("build", "--config", str(config)),
        env=prefect_env(tmp_path / "prefect"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    build = psutil.Process(process.pid)
    try:
        deadline = time.monotonic() + 300
        while not started_annotating(out):
            assert process.poll() is None and time.monotonic() < deadline, "the build ended before it was stopped"
            time.sleep(0.05)
        children = build.children(recursive=True)
        assert children, "the build runs Prefect's temporary server"
        stopped = time.monotonic()
        os.killpg(process.pid, stop) if group else process.send_signal(stop)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - stopped
        assert process.returncode == code, stderr[-3000:]
        assert took < 15, f"{took:.1f} s to stop"
        assert "Traceback" not in stderr and "ERROR" not in stderr, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == line and stderr.count(line) == 1, stderr[-3000:]
        gone, alive = psutil.wait_procs(children, timeout=2)
        assert alive == [], f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:
        for survivor in [build, *build.children(recursive=True)] if build.is_running() else []:
            with contextlib.suppress(psutil.Error):
                survivor.kill()


@pytest.mark.slow
def test_a_build_with_no_sample_exits_2_after_writing_its_reports(tmp_path, tiny_models_yaml):
    rasters = make_imagery(tmp_path / "img" / "rasters", count=1, size=128, broken=False)
    (tmp_path / "img" / "captions.jsonl").write_text(json.dumps({"id": "scene0", "caption": "a quiet picture"}) + "\n")
    out = tmp_path / "out"
    config = write_config(tmp_path / "build.yaml", rasters, tiny_models_yaml, out)
    line = assert_one_error_line(run_build(config, tmp_path / "prefect"))
    assert line.startswith("error: no samples written: none of the 1 annotated tiles (of 1) had a category"), line
    assert (out / "summary.json").is_file() and (out / "report" / "balance.md").is_file()
    assert (out / "manifest.json").is_file()
