"""Where an audit stands, per queue, from local files only (no server): what was queued
(audit/queued.jsonl, written by each push), what was reviewed (the ledger), what went stale (the
build's proposal changed since the review) and when each queue was last pulled (audit/pulls.jsonl)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from audit.ledger import Review, latest_by_queue, latest_reviews, ledger_entries, read_pulls, read_queued
from audit.records import load_records, proposal_mask
from pipeline.records import TileRecord


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
