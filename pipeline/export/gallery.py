"""A static HTML gallery of an output folder: each tile's image, coloured mask and overlay, with a legend.

Why: a build writes masks and records, but nothing shows a person what was built. `ovrsis view OUT`
(and a build, at its end, through `write_gallery`) writes `OUT/gallery/`, which opens from disk
(file://, no server, nothing fetched from elsewhere):

    index.html              the page: filters (category, domain, review state, quarantine), pager, cards
    data/tiles.js           one compact row per tile (its classes, domain, review state, quarantine), the
                            class names and colours, the domains and the counts: what the filters run on
    data/chunk-N.js         the cards' details (key, caption, legend, review, quarantine reason), CHUNK_TILES
                            tiles a file, loaded only for the tiles a page shows
    thumbs/F/ID.{i,o}.jpg   image and overlay thumbnails, ID.m.png the coloured mask (at most THUMB_SIZE px)

Scale: records are streamed one at a time (memory stays flat: one tile's pixels, one chunk of cards);
a page shows PAGE_TILES cards and loads only their chunks, thumbnails load lazily, and the data the
filters need is a few dozen bytes a tile. Thumbnails are named by the tile's ordinal, never by a name
from a record, and the page writes every value from a record with `textContent`, never as HTML: keys,
captions, domains and reasons are data someone else wrote. The gallery is written in a temporary
folder beside it and swapped in at the end, so a stopped run leaves the previous gallery whole.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image
from pydantic import ValidationError

from ovrsis.errors import GalleryError
from pipeline.dataset.records import SourceInfo, TileRecord
from pipeline.files.atomic import process_umask
from pipeline.files.layout import GALLERY, gallery_dir, masks_dir, records_file
from pipeline.files.safe_names import UnsafeName, confined_path
from pipeline.raster.ingest import BandRule, IngestError, RasterSource, bounded_reads
from pipeline.raster.outputs import overlay, palette
from taxonomy.loader import Taxonomy, TaxonomyError, load_taxonomy
from taxonomy.masks import IGNORE_INDEX

MARKER = ".ovrsis-gallery"  # marks a gallery folder this module wrote: only such a folder is ever replaced
THUMB_SIZE = 256  # longest side of a thumbnail, in pixels
CHUNK_TILES = 256  # cards per data/chunk-N.js
FOLDER_TILES = 1000  # tiles per thumbs/F/ folder (three files each)
PAGE_TILES = 48  # cards per page
OPEN_SOURCES = 8  # rasters kept open: records of a raster's tiles lie together (a build sorts them by key)
KEPT_PROBLEMS = 20  # problems kept for the summary; every one is shown on its tile's card
IGNORE_COLOUR = (0, 0, 0)  # 255 in the coloured mask: not labelled (ignored in training; not the background class)
OUTSIDE_COLOUR = (255, 0, 255)  # values no class of the taxonomy has
REVIEW_STATES = ("not reviewed", "reviewed", "stale review", "queued, pending review")
NOT_REVIEWED, REVIEWED, STALE, QUEUED = range(len(REVIEW_STATES))


@dataclass
class GallerySummary:
    index: Path  # OUT/gallery/index.html
    tiles: int = 0
    quarantined: int = 0
    problem_tiles: int = 0  # tiles shown without an image or a mask, or with a note (their cards say why)
    bad_lines: int = 0  # lines of records.jsonl that hold no tile record
    problems: list[str] = field(default_factory=list)  # the first KEPT_PROBLEMS, "KEY: what" or "FILE:LINE: what"
    seconds: float = 0.0


def records_taxonomy(out_dir: Path) -> Taxonomy:
    """The taxonomy the folder's first record with provenance was made with (bundled name), so that a
    user need not repeat it; `write_gallery` notes every tile made with another version. GalleryError
    when no record names one or it cannot be loaded."""
    path = existing_records(out_dir)
    for _, record in _read_records(path):
        named = record.provenance.get("taxonomy") if isinstance(record, TileRecord) else None
        if isinstance(named, dict) and isinstance(named.get("name"), str):
            try:
                return load_taxonomy(named["name"])
            except TaxonomyError as error:
                raise GalleryError(f"{path}: {error}; pass --taxonomy") from error
    raise GalleryError(f"{path}: no record names its taxonomy (all quarantined?); pass --taxonomy")


def write_gallery(
    out_dir: Path, taxonomy: Taxonomy, *, thumb_size: int = THUMB_SIZE, on_tile: Callable[[], None] | None = None
) -> GallerySummary:
    """Write OUT/gallery/ for the records in OUT/records.jsonl and the masks in OUT/masks/, replacing
    the gallery an earlier run wrote; `on_tile` is called once per record line (a progress bar).
    Reads each tile's pixels as the build did (its recorded bands and stretch). A tile whose image or
    mask cannot be read is still shown, with the reason; a line that is no record is counted as a problem.
    Does not take the output folder's lock: a build calls it while holding it."""
    started = time.perf_counter()
    records = existing_records(out_dir)
    gallery = gallery_dir(out_dir)
    if gallery.is_symlink() or (gallery.exists() and not (gallery / MARKER).is_file()):
        raise GalleryError(f"{gallery} exists and was not written by `ovrsis view`; move it away to write the gallery")
    _remove_unfinished(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{GALLERY}.", suffix=".part", dir=out_dir))
    try:
        staging.chmod(0o777 & ~process_umask())
        writer = _GalleryWriter(staging, out_dir, taxonomy, thumb_size, GallerySummary(gallery / "index.html"))
        with bounded_reads(), writer:
            for number, record in _read_records(records):
                writer.add(record if isinstance(record, TileRecord) else f"{records}:{number}: {record}")
                if on_tile is not None:
                    on_tile()
            writer.finish()
        summary = writer.summary
        _write_page(staging / "index.html", out_dir, taxonomy)
        (staging / MARKER).write_text("written by `ovrsis view`; replaced whole by the next run\n")
        _swap(staging, gallery)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - started
    return summary


def existing_records(out_dir: Path) -> Path:
    """OUT/records.jsonl; GalleryError when OUT holds none (not an output folder)."""
    path = records_file(out_dir)
    if not path.is_file():
        raise GalleryError(f"{path}: no records (is {out_dir} an `ovrsis annotate` or `ovrsis build` output folder?)")
    return path


def _read_records(path: Path) -> Iterator[tuple[int, TileRecord | str]]:
    """(line number, record) for each line, or (line number, why it is no record): one line in memory."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, TileRecord.model_validate_json(line.rstrip(b"\r\n"))
            except ValidationError as error:
                yield number, f"not a tile record ({error.errors()[0]['msg']})"


def _remove_unfinished(out_dir: Path) -> None:
    """Delete what a stopped run left (`.gallery.*.part` folders, never followed through a link)."""
    for left in out_dir.glob(f".{GALLERY}.*.part"):
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)


def _swap(staging: Path, gallery: Path) -> None:
    """Put the finished gallery in place of the previous one (moved aside, then deleted)."""
    if gallery.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{GALLERY}.", suffix=".part", dir=gallery.parent))
        os.replace(gallery, old / GALLERY)
        os.replace(staging, gallery)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, gallery)


def review_state(record: TileRecord) -> int:
    """Index into REVIEW_STATES: a review replaced the proposal (stale when the proposal changed since),
    or the tile was queued (audit.apply gives a queued tile `pending` decisions), or neither."""
    if record.review is not None:
        return STALE if record.review.stale else REVIEWED
    if any(decision.state == "pending" for decision in record.audit):
        return QUEUED
    return NOT_REVIEWED


class _TileImages:
    """Tile pixels read as the build read them: the record's bands, its stretch (none, or the raster's
    percentile stretch), by window (as audit.queue.TileImages does for the review queue). A few rasters
    are kept open, and a raster that cannot be opened is not tried again for each of its tiles."""

    def __init__(self) -> None:
        self._open: OrderedDict[tuple, RasterSource | str] = OrderedDict()

    def __call__(self, record: TileRecord) -> np.ndarray:
        source = self._source(record.source, record.key.rsplit("__r", 1)[0])
        if isinstance(source, str):
            raise IngestError(source)
        return source.read(record.source.window)[0]

    def _source(self, info: SourceInfo, stem: str) -> RasterSource | str:
        rule = BandRule(bands=tuple(info.band_mapping), stretch="none" if info.stretch == "none" else "percentile")
        key = (info.path, stem, rule)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        try:
            opened: RasterSource | str = RasterSource(Path(info.path), rule, stem)
        except IngestError as error:
            opened = str(error)
        self._open[key] = opened
        if len(self._open) > OPEN_SOURCES:
            _, dropped = self._open.popitem(last=False)
            if isinstance(dropped, RasterSource):
                dropped.close()
        return opened

    def close(self) -> None:
        for source in self._open.values():
            if isinstance(source, RasterSource):
                source.close()
        self._open.clear()


class _GalleryWriter:
    """Writes the thumbnails, data/tiles.js (streamed, a row a tile) and data/chunk-N.js (a chunk of
    cards at a time) for one record after another."""

    def __init__(
        self, folder: Path, out_dir: Path, taxonomy: Taxonomy, thumb_size: int, summary: GallerySummary
    ) -> None:
        self.folder, self.out_dir, self.taxonomy, self.thumb_size = folder, out_dir, taxonomy, thumb_size
        self.summary = summary
        self.n_classes = len(taxonomy)
        self.colours = np.full((256, 3), OUTSIDE_COLOUR, np.uint8)
        self.colours[: self.n_classes] = palette(self.n_classes)[: self.n_classes]
        self.colours[IGNORE_INDEX] = IGNORE_COLOUR
        self.images = _TileImages()
        self.domains: dict[str, int] = {}
        self.counts = {"classes": Counter(), "domains": Counter(), "review": Counter()}
        self.cards: list[dict] = []
        (folder / "data").mkdir()
        self.rows: IO[str] = open(folder / "data" / "tiles.js", "w", encoding="ascii")
        self.rows.write("window.OVRSIS_GALLERY = {};\nOVRSIS_GALLERY.tiles = [\n")

    def __enter__(self) -> _GalleryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.images.close()
        if not self.rows.closed:
            self.rows.close()

    def add(self, record: TileRecord | str) -> None:
        """One tile's thumbnails, row and card; a string is a line that held no record (only noted)."""
        if isinstance(record, str):
            self.summary.bad_lines += 1
            self._problem(record)
            return
        ordinal = self.summary.tiles
        self.summary.tiles += 1
        key = _cut(record.key)
        card: dict = {"k": key}
        notes: list[str] = []
        classes: list[int] = []
        domain = self._domain(_cut(record.domain.name) if record.domain else "unknown")
        state = review_state(record)
        if record.quarantine:
            self.summary.quarantined += 1
            card["q"] = [_cut(record.quarantine.stage), _cut(record.quarantine.reason, 2000)]
        else:
            if record.captions:
                card["c"] = _cut(record.captions[0].text, 300)
            if record.review is not None:
                card["rq"], card["ru"] = _cut(record.review.queue), _cut(record.review.updated_at)
            classes = self._thumbnails(record, ordinal, card, notes)
            self.counts["classes"].update(classes)
            self.counts["review"][state] += 1
        self.counts["domains"][domain] += 1
        if notes:
            card["p"] = [_cut(note, 1000) for note in notes]
            self.summary.problem_tiles += 1
            self._problem(f"{key}: {'; '.join(notes)}")
        self.rows.write(_js([classes, domain, state, int(record.quarantine is not None)]) + ",\n")
        self.cards.append(card)
        if len(self.cards) == CHUNK_TILES:
            self._flush_cards()

    def _thumbnails(self, record: TileRecord, ordinal: int, card: dict, notes: list[str]) -> list[int]:
        """Write the tile's mask, image and overlay thumbnails; fill the card's legend (class, % of the
        tile) and size; returns the classes in the mask. What cannot be read becomes a note."""
        provenance = record.provenance.get("taxonomy")
        made_with = provenance.get("version") if isinstance(provenance, dict) else None
        if made_with not in (None, self.taxonomy.version):
            notes.append(
                f"made with taxonomy version {made_with}, shown with {self.taxonomy.version}: names may be wrong"
            )
        mask = self._mask(record, notes)
        if mask is None:
            return []
        counts = np.asarray(mask.histogram())  # one count per value: what the legend and the filter need
        present = np.flatnonzero(counts)
        outside = [int(v) for v in present if self.n_classes <= v < IGNORE_INDEX]
        if outside:
            notes.append(f"mask values {outside[:10]} are no class of {self.taxonomy.name}")
        order = present[np.argsort(-counts[present], kind="stable")]
        card["l"] = [[int(v), round(100 * float(counts[v]) / counts.sum(), 1)] for v in order]
        scale = min(1.0, self.thumb_size / max(mask.size))
        size = (max(1, round(mask.width * scale)), max(1, round(mask.height * scale)))
        card["w"], card["h"] = size
        small_mask = mask.resize(size, Image.NEAREST)  # class ids are labels: never blended
        folder = self.folder / "thumbs" / str(ordinal // FOLDER_TILES)
        folder.mkdir(parents=True, exist_ok=True)
        coloured = small_mask.convert("P")
        coloured.putpalette(self.colours.ravel().tolist())
        coloured.save(folder / f"{ordinal}.m.png")
        card["t"] = "m"
        classes = [int(v) for v in present if v < self.n_classes]
        try:
            image = self.images(record)
        except IngestError as error:
            notes.append(f"image unavailable: {record.source.path}: {error}")
            return classes
        if image.shape[:2] != (mask.height, mask.width):
            notes.append(f"image {image.shape[1]}x{image.shape[0]} px, mask {mask.width}x{mask.height} px")
        small_image = Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=2.0)
        small_image.save(folder / f"{ordinal}.i.jpg", quality=85)
        tinted = overlay(
            np.asarray(small_image), np.asarray(small_mask), self.n_classes, untinted=self.taxonomy.background_indices
        )
        Image.fromarray(tinted).save(folder / f"{ordinal}.o.jpg", quality=85)
        card["t"] = "imo"
        return classes

    def _mask(self, record: TileRecord, notes: list[str]) -> Image.Image | None:
        """OUT/masks/KEY.png decoded (a single-band 8-bit image), or None with a note saying why not."""
        try:
            path = confined_path(masks_dir(self.out_dir), f"{record.key}.png", "tile key")
        except UnsafeName as error:
            notes.append(f"no mask: {error}")
            return None
        try:
            with Image.open(path) as opened:
                opened.load()
        except OSError as error:  # missing, unreadable, or no image (PIL's UnidentifiedImageError is one)
            notes.append(f"no mask: {path}: {getattr(error, 'strerror', None) or error}")
            return None
        if opened.mode != "L":
            notes.append(f"{path}: not a single-band 8-bit mask (PNG mode {opened.mode})")
            return None
        return opened

    def _domain(self, name: str) -> int:
        return self.domains.setdefault(name, len(self.domains))

    def _problem(self, text: str) -> None:
        if len(self.summary.problems) < KEPT_PROBLEMS:
            self.summary.problems.append(text)

    def _flush_cards(self) -> None:
        chunk = (self.summary.tiles - 1) // CHUNK_TILES
        path = self.folder / "data" / f"chunk-{chunk}.js"
        path.write_text(f"OVRSIS_GALLERY.addChunk({chunk}, {_js(self.cards)});\n", encoding="ascii")
        self.cards = []

    def finish(self) -> None:
        """The last chunk, and the end of data/tiles.js: names, colours, domains and counts."""
        if self.cards:
            self._flush_cards()
        names = self.taxonomy.names
        meta = {
            "taxonomy": f"{self.taxonomy.name} {self.taxonomy.version}",
            "classes": names,
            "colours": [[int(c) for c in self.colours[i]] for i in range(self.n_classes)],
            "background": self.taxonomy.background_indices,
            "domains": list(self.domains),
            "reviewStates": REVIEW_STATES,
            "counts": {
                "classes": {str(k): v for k, v in self.counts["classes"].items()},
                "domains": {str(k): v for k, v in self.counts["domains"].items()},
                "review": {str(k): v for k, v in self.counts["review"].items()},
                "quarantined": self.summary.quarantined,
            },
            "problems": self.summary.problems,
            "problemTiles": self.summary.problem_tiles,
            "badLines": self.summary.bad_lines,
            "chunkTiles": CHUNK_TILES,
            "folderTiles": FOLDER_TILES,
            "pageTiles": PAGE_TILES,
        }
        self.rows.write(f"];\nOVRSIS_GALLERY.meta = {_js(meta)};\n")
        self.rows.close()


