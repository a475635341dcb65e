"""JSON Lines in and out, the way a long batch job needs it.

Reading never stops at a bad line: each line yields either its object or an error naming the line,
so one malformed record costs that record only. Writing goes to a temporary name that is renamed
when complete, so a crash never leaves a half-written output that looks finished.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

from pipeline.outputs import atomic_path


@dataclass(frozen=True)
class LineError:
    line: int
    message: str
    raw: str


def read_jsonl(path: Path) -> Iterator[tuple[int, Any] | LineError]:
    """Yield (line number, parsed object) or a LineError; blank lines are skipped."""
    with open(path, "rb") as handle:
        for number, raw_bytes in enumerate(handle, start=1):
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as error:
                yield LineError(number, f"not UTF-8 ({error.reason} at byte {error.start})", repr(raw_bytes[:200]))
                continue
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except json.JSONDecodeError as error:
                yield LineError(number, f"invalid JSON: {error.msg} (column {error.colno})", raw.rstrip("\n")[:200])


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """Open a text file for writing that appears at `path` only when the block ends without error."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        yield handle


def write_json_line(handle: TextIO, value: Any) -> None:
    handle.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
