"""Pull completed reviews from Label Studio into the build's review ledger (audit/ledger.py).

A pull only reads the server and appends to the ledger; it never edits records or masks (that is
`audit.apply`, which needs no server). Tasks are streamed page by page and each page's reviews are
appended before the next page is read, so memory stays bounded and a pull killed or cut off
mid-way keeps every page it finished; the rerun appends the rest and nothing twice.

Every completed annotation is kept (an edited annotation appears again with its new `updated_at`);
skipped (cancelled) annotations and open tasks add nothing, so they never downgrade a reviewed tile.
Each pull also appends one line per project to `audit/pulls.jsonl` (tasks, reviewed, when), which
`ovrsis audit status` reads without a server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from audit.client import AuditClient
from audit.ledger import PULLS, QUEUED, LedgerWriter, Review, append_row, now, read_lines
from audit.records import proposal_mask, remember_shown
from audit.settings import AuditError
from pipeline.records import TileRecord

PAGE_SIZE = 100


@dataclass
class PullSummary:
    project: str
    project_id: int
    tasks: int = 0
    reviewed: int = 0
    new_reviews: int = 0
    unknown_keys: list[str] = field(default_factory=list)


def queue_title(title: str, queue: str) -> str:
    """The project of a queue: the random sample under `title`, any other queue as `title (QUEUE)`."""
    return title if queue == "sample" else f"{title} ({queue})"


def queue_projects(client: AuditClient, title: str) -> dict[str, tuple[int, str]]:
    """Queue -> (project id, title) of every project of this audit: `title` is the random sample,
    any `title (QUEUE)` another queue (uncertain, stale, or one a team added by hand)."""
    found = {}
    for project in client.call("listing projects", lambda: list(client.sdk.projects.list())):
        if project.title == title:
            found["sample"] = (project.id, project.title)
        elif project.title.startswith(title + " (") and project.title.endswith(")"):
            found[project.title[len(title) + 2 : -1]] = (project.id, project.title)
    return dict(sorted(found.items(), key=lambda item: (item[0] != "sample", item[0])))


def pull_project(
    client: AuditClient, project_id: int, title: str, queue: str, out_dir: Path, records: dict[str, TileRecord]
) -> PullSummary:
    """Append the project's completed reviews to the ledger, one page at a time. Every completed
    review is kept, also of tiles this build does not hold (quarantined now, or from another
    tiling): a review is never dropped because of the current records."""
    users = client.call("listing users", lambda: list(client.sdk.users.list()))
    emails = {user.id: user.email for user in users}
    summary = PullSummary(project=title, project_id=project_id)
    writer = LedgerWriter(out_dir)
    queued = {(row["key"], row["queue"]) for row in read_lines(out_dir / QUEUED)}
    for page in _pages(client, project_id):
        reviews = []
        for task in page:
            summary.tasks += 1
            data = task["data"] or {}
            key, task_queue = data.get("key"), data.get("queue") or queue
            if key not in records:
                summary.unknown_keys.append(str(key))
            if key and (key, task_queue) not in queued:  # a task pushed by a push that was cut short, or by hand
                queued.add((key, task_queue))
                append_row(
                    out_dir / QUEUED,
                    {
                        "key": key,
                        "queue": task_queue,
                        "project_id": project_id,
                        "proposal_digest": data.get("proposal_digest"),
                        "pushed_at": None,
                    },
                )
            found = [
                _review(task, a, key, task_queue, title, project_id, emails, out_dir, records.get(key))
                for a in task["annotations"]
                if _completed(a)
            ]
            summary.reviewed += bool(found)
            reviews.extend(found)
        summary.new_reviews += writer.append(reviews)
    append_row(
        out_dir / PULLS,
        {
            "project": title,
            "project_id": project_id,
            "queue": queue,
            "tasks": summary.tasks,
            "reviewed": summary.reviewed,
            "new_reviews": summary.new_reviews,
            "pulled_at": now(),
        },
    )
    return summary


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
    task: dict,
    annotation: dict,
    key: str,
    queue: str,
    title: str,
    project_id: int,
    emails: dict,
    out_dir: Path,
    record: TileRecord | None,
) -> Review:
    digest = (task["data"] or {}).get("proposal_digest")
    if digest is None and record is not None:  # pushed before digests were kept: the proposal on disk was shown
        digest = remember_shown(out_dir, proposal_mask(out_dir, record))
    try:
        return Review(
            key=key,
            queue=queue,
            project_id=project_id,
            project=title,
            task_id=task["id"],
            annotation_id=annotation["id"],
            updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
            reviewer=_who(annotation, emails),
            result=annotation.get("result") or [],
            proposal_digest=digest,
            pulled_at=now(),
        )
    except (KeyError, ValueError) as error:
        raise AuditError(f"task {task.get('id')} ({key}): annotation in an unexpected shape ({error})") from None


def _who(annotation: dict, emails: dict[int, str]) -> str | None:
    """The reviewer's e-mail (the API gives a user id or a user object)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return who.get("email") or emails.get(who.get("id")) or str(who.get("id"))
    return None if who is None else emails.get(who, str(who))
