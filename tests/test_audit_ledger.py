"""The review ledger, decisions and Table II without a server: reviews written as Label Studio gives them."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from audit.apply import apply_reviews
from audit.decisions import ReviewShapeError, review_annotation
from audit.ledger import Review, append_reviews, latest_reviews, ledger_path, read_ledger
from audit.records import load_records, remember_shown
from audit.settings import AuditError
from audit.stats import audit_statistics, write_report
from audit.status import audit_status
from pipeline.dataset.records import Domain, SourceInfo, TileRecord, Window, write_records
from pipeline.raster.outputs import mask_digest
from taxonomy import load_taxonomy

TAXONOMY = load_taxonomy("ovrsis95k")
ROAD, BUILDING, TREE, WATER, GRASS = (TAXONOMY.index_of(n) for n in ("road", "building", "tree", "water", "grass"))


def brush(region_id: str, label: str, pixels: np.ndarray) -> dict:
    height, width = pixels.shape
    return rle_region(region_id, label, mask2rle((pixels * 255).astype(np.uint8)), width, height)


def rle_region(region_id: str, label: str, rle: list[int], width: int, height: int) -> dict:
    """A brush region as Label Studio gives it, with the RLE as given (a test's hostile one included)."""
    return {
        "id": region_id,
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
    }


def discard(*names: str) -> dict:
    return {"id": "d", "from_name": "discard", "to_name": "image", "type": "choices", "value": {"choices": list(names)}}


def correction(region_id: str, kind: str) -> dict:
    return {
        "id": region_id,
        "from_name": "correction",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [kind]},
    }


def four_stripes() -> np.ndarray:
    """road | building | tree | water, in vertical stripes of a 10x10 tile."""
    proposal = np.full((10, 10), 255, np.uint8)
    proposal[:, :3], proposal[:, 3:6], proposal[:, 6:8], proposal[:, 8:] = ROAD, BUILDING, TREE, WATER
    return proposal


def unchanged(proposal: np.ndarray, *indices: int) -> list[dict]:
    return [brush(f"r{i}", TAXONOMY.categories[i].name, proposal == i) for i in indices]


def decision(decisions, target):
    return next(d for d in decisions if d.target == target)


