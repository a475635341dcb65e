"""The review ledger: every completed human review a pull has seen, kept in the build output.

`OUT/audit/ledger.jsonl` is JSON Lines, append-only, one review (a completed Label Studio
annotation) per line, readable without this project:

    {"key", "queue", "project_id", "project", "task_id", "annotation_id", "updated_at",
     "reviewer", "result", "proposal_digest", "pulled_at"}

`result` is the annotation's result list as Label Studio gives it (brush RLE regions, discard
choices, per-region correction kinds), so the ledger alone, with no server, rebuilds every reviewed
mask and category. `proposal_digest` names the proposal the reviewer was shown (kept as
`OUT/audit/shown/DIGEST.png`). `key`, `queue` and `proposal_digest` come from Label Studio and become
file names: a pull checks them, and a value read back that could not be one is made harmless, never
used as a path and never a reason to stop (audit/names.py).

Why a ledger and not the records: the records and masks are derived from proposals + ledger on
every build, so a rebuild (cache wiped, thresholds or models changed, server stopped) can never
drop a review. An entry's identity is (project, task, annotation, updated_at): pulling twice
appends nothing; an edited annotation appends its new version, and the latest one wins.

Safety: appends take an exclusive lock, write whole lines and fsync. A writer killed mid-line
leaves at most one torn last line (no newline); it is cut off before the next append and ignored
when reading, and the rerun appends it again. A damaged line anywhere else is an error naming
the file and line, never skipped silently.

Memory: the ledger grows with every pull (hundreds of MB for a large audit), so it is never read
whole. Readers stream it a line at a time and keep what they need: an `Entry` (where a review's line
is and what orders it) or a review without its result; the result, which holds the brush RLE, is
read again (`load_review`) only for the reviews applied. A line longer than `MAX_LINE_BYTES` is
refused after reading at most that much of it, and a pull never writes one.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from audit.names import ProposalDigest, QueueName, TileKey
from audit.settings import AuditError
from ovrsis.errors import LineTooLong
from pipeline.files.layout import AUDIT
from pipeline.raster.outputs import mask_digest

LEDGER = Path(AUDIT) / "ledger.jsonl"
PULLS = Path(AUDIT) / "pulls.jsonl"
T = TypeVar("T")
QUEUED = Path(AUDIT) / "queued.jsonl"
# A review's line is mostly its brush RLE: a region of pure noise is 0.8 MiB of JSON on a 512-px tile,
# 12.4 MiB on a 2048-px one (realistic brushes: kilobytes). A longer line is no review: refused unread.
MAX_LINE_BYTES = 64 * 2**20


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


class Ordered(Protocol):
    """What picking the latest review needs: a review, or its ledger `Entry`."""

    @property
    def key(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def order(self) -> tuple[datetime, int]: ...


R = TypeVar("R", bound=Ordered)


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one review's line is and what orders it: readers keep these (a few hundred bytes a review)
    instead of reviews (the result's RLE can be megabytes), and `load_review` the ones they use."""

    key: str
    queue: str
    order: tuple[datetime, int]
    number: int  # the line's number, for messages
    offset: int  # where the line starts


def ledger_path(out_dir: Path) -> Path:
    return out_dir / LEDGER


def read_ledger(out_dir: Path) -> list[Review]:
    """Every review in the ledger, in file order ([] when there is none yet). Holds the whole ledger:
    for small ledgers; the audit's own readers stream `ledger_entries`."""
    return [review for review, _ in ledger_entries(out_dir)]


def ledger_entries(out_dir: Path) -> Iterator[tuple[Review, Entry]]:
    """Each review of the ledger with its entry, one line at a time (each line checked as it is read)."""
    path = ledger_path(out_dir)
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        for number, offset, raw in _complete_lines(path, handle):
            if raw.strip():
                review = _parsed(path, number, raw, Review.model_validate_json)
                yield review, Entry(review.key, review.queue, review.order, number, offset)


def load_review(out_dir: Path, entry: Entry) -> Review:
    """The review of `entry`, read again from its line."""
    path = ledger_path(out_dir)
    with open(path, "rb") as handle:
        handle.seek(entry.offset)
        found = next(_complete_lines(path, handle, entry.number - 1), None)
    review = None if found is None else _parsed(path, entry.number, found[2], Review.model_validate_json)
    if review is None or (review.key, review.order) != (entry.key, entry.order):
        raise AuditError(f"{path} changed while it was read (line {entry.number}): rerun")
    return review


def read_queued(out_dir: Path) -> Iterator[Queued]:
    """Every task queued so far (audit/queued.jsonl), each line checked like the ledger's."""
    return read_lines(out_dir / QUEUED, Queued.model_validate_json)


