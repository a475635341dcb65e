"""Label Studio data is written by someone else: queue names, project titles, tile keys and proposal
digests that would become paths outside the output folder, break the terminal or mix up two output
folders are refused with a reason, and the reviews already pulled are kept. The server is an
in-memory stand-in for the slice of label_studio_sdk a push and a pull call (the hostile data is
put into it by hand, as anyone who can edit the server could)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from audit.apply import apply_reviews
from audit.cli import app
from audit.client import AuditClient
from audit.ledger import append_reviews, ledger_path, read_ledger, read_queued
from audit.queue import push, task_payload
from audit.records import load_records
from audit.session import apply_ledger, default_title, pull_queues
from audit.settings import AuditError, ServerSettings
from audit.stats import write_report
from audit.status import audit_status
from pipeline.raster.outputs import mask_digest
from tests.test_audit_ledger import (
    BUILDING,
    GRASS,
    ROAD,
    TAXONOMY,
    TREE,
    WATER,
    discard,
    four_stripes,
    make_build,
    unchanged,
)
from tests.test_audit_ledger import review as ledger_review

REVIEWER = "ann@example.com"


class Page(list):
    """A page of tasks as the SDK's pager gives it: iterable, with `items` and the response's `total`."""

    def __init__(self, items: list) -> None:
        super().__init__(items)
        self.items = items
        self.response = SimpleNamespace(total=len(items))


class FakeLabelStudio:
    """Projects, tasks and users in memory, behind the SDK calls audit/ uses."""

    def __init__(self) -> None:
        self.rows: dict[int, SimpleNamespace] = {}
        self.task_rows: dict[int, list[SimpleNamespace]] = {}
        self.user_rows = [SimpleNamespace(id=1, email=REVIEWER)]
        self.projects = SimpleNamespace(list=self._projects, create=self._create, import_tasks=self._import)
        self.tasks = SimpleNamespace(list=self._tasks)
        self.users = SimpleNamespace(list=lambda: self.user_rows, whoami=lambda: self.user_rows[0])
        self.import_storage = SimpleNamespace(local=SimpleNamespace(list=lambda project: [], create=lambda **_: None))

    def _projects(self, title: str | None = None) -> list:
        return [p for p in self.rows.values() if title is None or p.title == title]

    def _create(self, title: str, label_config: str = "", description: str = "") -> SimpleNamespace:
        project = SimpleNamespace(id=len(self.rows) + 1, title=title, description=description)
        self.rows[project.id] = project
        self.task_rows[project.id] = []
        return project

    def _import(self, id: int, request: list[dict], return_task_ids: bool = True) -> SimpleNamespace:
        return SimpleNamespace(task_ids=[self.add_task(id, task["data"]).id for task in request])

    def _tasks(self, project: int, page: int = 1, page_size: int = 100, fields: str = "all") -> Page:
        tasks = self.task_rows[project]
        return Page(tasks[(page - 1) * page_size : page * page_size])

    def add_task(self, project: int, data: object, result: list[dict] | None = None) -> SimpleNamespace:
        """A task (reviewed when `result` is given), with data exactly as given."""
        number = sum(len(t) for t in self.task_rows.values()) + 1
        annotations = [] if result is None else [annotation(number, result)]
        task = SimpleNamespace(id=number, data=data, annotations=annotations)
        self.task_rows[project].append(task)
        return task


def annotation(number: int, result: list[dict], user: int = 1) -> dict:
    return {"id": number, "result": result, "completed_by": user, "updated_at": f"2026-11-01T10:00:{number:02d}Z"}


def fake_client(server: FakeLabelStudio) -> AuditClient:
    client = AuditClient(ServerSettings("http://127.0.0.1:9", "0" * 40), retries=1, backoff=0)
    client.sdk = server
    return client


def pushed_build(out: Path, server: FakeLabelStudio, keys=("a", "b")) -> AuditClient:
    """A build of tiles with four categories, pushed to `server` as the random sample (tile images
    already written, as a push writes them)."""
    make_build(out, {key: four_stripes() for key in keys})
    (out / "audit" / "images").mkdir(parents=True)
    for key in keys:
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(out / "audit" / "images" / f"{key}.jpg")
    client = fake_client(server)
    push(client, out, TAXONOMY, load_records(out), default_title(out), out)
    return client


def review_all(server: FakeLabelStudio, project: int, *discarded: str) -> None:
    """Every task of the project reviewed: each region kept, `discarded` categories discarded."""
    for task in server.task_rows[project]:
        result = [
            *unchanged(four_stripes(), ROAD, BUILDING, TREE, WATER),
            *([discard(*discarded)] if discarded else []),
        ]
        task.annotations = [annotation(task.id, result)]


def hostile_task(server: FakeLabelStudio, project: int, out: Path, **data: object) -> None:
    """A reviewed task of tile `a` whose data fields are replaced by `data`."""
    proposal = four_stripes()
    good = {"key": "a", "queue": "sample", "proposal_digest": mask_digest(proposal)}
    server.add_task(project, {**good, **data}, unchanged(proposal, ROAD, BUILDING, TREE, WATER))


def everything_but(out: Path) -> set[Path]:
    """Every path under the test's parent folder that is not inside the output folder."""
    return {p for p in out.parent.parent.rglob("*") if out not in p.parents and p != out}


