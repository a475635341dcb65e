"""The reviewed dataset is the dataset: a real build, reviews in the ledger as Label Studio gives them, a
plain rebuild; selection, the balance report and the manifest all count the reviewed masks.

A tile whose captions named nothing has no proposal; a reviewer who paints a building on it makes it
a labelled tile, which must reach the shards. A tile whose every category a reviewer discards has
nothing left, and must leave them. The balance report's selected column equals the manifest.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from test_audit_ledger import brush, discard, review

from audit.ledger import append_reviews
from audit.records import load_records
from flows.sample_build import make_imagery, run_build, write_config
from pipeline.dataset.shards import ShardReader, verify_shards
from taxonomy import load_taxonomy

pytestmark = pytest.mark.slow
TAXONOMY = load_taxonomy("ovrsis95k")


def balance_rows(report: str) -> dict[str, tuple[int, int, int, int]]:
    """category -> (tiles candidates, tiles selected, pixels candidates, pixels selected) from balance.md."""
    section = report.split("## Categories", 1)[1].split("## Domains", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[1].isdigit():
            rows[cells[0]] = tuple(int(c) for c in cells[1:5])
    return rows


def test_reviews_decide_selection_the_balance_report_and_the_manifest(tmp_path, tiny_models_yaml):
    # scene1's caption names nothing: its 4 tiles get no proposal
    imagery = make_imagery(tmp_path / "data" / "rasters", count=2, size=256, unnamed=1)
    out = tmp_path / "out"
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, out, selection={"target_tiles": "all"})
    first = run_build(config, tmp_path / "prefect")
    assert first.returncode == 1, first.stderr[-3000:]  # finished; broken.tif quarantined
    records = {r.key: r for r in load_records(out) if not r.quarantine}
    empty = sorted(k for k, r in records.items() if k.startswith("scene1"))
    labelled = sorted(k for k, r in records.items() if k.startswith("scene0") and r.instances)
    assert len(empty) == 4 and all(not records[k].instances for k in empty)
    assert len(labelled) >= 2, "the tiny models proposed too little to test with"
    report = (out / "report" / "balance.md").read_text()
    assert "The build annotated 9 tiles" in report and "1 quarantined" in report
    assert "4 dropped as unlabelled" in report
    manifest = ShardReader(out).manifest
    assert manifest["tiles"]["unlabelled"] == 4 and manifest["tiles"]["quarantined"] == 1

    building = TAXONOMY.index_of("building")
    painted = {}
    reviews = []
    for number, key in enumerate(empty):
        shown = np.asarray(Image.open(out / "masks" / f"{key}.png"))
        region = np.zeros(shown.shape, bool)
        region[10 + 5 * number : 60, 20:90] = True  # a building the captions missed
        painted[key] = int(region.sum())
        reviews.append(review(out, key, [brush("new", "building", region)], annotation=number + 1, proposal=shown))
    emptied = labelled[0]  # every proposed category discarded: nothing labelled is left
    shown = np.asarray(Image.open(out / "masks" / f"{emptied}.png"))
    names = [TAXONOMY.categories[v].name for v in np.unique(shown) if v != 255 and TAXONOMY.categories[v].propose]
    reviews.append(review(out, emptied, [discard(*names)], annotation=99, proposal=shown))
    append_reviews(out, reviews)

    second = run_build(config, tmp_path / "prefect")  # a plain rebuild: no server, the ledger applied
    assert second.returncode == 1, second.stderr[-3000:]
    assert verify_shards(out) == []
    reader = ShardReader(out)
    samples = {s.key: s for split in ("train", "val") for s in reader.samples(split)}
    for key in empty:  # every reviewer-labelled tile is in the shards, with the reviewed mask
        assert key in samples, f"{key} was labelled by a reviewer but is not in the shards"
        assert int((samples[key].mask == building).sum()) == painted[key]
        assert samples[key].record["review"]["pixels"] == {"building": painted[key]}
    assert emptied not in samples
    manifest = reader.manifest
    assert manifest["tiles"] == {
        "annotated": 9,
        "quarantined": 1,
        "unlabelled": 0,
        "emptied_by_review": 1,
        "candidates": 7,
        "reviewed_candidates": 4,
        "selected": 7,
    }
    report = (out / "report" / "balance.md").read_text()
    assert "1 dropped because a review left no labelled pixel" in report
    assert "4 candidate tiles are counted from their reviewed masks" in report
    rows = balance_rows(report)
    background = {c.name for c in TAXONOMY.categories if not c.propose}
    from_manifest = {
        name: (c["images"], c["pixels"])
        for name, c in manifest["categories"].items()
        if c["images"] and name not in background
    }
    assert {name: (row[1], row[3]) for name, row in rows.items() if row[1]} == from_manifest
    assert rows["building"][1] >= 4
    assert not re.search(r"\]\((?!data:|[\w.-]+\.png\))", report)  # charts beside the report, nothing else linked
    audit = json.loads((out / "report" / "audit_stats.json").read_text())["dataset"]
    in_masks = sum(c["images"] for name, c in manifest["categories"].items() if name not in background)
    assert (audit["tiles"], audit["proposed categories"]) == (7, in_masks)  # the dataset's 7, not the build's 8
    assert re.search(r"^7 tiles, ", (out / "report" / "audit_stats.md").read_text(), re.MULTILINE)
