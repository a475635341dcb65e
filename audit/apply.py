"""Pull reviews from Label Studio and apply them to the records and masks.

Per proposed category c (brush region `r{index of c}` in the prediction), from the latest
annotation of the task:
- c among the "discard" choices, or its region deleted  -> category discarded; its pixels unlabeled;
- its region relabelled to d                            -> category corrected to d (mask IoU recorded);
- otherwise                                             -> category accepted; the mask is accepted
  if the reviewed region equals the proposal (IoU >= 0.999), else corrected (IoU recorded).
A region the reviewer added for a category that was not proposed is recorded as a corrected
(added) category. The new semantic mask is painted from the reviewed regions (smaller regions on
top, as in the merge rule). Tasks without an annotation stay `pending`.

Every pull first streams all tasks, page by page, into a timestamped JSON Lines export (no reviewed
work is ever lost; memory stays bounded however many tasks there are)
and starts from the build's proposal (`masks/KEY.proposed.png`), so pulling twice is idempotent.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from audit.client import AuditClient
from audit.records import keep_proposal, load_records, proposal_mask, write_records
from audit.settings import AuditError
from pipeline.jsonl import atomic_writer, write_json_line
from pipeline.outputs import write_png
from pipeline.records import AuditDecision, TileRecord
from taxonomy.loader import Taxonomy

IGNORE = 255
SAME_MASK_IOU = 0.999


@dataclass
class PullSummary:
    export: Path
    tasks: int = 0
    reviewed: int = 0
    pending: int = 0
    unknown_keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    states: Counter = field(default_factory=Counter)


PAGE_SIZE = 100


def iter_tasks(client: AuditClient, project_id: int) -> Iterator[dict]:
    """Every task of the project with its annotations, one page at a time (memory stays bounded);
    each page is fetched with retries."""
    page = 1
    while True:
        current = client.call(f"reading tasks (page {page})", lambda: client.sdk.tasks.list(
            project=project_id, page=page, page_size=PAGE_SIZE, fields="all"))  # fmt: skip
        items = current.items or []
        for task in items:
            yield {"id": task.id, "data": task.data, "annotations": task.annotations or []}
        total = getattr(current.response, "total", None)
        if len(items) < PAGE_SIZE or (total is not None and page * PAGE_SIZE >= total):
            return  # (has_next cannot be trusted: Label Studio answers 404 past the last page)
        page += 1


def pull(client: AuditClient, project_id: int, out_dir: Path, taxonomy: Taxonomy) -> PullSummary:
    """Stream the project's tasks into a timestamped JSON Lines export, then apply it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    export_path = out_dir / "audit" / "exports" / f"project-{project_id}-{stamp}.jsonl"
    with atomic_writer(export_path) as handle:
        for task in iter_tasks(client, project_id):
            write_json_line(handle, task)
    users = client.call("listing users", lambda: list(client.sdk.users.list()))
    return apply_export(export_path, out_dir, taxonomy, {u.id: u.email for u in users})


def read_export(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def apply_export(export_path: Path, out_dir: Path, taxonomy: Taxonomy, reviewers: dict[int, str] | None = None) -> PullSummary:
    """Apply a saved export (also usable offline, to replay a past pull)."""
    records = load_records(out_dir)
    by_key = {r.key: r for r in records}
    summary = PullSummary(export=export_path)
    for task in read_export(export_path):
        summary.tasks += 1
        key = (task.get("data") or {}).get("key")
        record = by_key.get(key)
        if record is None:
            summary.unknown_keys.append(str(key))
            continue
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        proposal = proposal_mask(out_dir, record)
        if not annotations:
            summary.pending += 1
            record.audit = [AuditDecision(target=f"category:{c.name}") for c in _proposed(proposal, taxonomy)]
            continue
        latest = max(annotations, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)))
        try:
            mask, decisions = review(proposal, latest, taxonomy)
        except (KeyError, ValueError, TypeError) as error:
            summary.problems.append(f"task {task.get('id')} ({key}): annotation in an unexpected shape ({error}); left pending")
            continue
        keep_proposal(out_dir, record)
        write_png(out_dir / record.semantic_mask, mask)
        reviewer, when = _who(latest, reviewers or {}), latest.get("updated_at") or latest.get("created_at")
        for decision in decisions:
            decision.reviewer, decision.time = reviewer, when
            summary.states[decision.state] += 1
        record.audit = decisions
        _update_categories(record, decisions)
        summary.reviewed += 1
    write_records(out_dir, records)
    return summary