def written_outside(before: set[Path], out: Path) -> set[Path]:
    return everything_but(out) - before


def test_a_queue_title_that_leaves_the_report_folder_is_refused_and_the_rest_is_pulled(tmp_path):
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    review_all(server, 1, "water")
    sample = server.rows[1]  # anyone who edits the server can copy the folder's description
    hostile = server._create(f"{default_title(out)} (t/../../../../x)", description=sample.description)
    server.add_task(hostile.id, {"key": "a", "proposal_digest": mask_digest(four_stripes())}, [discard("road")])
    before = everything_but(out)

    summaries = pull_queues(client, out, default_title(out))
    write_report(out, out / "report", TAXONOMY)

    assert written_outside(before, out) == set()
    assert {r.queue for r in read_ledger(out)} == {"sample"} and len(read_ledger(out)) == 2
    assert sorted(p.name for p in (out / "report").iterdir()) == [
        "audit_stats.json",
        "audit_stats.md",
        "iou-sample.png",
        "rates-sample.png",
    ]
    (refused,) = [s for s in summaries if s.refused]
    assert refused.project_id == hostile.id and "queue name 't/../../../../x' holds a path separator" in refused.refused


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("queue", "../../../../../y", "queue name '../../../../../y' holds a path separator"),
        ("queue", "/etc/audit", "queue name '/etc/audit' holds a path separator"),
        ("proposal_digest", "../../../decoy", "proposal digest '../../../decoy' is not 24 lowercase hex"),
        ("proposal_digest", "ab" * 5, "is not 24 lowercase hex"),
        ("proposal_digest", "g" * 24, "is not 24 lowercase hex"),
        ("key", "../x", "tile key '../x' holds a path separator"),
        ("key", 7, "tile key is not a string: 7"),
        ("key", ["a"], "tile key is not a string: ['a']"),
        ("key", None, "tile key is not a string: None"),
    ],
)
def test_a_hostile_task_is_set_aside_with_its_reason_and_the_others_are_pulled(tmp_path, field, value, reason):
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    review_all(server, 1, "water")
    # a decoy the digest `../../../decoy` would reach: a PNG of a category tile a never had
    Image.fromarray(np.full((10, 10), GRASS, np.uint8)).save(tmp_path / "decoy.png")
    hostile_task(server, 1, out, **{field: value})
    before = everything_but(out)

    (summary,) = pull_queues(client, out, default_title(out))
    applied = apply_ledger(out, TAXONOMY)
    write_report(out, out / "report", TAXONOMY)

    assert written_outside(before, out) == set()
    ledger = read_ledger(out)
    assert len(ledger) == 2 and {(r.key, r.queue) for r in ledger} == {("a", "sample"), ("b", "sample")}
    assert (summary.tasks, summary.reviewed, summary.new_reviews) == (3, 2, 2)
    (set_aside,) = summary.set_aside
    assert set_aside.startswith("task 3: ") and reason in set_aside
    assert applied.reviewed == 2 and not applied.problems
    records = {r.key: r for r in load_records(out)}
    assert {d.target for d in records["a"].audit if d.state == "discarded"} == {"category:water"}
    assert [s.queue for s in audit_status(out)] == ["sample"]


def test_a_task_that_is_no_object_is_set_aside(tmp_path):
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    review_all(server, 1)
    server.add_task(1, "not an object", [])
    server.add_task(1, {"key": "a", "queue": "sample"}, None).annotations = ["not an annotation"]
    server.add_task(1, {"key": "b", "queue": "sample"}, [{"not": "a region"}]).annotations[0]["id"] = "x"

    (summary,) = pull_queues(client, out, default_title(out))

    assert summary.new_reviews == 2 and len(read_ledger(out)) == 2
    assert [reason.split(":", 1)[0] for reason in summary.set_aside] == ["task 3", "task 4", "task 5"]
    assert "task data is not an object" in summary.set_aside[0]
    assert "annotations are not a list of objects" in summary.set_aside[1]
    assert "annotation_id: Input should be a valid integer" in summary.set_aside[2]


