"""JSON Lines in and out, the way a long batch job needs it.

Reading never stops at a bad line: each line yields either its object or an error naming the line,
so one malformed record costs that record only. A UTF-8 byte-order mark (Windows editors write one)
is ignored; a UTF-16 file is refused as a whole by `check_encoding`, since every line would fail. Writing goes
to a temporary name that is renamed when complete, so a crash never leaves a half-written output that looks
finished.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pipeline.files.atomic import atomic_path

UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class LineError:
    line: int
    message: str
    raw: str


def check_encoding(path: Path) -> None:
    """Raise ValueError, naming the file, for UTF-16/32 text (a byte-order mark or NUL bytes up front)."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in start:
        raise ValueError(f"{path}: the file is UTF-16 or UTF-32 text; JSON Lines must be UTF-8 (save it as UTF-8)")


def read_jsonl(path: Path) -> Iterator[tuple[int, Any] | LineError]:
    """Yield (line number, parsed object) or a LineError; blank lines are skipped."""
    with open(path, "rb") as handle:
        for number, raw_bytes in enumerate(handle, start=1):
            if number == 1:
                raw_bytes = raw_bytes.removeprefix(UTF8_BOM)
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
