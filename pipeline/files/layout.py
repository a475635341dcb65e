"""The output folder's layout, owned here once: every path to a part of an `ovrsis annotate` or
`ovrsis build` output folder comes from these names and functions (docs/architecture.md, "The output
folder"), so a reader, an exporter and the audit cannot each spell it their own way.

    records.jsonl, summary.json   one record per tile; counts and the quarantined tiles
    masks/ overlays/ stitched/    per-tile masks (KEY.png, KEY.proposed.png, KEY.tif), quick looks, mosaics
    report/ gallery/              reports; `ovrsis view`'s HTML gallery
    shards/, manifest.json        the WebDataset shards and their manifest
    releases/VERSION/             a frozen round (pipeline/dataset/release.py)
    audit/                        the review ledger and what the audit keeps (audit/ledger.py names its files)
    .cache/                       the build's stage cache (the default storage folder)
    .writing.lock                 held while a run writes (pipeline.files.atomic.output_lock)
"""

from __future__ import annotations

from pathlib import Path

RECORDS = "records.jsonl"
SUMMARY = "summary.json"
MANIFEST = "manifest.json"
MASKS = "masks"
OVERLAYS = "overlays"
STITCHED = "stitched"
REPORT = "report"
GALLERY = "gallery"
SHARDS = "shards"
AUDIT = "audit"
RELEASES = "releases"
CACHE = ".cache"
LOCK = ".writing.lock"
TILE_FOLDERS = (MASKS, OVERLAYS, STITCHED)  # written per tile or raster, by annotate and the build


def records_file(out: Path) -> Path:
    return out / RECORDS


def summary_file(out: Path) -> Path:
    return out / SUMMARY


def manifest_file(out: Path) -> Path:
    return out / MANIFEST


def masks_dir(out: Path) -> Path:
    return out / MASKS


def overlays_dir(out: Path) -> Path:
    return out / OVERLAYS


def stitched_dir(out: Path) -> Path:
    return out / STITCHED


def report_dir(out: Path) -> Path:
    return out / REPORT


def gallery_dir(out: Path) -> Path:
    return out / GALLERY


def shards_dir(out: Path) -> Path:
    return out / SHARDS


def audit_dir(out: Path) -> Path:
    return out / AUDIT


def cache_dir(out: Path) -> Path:
    return out / CACHE


def releases_dir(out: Path) -> Path:
    return out / RELEASES
