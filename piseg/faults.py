"""What a command left out and why: OUT/skipped.jsonl, one JSON object a line ({"input", "reason"}).

The exit-code rule points at this file: a run that skipped anything exits 1 and names it on its last
line, so the reasons are never only in a scrolled-away terminal."""

from __future__ import annotations

import json
from pathlib import Path

SKIPPED_FILE = "skipped.jsonl"


class SkippedLog:
    """Appends each reason once (training meets a bad sample again every epoch). A fresh run starts an
    empty log; a resumed one keeps the reasons already written. Lines are appended whole, so processes
    of one run may share the file."""

    def __init__(self, folder: Path, fresh: bool) -> None:
        self.path = folder / SKIPPED_FILE
        if fresh:
            self.path.unlink(missing_ok=True)
        self.seen = {json.loads(line)["reason"] for line in self._lines()}

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.is_file() else []

    def add(self, reason: str, source: str | None = None) -> None:
        if reason in self.seen:
            return
        self.seen.add(reason)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"input": source, "reason": reason}) + "\n")

    @property
    def count(self) -> int:
        return len(self._lines())