def test_a_push_into_a_project_holding_hostile_tasks_skips_them(tmp_path):
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    server.add_task(1, {"key": ["a"], "queue": "sample"})
    server.add_task(1, {"key": "b", "queue": "stale", "proposal_digest": {"not": "hashable"}})
    server.add_task(1, "not an object")

    again = push(client, out, TAXONOMY, load_records(out), default_title(out), out)

    assert (again.created, again.already_there) == (0, 2)


def test_a_damaged_shown_proposal_is_reported_not_a_traceback(tmp_path):
    out = tmp_path / "out"
    proposal = four_stripes()
    make_build(out, {"a": proposal})
    append_reviews(out, [ledger_review(out, "a", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water")])])
    (out / "audit" / "shown" / f"{mask_digest(proposal)}.png").write_bytes(b"not a PNG")

    summary = apply_reviews(out, load_records(out), TAXONOMY)
    stats = write_report(out, out / "report", TAXONOMY)

    assert summary.reviewed == 0 and "cannot be read" in summary.problems[0]
    assert stats["queues"]["sample"]["table"]["reviews that do not fit their tile (not counted)"] == 1


def test_the_task_image_url_is_encoded(tmp_path):
    key = "odd&name #1+%__r0_c0"
    make_build(tmp_path, {key: four_stripes()})
    (record,) = load_records(tmp_path)

    task = task_payload(record, tmp_path, tmp_path, TAXONOMY, "sample", mask_digest(four_stripes()))

    url = task["data"]["image"]
    assert url == "/data/local-files/?d=audit/images/odd%26name%20%231%2B%25__r0_c0.jpg"
    # as Label Studio (and audit/backend.py) read it back
    assert parse_qs(urlparse(url).query) == {"d": [f"audit/images/{key}.jpg"]}


def test_an_output_folder_with_the_same_name_neither_pulls_nor_pushes_the_other_folders_audit(tmp_path):
    first, second = tmp_path / "a" / "out", tmp_path / "b" / "out"
    server = FakeLabelStudio()
    client = pushed_build(first, server)
    review_all(server, 1, "water")
    make_build(second, {"a": four_stripes(), "b": four_stripes()})
    (second / "audit" / "images").mkdir(parents=True)
    for key in ("a", "b"):
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(second / "audit" / "images" / f"{key}.jpg")
    assert default_title(first) == default_title(second) == "ovrsis audit: out"

    with pytest.raises(AuditError, match=r"is not the audit of .*b/out: its description lacks the line"):
        pull_queues(client, second, default_title(second))
    assert read_ledger(second) == []
    with pytest.raises(AuditError, match="or pass --project to give this folder's audit its own title"):
        push(client, second, TAXONOMY, load_records(second), default_title(second), second)
    assert len(server.task_rows[1]) == 2 and not (second / "audit" / "queued.jsonl").exists()

    pushed = push(client, second, TAXONOMY, load_records(second), "second audit", second)
    assert (pushed.project_id, pushed.created) == (2, 2)
    (pulled,) = pull_queues(client, first, default_title(first))
    assert pulled.new_reviews == 2 and len(read_ledger(first)) == 2  # the first folder's reviews are its own


def test_a_rich_markup_title_and_reviewer_are_printed_as_text(tmp_path, monkeypatch):
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    sample = server.rows[1]
    sample.title = "p [/] [bold]"
    server.user_rows[0].email = "[/]ann@example.com"
    review_all(server, 1, "water")
    queue = server._create("p [/] [bold] ([red]x)", description=sample.description)
    server.add_task(queue.id, {"key": "a", "proposal_digest": mask_digest(four_stripes())}, [discard("road")])
    monkeypatch.setattr("audit.client.AuditClient", lambda settings: client)
    env = {"LABEL_STUDIO_USER_TOKEN": "0" * 40, "COLUMNS": "200"}

    pulled = CliRunner().invoke(app, ["pull", "--records", str(out), "--project", "p [/] [bold]"], env=env)
    status = CliRunner().invoke(app, ["status", "--records", str(out)], env=env)

    assert pulled.exit_code == 0 and pulled.exception is None, pulled.output
    assert "'p [/] [bold]': 2 of 2 tasks reviewed" in pulled.output
    assert "'p [/] [bold] ([red]x)': 1 of 1 tasks reviewed" in pulled.output
    assert status.exit_code == 0 and status.exception is None, status.output
    assert "[red]x" in status.output and "[/]ann@example.com" in status.output


def test_a_pull_that_sets_tasks_aside_names_them_and_exits_1(tmp_path, monkeypatch):
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    review_all(server, 1)
    hostile_task(server, 1, out, queue="[/]../x")
    monkeypatch.setattr("audit.client.AuditClient", lambda settings: client)

    result = CliRunner().invoke(
        app, ["pull", "--records", str(out)], env={"LABEL_STUDIO_USER_TOKEN": "0" * 40, "COLUMNS": "300"}
    )

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # (typer.Exit(1), no traceback)
    assert "task 3: queue name '[/]../x' holds a path separator (set aside)" in result.output
    assert result.output.strip().endswith(
        f"1 task(s) and 0 project(s) left out of the pull; reasons in {out}/audit/pulls.jsonl"
    )
    (row,) = [json.loads(line) for line in (out / "audit" / "pulls.jsonl").read_text().splitlines()]
    assert row["set_aside"] == ["task 3: queue name '[/]../x' holds a path separator"]
    assert len(read_ledger(out)) == 2


def hand_appended(out: Path, **fields: object) -> bytes:
    """The ledger with a line appended by hand: a copy of its first review, later, with `fields` replaced."""
    path = ledger_path(out)
    first = json.loads(path.read_text().splitlines()[0])
    forged = {**first, "annotation_id": 99, "updated_at": "2026-12-01T00:00:00Z", **fields}
    with open(path, "a") as handle:
        handle.write(json.dumps(forged) + "\n")
    return path.read_bytes()


@pytest.mark.parametrize(
    ("field", "value", "applies"),
    [
        ("queue", "../../../../x", True),  # the review still counts, under a harmless queue name
        ("queue", "/tmp/x", True),
        ("proposal_digest", "../../../decoy", True),  # the shown proposal is unknown, not read
        ("key", "../a", False),  # no tile has the harmless key it gets
        ("key", 5, False),
    ],
)
def test_a_hostile_ledger_line_added_by_hand_is_made_harmless_and_nothing_stops(tmp_path, field, value, applies):
    """An older pull or a hand edit may have left such a line: every command goes on (refusing the line
    would stop every build until someone deleted a review), nothing is written outside the output
    folder, no decoy is read, and the tile's reviewed mask stays."""
    out = tmp_path / "out"
    proposal = four_stripes()
    make_build(out, {"a": proposal})
    append_reviews(out, [ledger_review(out, "a", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water")])])
    apply_ledger(out, TAXONOMY)
    Image.fromarray(np.full((10, 10), GRASS, np.uint8)).save(tmp_path / "decoy.png")
    reviewed_mask = (out / "masks" / "a.png").read_bytes()
    ledger = hand_appended(out, **{field: value})
    before = everything_but(out)

    applied = apply_ledger(out, TAXONOMY)
    write_report(out, out / "report", TAXONOMY)
    status = audit_status(out)
    stats = CliRunner().invoke(app, ["stats", "--records", str(out), "--report", str(out / "report")])

    assert stats.exit_code == 0, stats.output
    assert applied.reviewed == 1 and status is not None
    assert written_outside(before, out) == set()
    assert ledger_path(out).read_bytes() == ledger
    assert (out / "masks" / "a.png").read_bytes() == reviewed_mask
    latest = read_ledger(out)[-1]
    assert (latest.key == "a") == applies and "/" not in latest.key + latest.queue
    assert latest.proposal_digest is None or len(latest.proposal_digest) == 24


def test_a_hostile_queued_line_added_by_hand_is_made_harmless(tmp_path):
    out = tmp_path / "out"
    make_build(out, {"a": four_stripes()})
    queued = out / "audit" / "queued.jsonl"
    queued.parent.mkdir()
    queued.write_text(json.dumps({"key": "a/../../x", "queue": "sample", "project_id": 1}) + "\n")
    before = everything_but(out)
    audit_status(out)
    (line,) = read_queued(out)
    assert line.key.startswith("unsafe-key-") and written_outside(before, out) == set()


def test_a_project_an_older_push_made_is_adopted_only_by_the_folder_it_names(tmp_path, monkeypatch):
    """Before the folder line, a push described its project as `ovrsis audit of PATH (...)`: that project
    keeps working for PATH (as resolved from where the command runs), never for a same-named folder."""
    from audit.folders import belongs_to

    (tmp_path / "a" / "out").mkdir(parents=True)
    (tmp_path / "b" / "out").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    legacy = SimpleNamespace(description="ovrsis audit of out (ovrsis95k 1.0)")
    assert belongs_to(legacy, tmp_path / "a" / "out")
    assert not belongs_to(legacy, tmp_path / "b" / "out")
    marked = SimpleNamespace(description="ovrsis audit of out (ovrsis95k 1.0)\novrsis-folder: " + "0" * 16)
    assert not belongs_to(marked, tmp_path / "a" / "out")  # a folder line, once there, is the only claim