def _cut(text: str, limit: int = 300) -> str:
    """A record's text as the page shows it: at most `limit` characters, so that a record written
    elsewhere (a megabyte key or reason) cannot swell the data every page loads."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _js(value: object) -> str:
    """A JSON value as a JavaScript literal, ASCII only (U+2028 and the like escaped)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _write_page(path: Path, out_dir: Path, taxonomy: Taxonomy) -> None:
    """index.html: the page is the same for every folder but for its title; every value from a record
    comes from data/*.js and is written into the page as text by its script."""
    title = html.escape(f"{out_dir.resolve().name} · ovrsis gallery")
    subtitle = html.escape(f"{out_dir.resolve()} · taxonomy {taxonomy.name} {taxonomy.version}")
    path.write_text(PAGE.replace("{title}", title).replace("{subtitle}", subtitle), encoding="utf-8")


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root { --ink: #1d2430; --muted: #5b6575; --line: #d9dee6; --card: #fff; --back: #eef1f5; --accent: #2f6fde; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
  background: var(--back); }
body > header { position: sticky; top: 0; z-index: 1; background: #1d2430; color: #fff; padding: 10px 20px;
  box-shadow: 0 2px 6px rgba(0,0,0,.2); }
h1 { font-size: 18px; margin: 0; }
.subtitle { margin: 2px 0 8px; color: #aeb8c8; font-size: 12px; overflow-wrap: anywhere; }
#filters { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: end; }
#filters label { display: flex; flex-direction: column; font-size: 11px; text-transform: uppercase;
  letter-spacing: .04em; color: #aeb8c8; }
#filters select { margin-top: 2px; min-width: 150px; max-width: 260px; padding: 4px; font-size: 13px; }
button { padding: 4px 10px; font-size: 13px; border: 1px solid var(--line); border-radius: 4px; background: #fff;
  color: var(--ink); cursor: pointer; }
button:disabled { opacity: .45; cursor: default; }
.pager { display: flex; gap: 8px; align-items: center; padding: 10px 20px; color: var(--muted); }
.pager .status { margin-left: 6px; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 16px; padding: 0 20px;
  align-items: start; }
#notes { margin: 10px 20px 0; padding: 8px 12px; background: #fff7e6; border: 1px solid #f0d9a8; border-radius: 6px;
  color: #8a5300; font-size: 12px; }
#notes ul { margin: 4px 0 0; padding-left: 18px; overflow-wrap: anywhere; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px;
  box-shadow: 0 1px 3px rgba(0,0,0,.06); min-width: 0; }
