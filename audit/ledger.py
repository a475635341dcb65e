"""The review ledger: every completed human review a pull has seen, kept in the build output.

`OUT/audit/ledger.jsonl` is JSON Lines, append-only, one review (a completed Label Studio
annotation) per line, readable without this project:

    {"key", "queue", "project_id", "project", "task_id", "annotation_id", "updated_at",
     "reviewer", "result", "proposal_digest", "pulled_at"}

`result` is the annotation's result list as Label Studio gives it (brush RLE regions, discard
choices, per-region correction kinds), so the ledger alone, with no server, rebuilds every reviewed
mask and category. `proposal_digest` names the proposal the reviewer was shown (kept as
`OUT/audit/shown/DIGEST.png`). `key`, `queue` and `proposal_digest` come from Label Studio and become
file names: a line whose values could not be (audit/names.py) is refused like a damaged line.

Why a ledger and not the records: the records and masks are derived from proposals + ledger on
every build, so a rebuild (cache wiped, thresholds or models changed, server stopped) can never
drop a review. An entry's identity is (project, task, annotation, updated_at): pulling twice
appends nothing; an edited annotation appends its new version, and the latest one wins.

Safety: appends take an exclusive lock, write whole lines and fsync. A writer killed mid-line
leaves at most one torn last line (no newline); it is cut off before the next append and ignored
when reading, and the rerun appends it again. A damaged line anywhere else is an error naming
the file and line, never skipped silently.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from audit.names import ProposalDigest, QueueName, TileKey
from audit.settings import AuditError
from pipeline.outputs import mask_digest

LEDGER = Path("audit") / "ledger.jsonl"
PULLS = Path("audit") / "pulls.jsonl"
T = TypeVar("T")
QUEUED = Path("audit") / "queued.jsonl"


class Review(BaseModel):
    """One completed annotation of one tile, as pulled."""

    key: TileKey
    queue: QueueName
    project_id: int
    project: str
    task_id: int
    annotation_id: int
    updated_at: str
    reviewer: str | None = None
    result: list[dict] = Field(default_factory=list)
    proposal_digest: ProposalDigest = None
    pulled_at: str

    @property
    def identity(self) -> tuple[int, int, int, str]:
        return (self.project_id, self.task_id, self.annotation_id, self.updated_at)

    def is_stale_for(self, proposal: np.ndarray) -> bool:
        """Whether the build's proposal is no longer the one this review was shown."""
        return self.proposal_digest is not None and self.proposal_digest != mask_digest(proposal)

    @property
    def order(self) -> tuple[datetime, int]:
        """Later reviews win: by Label Studio's update time, then by annotation id."""
        return (_parse_time(self.updated_at), self.annotation_id)


class Queued(BaseModel):
    """One line of audit/queued.jsonl: a task a push created (or a pull found that no push recorded)."""

    key: TileKey
    queue: QueueName
    project_id: int
    proposal_digest: ProposalDigest = None
    pushed_at: str | None = None


class Pulled(BaseModel):
    """One line of audit/pulls.jsonl: a project a pull read (`queue` None: refused, `refused` says why)."""

    project: str
    project_id: int
    queue: QueueName | None
    tasks: int = 0
    reviewed: int = 0
    new_reviews: int = 0
    set_aside: list[str] = Field(default_factory=list)
    refused: str | None = None
    pulled_at: str


def ledger_path(out_dir: Path) -> Path:
    return out_dir / LEDGER


def read_ledger(out_dir: Path) -> list[Review]:
    """Every review in the ledger, in file order ([] when there is none yet)."""
    return list(read_lines(ledger_path(out_dir), Review.model_validate_json))


def read_queued(out_dir: Path) -> Iterator[Queued]:
    """Every task queued so far (audit/queued.jsonl), each line checked like the ledger's."""
    return read_lines(out_dir / QUEUED, Queued.model_validate_json)


def read_pulls(out_dir: Path) -> Iterator[Pulled]:
    """Every project each pull read (audit/pulls.jsonl), each line checked like the ledger's."""
    return read_lines(out_dir / PULLS, Pulled.model_validate_json)


