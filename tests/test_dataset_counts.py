"""Fast checks of what the reviewed dataset is counted from, and of what reports show a browser.

The end-to-end proofs are the builds of tests/test_reviewed_dataset.py and the Prefect and Label
Studio tests; these pin the rules themselves: which pixels a tile counts, why a tile is not a
candidate, which files a report may inline, and the progress line.
"""

from __future__ import annotations

import base64

from flows.progress import RunProgress, progress_line
from pipeline.dataset.markdown import embedded_images, manifest_summary
from pipeline.dataset.records import Instance, Quarantine, ReviewRef, SourceInfo, TileRecord, Window
from pipeline.dataset.selection import SelectionConfig, TileCounts, select_tiles
from pipeline.dataset.tile_table import category_pixels

SOURCE = SourceInfo(
    path="x.tif",
    sha256="0",
    window=Window(row_off=0, col_off=0, height=8, width=8),
    band_mapping=[1, 2, 3],
    stretch="none",
    dtype="uint8",
    raster_width=8,
    raster_height=8,
)


def tile(
    key: str, proposed: dict[str, int], reviewed: dict[str, int] | None = None, *, old: bool = False
) -> TileRecord:
    instances = [
        Instance(category=name, box=[0, 0, 1, 1], detector_score=0.5, area=area) for name, area in proposed.items()
    ]
    review = None
    if reviewed is not None or old:
        review = ReviewRef(queue="sample", project_id=1, task_id=1, annotation_id=1, updated_at="2026-12-01T00:00:00Z")
        review.pixels = None if old else reviewed
    return TileRecord(key=key, source=SOURCE, instances=instances, review=review)


def test_a_review_decides_the_pixels_and_an_older_record_falls_back_to_its_proposal():
    assert category_pixels(tile("a", {"road": 10})) == {"road": 10}
    assert category_pixels(tile("b", {}, {"building": 30})) == {"building": 30}  # labelled only by a reviewer
    assert category_pixels(tile("c", {"road": 10}, {})) == {}  # a review that discarded everything
    assert category_pixels(tile("d", {"road": 10}, old=True)) == {"road": 10}  # written before reviews were counted
    kept = select_tiles([tile("a", {"road": 10}), tile("b", {}, {"building": 30}), tile("c", {"road": 5}, {})])
    assert [t.key for t in kept] == ["a", "b"]


def test_tile_counts_say_why_each_tile_is_left_out():
    counts = TileCounts()
    records = [
        tile("a", {"road": 10}),
        tile("b", {}, {"building": 30}),
        tile("c", {"road": 5}, {}),
        tile("d", {}),
        tile("e", {"road": 1}).model_copy(update={"quarantine": Quarantine(stage="ingest", reason="bad")}),
    ]
    admitted = [r.key for r in records if counts.admit(r, SelectionConfig())]
    assert admitted == ["a", "b"]
    counts.selected = 2
    assert counts.as_dict() == {
        "annotated": 5,
        "quarantined": 1,
        "unlabelled": 1,
        "emptied_by_review": 1,
        "candidates": 2,
        "reviewed_candidates": 1,
        "selected": 2,
    }
    text = " ".join(counts.sentences())
    assert "1 quarantined" in text and "1 dropped as unlabelled" in text and "1 dropped because a review" in text
    keep_all = TileCounts()
    assert [r.key for r in records if keep_all.admit(r, SelectionConfig(drop_unlabeled=False))] == ["a", "b", "c", "d"]
    assert "2 unlabelled tiles are kept" in " ".join(keep_all.sentences())


def test_reports_inline_only_the_charts_beside_them(tmp_path):
    folder = tmp_path / "report"
    folder.mkdir()
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 20
    (folder / "chart.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(png)
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    report = folder / "report.md"
    report.write_text(
        "![a](chart.png) ![b](../secret.png) ![c](%2e%2e%2fsecret.png) ![d](/etc/hostname) "
        "![e](link.png) ![f](nope.png)"
    )
    text = embedded_images(report)
    assert f"![a](data:image/png;base64,{base64.b64encode(png).decode()})" in text
    assert text.count("data:image/png") == 1  # nothing outside the folder, not even through a link
    assert "not found beside the report" in text and "is not a file beside the report" in text


def test_manifest_summary_and_progress_line(tmp_path):
    manifest = {
        "splits": {"train": {"samples": 3}, "val": {"samples": 1}},
        "tiles": {"annotated": 5, "selected": 4},
        "categories": {
            "road": {"images": 2, "pixels": 30},
            "a|b": {"images": 1, "pixels": 10},
            "x": {"images": 0, "pixels": 0},
        },
    }
    summary = manifest_summary(manifest, tmp_path)
    assert "file://" not in summary
    assert "4 samples (train 3, val 1)" in summary and "| road | 2 | 30 | 75.00% |" in summary
    assert "| a\\|b | 1 | 10 | 25.00% |" in summary and "| x |" not in summary
    assert progress_line(0, 400, 0.0) == "0/400 tiles (0%)"
    assert progress_line(120, 400, 24.0) == "120/400 tiles (30%), 5.0 tiles/s, ETA 56 s"
    assert progress_line(100, 100_000, 10.0).endswith("ETA 2 h 46 min")


def test_a_progress_artifact_the_api_refuses_never_stops_a_build(caplog, monkeypatch):
    """The Prefect API failing mid-build (a restart, a network cut) drops the bar, keeps the log lines."""
    import logging
    from types import SimpleNamespace

    import flows.progress

    calls = []

    def refused(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise ConnectionError("the API is gone")

    api = SimpleNamespace(create_progress_artifact=lambda *a, **k: "artifact-id", update_progress_artifact=refused)
    monkeypatch.setattr(flows.progress, "_prefect_artifacts", lambda: api)
    caplog.set_level(logging.INFO)
    progress = RunProgress(logging.getLogger("progress-test"), every_s=0.0)
    progress(5, 10)
    progress(10, 10)
    assert progress.artifact is None and len(calls) == 1  # one failure, then no more calls
    messages = [r.getMessage() for r in caplog.records]
    assert "progress artifact dropped: the API is gone" in messages
    assert any(m.startswith("annotating: 10/10 tiles (100%)") for m in messages)