def test_decisions_and_correction_kinds():
    proposal = four_stripes()
    half_building = np.zeros_like(proposal, bool)
    half_building[:5, 3:6] = True
    grown_road = proposal == ROAD
    grown_road[9, 3] = True
    added = np.zeros_like(proposal, bool)
    added[9, 9] = True
    result = [
        brush(f"r{ROAD}", "road", grown_road),  # outline grown: boundary
        brush(f"r{BUILDING}", "building", half_building),  # pixels only removed: filtering
        brush(f"r{TREE}", "grass", proposal == TREE),  # relabelled, same pixels: category corrected, mask accepted
        brush(f"r{WATER}", "water", proposal == WATER),
        brush("new1", "vehicle", added),  # a category the build missed
        discard("water"),
    ]
    mask, decisions = review_annotation(proposal, result, TAXONOMY)
    assert decision(decisions, "category:road").state == "accepted"
    assert (decision(decisions, "mask:road").state, decision(decisions, "mask:road").kind) == ("corrected", "boundary")
    building = decision(decisions, "mask:building")
    assert (building.state, building.kind, building.kind_source) == ("corrected", "filtering", "inferred")
    assert building.mask_iou == pytest.approx(0.5)
    tree = decision(decisions, "category:tree")
    assert (tree.state, tree.corrected_to) == ("corrected", "grass")
    assert decision(decisions, "mask:tree").state == "accepted"  # a relabelled category gets a mask decision too
    assert decision(decisions, "category:water").state == "discarded"
    assert not any(d.target == "mask:water" for d in decisions)
    assert decision(decisions, "category:vehicle").kind == "added"
    assert (mask[:5, 3:6] == BUILDING).all() and (mask[5:9, 3:6] == 255).all() and mask[9, 3] == ROAD
    assert (mask[:, 6:8] == GRASS).all() and (mask[:9, 8:] == 255).all() and mask[9, 9] == TAXONOMY.index_of("vehicle")

    merged = [*unchanged(proposal, ROAD, BUILDING, WATER), brush(f"r{TREE}", "building", proposal == TREE)]
    _, decisions = review_annotation(proposal, merged, TAXONOMY)
    assert (decision(decisions, "mask:tree").kind, decision(decisions, "category:tree").corrected_to) == (
        "merge",
        "building",
    )
    assert decision(decisions, "mask:building").state == "accepted"

    chosen = [
        *unchanged(proposal, ROAD, TREE, WATER),
        brush(f"r{BUILDING}", "building", half_building),
        correction(f"r{BUILDING}", "boundary"),
    ]
    _, decisions = review_annotation(proposal, chosen, TAXONOMY)
    assert (decision(decisions, "mask:building").kind, decision(decisions, "mask:building").kind_source) == (
        "boundary",
        "reviewer",
    )

    extra = np.zeros_like(proposal, bool)
    extra[0, 8] = True  # a second stroke of an already proposed label joins that category's mask
    joined = [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water"), brush("s2", "road", extra)]
    mask, decisions = review_annotation(proposal, joined, TAXONOMY)
    assert decision(decisions, "mask:road").kind == "boundary" and not any(d.kind == "added" for d in decisions)
    assert mask[0, 8] == ROAD

    with pytest.raises(ReviewShapeError, match="unexpected shape"):
        review_annotation(proposal, [brush("x", "unicorn", added)], TAXONOMY)
    with pytest.raises(ReviewShapeError, match="10x10"):
        review_annotation(proposal, [brush(f"r{ROAD}", "road", np.ones((12, 12), bool))], TAXONOMY)


def make_build(out: Path, proposals: dict[str, np.ndarray], domains: dict[str, str] | None = None) -> None:
    """records.jsonl and masks/KEY.png of a small build output."""
    records = []
    for key, proposal in proposals.items():
        height, width = proposal.shape
        source = SourceInfo(
            path="x.tif",
            sha256="0",
            window=Window(row_off=0, col_off=0, height=height, width=width),
            band_mapping=[1, 2, 3],
            stretch="none",
            dtype="uint8",
            raster_width=width,
            raster_height=height,
        )
        (out / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(proposal).save(out / "masks" / f"{key}.png")
        records.append(
            TileRecord(
                key=key,
                source=source,
                semantic_mask=f"masks/{key}.png",
                proposal_digest=mask_digest(proposal),
                domain=Domain(name=(domains or {}).get(key, "town"), score=1.0),
            )
        )
    write_records(out / "records.jsonl", records)


def review(
    out: Path,
    key: str,
    result: list[dict],
    queue: str = "sample",
    annotation: int = 1,
    when: str = "2026-11-01T10:00:00Z",
    proposal: np.ndarray | None = None,
) -> Review:
    if proposal is None:
        proposal = np.asarray(Image.open(out / "masks" / f"{key}.png"))
    return Review(
        key=key,
        queue=queue,
        project_id=1 if queue == "sample" else 2,
        project=f"p {queue}",
        task_id=zlib.crc32(key.encode()),
        annotation_id=annotation,
        updated_at=when,
        reviewer="ann@example.com",
        result=result,
        proposal_digest=remember_shown(out, proposal),
        pulled_at="2026-11-02T00:00:00+00:00",
    )


def test_table_ii_exact_on_known_reviews(tmp_path):
    """10 sampled tiles x 4 proposals: 1 discarded, 2 relabelled (one a merge), 1 boundary and 1
    filtering correction; an uncertain-queue review counts only in its own table."""
    proposal = four_stripes()
    keys = [f"t{i}" for i in range(11)]
    make_build(tmp_path, {k: proposal for k in keys}, {k: "forest" if k in ("t0", "t1") else "town" for k in keys})
    half_building = np.zeros_like(proposal, bool)
    half_building[:5, 3:6] = True
    grown = proposal == ROAD
    grown[0, 3] = True
    results = {k: unchanged(proposal, ROAD, BUILDING, TREE, WATER) for k in keys[:10]}
    results["t0"] = [*unchanged(proposal, ROAD, BUILDING, TREE, WATER), discard("water")]
    results["t1"] = [*unchanged(proposal, ROAD, BUILDING, WATER), brush(f"r{TREE}", "grass", proposal == TREE)]
    results["t2"] = [*unchanged(proposal, ROAD, BUILDING, WATER), brush(f"r{TREE}", "building", proposal == TREE)]
    results["t3"] = [*unchanged(proposal, BUILDING, TREE, WATER), brush(f"r{ROAD}", "road", grown)]
    results["t4"] = [*unchanged(proposal, ROAD, TREE, WATER), brush(f"r{BUILDING}", "building", half_building)]
    reviews = [review(tmp_path, k, r) for k, r in results.items()]
    reviews.append(
        review(
            tmp_path, "t10", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water", "tree")], queue="uncertain"
        )
    )
    assert append_reviews(tmp_path, reviews) == 11

    stats = audit_statistics(tmp_path, TAXONOMY)
    table = stats["queues"]["sample"]["table"]
    assert table["audited images"] == 10 and table["audited domains"] == 2
    assert (table["category accepted"].successes, table["category accepted"].total) == (37, 40)
    assert (table["category corrected"].successes, table["category discarded"].successes) == (2, 1)
    assert table["false-positive ratio"].value == pytest.approx(1 / 40)  # per proposal, as the paper
    assert table["images with a discarded category"].value == pytest.approx(1 / 10)
    assert (table["mask accepted"].successes, table["mask accepted"].total) == (36, 39)
    assert [table[f"mask correction: {k}"].successes for k in ("boundary", "merge", "filtering")] == [1, 1, 1]
    assert stats["queues"]["sample"]["correction kind source"] == {"reviewer": 0, "inferred": 3}
    uncertain = stats["queues"]["uncertain"]["table"]
    assert (
        uncertain["audited images"],
        uncertain["category discarded"].successes,
        uncertain["category discarded"].total,
    ) == (1, 2, 4)
    assert stats["queues"]["sample"]["per_domain"]["forest"]["discarded"].successes == 1

    payload = write_report(tmp_path, tmp_path / "report", TAXONOMY)
    text = (tmp_path / "report" / "audit_stats.md").read_text()
    assert "| category accepted | 92.50% (" in text and "| 97.25% |" in text and "Queue `uncertain`" in text
    assert payload["queues"]["sample"]["table"]["false-positive ratio"]["rate"] == 0.025
    assert (tmp_path / "report" / "iou-sample.png").read_bytes()[:4] == b"\x89PNG"


def test_ledger_is_append_only_idempotent_and_survives_a_torn_line(tmp_path):
    make_build(tmp_path, {"a": four_stripes(), "b": four_stripes()})
    first = [review(tmp_path, "a", unchanged(four_stripes(), ROAD)), review(tmp_path, "b", [], annotation=2)]
    assert append_reviews(tmp_path, first) == 2
    assert append_reviews(tmp_path, first) == 0  # pulling twice appends nothing
    path = ledger_path(tmp_path)
    intact = path.read_bytes()
    with open(path, "ab") as handle:  # what a writer killed mid-line leaves
        handle.write(intact.splitlines()[0][:40])
    assert [r.identity for r in read_ledger(tmp_path)] == [r.identity for r in first]
    later = review(tmp_path, "a", [], annotation=3, when="2026-11-03T10:00:00Z")
    assert append_reviews(tmp_path, [later]) == 1
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)  # the torn tail was cut, not kept
    assert latest_reviews(read_ledger(tmp_path))["a"].annotation_id == 3

    path.write_bytes(lines[0] + b"\n" + b'{"key": "b", "broken\n' + lines[2] + b"\n")
    with pytest.raises(AuditError, match=r"ledger.jsonl:2: damaged line"):
        read_ledger(tmp_path)


def test_latest_review_wins_across_queues(tmp_path):
    proposal = four_stripes()
    make_build(tmp_path, {"a": proposal})
    older = review(
        tmp_path, "a", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water")], when="2026-11-01T10:00:00Z"
    )
    newer = review(
        tmp_path,
        "a",
        unchanged(proposal, ROAD, BUILDING, TREE, WATER),
        queue="uncertain",
        annotation=7,
        when="2026-11-01T12:00:00+02:00",
    )  # 10:00Z: same instant, higher annotation id wins
    append_reviews(tmp_path, [newer, older])
    assert latest_reviews(read_ledger(tmp_path))["a"].queue == "uncertain"
    assert latest_reviews(read_ledger(tmp_path), "sample")["a"].annotation_id == 1


def test_rebuild_applies_the_ledger_and_marks_stale_reviews(tmp_path):
    proposal = four_stripes()
    make_build(tmp_path, {"a": proposal, "b": proposal})
    append_reviews(tmp_path, [review(tmp_path, "a", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water")])])

    records = load_records(tmp_path)
    summary = apply_reviews(tmp_path, records, TAXONOMY)
    assert (summary.reviewed, summary.stale) == (1, 0) and summary.audit_round.startswith("reviews:1:")
    reviewed = np.asarray(Image.open(tmp_path / "masks" / "a.png"))
    assert not (reviewed == WATER).any() and (reviewed[:, :3] == ROAD).all()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "masks" / "a.proposed.png")), proposal)
    assert records[0].review.queue == "sample" and not records[0].review.stale
    assert not (tmp_path / "masks" / "b.proposed.png").exists() and records[1].review is None

    changed = proposal.copy()
    changed[:, 8:] = TREE  # a later build (another threshold) proposes something else for tile a
    Image.fromarray(changed).save(tmp_path / "masks" / "a.png")
    Image.fromarray(proposal).save(tmp_path / "masks" / "b.png")
    records = load_records(tmp_path)
    records[0].proposal_digest = mask_digest(changed)  # as the build writes it beside the mask
    summary = apply_reviews(tmp_path, records, TAXONOMY)
    assert (summary.reviewed, summary.stale) == (1, 1)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "masks" / "a.png")), reviewed)  # the human review still wins
    assert records[0].review.stale and records[0].review.proposal_digest == mask_digest(proposal)
    assert decision(records[0].audit, "category:water").state == "discarded"  # judged against what was shown
    write_records(tmp_path / "records.jsonl", records)
    (status,) = audit_status(tmp_path)
    assert (status.queue, status.reviewed, status.stale, status.reviewers) == ("sample", 1, 1, {"ann@example.com"})

    again = load_records(tmp_path)
    apply_reviews(tmp_path, again, TAXONOMY)  # applying twice changes nothing
    assert [r.model_dump() for r in again] == [r.model_dump() for r in records]


