"""What every `ovrsis` and `piseg` command prints on the terminal's error side, and the exit code it ends with.

One exit-code rule holds for every command (README "Failure behaviour", docs/architecture.md "Exit codes"):

- EXIT_OK (0): finished, nothing skipped or quarantined;
- EXIT_PARTIAL (1): finished, every good input processed, some inputs quarantined or skipped; the
  last line says how many and names the file with the reasons (`set_aside`);
- EXIT_REFUSED (2): refused before any work (bad option, configuration, taxonomy, missing or
  unreadable input), or nothing usable; one `error:` line names the file and the problem (`fail`);
- EXIT_INTERRUPTED (130): stopped by Ctrl-C (128 + SIGINT, as a shell reports it);
- EXIT_TERMINATED (143): stopped by SIGTERM (128 + SIGTERM);
- EXIT_CRASHED (70, sysexits' EX_SOFTWARE): a bug; the traceback is printed, then one `error:` line.

`run_command` is the one error boundary: every `ovrsis` and `piseg` command runs inside it, so a
failure no command caught (disk full, a permission refused, a project error raised deep in a stage)
still ends with one `error:` line and the rule's code instead of a traceback with exit 1, which the
rule reserves for "finished, some inputs set aside".

Kept to typer and rich, so that every CLI module can import it before its command decides which
heavy library it needs.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType, TracebackType
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ovrsis.errors import OvrsisError

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_CRASHED = 70

console = Console(stderr=True, soft_wrap=True)  # long paths and messages stay on one line


def print_error(problem: str | BaseException) -> None:
    """One `error:` line; the message is printed verbatim, never read as rich markup, because
    messages carry paths and ranges such as "[0, 1)" that markup would swallow or reject."""
    console.print(Text.assemble(("error:", "red"), " ", str(problem)), highlight=False)


def fail(problem: str | BaseException, code: int = EXIT_REFUSED) -> NoReturn:
    """End the command with one `error:` line naming the file and the problem (exit 2 by default)."""
    print_error(problem)
    raise typer.Exit(code)


def set_aside(what: str, reasons: Path | str | None = None) -> NoReturn:
    """End a finished command that left inputs out with exit 1, its last line saying how many
    (WHAT, in yellow) and where the reasons are (REASONS: a file, or None when the lines above gave
    them). The one way any command exits 1."""
    where = f"; reasons in {reasons}" if reasons is not None else ""
    console.print(Text.assemble((what, "yellow"), where), highlight=False)
    raise typer.Exit(EXIT_PARTIAL)


def counting_bar(label: str, unit: str) -> Progress:
    """The progress bar of a long command: LABEL, bar, done/total UNIT, elapsed time; on stderr, so
    the command's output stays clean, and gone once the command's summary replaces it."""
    return Progress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as Python raises KeyboardInterrupt for SIGINT, so that
    `finally` blocks and context managers run as it unwinds; a BaseException, so that no
    `except Exception` of a command or library swallows it."""


DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_PERMITTED = {errno.EACCES, errno.EPERM, errno.EROFS}
STOPS = {signal.SIGINT: (EXIT_INTERRUPTED, "interrupted"), signal.SIGTERM: (EXIT_TERMINATED, "terminated")}
GRACE_SECONDS = 5.0  # after a stop signal, how long the main thread may unwind before the process ends anyway
CHILD_GRACE_SECONDS = 3.0  # how long stopped child processes get to exit before they are killed

_stop_signal: int | None = None  # the first stop signal received
_ending = False  # set once the process is being ended
_raised = False  # set once our handler raised the stop in the main thread
_stopping = threading.Lock()
_arming = threading.Lock()


def run_command(app: typer.Typer) -> None:
    """Run APP (the `ovrsis` or `piseg` command line) inside the one error boundary: a failure that
    no command caught ends as the exit rule says (one `error:` line, exit 2; a bug: its traceback and
    exit 70), and Ctrl-C or SIGTERM ends the command within seconds with one line and 130 or 143,
    its child processes (Prefect's temporary server, pool workers) stopped with it."""
    _catch_stop_signals()
    try:
        app()
    except SystemExit as ended:
        if _stop_signal is not None:
            _stop(quiet=_reported_by_command(ended))
        raise
    except BaseException as error:  # the boundary: every failure ends here, one way or another
        if _stop_signal is not None or isinstance(error, (KeyboardInterrupt, Terminated)):
            _stop(signal.SIGTERM if isinstance(error, Terminated) else None)
        _refuse_or_crash(error)


def problem_of(error: BaseException) -> str | None:
    """The one line a user can act on for ERROR, or None when ERROR is a bug (its traceback is
    wanted): the project's own errors, a full disk, a refused permission, a file operation failing
    on a named path."""
    if isinstance(error, OvrsisError):  # the project's own: each says what is wrong with which file
        return str(error)
    if not isinstance(error, OSError):
        return None
    path = _path_of(error)
    if error.errno in DISK_FULL:
        where = f" ({path})" if path else ""
        return f"disk full: {error.strerror}{where}; free some space and rerun (finished work is kept)"
    if error.errno in NOT_PERMITTED:
        return f"permission denied: {path}: {error.strerror}" if path else f"permission denied: {error.strerror}"
    return f"{path}: {error.strerror}" if path and error.strerror else None


def _refuse_or_crash(error: BaseException) -> NoReturn:
    """One `error:` line and exit 2 for a known problem; for a bug, its traceback first (it says
    where the bug is, for the report) and exit 70."""
    problem = problem_of(error)
    if problem is not None:
        print_error(problem)
        sys.exit(EXIT_REFUSED)
    traceback.print_exception(error)
    print_error(f"internal error ({type(error).__name__}), a bug: the traceback above says where; please report it")
    sys.exit(EXIT_CRASHED)


