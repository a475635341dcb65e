"""Bounded memory for review data (issue 27): a review is checked against its tile before it is
decoded, a ledger line has a size limit, and the ledger is streamed, never read whole."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import audit.ledger
from audit.apply import apply_reviews
from audit.decisions import ReviewShapeError, review_annotation
from audit.ledger import append_reviews, ledger_path
from audit.records import load_records
from audit.session import apply_ledger, default_title, pull_queues
from audit.settings import AuditError
from audit.stats import audit_statistics
from audit.status import audit_status
from pipeline.raster.outputs import mask_digest
from tests.test_audit_hostile import FakeLabelStudio, pushed_build, review_all
from tests.test_audit_ledger import (
    BUILDING,
    ROAD,
    TAXONOMY,
    TREE,
    WATER,
    four_stripes,
    make_build,
    review,
    rle_region,
    unchanged,
)

GIB = 2**30
LINE_LIMIT = 64 * 2**20  # the most bytes a ledger line may hold (audit.ledger.MAX_LINE_BYTES)


def rle_declaring(values: int) -> list[int]:
    """A well-formed Label Studio brush RLE of `values` opaque values (a multiple of 65,536) in runs of
    65,536 values, 27 bits each: a gibibyte declared in 55 KB."""
    header = f"{values:032b}{8 - 1:05b}" + "".join(f"{size - 1:04b}" for size in (3, 4, 8, 16))
    bits = header + f"1{3:02b}{65535:016b}{255:08b}" * (values // 65536)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def region(pixels_rle: list[int], width: int, height: int, label: str = "road", region_id: str = f"r{ROAD}") -> dict:
    return rle_region(region_id, label, pixels_rle, width, height)


def stripes(size: int) -> np.ndarray:
    """four_stripes' categories on a size x size tile."""
    return np.repeat(four_stripes(), size // 10 + 1, axis=1)[:, :size].repeat(size // 10 + 1, axis=0)[:size]


def peak_bytes(step: Callable[[], object]) -> tuple[object, int]:
    """What `step` returns and the most Python and numpy memory it held at once."""
    tracemalloc.start()
    try:
        returned = step()
        return returned, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_rle_declaring_a_gibibyte_for_a_128_px_tile_is_refused_undecoded_and_the_older_review_applies(tmp_path):
    proposal = stripes(128)
    make_build(tmp_path, {"a": proposal})
    older = review(tmp_path, "a", unchanged(proposal, ROAD, BUILDING, TREE, WATER), annotation=1)
    hostile = [region(rle_declaring(GIB), 128, 128), *unchanged(proposal, BUILDING, TREE, WATER)]
    newer = review(tmp_path, "a", hostile, annotation=2, when="2026-11-05T10:00:00Z")
    append_reviews(tmp_path, [older, newer])
    records = load_records(tmp_path)

    summary, peak = peak_bytes(lambda: apply_reviews(tmp_path, records, TAXONOMY))

    assert peak < 32 * 2**20, f"applying held {peak / 2**20:.0f} MiB"
    (problem,) = summary.problems
    assert problem.startswith("a: review 2 (sample) not applied: ")
    assert "declares 1073741824 RLE values, the 128x128 tile's RGBA holds 65536: not decoded" in problem
    assert summary.reviewed == 1 and records[0].review.annotation_id == 1


def test_an_rle_longer_than_its_values_can_take_is_refused_undecoded():
    proposal = stripes(128)
    fitting = rle_declaring(128 * 128 * 4)
    mask, _ = review_annotation(proposal, [region(fitting, 128, 128)], TAXONOMY)
    assert (mask == ROAD).all()
    padded = fitting + [0] * 2**20  # trailing bytes the decoder would turn into bits

    with pytest.raises(ReviewShapeError, match=r"RLE is 10\d{5} bytes, longer than 65536 values can be encoded in"):
        review_annotation(proposal, [region(padded, 128, 128)], TAXONOMY)


@pytest.mark.parametrize(
    ("key", "item", "reason"),
    [
        ("a", region(rle_declaring(GIB), 10, 10), "declares 1073741824 RLE values, the 10x10 tile's RGBA holds 400"),
        ("elsewhere", region(rle_declaring(GIB), 64, 64), "the 64x64 tile's RGBA holds 16384: not decoded"),
    ],
    ids=["a gibibyte declared", "a tile this build lacks"],
)
def test_a_pull_sets_aside_a_review_whose_regions_do_not_fit_the_tile(tmp_path, key, item, reason):
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    review_all(server, 1)
    data = {"key": key, "queue": "sample", "proposal_digest": mask_digest(four_stripes())}
    server.add_task(1, data, [item, *unchanged(four_stripes(), BUILDING, TREE, WATER)])

    (summary,) = pull_queues(client, out, default_title(out))

    (set_aside,) = summary.set_aside
    assert set_aside.startswith("task 3: ") and reason in set_aside
    assert summary.new_reviews == 2 and ledger_path(out).read_bytes().count(b"\n") == 2


def test_a_pull_keeps_a_review_of_another_tile_size_and_apply_does_not_use_it(tmp_path):
    """A review made when the tiles were 64 px is kept when they are 10 px now (never dropped because of
    the current records); applying it reports it as not fitting, and the tile keeps its older review."""
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    review_all(server, 1)
    data = {"key": "a", "queue": "sample", "proposal_digest": mask_digest(four_stripes())}
    server.add_task(1, data, [region(rle_declaring(64 * 64 * 4), 64, 64)])

    (summary,) = pull_queues(client, out, default_title(out))

    assert summary.set_aside == [] and summary.new_reviews == 3
    assert apply_ledger(out, TAXONOMY).reviewed >= 1


def test_a_pull_sets_aside_a_review_whose_ledger_line_would_be_over_the_limit(tmp_path, monkeypatch):
    out = tmp_path / "out"
    server = FakeLabelStudio()
    client = pushed_build(out, server)
    review_all(server, 1)
    monkeypatch.setattr(audit.ledger, "MAX_LINE_BYTES", 4096)
    note = {"id": "n", "from_name": "note", "to_name": "image", "type": "textarea", "value": {"text": ["x" * 5000]}}
    data = {"key": "a", "queue": "sample", "proposal_digest": mask_digest(four_stripes())}
    server.add_task(1, data, [note, *unchanged(four_stripes(), ROAD, BUILDING, TREE, WATER)])

    (summary,) = pull_queues(client, out, default_title(out))

    (set_aside,) = summary.set_aside
    assert set_aside.startswith("task 3: its line would be ") and "bytes, over the 4,096 a line may hold" in set_aside
    assert summary.new_reviews == 2


def test_an_over_long_ledger_line_is_refused_with_a_clear_message(tmp_path):
    make_build(tmp_path, {"a": four_stripes()})
    append_reviews(tmp_path, [review(tmp_path, "a", unchanged(four_stripes(), ROAD))])
    path = ledger_path(tmp_path)
    forged = {**json.loads(path.read_bytes()), "annotation_id": 2, "reviewer": "x" * (LINE_LIMIT + 1)}
    with open(path, "a") as handle:
        handle.write(json.dumps(forged) + "\n")

    with pytest.raises(AuditError, match=r"ledger.jsonl:2: damaged line \(longer than 67,108,864 bytes") as refused:
        audit_status(tmp_path)
    assert "repair or delete that line" in str(refused.value)


def test_an_over_long_torn_last_line_is_ignored_and_cut_off_by_the_next_append(tmp_path, monkeypatch):
    monkeypatch.setattr(audit.ledger, "MAX_LINE_BYTES", 4096)
    make_build(tmp_path, {"a": four_stripes()})
    append_reviews(tmp_path, [review(tmp_path, "a", unchanged(four_stripes(), ROAD))])
    intact = ledger_path(tmp_path).read_bytes()
    with open(ledger_path(tmp_path), "ab") as handle:  # a writer killed mid-line, 3 MiB into it
        handle.write(b'{"key": "a", "result": [' + b"0," * 3 * 2**19)

    assert [s.reviewed for s in audit_status(tmp_path)] == [1]
    later = review(tmp_path, "a", [], annotation=3, when="2026-11-03T10:00:00Z")
    assert append_reviews(tmp_path, [later]) == 1
    assert (
        ledger_path(tmp_path).read_bytes().startswith(intact) and ledger_path(tmp_path).read_bytes().count(b"\n") == 2
    )


def bulky_ledger(out: Path, reviews: int) -> int:
    """A build of two 10x10 tiles and a ledger of `reviews` reviews of them, each line ~100 KB (a result
    item of 20,000 numbers, as an RLE's, that no rule reads); returns the ledger's size in bytes."""
    proposal = four_stripes()
    make_build(out, {"a": proposal, "b": proposal})
    bulk = {
        "id": "p",
        "from_name": "points",
        "to_name": "image",
        "type": "polygon",
        "value": {"points": [99999] * 20000},
    }
    append_reviews(
        out,
        [
            review(
                out,
                "ab"[n % 2],
                [bulk, *unchanged(proposal, ROAD, BUILDING)],
                annotation=n,
                when=f"2026-11-01T{n // 60 % 24:02d}:{n % 60:02d}:00Z",
            )
            for n in range(reviews)
        ],
    )
    return ledger_path(out).stat().st_size


@pytest.mark.parametrize(
    "read",
    [
        lambda out: audit_status(out),
        lambda out: audit_statistics(out, TAXONOMY),
        lambda out: apply_reviews(out, load_records(out), TAXONOMY),
    ],
    ids=["status", "statistics", "apply"],
)
def test_the_ledger_is_streamed_not_read_whole(tmp_path, read):
    size = bulky_ledger(tmp_path, 200)
    read(tmp_path)  # imports and caches warmed outside the measurement

    _, peak = peak_bytes(lambda: read(tmp_path))

    assert size > 15 * 2**20 and peak < size / 4, f"{peak / 2**20:.1f} MiB held reading a {size / 2**20:.0f} MiB ledger"
