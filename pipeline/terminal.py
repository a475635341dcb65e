"""What every `ovrsis` and `piseg` command prints on the terminal's error side, and the exit code it ends with.

One exit-code rule holds for every command (README "Failure behaviour", docs/architecture.md "Exit codes"):

- EXIT_OK (0): finished, nothing skipped or quarantined;
- EXIT_PARTIAL (1): finished, every good input processed, some inputs quarantined or skipped; the
  last line says how many and names the file with the reasons (`set_aside`);
- EXIT_REFUSED (2): refused before any work (bad option, configuration, taxonomy, missing or
  unreadable input), or nothing usable; one `error:` line names the file and the problem (`fail`);
- EXIT_INTERRUPTED (130): stopped by Ctrl-C (128 + SIGINT, as a shell reports it).

Kept to typer and rich, so that every CLI module can import it before its command decides which
heavy library it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130

console = Console(stderr=True, soft_wrap=True)  # long paths and messages stay on one line


def print_error(problem: str | BaseException) -> None:
    """One `error:` line; the message is printed verbatim, never read as rich markup, because
    messages carry paths and ranges such as "[0, 1)" that markup would swallow or reject."""
    console.print(Text.assemble(("error:", "red"), " ", str(problem)), highlight=False)


def fail(problem: str | BaseException, code: int = EXIT_REFUSED) -> NoReturn:
    """End the command with one `error:` line naming the file and the problem (exit 2 by default)."""
    print_error(problem)
    raise typer.Exit(code)


def set_aside(what: str, reasons: Path | str) -> NoReturn:
    """End a finished command that left inputs out with exit 1, its last line saying how many
    (WHAT, in yellow) and where the reasons are."""
    console.print(Text.assemble((what, "yellow"), f"; reasons in {reasons}"), highlight=False)
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
