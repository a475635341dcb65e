"""Pull completed reviews from Label Studio into the build's review ledger (audit/ledger.py).

A pull only reads the server and appends to the ledger; it never edits records or masks (that is
`audit.apply`, which needs no server). Tasks are streamed page by page and each page's reviews are
appended before the next page is read, so memory stays bounded and a pull killed or cut off
mid-way keeps every page it finished; the rerun appends the rest and nothing twice.

Every completed annotation is kept (an edited annotation appears again with its new `updated_at`);
skipped (cancelled) annotations and open tasks add nothing, so they never downgrade a reviewed tile.
Each pull also appends one line per project to `audit/pulls.jsonl` (tasks, reviewed, when), which
`ovrsis audit status` reads without a server. A review whose brush regions could not fit its tile
(audit/decisions.py `check_regions`) or whose ledger line would be over `MAX_LINE_BYTES` is set aside
with its task: every build decodes what the ledger holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from audit.client import AuditClient
from audit.decisions import ReviewShapeError, check_regions
from audit.folders import belongs_to, not_ours
from audit.ledger import (
    PULLS,
    QUEUED,
    LedgerWriter,
    LineTooLong,
    Pulled,
    Queued,
    Review,
    append_row,
    describe,
    encode_line,
    now,
    read_queued,
)
from audit.names import proposal_digest, queue_name, tile_key
from audit.records import proposal_mask, remember_shown
from ovrsis.errors import TaskSetAside
from pipeline.dataset.records import TileRecord
from pipeline.files.safe_names import UnsafeName

PAGE_SIZE = 100


@dataclass
class PullSummary:
    project: str
    project_id: int
    tasks: int = 0
    reviewed: int = 0
    new_reviews: int = 0
    unknown_keys: list[str] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)  # "task ID: reason", for each task left out
    refused: str | None = None  # why the whole project was not pulled


@dataclass(frozen=True)
class QueueProject:
    queue: str
    project_id: int
    title: str


def queue_title(title: str, queue: str) -> str:
    """The project of a queue: the random sample under `title`, any other queue as `title (QUEUE)`."""
    return title if queue == "sample" else f"{title} ({queue})"


def queue_projects(client: AuditClient, title: str, out_dir: Path) -> tuple[list[QueueProject], list[PullSummary]]:
    """The queue projects of this audit, and the refused ones (each a summary saying why). `title` is the
    random sample, any `title (QUEUE)` another queue (uncertain, stale, or one a team added by hand);
    a project is this audit's only when it belongs to `out_dir` (audit/folders.py) and its queue name
    can name files; a queue that two projects claim is refused in both."""
    found: dict[str, list[QueueProject]] = {}
    refused = []
    for project in client.call("listing projects", lambda: list(client.sdk.projects.list())):
        queue = _queue_of(project.title, title)
        if queue is None:
            continue
        reason = _refusal(project, queue, out_dir)
        if reason is None:
            found.setdefault(queue, []).append(QueueProject(queue, project.id, project.title))
        else:
            refused.append(PullSummary(project=project.title, project_id=project.id, refused=reason))
    for queue, claims in found.items():
        if len(claims) > 1:
            ids = ", ".join(str(c.project_id) for c in claims)
            reason = f"projects {ids} all claim queue {queue!r} of this folder: delete or rename all but one"
            refused.extend(PullSummary(project=c.title, project_id=c.project_id, refused=reason) for c in claims)
    chosen = [claims[0] for claims in found.values() if len(claims) == 1]
    return sorted(chosen, key=lambda p: (p.queue != "sample", p.queue)), refused


def _queue_of(project_title: object, title: str) -> str | None:
    """The queue a project of this title holds; None for another audit's project."""
    if not isinstance(project_title, str):
        return None
    if project_title == title:
        return "sample"
    if project_title.startswith(title + " (") and project_title.endswith(")"):
        return project_title[len(title) + 2 : -1]
    return None


def _refusal(project: Any, queue: str, out_dir: Path) -> str | None:
    """Why a project of this audit's title is not one of the folder's queues; None when it is."""
    if not belongs_to(project, out_dir):
        return not_ours(project, out_dir)
    try:
        queue_name(queue)
    except UnsafeName as error:
        return str(error)
    return None


def record_refused(out_dir: Path, summary: PullSummary) -> None:
    """A refused project's line in audit/pulls.jsonl, so the reasons outlive the terminal."""
    row = Pulled(
        project=summary.project, project_id=summary.project_id, queue=None, refused=summary.refused, pulled_at=now()
    )
    append_row(out_dir / PULLS, row.model_dump())


