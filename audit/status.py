"""Where an audit stands, per queue, from local files only (no server): what was queued
(audit/queued.jsonl, written by each push), what was reviewed (the ledger), what went stale (the
build's proposal changed since the review) and when each queue was last pulled (audit/pulls.jsonl).
`status_view` lays it out for `ovrsis audit status` at any terminal width."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from audit.ledger import Review, latest_by_queue, latest_reviews, ledger_entries, read_pulls, read_queued
from audit.records import load_records, proposal_mask
from pipeline.dataset.records import TileRecord

COUNTS = ("tasks", "reviewed", "pending", "stale")
FIELDS = (*COUNTS, "reviewers", "last pull")  # the table's columns after the queue, the blocks' lines
UNBOUNDED = 10**6  # a width to measure the table at: how wide it is with nothing wrapped or cut


@dataclass
class QueueStatus:
    queue: str
    tasks: int = 0
    reviewed: int = 0
    pending: int = 0
    stale: int = 0
    reviewers: set[str] = field(default_factory=set)
    last_pull: str | None = None
    projects: set[str] = field(default_factory=set)


def audit_status(out_dir: Path) -> list[QueueStatus]:
    records = {r.key: r for r in load_records(out_dir) if not r.quarantine}
    queued: dict[str, set[str]] = defaultdict(set)
    for row in read_queued(out_dir):
        queued[row.queue].add(row.key)
    latest_of = latest_by_queue(_without_results(out_dir))
    statuses: dict[str, QueueStatus] = {}
    for queue in sorted(set(queued) | set(latest_of)):
        latest = latest_of.get(queue, {})
        status = statuses[queue] = QueueStatus(queue)
        status.tasks = len(queued[queue] | set(latest))
        status.reviewed = len(latest)
        status.pending = len(queued[queue] - set(latest))
        status.reviewers = {r.reviewer for r in latest.values() if r.reviewer}
        status.projects = {r.project for r in latest.values()}
        status.stale = sum(
            1 for key, review in latest.items() if key in records and is_stale(out_dir, records[key], review)
        )
    for row in read_pulls(out_dir):
        if row.queue is None:  # a project the pull refused: no queue of this audit
            continue
        status = statuses.setdefault(row.queue, QueueStatus(row.queue))
        status.last_pull = max(status.last_pull or "", row.pulled_at)
        status.projects.add(row.project)
    return list(statuses.values())


def stale_keys(out_dir: Path) -> set[str]:
    """Tiles whose latest review (any queue) was of another proposal than today's."""
    records = {r.key: r for r in load_records(out_dir) if not r.quarantine}
    latest = latest_reviews(_without_results(out_dir))
    return {key for key, review in latest.items() if key in records and is_stale(out_dir, records[key], review)}


def _without_results(out_dir: Path) -> Iterator[Review]:
    """The ledger's reviews, streamed, each without its result: the status never decodes one, and
    the results are most of the ledger."""
    for review, _ in ledger_entries(out_dir):
        yield review.model_copy(update={"result": []})


def is_stale(out_dir: Path, record: TileRecord, review: Review) -> bool:
    return review.is_stale_for(proposal_mask(out_dir, record))


def status_view(statuses: list[QueueStatus], title: str, console: Console) -> RenderableType:
    """The statuses as one table where each value fits whole on its lines at the console's width, else
    one block per queue with a field per line. Reviewer names and pull times are what the status is
    read for: a table squeezed into a narrow terminal cut them to "…" (or would fold them mid-word),
    so they are never narrowed; reviewers stand one per line. Every cell is Text: queue names and
    reviewers come from Label Studio and are never read as markup."""
    if not statuses:
        return Text("no queue pushed yet (`ovrsis audit push`)")
    table = Table(title=Text(title))
    table.add_column("queue")
    for name in FIELDS:
        table.add_column(name, justify="right" if name in COUNTS else "left")
    for status in statuses:
        table.add_row(Text(status.queue), *_values(status))
    if Measurement.get(console, console.options.update_width(UNBOUNDED), table).maximum <= console.width:
        return table
    return Group(Text(title), *(_block(status) for status in statuses))


def _values(status: QueueStatus) -> list[Text]:
    """A queue's values in FIELDS order, as the table and the blocks show them."""
    counts = [Text(str(getattr(status, name))) for name in COUNTS]
    return [*counts, Text("\n".join(sorted(status.reviewers)) or "-"), Text(status.last_pull or "never")]


def _block(status: QueueStatus) -> RenderableType:
    """One queue for a terminal too narrow for the table: its name, then a field a line, indented; a
    value longer than the line is folded, never cut."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(no_wrap=True)
    fields.add_column(overflow="fold")
    for name, value in zip(FIELDS, _values(status), strict=True):
        fields.add_row(name, value)
    return Group(Text(status.queue, style="bold"), Padding(fields, (0, 0, 0, 2), expand=False))