def review(proposal: np.ndarray, annotation: dict, taxonomy: Taxonomy) -> tuple[np.ndarray, list[AuditDecision]]:
    """The reviewed semantic mask and the decisions, from one annotation's result list."""
    height, width = proposal.shape
    regions: dict[str, tuple[str, np.ndarray]] = {}
    discarded: set[str] = set()
    for item in annotation.get("result") or []:
        if item.get("from_name") == "discard":
            discarded.update(item["value"].get("choices", []))
        elif item.get("type") == "brushlabels":
            value = item["value"]
            label = value["brushlabels"][0]
            taxonomy.index_of(label)  # an unknown label raises KeyError: unexpected shape
            pixels = decode_rle(value["rle"]).reshape(height, width, 4)[:, :, 3] > 127
            if item["id"] in regions:  # the same region in several parts: union
                pixels |= regions[item["id"]][1]
            regions[item["id"]] = (label, pixels)
    decisions: list[AuditDecision] = []
    painted: list[tuple[int, np.ndarray]] = []
    proposed = _proposed(proposal, taxonomy)
    for category in proposed:
        region_id = f"r{category.index}"
        proposed_pixels = proposal == category.index
        if category.name in discarded or region_id not in regions:
            decisions.append(AuditDecision(target=f"category:{category.name}", state="discarded"))
            continue
        label, pixels = regions[region_id]
        iou = _iou(proposed_pixels, pixels)
        if label != category.name:
            decisions.append(AuditDecision(target=f"category:{category.name}", state="corrected", corrected_to=label, mask_iou=iou))
        else:
            decisions.append(AuditDecision(target=f"category:{category.name}", state="accepted"))
            state = "accepted" if iou >= SAME_MASK_IOU else "corrected"
            decisions.append(AuditDecision(target=f"mask:{category.name}", state=state, mask_iou=iou))
        painted.append((taxonomy.index_of(label), pixels))
    proposed_ids = {f"r{c.index}" for c in proposed}
    for region_id, (label, pixels) in sorted(regions.items()):
        if region_id not in proposed_ids:
            decisions.append(AuditDecision(target=f"category:{label}", state="corrected", corrected_to=label, mask_iou=0.0))
            painted.append((taxonomy.index_of(label), pixels))
    mask = np.full((height, width), IGNORE, np.uint8)
    for index, pixels in sorted(painted, key=lambda p: -int(p[1].sum())):  # larger first, smaller on top
        mask[pixels] = index
    return mask, decisions


def find_project(client: AuditClient, title: str) -> int:
    for project in client.call("listing projects", lambda: list(client.sdk.projects.list(title=title))):
        if project.title == title:
            return project.id
    raise AuditError(f"no Label Studio project titled {title!r} (push first)")


def _proposed(proposal: np.ndarray, taxonomy: Taxonomy):
    present = set(np.unique(proposal).tolist()) - {IGNORE}
    return [c for c in taxonomy.categories if c.index in present]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return round(float(np.logical_and(a, b).sum() / union), 6) if union else 1.0


def _who(annotation: dict, reviewers: dict[int, str]) -> str | None:
    """The reviewer's e-mail (exports give a user id or a user object)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return who.get("email") or reviewers.get(who.get("id")) or str(who.get("id"))
    return None if who is None else reviewers.get(who, str(who))


def _update_categories(record: TileRecord, decisions: list[AuditDecision]) -> None:
    """The record's categories after review: discarded ones removed, corrected ones renamed, added ones listed."""
    from pipeline.categories import ProposedCategory

    by_name = {c.name: c for c in record.categories}
    result: dict[str, ProposedCategory] = {}
    for decision in decisions:
        kind, name = decision.target.split(":", 1)
        if kind != "category" or decision.state == "discarded":
            continue
        source = by_name.get(name)
        if decision.state == "accepted" and source is not None:
            result[name] = source
        else:  # corrected, added, or accepted after an earlier pull removed it: the reviewer is the source
            final = decision.corrected_to or name
            result[final] = ProposedCategory(name=final, score=1.0, phrase="", method="audit")
    record.categories = sorted(result.values(), key=lambda c: c.name)