def test_background_class_is_painted_but_not_judged():
    background = next(c for c in TAXONOMY.categories if not c.propose)
    proposal = four_stripes()
    proposal[:2, :] = background.index
    result = [*unchanged(proposal, ROAD, BUILDING, TREE, WATER, background.index), discard("water")]
    mask, decisions = review_annotation(proposal, result, TAXONOMY)
    assert not any(background.name in d.target for d in decisions)
    assert len([d for d in decisions if d.target.startswith("category:")]) == 4
    assert (mask[:2] == background.index).all() and (mask[2:, 8:] == 255).all()

    corner = np.zeros_like(proposal, bool)
    corner[9, 9] = True
    to_background = [
        *unchanged(proposal, ROAD, BUILDING, background.index),
        brush(f"r{TREE}", background.name, proposal == TREE),
        *unchanged(proposal, WATER),
        brush("new", background.name, corner),
    ]
    mask, decisions = review_annotation(proposal, to_background, TAXONOMY)
    assert decision(decisions, "category:tree").state == "discarded"  # relabelled to the background: a false positive
    assert not any(d.kind == "added" for d in decisions) and not any(d.target == "mask:tree" for d in decisions)
    assert (mask[2:, 6:8] == background.index).all()


def test_a_region_deleted_and_painted_anew_is_a_redrawn_outline():
    proposal = four_stripes()
    redrawn = proposal == ROAD
    redrawn[:, 2] = False
    result = [*unchanged(proposal, BUILDING, TREE, WATER), brush("fresh-stroke", "road", redrawn)]
    _, decisions = review_annotation(proposal, result, TAXONOMY)
    assert decision(decisions, "category:road").state == "accepted"
    assert (decision(decisions, "mask:road").state, decision(decisions, "mask:road").kind) == ("corrected", "filtering")
    assert not any(d.kind == "added" for d in decisions)
    _, ticked = review_annotation(proposal, [*result, discard("road")], TAXONOMY)
    assert decision(ticked, "category:road").state == "discarded"


def test_decoded_reviews_are_cached_and_a_damaged_entry_is_decoded_again(tmp_path):
    proposal = four_stripes()
    make_build(tmp_path, {"a": proposal})
    append_reviews(tmp_path, [review(tmp_path, "a", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water")])])
    first = load_records(tmp_path)
    apply_reviews(tmp_path, first, TAXONOMY)
    cached = sorted((tmp_path / "audit" / "reviewed").iterdir())
    assert [p.suffix for p in cached] == [".json", ".png"]
    cached[1].write_bytes(b"\x89PNG broken")
    cached[0].write_text("[")
    again = load_records(tmp_path)
    apply_reviews(tmp_path, again, TAXONOMY)
    assert [r.model_dump() for r in again] == [r.model_dump() for r in first]
    assert np.array_equal(np.asarray(Image.open(cached[1])), np.asarray(Image.open(tmp_path / "masks" / "a.png")))


def test_the_proposal_is_found_by_its_digest_after_an_annotate_rerun(tmp_path):
    """An annotate rerun rewrites KEY.png (and the record's digest) while an older KEY.proposed.png is
    still there: the apply takes the proposal the record names, so the review is seen to be stale."""
    proposal = four_stripes()
    make_build(tmp_path, {"a": proposal})
    append_reviews(tmp_path, [review(tmp_path, "a", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water")])])
    apply_reviews(tmp_path, load_records(tmp_path), TAXONOMY)
    changed = proposal.copy()
    changed[:, :3] = GRASS
    make_build(tmp_path, {"a": changed})  # what `ovrsis annotate` writes again into the same folder
    records = load_records(tmp_path)
    summary = apply_reviews(tmp_path, records, TAXONOMY)
    assert summary.stale == 1 and records[0].review.stale
    assert np.array_equal(np.asarray(Image.open(tmp_path / "masks" / "a.proposed.png")), changed)

    Image.fromarray(np.zeros_like(proposal)).save(tmp_path / "masks" / "a.proposed.png")  # both files lost the proposal
    reviewed_mask = (tmp_path / "masks" / "a.png").read_bytes()
    summary = apply_reviews(tmp_path, load_records(tmp_path), TAXONOMY)
    assert summary.reviewed == 0 and "rerun the build" in summary.problems[0]
    assert (tmp_path / "masks" / "a.png").read_bytes() == reviewed_mask  # nothing overwritten


def test_apply_waits_for_a_running_build_and_keeps_unshown_categories(tmp_path):
    from audit.session import apply_ledger
    from pipeline.files.atomic import output_lock
    from pipeline.stages.categories import ProposedCategory

    proposal = four_stripes()
    make_build(tmp_path, {"a": proposal})
    records = load_records(tmp_path)
    records[0].categories = [
        ProposedCategory(name=n, score=0.9, phrase=n, method="exact") for n in ("road", "water", "ship")
    ]
    write_records(tmp_path / "records.jsonl", records)
    append_reviews(tmp_path, [review(tmp_path, "a", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water")])])
    with output_lock(tmp_path):  # a build is rewriting the folder: the pull leaves the masks to it
        assert apply_ledger(tmp_path, TAXONOMY) is None
    assert not (tmp_path / "masks" / "a.proposed.png").exists()
    assert apply_ledger(tmp_path, TAXONOMY).reviewed == 1
    after = load_records(tmp_path)[0]
    # ship was proposed by the captions but no mask showed it: never judged, kept as proposed
    assert [c.name for c in after.categories] == ["building", "road", "ship", "tree"]
    assert next(c for c in after.categories if c.name == "ship").method == "exact"


def test_reviewed_masks_reach_the_geotiff_and_a_push_checks_everything_before_the_server(tmp_path):
    import rasterio

    from audit.client import AuditClient
    from audit.queue import push
    from audit.settings import ServerSettings
    from pipeline.raster.outputs import write_mask_geotiff

    proposal = four_stripes()
    make_build(tmp_path, {"a": proposal})
    records = load_records(tmp_path)
    records[0].source.crs, records[0].source.transform = "EPSG:32633", [0.5, 0, 400000, 0, -0.5, 5000000]
    write_mask_geotiff(tmp_path / "masks" / "a.tif", proposal, records[0].source.crs, records[0].source.transform)
    append_reviews(tmp_path, [review(tmp_path, "a", [*unchanged(proposal, ROAD, BUILDING, TREE), discard("water")])])
    apply_reviews(tmp_path, records, TAXONOMY)
    with rasterio.open(tmp_path / "masks" / "a.tif") as written:
        assert not (written.read(1) == WATER).any() and written.crs.to_epsg() == 32633

    nowhere = AuditClient(ServerSettings("http://127.0.0.1:9", "0" * 40), retries=1, backoff=0)
    with pytest.raises(
        AuditError, match="tile a: cannot prepare its task"
    ):  # x.tif is missing: refused before any call
        push(nowhere, tmp_path, TAXONOMY, records, "never created", tmp_path)