def read_pulls(out_dir: Path) -> Iterator[Pulled]:
    """Every project each pull read (audit/pulls.jsonl), each line checked like the ledger's."""
    return read_lines(out_dir / PULLS, Pulled.model_validate_json)


def read_lines(path: Path, parse: Callable[[bytes], T]) -> Iterator[T]:
    """The JSON objects of an append-only file, one line at a time; a torn last line (a killed writer)
    is ignored, any other damaged line is an AuditError naming the file and line."""
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        for number, _, raw in _complete_lines(path, handle):
            if raw.strip():
                yield _parsed(path, number, raw, parse)


def _complete_lines(path: Path, handle: BinaryIO, number: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """(number, offset, bytes) of each line from the handle's position on. A torn last line
    (no newline) is left out; a line over MAX_LINE_BYTES is refused having read at most that much of it."""
    offset = handle.tell()
    while raw := handle.readline(MAX_LINE_BYTES):
        number += 1
        if not raw.endswith(b"\n"):
            if len(raw) == MAX_LINE_BYTES and _skip_rest_of_line(handle):
                too_long = LineTooLong(f"longer than {MAX_LINE_BYTES:,} bytes: no line the audit writes is")
                raise _damaged(path, number, too_long)
            return  # text after the last newline was never finished: ignored
        yield number, offset, raw
        offset += len(raw)


def _skip_rest_of_line(handle: BinaryIO) -> bool:
    """Read past the rest of the line, a MiB at a time; whether it ended (else the file did)."""
    while chunk := handle.readline(2**20):
        if chunk.endswith(b"\n"):
            return True
    return False


def _parsed(path: Path, number: int, raw: bytes, parse: Callable[[bytes], T]) -> T:
    try:
        return parse(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as error:
        raise _damaged(path, number, error) from None


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

    def _catch_up(self, handle: BinaryIO) -> None:
        size = handle.seek(0, os.SEEK_END)
        if size < self.offset:  # the file was replaced: read it all again
            self.known, self.offset, self.lines = set(), 0, 0
        handle.seek(self.offset)
        for number, _, raw in _complete_lines(self.path, handle, self.lines):
            self.lines = number
            try:
                row = json.loads(raw)
                self.known.add((row["project_id"], row["task_id"], row["annotation_id"], row["updated_at"]))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
                raise _damaged(self.path, self.lines, error) from None
        self.offset = handle.seek(0, os.SEEK_END)


def append_row(path: Path, row: dict) -> None:
    """One line appended to a small append-only log (pulls, queued tasks)."""
    with _locked_append(path) as handle:
        _write_lines(handle, [row])


def latest_reviews(reviews: Iterable[R], queue: str | None = None) -> dict[str, R]:
    """The latest review (or entry) of each tile (of one queue, or of all queues)."""
    latest: dict[str, R] = {}
    for review in reviews:
        if queue is None or review.queue == queue:
            _keep_latest(latest, review)
    return latest


def latest_by_queue(reviews: Iterable[R]) -> dict[str, dict[str, R]]:
    """`latest_reviews` of every queue, in one pass over the ledger."""
    latest: dict[str, dict[str, R]] = {}
    for review in reviews:
        _keep_latest(latest.setdefault(review.queue, {}), review)
    return latest


def _keep_latest(latest: dict[str, R], review: R) -> None:
    current = latest.get(review.key)
    if current is None or review.order > current.order:
        latest[review.key] = review


def reviews_by_tile(reviews: Iterable[R]) -> dict[str, list[R]]:
    """Every tile's reviews (or entries), newest first."""
    by_tile: dict[str, list[R]] = {}
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


def _cut_torn_tail(handle: BinaryIO) -> None:
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    handle.truncate(_after_last_newline(handle, size))
    handle.seek(0, os.SEEK_END)


def _after_last_newline(handle: BinaryIO, size: int) -> int:
    """Where the text after the file's last newline starts (0: it has none), read backwards a MiB at a
    time: the torn line can be long, the file longer."""
    end = size
    while end > 0:
        start = max(0, end - 2**20)
        handle.seek(start)
        found = handle.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _write_lines(handle: BinaryIO, rows: list[dict]) -> None:
    for row in rows:
        handle.write(encode_line(row))
        handle.flush()


def encode_line(row: dict) -> bytes:
    """A row as the line the audit's files hold; LineTooLong where readers would refuse it."""
    line = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    if len(line) > MAX_LINE_BYTES:
        raise LineTooLong(f"its line would be {len(line):,} bytes, over the {MAX_LINE_BYTES:,} a line may hold")
    return line


def _parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