def read_lines(path: Path, parse: Callable[[bytes], T]) -> Iterator[T]:
    """The JSON objects of an append-only file; a torn last line (a killed writer) is ignored, any
    other damaged line is an AuditError naming the file and line."""
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data.split(b"\n")[:-1]  # text after the last newline was never finished: ignored
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            row = parse(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as error:
            raise _damaged(path, number, error) from None
        yield row


def append_reviews(out_dir: Path, reviews: Iterable[Review]) -> int:
    """Append the reviews not already in the ledger; returns how many were new."""
    return LedgerWriter(out_dir).append(reviews)


class LedgerWriter:
    """Appends to the ledger for the length of one pull. The identities already in it are read once,
    then only what other writers appended since (a pull of 20,000 reviews reads the ledger once,
    not once per page)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = ledger_path(out_dir)
        self.known: set[tuple] = set()
        self.offset = 0  # bytes of the ledger already read into `known` (always at a line end)
        self.lines = 0

    def append(self, reviews: Iterable[Review]) -> int:
        with _locked_append(self.path) as handle:
            self._catch_up(handle)
            new = []
            for review in reviews:
                if review.identity not in self.known:
                    self.known.add(review.identity)
                    new.append(review.model_dump(mode="json"))
            _write_lines(handle, new)
            handle.flush()
            self.offset, self.lines = handle.tell(), self.lines + len(new)
        return len(new)

    def _catch_up(self, handle) -> None:
        size = handle.seek(0, os.SEEK_END)
        if size < self.offset:  # the file was replaced: read it all again
            self.known, self.offset, self.lines = set(), 0, 0
        handle.seek(self.offset)
        for raw in handle.read(size - self.offset).split(b"\n")[:-1]:
            self.lines += 1
            try:
                row = json.loads(raw)
                self.known.add((row["project_id"], row["task_id"], row["annotation_id"], row["updated_at"]))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
                raise _damaged(self.path, self.lines, error) from None
        handle.seek(0, os.SEEK_END)
        self.offset = size


def append_row(path: Path, row: dict) -> None:
    """One line appended to a small append-only log (pulls, queued tasks)."""
    with _locked_append(path) as handle:
        _write_lines(handle, [row])


def latest_reviews(reviews: Iterable[Review], queue: str | None = None) -> dict[str, Review]:
    """The latest review of each tile (of one queue, or of all queues)."""
    latest: dict[str, Review] = {}
    for review in reviews:
        if queue is not None and review.queue != queue:
            continue
        current = latest.get(review.key)
        if current is None or review.order > current.order:
            latest[review.key] = review
    return latest


def reviews_by_tile(reviews: Iterable[Review]) -> dict[str, list[Review]]:
    """Every tile's reviews, newest first."""
    by_tile: dict[str, list[Review]] = {}
    for review in reviews:
        by_tile.setdefault(review.key, []).append(review)
    return {key: sorted(found, key=lambda r: r.order, reverse=True) for key, found in by_tile.items()}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _locked_append:
    """An append handle under an exclusive lock, with any torn last line cut off first."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "ab+")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        _cut_torn_tail(self.handle)
        return self.handle

    def __exit__(self, *exc) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        finally:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def describe(error: Exception) -> str:
    """One line saying what is wrong: each field pydantic refused with its reason, else the error's first line."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _damaged(path: Path, line: int, error: Exception) -> AuditError:
    return AuditError(
        f"{path}:{line}: damaged line ({describe(error)}); every other line is intact: "
        "repair or delete that line, then rerun"
    )


def _cut_torn_tail(handle) -> None:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    if size == 0:
        return
    handle.seek(max(0, size - 1))
    if handle.read(1) == b"\n":
        return
    handle.seek(0)
    data = handle.read()
    handle.truncate(data.rfind(b"\n") + 1)
    handle.seek(0, os.SEEK_END)


def _write_lines(handle, rows: list[dict]) -> None:
    for row in rows:
        handle.write((json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
        handle.flush()


def _parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
