"""Apply the review ledger to a build's records and masks, with no server.

Records and masks are derived from proposals + ledger, never the other way round. For each tile,
the latest completed review in any queue (random sample, uncertain, stale, ...) wins:

- `masks/KEY.png` becomes the reviewed mask, `masks/KEY.proposed.png` holds the build's proposal;
- the record's `audit` holds the decisions (audit/decisions.py, judged against the proposal the
  reviewer was shown), its `categories` what the reviewer kept, and `review` which review it was;
- a review whose shown proposal differs from today's proposal is **stale**: the review still wins
  (a human looked at this tile), the record says so, `ovrsis audit push --stale` re-queues it.

Tiles that were queued (audit/queued.jsonl) but have no review yet get `pending` decisions.

The proposal is found by the digest the build (or annotate) wrote into the record, in KEY.png
(just rewritten by a build) or KEY.proposed.png (kept by an earlier apply), so applying after a
build, after an `ovrsis annotate` rerun or after a killed build never mistakes a reviewed mask for
a proposal. Called by every build after the masks are written and by `ovrsis audit pull` (which
skips it while a build holds the output folder; that build applies the ledger itself). Applying
twice gives the same files. Where the build wrote them, the GeoTIFF mask and the overlay of a
reviewed tile show the reviewed mask too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.decisions import ReviewShapeError, proposed_categories
from audit.ledger import Entry, Review, ledger_entries, load_review, read_queued, reviews_by_tile
from audit.queue import TileImages
from audit.records import kept_proposal_path, mask_path, read_mask, shown_mask
from audit.review_cache import reviewed
from ovrsis.errors import ProposalMissing
from pipeline.dataset.records import AuditDecision, ReviewRef, TileRecord
from pipeline.files.layout import masks_dir, overlays_dir
from pipeline.raster.ingest import IngestError
from pipeline.raster.outputs import mask_digest, overlay, write_mask_geotiff, write_png
from pipeline.stages.categories import ProposedCategory
from taxonomy.loader import Taxonomy


@dataclass
class ApplySummary:
    reviewed: int = 0
    stale: int = 0
    pending: int = 0
    problems: list[str] = field(default_factory=list)
    audit_round: str | None = None  # "reviews:N:DIGEST" of the reviews applied; None when there are none


def apply_reviews(out_dir: Path, records: Iterable[TileRecord], taxonomy: Taxonomy) -> ApplySummary:
    """Apply the ledger's latest applicable review of each tile to `records` (in place) and their masks."""
    summary = ApplySummary()
    for _ in iter_applied(out_dir, records, taxonomy, summary):
        pass
    return summary


def iter_applied(
    out_dir: Path, records: Iterable[TileRecord], taxonomy: Taxonomy, summary: ApplySummary
) -> Iterator[TileRecord]:
    """`apply_reviews` one record at a time: each record is yielded once applied, so a build streams
    its records through here (the ledger is read once, keeping each review's entry, not its result)
    instead of holding them all."""
    reviews = reviews_by_tile(entry for _, entry in ledger_entries(out_dir))
    queued = queued_keys(out_dir)
    applied: list[tuple] = []
    overlays = OverlayWriter(out_dir, taxonomy)
    for record in records:
        if record.quarantine or not record.semantic_mask:
            yield record
            continue
        candidates = reviews.get(record.key, [])
        if not candidates and record.key not in queued and not kept_proposal_path(out_dir, record).exists():
            record.review, record.audit = None, []  # never reviewed nor queued: the proposal stands, unread
            yield record
            continue
        try:
            proposal = _current_proposal(out_dir, record, keep=bool(candidates))
        except ProposalMissing as error:
            summary.problems.append(str(error))
            yield record
            continue
        applied_review = _apply_newest(out_dir, record, candidates, proposal, taxonomy, summary.problems)
        if applied_review is None:
            record.review = None
            record.audit = _pending(proposal, taxonomy) if record.key in queued else []
            summary.pending += record.key in queued
            if candidates:  # reviewed, but no review fits today's tile: the proposal stands
                shutil.copyfile(kept_proposal_path(out_dir, record), mask_path(out_dir, record))
            yield record
            continue
        review, reviewed_mask = applied_review
        overlays.rewrite(record, reviewed_mask, summary.problems)
        summary.reviewed += 1
        summary.stale += record.review.stale
        applied.append(review.identity)
        yield record
    if applied:
        digest = hashlib.sha256(json.dumps(sorted(applied)).encode()).hexdigest()[:12]
        summary.audit_round = f"reviews:{len(applied)}:{digest}"


def queued_keys(out_dir: Path) -> set[str]:
    return {row.key for row in read_queued(out_dir)}