def _path_of(error: OSError) -> str | None:
    """The path ERROR names, else the file being written where it was raised: a write that fills the
    disk fails with no file name, and "disk full" alone does not say which disk."""
    if error.filename is not None:
        return os.fsdecode(error.filename)
    tb: TracebackType | None = error.__traceback__
    frames: list[FrameType] = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # innermost first
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str) and _writing(value):
                return value.name
    return None


def _writing(handle: io.IOBase) -> bool:
    """Whether HANDLE was opened for writing; closed or not, since the flush on close is where a
    full disk often shows."""
    return any(flag in str(getattr(handle, "mode", "")) for flag in "wax+")


def _catch_stop_signals() -> None:
    """SIGINT raises KeyboardInterrupt and SIGTERM raises Terminated in the main thread, after
    silencing logging (a library's crash report of the stop would bury the one line) and arming
    the deadline; a second signal ends the process at once. The deadline is armed even where a
    library put its own handler in place of ours: Prefect does while a flow runs, and its crash
    report then retried a dead server for minutes; the wakeup descriptor sees every signal,
    whoever handles it (`_watch_stops`)."""
    for number in STOPS:
        signal.signal(number, _on_stop_signal)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_watch_stops, args=(reader, writer), name="stop-watch", daemon=True).start()


def _watch_stops(reader: socket.socket, writer: socket.socket) -> None:
    """Arm the deadline at the first stop signal the process receives (`writer` is kept open here)."""
    while data := reader.recv(64):
        stop = next((number for number in data if number in STOPS), None)
        if stop is not None:
            _arm(stop)


def _arm(number: int) -> bool:
    """Record the first stop signal, silence logging and start the deadline; False if already armed."""
    global _stop_signal
    with _arming:
        if _stop_signal is not None:
            return False
        _stop_signal = number
    logging.disable(logging.CRITICAL)
    threading.Thread(target=_deadline, name="stop-deadline", daemon=True).start()
    return True


def _on_stop_signal(number: int, frame: FrameType | None) -> None:
    if not _arm(number) and _raised:  # a second signal: no more unwinding
        if not _ending:
            _stop(number)
        return
    _raise_stop(number)


def _raise_stop(number: int) -> NoReturn:
    global _raised
    _raised = True
    raise KeyboardInterrupt if number == signal.SIGINT else Terminated


class QuietWhileStopping(logging.Filter):
    """Drops what a library logs while it handles a stop signal: Prefect reports each run a stop cut
    short as a crash, before it passes SIGTERM on; the command's one line says it already."""

    # what Prefect's worker threads log of runs the stop cancelled; they handle no exception of their own
    STOP_REPORTS = ("cancelled by the task runner", "TerminationSignal", "KeyboardInterrupt")

    def filter(self, record: logging.LogRecord) -> bool:
        handling = sys.exc_info()[1]
        stop = isinstance(handling, (KeyboardInterrupt, Terminated)) or type(handling).__name__ == "TerminationSignal"
        reported = any(text in record.getMessage() for text in self.STOP_REPORTS)
        return _stop_signal is None and not stop and not reported and not _lost_api(record)


def _lost_api(record: logging.LogRecord) -> bool:
    """A Prefect background service (`prefect._internal...`, on its own event-loop thread) reporting that
    the API went away. A stop signal sent to the whole process group ends Prefect's temporary server at
    once, and that thread can log it before the stop watcher has armed: a race no filter on the stop
    can win. Dropped always: a build that really lost its API fails on its next call, with its own line."""
    return record.name.startswith("prefect._internal") and "ConnectError" in record.getMessage()


def _deadline() -> None:
    """End the process GRACE_SECONDS after a stop signal, if the main thread is still unwinding: a
    library may retry a dead server for minutes (Prefect's did, after Ctrl-C reached its server)."""
    time.sleep(GRACE_SECONDS)
    _stop()


def _reported_by_command(ended: SystemExit) -> bool:
    """Whether the command said itself what the stop kept (`ovrsis annotate` does), rather than
    typer turning an unhandled KeyboardInterrupt into a silent exit 130."""
    said = ended.__context__
    return (
        said is not None and ended.code == STOPS[_stop_signal][0] and not isinstance(said.__cause__, KeyboardInterrupt)
    )


def _stop(number: int | None = None, quiet: bool = False) -> NoReturn:
    """End a stopped command: its one line, its child processes stopped, exit 128 + the signal.
    `os._exit`: a worker thread in the middle of a model call cannot be interrupted, and a normal
    exit would wait for it; what a cut run leaves (`.part` files) the next run removes."""
    global _ending
    code, line = STOPS[number or _stop_signal or signal.SIGINT]
    with _stopping:  # the main thread and the deadline: whichever comes first ends the process
        _ending = True
        if not quiet:
            console.show_cursor(True)  # a progress bar cut short hid it
            console.print(line, highlight=False)
        stop_children()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def stop_children(grace: float = CHILD_GRACE_SECONDS) -> None:
    """SIGTERM every process this one started (and theirs), then SIGKILL those still there after
    GRACE seconds: a stopped command leaves no server or worker behind."""
    children = descendants(os.getpid())
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.05)
    for pid in children:
        _signal(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The processes below PID (children, their children, ...), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # the command name (field 2, in parentheses) may hold spaces: the parent follows the last ')'
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found.extend(below)
        frontier = below
    return found


def _alive(pid: int) -> bool:
    """Whether PID still runs (a zombie does not); a direct child that exited is reaped here."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
    except ChildProcessError:  # not our direct child, or already reaped
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass
