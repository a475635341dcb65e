"""Apply the review ledger to a build's records and masks, with no server.

Records and masks are derived from proposals + ledger, never the other way round. For each tile,
the latest completed review in any queue (random sample, uncertain, stale, ...) wins:

- `masks/KEY.png` becomes the reviewed mask, `masks/KEY.proposed.png` holds the build's proposal;
- the record's `audit` holds the decisions (audit/decisions.py, judged against the proposal the
  reviewer was shown), its `categories` what the reviewer kept, and `review` which review it was;
- a review whose shown proposal differs from today's proposal is **stale**: the review still wins
  (a human looked at this tile), the record says so, `ovrsis audit push --stale` re-queues it.

Tiles that were queued (audit/queued.jsonl) but have no review yet get `pending` decisions.

Called by every build after the masks are written (`fresh_proposals=True`: the masks on disk are
this build's proposals) and by `ovrsis audit pull` (`fresh_proposals=False`: the proposal is the
kept `KEY.proposed.png` where there is one). Applying twice gives the same files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.decisions import ReviewShapeError, proposed_categories
from audit.ledger import QUEUED, Review, latest_reviews, read_ledger, read_lines
from audit.records import kept_proposal_path, mask_path, proposal_digest, read_mask, shown_mask
from audit.review_cache import reviewed
from pipeline.categories import ProposedCategory
from pipeline.outputs import write_png
from pipeline.records import AuditDecision, ReviewRef, TileRecord
from taxonomy.loader import Taxonomy


@dataclass
class ApplySummary:
    reviewed: int = 0
    stale: int = 0
    pending: int = 0
    problems: list[str] = field(default_factory=list)
    audit_round: str | None = None  # "reviews:N:DIGEST" of the reviews applied; None when there are none


def apply_reviews(out_dir: Path, records: Iterable[TileRecord], taxonomy: Taxonomy, fresh_proposals: bool) -> ApplySummary:
    """Apply the ledger's latest review of each tile to `records` (in place) and their masks."""
    latest = latest_reviews(read_ledger(out_dir))
    queued = queued_keys(out_dir)
    summary = ApplySummary()
    applied: list[tuple] = []
    for record in records:
        if record.quarantine or not record.semantic_mask:
            continue
        review = latest.get(record.key)
        proposal = _current_proposal(out_dir, record, keep=review is not None, fresh=fresh_proposals)
        if review is None:
            record.review = None
            record.audit = _pending(proposal, taxonomy) if record.key in queued else []
            summary.pending += record.key in queued
            continue
        try:
            _apply_one(out_dir, record, review, proposal, taxonomy)
        except ReviewShapeError as error:
            summary.problems.append(f"{record.key}: review {review.annotation_id} ({review.queue}) not applied: {error}")
            continue
        summary.reviewed += 1
        summary.stale += record.review.stale
        applied.append(review.identity)
    if applied:
        digest = hashlib.sha256(json.dumps(sorted(applied)).encode()).hexdigest()[:12]
        summary.audit_round = f"reviews:{len(applied)}:{digest}"
    return summary


def queued_keys(out_dir: Path) -> set[str]:
    return {row["key"] for row in read_lines(out_dir / QUEUED)}


def _current_proposal(out_dir: Path, record: TileRecord, keep: bool, fresh: bool) -> np.ndarray:
    """This build's proposal of the tile; kept aside as KEY.proposed.png where a review replaces it."""
    current, kept = mask_path(out_dir, record), kept_proposal_path(out_dir, record)
    if fresh:  # the build just wrote its proposal to KEY.png
        if keep:
            shutil.copyfile(current, kept)
        else:
            kept.unlink(missing_ok=True)  # no review (any more): no stale copy left to confuse a reader
        return read_mask(current)
    if keep and not kept.is_file():
        shutil.copyfile(current, kept)
    return read_mask(kept if kept.is_file() else current)


def _apply_one(out_dir: Path, record: TileRecord, review: Review, proposal: np.ndarray, taxonomy: Taxonomy) -> None:
    shown = shown_mask(out_dir, review.proposal_digest)
    if shown is None:
        shown = proposal
    if shown.shape != proposal.shape:
        raise ReviewShapeError(f"the reviewed tile was {shown.shape[1]}x{shown.shape[0]}, it is now "
                               f"{proposal.shape[1]}x{proposal.shape[0]}: re-queue it")  # fmt: skip
    mask, decisions = reviewed(out_dir, review, shown, taxonomy)
    for decision in decisions:
        decision.reviewer, decision.time = review.reviewer, review.updated_at
    write_png(mask_path(out_dir, record), mask)
    record.audit = decisions
    record.categories = _categories_after(record, decisions)
    record.review = ReviewRef(
        queue=review.queue, project_id=review.project_id, task_id=review.task_id, annotation_id=review.annotation_id,
        updated_at=review.updated_at, reviewer=review.reviewer, proposal_digest=review.proposal_digest,
        stale=review.proposal_digest is not None and review.proposal_digest != proposal_digest(proposal),
    )  # fmt: skip


def _pending(proposal: np.ndarray, taxonomy: Taxonomy) -> list[AuditDecision]:
    return [AuditDecision(target=f"category:{c.name}") for c in proposed_categories(proposal, taxonomy)]


def _categories_after(record: TileRecord, decisions: list[AuditDecision]) -> list[ProposedCategory]:
    """The record's categories after review: discarded ones removed, corrected ones renamed, added ones listed."""
    by_name = {c.name: c for c in record.categories}
    result: dict[str, ProposedCategory] = {}
    for decision in decisions:
        kind, name = decision.target.split(":", 1)
        if kind != "category" or decision.state == "discarded":
            continue
        source = by_name.get(name)
        if decision.state == "accepted" and source is not None:
            result[name] = source
        else:  # corrected or added: the reviewer is the source
            final = decision.corrected_to or name
            result[final] = ProposedCategory(name=final, score=1.0, phrase="", method="audit")
    return sorted(result.values(), key=lambda c: c.name)