def _current_proposal(out_dir: Path, record: TileRecord, keep: bool) -> np.ndarray:
    """The tile's proposal: of KEY.png and KEY.proposed.png, the one whose values match the record's
    `proposal_digest` (the build and annotate write it with the mask). Kept aside as KEY.proposed.png
    where a review replaces it; put back as KEY.png where no review does."""
    current, kept = mask_path(out_dir, record), kept_proposal_path(out_dir, record)
    candidates = [path for path in (kept, current) if path.is_file()]
    found = None
    for path in candidates:
        mask = read_mask(path)
        if record.proposal_digest is None or mask_digest(mask) == record.proposal_digest:
            found = (path, mask)  # (records of older versions name no digest: the kept copy, else the mask)
            break
    if found is None:
        raise ProposalMissing(
            f"{record.key}: neither {current.name} nor {kept.name} holds the proposal "
            f"{record.proposal_digest} that records.jsonl names; rerun the build"
        )
    path, proposal = found
    if keep and path == current:
        shutil.copyfile(current, kept)
    elif not keep and path == kept:  # a review no longer in the ledger: the mask goes back to the proposal
        shutil.copyfile(kept, current)
    if not keep:
        kept.unlink(missing_ok=True)
    return proposal


def _apply_newest(
    out_dir: Path,
    record: TileRecord,
    candidates: list[Entry],
    proposal: np.ndarray,
    taxonomy: Taxonomy,
    problems: list[str],
) -> tuple[Review, np.ndarray] | None:
    """Apply the newest review that fits the tile; a review that does not (another tile size, a label the
    taxonomy lost, a region declaring more than the tile) is reported and the next older one is tried."""
    for entry in candidates:
        review = load_review(out_dir, entry)
        try:
            return review, _apply_one(out_dir, record, review, proposal, taxonomy)
        except ReviewShapeError as error:
            problems.append(f"{record.key}: review {review.annotation_id} ({review.queue}) not applied: {error}")
    return None


def _apply_one(
    out_dir: Path, record: TileRecord, review: Review, proposal: np.ndarray, taxonomy: Taxonomy
) -> np.ndarray:
    """Write the review's mask over KEY.png and its decisions into the record; returns the mask."""
    kept_shown = shown_mask(out_dir, review.proposal_digest)
    shown = proposal if kept_shown is None else kept_shown
    if shown.shape != proposal.shape:
        raise ReviewShapeError(
            f"the reviewed tile was {shown.shape[1]}x{shown.shape[0]}, it is now "
            f"{proposal.shape[1]}x{proposal.shape[0]}: re-queue it"
        )
    mask, decisions = reviewed(out_dir, review, shown, taxonomy, cache=kept_shown is not None)
    for decision in decisions:
        decision.reviewer, decision.time = review.reviewer, review.updated_at
    write_png(mask_path(out_dir, record), mask)
    record.audit = decisions
    record.categories = _categories_after(record, decisions)
    record.review = ReviewRef(
        queue=review.queue,
        project_id=review.project_id,
        task_id=review.task_id,
        annotation_id=review.annotation_id,
        updated_at=review.updated_at,
        reviewer=review.reviewer,
        proposal_digest=review.proposal_digest,
        stale=review.is_stale_for(proposal),
        pixels=labelled_pixels(mask, taxonomy),
    )
    return mask


def labelled_pixels(mask: np.ndarray, taxonomy: Taxonomy) -> dict[str, int]:
    """Pixels per category in a reviewed mask, the background classes and the ignore value left out
    (counted the way the merge counts instance areas, so reviewed and unreviewed tiles compare)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    skipped = set(taxonomy.background_indices)
    return {c.name: int(counts[c.index]) for c in taxonomy.categories if counts[c.index] and c.index not in skipped}


class OverlayWriter:
    """The reviewed mask into the tile's other views, where the build wrote them: the GeoTIFF mask
    (masks/KEY.tif) and the quick-look overlay (overlays/KEY.png), so GIS users and quick looks
    see the reviewed mask too."""

    def __init__(self, out_dir: Path, taxonomy: Taxonomy) -> None:
        self.out_dir, self.n_classes, self.class_names = out_dir, len(taxonomy), taxonomy.names
        self.background = taxonomy.background_indices
        self.images = TileImages()

    def rewrite(self, record: TileRecord, mask: np.ndarray, problems: list[str]) -> None:
        geotiff, quick_look = (
            masks_dir(self.out_dir) / f"{record.key}.tif",
            overlays_dir(self.out_dir) / f"{record.key}.png",
        )
        if geotiff.is_file() and record.source.transform:
            write_mask_geotiff(geotiff, mask, record.source.crs, record.source.transform, class_names=self.class_names)
        if quick_look.is_file():
            try:
                write_png(quick_look, overlay(self.images(record), mask, self.n_classes, untinted=self.background))
            except (IngestError, OSError) as error:
                problems.append(f"{record.key}: overlay not updated ({error})")


def _pending(proposal: np.ndarray, taxonomy: Taxonomy) -> list[AuditDecision]:
    return [AuditDecision(target=f"category:{c.name}") for c in proposed_categories(proposal, taxonomy)]


def _categories_after(record: TileRecord, decisions: list[AuditDecision]) -> list[ProposedCategory]:
    """The record's categories after review: discarded ones removed, corrected ones renamed, added ones listed."""
    by_name = {c.name: c for c in record.categories}
    judged = {d.target.split(":", 1)[1] for d in decisions if d.target.startswith("category:")}
    # a category the captions proposed but no mask showed was never put to the reviewer: kept as proposed
    result: dict[str, ProposedCategory] = {name: c for name, c in by_name.items() if name not in judged}
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
