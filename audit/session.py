"""The audit steps as the command line and the build flow both run them: push the queues, pull
every queue into the ledger, apply the ledger. One path, so `ovrsis audit` and `ovrsis build`
cannot drift apart.

The random sample (and the uncertain queue) is drawn from the tiles that can reach the dataset:
not quarantined, with a labelled pixel in the proposal (`pipeline.dataset.tile_table.proposed_pixels`: the
proposal, not the review, so a review never moves a tile in or out of the sample's population).
Table II estimates the error rates of the dataset's labels, so a tile the selection drops unseen
would spend a reviewer's time on nothing it estimates. The tiles nothing was proposed for have a queue of their
own, `unlabelled` (`QueuePlan.unlabelled`): what a reviewer paints there brings the tile into the
dataset at the next build; its reviews are reported per queue, never mixed into the sample's.

Queues live in projects named after one title: the random sample in `TITLE`, the others in
`TITLE (uncertain)`, `TITLE (stale)` or any `TITLE (QUEUE)` (audit/pull.py `queue_title`), each
marked as the audit of its output folder (audit/folders.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audit.apply import ApplySummary, apply_reviews
from audit.client import AuditClient
from audit.pull import PullSummary, pull_project, queue_projects, queue_title, record_refused
from audit.queue import PushSummary, load_live_records, prepare_tiles, push, stratified_sample, uncertain_sample
from audit.records import load_records, write_records
from audit.settings import AuditError
from audit.status import stale_keys
from pipeline.dataset.tile_table import proposed_pixels
from pipeline.files.atomic import OutputBusy, output_lock
from pipeline.files.layout import records_file
from taxonomy.loader import Taxonomy


@dataclass(frozen=True)
class QueuePlan:
    sample: int = 100
    seed: int = 0
    strata: str = "domain"
    uncertain: int = 0
    stale: bool = False
    unlabelled: int = 0  # tiles with nothing proposed, for a reviewer to label what the captions missed


def default_title(out_dir: Path) -> str:
    return f"ovrsis audit: {out_dir.resolve().name}"


def push_queues(
    client: AuditClient, out_dir: Path, taxonomy: Taxonomy, title: str, served_root: Path, plan: QueuePlan
) -> list[tuple[str, PushSummary]]:
    """Push the random sample (and the uncertain and stale queues the plan asks for)."""
    live = load_live_records(out_dir)
    if not live:
        raise AuditError(f"{out_dir}: no annotated tile to review")
    labelled = [r for r in live if proposed_pixels(r)]
    queues = []
    if plan.sample:
        queues.append(("sample", stratified_sample(labelled, plan.sample, plan.seed, plan.strata)))
    if plan.uncertain:
        queues.append(("uncertain", uncertain_sample(labelled, plan.uncertain)))
    if plan.unlabelled:
        unlabelled = [r for r in live if not proposed_pixels(r)]
        queues.append(("unlabelled", stratified_sample(unlabelled, plan.unlabelled, plan.seed, plan.strata)))
    if plan.stale:
        stale = stale_keys(out_dir)
        queues.append(("stale", [r for r in live if r.key in stale]))
    # every queue's checks before anything is created on the server
    shown = prepare_tiles(out_dir, list({r.key: r for _, chosen in queues for r in chosen}.values()), served_root)
    return [
        (
            queue_title(title, queue),
            push(client, out_dir, taxonomy, chosen, queue_title(title, queue), served_root, queue, shown),
        )
        for queue, chosen in queues
        if chosen
    ]


def pull_queues(client: AuditClient, out_dir: Path, title: str) -> list[PullSummary]:
    """Every queue's completed reviews into the ledger; the records and masks are not touched (a
    folder without records.jsonl yet, as at the start of a first build, can be pulled into too).
    Projects of this title that are not this folder's queues come last, each with why (`refused`);
    AuditError when no project is."""
    path = records_file(out_dir)
    records = {r.key: r for r in load_records(out_dir) if not r.quarantine} if path.is_file() else {}
    projects, refused = queue_projects(client, title, out_dir)
    if not projects:
        reasons = "".join(f"; {summary.refused}" for summary in refused) or " (push first)"
        raise AuditError(f"no Label Studio project titled {title!r} is the audit of {out_dir.resolve()}{reasons}")
    for summary in refused:
        record_refused(out_dir, summary)
    pulled = [pull_project(client, p.project_id, p.title, p.queue, out_dir, records) for p in projects]
    return pulled + refused


def apply_ledger(out_dir: Path, taxonomy: Taxonomy) -> ApplySummary | None:
    """Apply the ledger to the output folder's records and masks (the proposal kept aside); None when a
    build or annotate run is writing the folder: that run applies the ledger itself when it gets there."""
    try:
        with output_lock(out_dir, wait=False):
            records = load_records(out_dir)
            summary = apply_reviews(out_dir, records, taxonomy)
            write_records(out_dir, records)
    except OutputBusy:
        return None
    return summary