.card header { display: flex; justify-content: space-between; gap: 8px; align-items: baseline; }
.card h2 { font-size: 13px; margin: 0 0 8px; font-family: ui-monospace, Menlo, Consolas, monospace;
  overflow-wrap: anywhere; }
.badges { display: flex; gap: 4px; flex-shrink: 0; }
.badge { font-size: 11px; padding: 1px 7px; border-radius: 10px; background: #e6eaf0; color: var(--muted);
  white-space: nowrap; max-width: 220px; overflow: hidden; text-overflow: ellipsis; }
.badge.review-1 { background: #dff3e4; color: #1d6b34; }
.badge.review-2 { background: #fff0d6; color: #8a5300; }
.badge.review-3 { background: #e3ecfd; color: #23509e; }
.badge.quarantined { background: #fde2e1; color: #a1231d; }
.views { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px; }
figure { margin: 0; text-align: center; }
figure img, .missing { display: block; width: 100%; height: auto; aspect-ratio: 1; object-fit: contain;
  background: #f4f6f9; border-radius: 4px; }
figure img.mask { image-rendering: pixelated; }
.missing { display: flex; align-items: center; justify-content: center; color: var(--muted); font-size: 12px; }
figcaption { font-size: 11px; color: var(--muted); margin-top: 2px; }
.legend { list-style: none; margin: 8px 0 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 12px; }
.legend li { display: flex; align-items: center; gap: 5px; font-size: 12px; }
.swatch { width: 14px; height: 14px; border-radius: 3px; border: 1px solid rgba(0,0,0,.25); flex-shrink: 0; }
.share { color: var(--muted); }
.caption { margin: 8px 0 0; color: var(--muted); font-style: italic; overflow-wrap: anywhere; }
.quarantine { margin: 4px 0 0; color: #a1231d; overflow-wrap: anywhere; }
.problems { margin: 8px 0 0; padding-left: 18px; color: #8a5300; font-size: 12px; overflow-wrap: anywhere; }
.empty { grid-column: 1 / -1; text-align: center; color: var(--muted); padding: 40px; }
</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="subtitle">{subtitle}</p>
<form id="filters">
<label>Category <select id="category"><option value="">any</option></select></label>
<label>Domain <select id="domain"><option value="">any</option></select></label>
<label>Review <select id="review"><option value="">any</option></select></label>
<label>Quarantine <select id="quarantine"><option value="">all tiles</option></select></label>
<button type="reset" id="reset">Clear filters</button>
</form>
</header>
<div id="notes" hidden></div>
<nav class="pager" id="pager-top"></nav>
<main id="grid"><p class="empty">Loading data/tiles.js ...</p></main>
<nav class="pager" id="pager-bottom"></nav>
<noscript><p class="empty">The gallery needs JavaScript to page and filter the tiles.</p></noscript>
<script src="data/tiles.js"></script>
<script>
"use strict";
(() => {
  const G = window.OVRSIS_GALLERY, byId = (id) => document.getElementById(id), grid = byId("grid");
  if (!G || !G.meta) { grid.firstChild.textContent = "data/tiles.js did not load: rerun `ovrsis view`."; return; }
  const M = G.meta, loading = {}, KINDS = [["i", "image", "jpg"], ["m", "mask", "png"], ["o", "overlay", "jpg"]];
  let shown = [], page = 0, drawing = 0;
  G.chunks = {};
  G.addChunk = (n, cards) => { G.chunks[n] = cards; };
  const fmt = (n) => n.toLocaleString("en");
  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function addOption(select, value, label) {
    const o = el("option", "", label);
    o.value = value;
    select.append(o);
  }
  function addOptions(select, counts, names) {  // the most frequent first
    const values = Object.keys(counts).map(Number).sort((a, b) => counts[b] - counts[a] || a - b);
    for (const v of values) addOption(select, v, `${names[v]} (${fmt(counts[v])})`);
  }
  addOptions(byId("category"), M.counts.classes, M.classes);
  addOptions(byId("domain"), M.counts.domains, M.domains);
  M.reviewStates.forEach((s, i) => addOption(byId("review"), i, `${s} (${fmt(M.counts.review[i] || 0)})`));
  addOption(byId("quarantine"), 0, "not quarantined");
  addOption(byId("quarantine"), 1, `quarantined only (${fmt(M.counts.quarantined)})`);
  if (M.problems.length) {  // what `ovrsis view` reported: tiles shown incomplete, lines that held no record
    const notes = byId("notes"), list = el("ul");
    notes.append(`${fmt(M.problemTiles)} tile(s) shown incomplete, ${fmt(M.badLines)} line(s) of records.jsonl `
      + "skipped; the first:");
    for (const p of M.problems) list.append(el("li", "", p));
    notes.append(list);
    notes.hidden = false;
  }

  function chunk(n) {  // a chunk's cards, loaded once; a chunk that fails to load leaves its cards saying so
    return loading[n] || (loading[n] = new Promise((done) => {
      const script = document.createElement("script");
      script.src = `data/chunk-${n}.js`;
      script.onload = script.onerror = done;
      document.head.append(script);
    }));
  }
  function legendName(v) {
    if (v < M.classes.length) return M.classes[v] + (M.background.includes(v) ? " (background)" : "");
    return v === 255 ? "not labelled (255)" : `value ${v} (no class)`;
  }
  function colour(v) {
    const c = v < M.colours.length ? M.colours[v] : v === 255 ? [0, 0, 0] : [255, 0, 255];
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }
  function card(id) {
    const row = G.tiles[id], data = (G.chunks[Math.floor(id / M.chunkTiles)] || [])[id % M.chunkTiles];
    const article = el("article", "card");
    article.dataset.id = id;
    if (!data) {
      article.append(el("p", "problems", `tile ${id}: data/chunk-${Math.floor(id / M.chunkTiles)}.js did not load`));
      return article;
    }
    const head = el("header"), badges = el("div", "badges");
    head.append(el("h2", "key", data.k), badges);
    badges.append(el("span", "badge domain", M.domains[row[1]]));
    if (row[3]) badges.append(el("span", "badge quarantined", "quarantined"));
    else badges.append(el("span", `badge review-${row[2]}`, M.reviewStates[row[2]] + (data.rq ? ` · ${data.rq}` : "")));
    if (data.ru) badges.lastChild.title = `${data.rq}, ${data.ru}`;
    article.append(head);
    if (data.q) {
      const reason = el("p", "quarantine");
      reason.append(el("strong", "", `quarantined at ${data.q[0]}: `), document.createTextNode(data.q[1]));
      article.append(reason);
    } else {
      const views = el("div", "views");
      for (const [kind, label, ext] of KINDS) {
        const figure = el("figure");
        if ((data.t || "").includes(kind)) {
          const img = el("img", label);
          Object.assign(img, { loading: "lazy", decoding: "async", width: data.w, height: data.h });
          img.alt = `${label} of ${data.k}`;
          img.src = `thumbs/${Math.floor(id / M.folderTiles)}/${id}.${kind}.${ext}`;
          figure.append(img);
        } else figure.append(el("div", "missing", "not available"));
        figure.append(el("figcaption", "", label));
        views.append(figure);
      }
      const legend = el("ul", "legend");
      for (const [v, share] of data.l || []) {
        const item = el("li"), swatch = el("span", "swatch");
        item.dataset.value = v;
        swatch.style.background = colour(v);
        item.append(swatch, el("span", "name", legendName(v)), el("span", "share", `${share}%`));
        legend.append(item);
      }
      article.append(views, legend);
    }
    if (data.c) article.append(el("p", "caption", data.c));
    if (data.p) {
      const problems = el("ul", "problems");
      for (const p of data.p) problems.append(el("li", "", p));
      article.append(problems);
    }
    return article;
  }
  function pager(nav) {
    const pages = Math.max(1, Math.ceil(shown.length / M.pageTiles)), first = page * M.pageTiles;
    const go = (label, to, off) => {
      const b = el("button", "", label);
      b.type = "button";
      b.disabled = off;
      b.onclick = () => { page = to; draw(true); };
      return b;
    };
    const status = shown.length
      ? `tiles ${fmt(first + 1)}–${fmt(Math.min(first + M.pageTiles, shown.length))} of ${fmt(shown.length)}`
      : "no tile";
    nav.replaceChildren(
      go("« first", 0, page === 0), go("‹ previous", page - 1, page === 0),
      el("span", "page", `page ${fmt(page + 1)} of ${fmt(pages)}`),
      go("next ›", page + 1, page >= pages - 1), go("last »", pages - 1, page >= pages - 1),
      el("span", "status", `${status} (${fmt(G.tiles.length)} in the folder)`));
  }
  async function draw(scroll) {
    const token = ++drawing, ids = shown.slice(page * M.pageTiles, (page + 1) * M.pageTiles);
    await Promise.all([...new Set(ids.map((id) => Math.floor(id / M.chunkTiles)))].map(chunk));
    if (token !== drawing) return;  // a newer filter or page won
    grid.replaceChildren(...(ids.length ? ids.map(card) : [el("p", "empty", "No tile matches these filters.")]));
    pager(byId("pager-top"));
    pager(byId("pager-bottom"));
    if (scroll) window.scrollTo(0, 0);
  }
  function filter() {
    const pick = (id) => (byId(id).value === "" ? null : Number(byId(id).value));
    const c = pick("category"), d = pick("domain"), r = pick("review"), q = pick("quarantine");
    shown = [];
    G.tiles.forEach((t, id) => {
      if ((c === null || t[0].includes(c)) && (d === null || t[1] === d) && (r === null || (t[2] === r && !t[3]))
          && (q === null || t[3] === q)) shown.push(id);
    });
    page = 0;
    draw(false);
  }
  byId("filters").addEventListener("change", filter);
  byId("filters").addEventListener("reset", () => setTimeout(filter));
  document.body.dataset.ready = "1";
  filter();
})();
</script>
</body>
</html>
"""