def pull_project(
    client: AuditClient, project_id: int, title: str, queue: str, out_dir: Path, records: dict[str, TileRecord]
) -> PullSummary:
    """Append the project's completed reviews to the ledger, one page at a time. Every completed
    review is kept, also of tiles this build does not hold (quarantined now, or from another
    tiling): a review is never dropped because of the current records. A task whose data could
    not be a review (a key, queue or digest that is no file name, an annotation of another shape)
    is set aside with its reason; the pull goes on."""
    users = client.call("listing users", lambda: list(client.sdk.users.list()))
    emails = {user.id: user.email for user in users}
    summary = PullSummary(project=title, project_id=project_id)
    writer = LedgerWriter(out_dir)
    queued = {(row.key, row.queue) for row in read_queued(out_dir)}
    for page in _pages(client, project_id):
        reviews = []
        for task in page:
            summary.tasks += 1
            try:
                key, found = _task_reviews(task, queue, title, project_id, emails, out_dir, records, queued)
            except (TaskSetAside, UnsafeName, ValidationError, ReviewShapeError, LineTooLong) as error:
                summary.set_aside.append(f"task {task['id']}: {describe(error)}")
                continue
            if key not in records:
                summary.unknown_keys.append(key)
            summary.reviewed += bool(found)
            reviews.extend(found)
        summary.new_reviews += writer.append(reviews)
    row = Pulled(
        project=title,
        project_id=project_id,
        queue=queue,
        tasks=summary.tasks,
        reviewed=summary.reviewed,
        new_reviews=summary.new_reviews,
        set_aside=summary.set_aside,
        pulled_at=now(),
    )
    append_row(out_dir / PULLS, row.model_dump())
    return summary


def _task_reviews(
    task: dict,
    queue: str,
    title: str,
    project_id: int,
    emails: dict,
    out_dir: Path,
    records: dict[str, TileRecord],
    queued: set[tuple[str, str]],
) -> tuple[str, list[Review]]:
    """The task's tile key and completed reviews, its data checked first (nothing of a refused task is
    written). A task no push recorded (a push cut short, or a task added by hand) is recorded as queued."""
    data = task["data"] or {}
    if not isinstance(data, dict):
        raise TaskSetAside(f"task data is not an object: {data!r:.80}")
    key = tile_key(data.get("key"))
    task_queue = queue_name(data.get("queue") or queue)
    pushed = proposal_digest(data.get("proposal_digest"))
    if not isinstance(task["annotations"], list) or not all(isinstance(a, dict) for a in task["annotations"]):
        raise TaskSetAside("annotations are not a list of objects")
    shown = pushed
    if shown is None and key in records:  # pushed before digests were kept: the proposal on disk was shown
        shown = remember_shown(out_dir, proposal_mask(out_dir, records[key]))
    found = [
        _review(task["id"], a, key, task_queue, title, project_id, emails, shown)
        for a in task["annotations"]
        if _completed(a)
    ]
    for review in found:  # against the regions' own stated size: a review of another tiling is kept
        check_regions(review.result, None)
        encode_line(review.model_dump(mode="json"))  # LineTooLong where the ledger could not hold it
    if (key, task_queue) not in queued:
        queued.add((key, task_queue))
        row = Queued(key=key, queue=task_queue, project_id=project_id, proposal_digest=pushed)
        append_row(out_dir / QUEUED, row.model_dump())
    return key, found


def _pages(client: AuditClient, project_id: int) -> Iterator[list[dict]]:
    page = 1
    while True:
        current = client.call(
            f"reading tasks (page {page})",
            lambda page=page: client.sdk.tasks.list(project=project_id, page=page, page_size=PAGE_SIZE, fields="all"),
        )
        items = current.items or []
        yield [{"id": t.id, "data": t.data, "annotations": t.annotations or []} for t in items]
        total = getattr(current.response, "total", None)
        if len(items) < PAGE_SIZE or (total is not None and page * PAGE_SIZE >= total):
            return  # (has_next cannot be trusted: Label Studio answers 404 past the last page)
        page += 1


def _completed(annotation: dict) -> bool:
    return not annotation.get("was_cancelled") and annotation.get("result") is not None


def _review(
    task_id: object,
    annotation: dict,
    key: str,
    queue: str,
    title: str,
    project_id: int,
    emails: dict,
    digest: str | None,
) -> Review:
    """One completed annotation as a ledger entry (ValidationError where its ids or result have another shape)."""
    return Review(
        key=key,
        queue=queue,
        project_id=project_id,
        project=title,
        task_id=task_id,
        annotation_id=annotation.get("id"),
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        reviewer=_who(annotation, emails),
        result=annotation.get("result") or [],
        proposal_digest=digest,
        pulled_at=now(),
    )


def _who(annotation: dict, emails: dict[int, str]) -> str | None:
    """The reviewer's e-mail (the API gives a user id or a user object)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    if not isinstance(who, int | str):
        return None
    return emails.get(who, str(who))
