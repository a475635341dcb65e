"""`ovrsis audit status` as a user sees it: run as a command under COLUMNS=80, 200 and 40, every
reviewer name and pull time is printed whole (never cut to "…") and no line is wider than the
terminal. The audit files are written as a push and a pull write them; no server is needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from audit.ledger import LEDGER, PULLS, QUEUED, Pulled, Queued, Review
from flows.sample_build import ovrsis

LONG_NAME = "maria.rodriguez-fernandez@university.example.org"  # 48 characters, longer than a narrow column
REVIEWERS = {"sample": ["admin@example.com", LONG_NAME], "uncertain": ["j.smith@example.com"]}
PULLED_AT = {"sample": "2026-12-08T09:08:07+00:00", "uncertain": "2026-12-08T10:11:12+00:00"}


@pytest.fixture(scope="module")
def audit_folder(tmp_path_factory) -> Path:
    """An output folder with no tiles: 3 queued tiles in `sample` (2 reviewed), 1 in `uncertain` (reviewed),
    each queue pulled once."""
    out = tmp_path_factory.mktemp("status")
    (out / "records.jsonl").touch()
    (out / "audit").mkdir()
    queued = [Queued(key=f"tile{i}", queue="sample", project_id=1) for i in range(3)]
    queued.append(Queued(key="tile3", queue="uncertain", project_id=2))
    reviewed = [("tile0", "sample", "admin@example.com"), ("tile1", "sample", LONG_NAME)]
    reviewed.append(("tile3", "uncertain", "j.smith@example.com"))
    reviews = [
        Review(
            key=key,
            queue=queue,
            project_id=1 if queue == "sample" else 2,
            project=f"audit ({queue})",
            task_id=n,
            annotation_id=n,
            updated_at="2026-12-07T10:00:00+00:00",
            reviewer=reviewer,
            pulled_at=PULLED_AT[queue],
        )
        for n, (key, queue, reviewer) in enumerate(reviewed)
    ]
    pulls = [
        Pulled(project=f"audit ({queue})", project_id=n, queue=queue, pulled_at=PULLED_AT[queue])
        for n, queue in ((1, "sample"), (2, "uncertain"))
    ]
    for path, rows in ((QUEUED, queued), (LEDGER, reviews), (PULLS, pulls)):
        (out / path).write_text("".join(row.model_dump_json() + "\n" for row in rows))
    return out


def run_status(folder: Path, columns: int) -> str:
    status = subprocess.run(
        ovrsis("audit", "status", "--records", str(folder)),
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS=str(columns)),
    )
    assert status.returncode == 0, status.stderr
    return status.stdout


@pytest.mark.parametrize("columns", [80, 200])
def test_status_prints_every_reviewer_and_pull_time_whole(audit_folder, columns):
    out = run_status(audit_folder, columns)
    assert "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= columns, out
    lines = [line.strip() for line in out.splitlines()]
    for queue, reviewers in REVIEWERS.items():
        for reviewer in reviewers:  # each name whole on one line, also the one longer than a narrow column
            assert any(reviewer in line for line in lines), (reviewer, out)
        assert any(PULLED_AT[queue] in line for line in lines), (PULLED_AT[queue], out)


def test_status_is_a_table_where_it_fits_and_a_block_per_queue_where_not(audit_folder):
    wide = run_status(audit_folder, 200)
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in wide.splitlines()
        if line.count("│") > 5
    }
    assert rows["sample"] == ["3", "2", "1", "0", "admin@example.com", PULLED_AT["sample"]], wide
    assert rows[""][4] == LONG_NAME, wide  # a second reviewer on the row's next line
    assert rows["uncertain"] == ["1", "1", "0", "0", "j.smith@example.com", PULLED_AT["uncertain"]], wide

    narrow = run_status(audit_folder, 80)
    assert "│" not in narrow, narrow
    blocks = narrow.split("\nuncertain\n")
    assert len(blocks) == 2, narrow
    sample = [line.split() for line in blocks[0].splitlines()]
    assert ["pending", "1"] in sample and ["reviewers", "admin@example.com"] in sample and [LONG_NAME] in sample
    assert ["last", "pull", PULLED_AT["uncertain"]] in [line.split() for line in blocks[1].splitlines()]


def test_status_folds_a_name_longer_than_the_terminal_and_cuts_nothing(audit_folder):
    out = run_status(audit_folder, 40)
    title, *lines = out.splitlines()  # the title's path is left whole, for the terminal to wrap (and copy)
    assert title == f"audit of {audit_folder}" and "…" not in out and max(len(line) for line in lines) <= 40, out
    assert LONG_NAME in "".join(line.strip() for line in out.splitlines()), out
