"""Imagery in, masks out: the paper's Figure 2 as plain functions over batches of tiles.

    ingest/tile -> caption -> parse -> match -> detect -> segment -> merge -> domain -> write

A batch is a list of `TileState`: the tile's record plus what the stages found, and no pixels, so
a state can be cached between stages (`pipeline/build/stage_cache.py`; the Prefect flow does). Pixels
come from a `PixelSource`: in memory when tiles were just read, or re-read by window.
`Annotator.run_batch` walks the stage registry (`pipeline/stages/registry.py`); `ovrsis annotate` and the
build flow both run every batch through it, a few batches in flight (`pipeline.build.batching.in_order`)
so that one batch's CPU stages overlap another's model stages.

Every stage takes the batch's live tiles. A stage that fails for the batch is retried tile by tile,
so one bad tile (a model error, out-of-memory, an empty answer) is quarantined with the stage and
the reason, and the rest of the batch goes on. Quarantined tiles keep their record and get no mask.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from ovrsis.errors import ModelOutputError
from pipeline.build.batching import MODEL_BATCH, batched, in_order
from pipeline.build.tile_state import TileState
from pipeline.dataset.records import Caption, Quarantine, TileRecord
from pipeline.files.atomic import atomic_path, output_lock, remove_stale_parts
from pipeline.files.jsonl import atomic_writer, check_encoding, write_json_line
from pipeline.files.layout import MASKS, OVERLAYS, STITCHED, TILE_FOLDERS, records_file, summary_file
from pipeline.files.safe_names import confined_name, confined_path
from pipeline.models.detector import PromptPhrase
from pipeline.models.protocols import Models
from pipeline.raster.ingest import (
    MAX_PIXELS,
    BandRule,
    IngestError,
    RasterSource,
    Tile,
    TilingConfig,
    bounded_reads,
    find_rasters,
    quarantined_file,
    source_keys,
)
from pipeline.raster.outputs import mask_digest, overlay, write_mask_geotiff, write_png
from pipeline.raster.stitch import stitch_to_geotiff
from pipeline.stages.categories import CaptionCategorizer, parse_images
from pipeline.stages.categorize_file import CategorizeSummary, iter_items
from pipeline.stages.domains import DomainClassifier
from pipeline.stages.merge import InstanceMask, MergeConfig, decode_rle, encode_rle, merge_instances
from pipeline.stages.registry import STAGES, given_captions
from taxonomy.loader import Taxonomy
from taxonomy.matcher import DEFAULT_MARGIN, DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from pipeline.build.stage_cache import StageCache


@dataclass
class AnnotateConfig:
    tiling: TilingConfig = field(default_factory=TilingConfig)
    bands: BandRule = field(default_factory=BandRule)
    merge: MergeConfig = field(default_factory=MergeConfig)
    batch_size: int = MODEL_BATCH
    write_geotiff: bool = True
    write_overlay: bool = True
    stitch: bool = True  # also a full-size GeoTIFF mask per georeferenced raster of several tiles
    synonyms_in_prompt: int = 1
    match_threshold: float = DEFAULT_THRESHOLD
    match_margin: float = DEFAULT_MARGIN
    max_pixels: int = MAX_PIXELS  # rasters whose header claims more are quarantined unread
    model_slots: int = 1  # model stages running at once in this process (the build's gpu_concurrency)
    batches_in_flight: int = 3  # one being read, one in the model stages, one merged and written


class SerialLoads:
    """The models of a ModelSet, loaded one at a time: transformers patches torch process-wide while
    it builds a model (meta-device initialisation), so two loads on two threads (one batch's
    detector beside another's MiniLM) corrupt each other. A first run of a CPU stage, which loads
    spaCy or MiniLM, holds the same lock (`loading`)."""

    def __init__(self, models) -> None:
        self._models = models
        self.loading = threading.RLock()

    def __getattr__(self, name: str):
        with self.loading:
            return getattr(self._models, name)


class PixelSource(Protocol):
    def __call__(self, record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
        """The tile's 8-bit RGB image and its valid-pixel mask."""


class RasterPixels:
    """Re-reads tiles by window; open rasters are kept (a few per thread) so a batch reads each file
    once. Per thread, because a GDAL dataset handle must not be read from two threads at once and
    a build runs batches on several."""

    def __init__(self, bands: BandRule, max_pixels: int = MAX_PIXELS) -> None:
        self._bands, self._max_pixels = bands, max_pixels
        self._local = threading.local()

    def __call__(self, record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
        return self._source(record).read(record.source.window)

    def load(self, record: TileRecord, tiling: TilingConfig) -> Tile | TileRecord:
        """The tile read and checked once (`RasterSource.load`), or its record quarantined at ingest."""
        try:
            return self._source(record).load(record, tiling)
        except IngestError as error:  # the file changed or vanished since the build planned its windows
            record.quarantine = Quarantine(stage="ingest", reason=str(error))
            return record

    def _source(self, record: TileRecord) -> RasterSource:
        if not hasattr(self._local, "open"):
            self._local.open = lru_cache(maxsize=8)(
                lambda path, stem: RasterSource(Path(path), self._bands, stem, self._max_pixels)
            )
        return self._local.open(record.source.path, record.key.rsplit("__r", 1)[0])


class BatchPixels:
    """A batch's pixels (a `PixelSource`), each tile read and checked once (`RasterPixels.load`) when
    first asked for, or all at once (`load_all`, before stages run, so that a tile with too few valid
    pixels is quarantined at ingest before any model sees it). Lazily, because a rebuild whose stages
    are all cached needs no pixel to restore them: reading every 1024 px tile again was a cost of
    each rebuild with nothing changed (issue 32)."""

    def __init__(self, annotator: Annotator, states: list[TileState]) -> None:
        self._annotator, self._states = annotator, states
        self._pixels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._read: set[str] = set()

    def load_all(self) -> None:
        for state in self._states:
            self._load(state.record)

    def __call__(self, record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
        self._load(record)
        if record.key not in self._pixels:  # unreadable now, though a cached stage had it live
            raise IngestError(record.quarantine.reason if record.quarantine else "tile could not be read")
        return self._pixels[record.key]

    def _load(self, record: TileRecord) -> None:
        if record.key in self._read:
            return
        self._read.add(record.key)
        tile = self._annotator.pixels.load(record, self._annotator.config.tiling)
        if isinstance(tile, Tile):
            self._pixels[record.key] = (tile.image, tile.valid)


@dataclass
class AnnotateSummary:
    tiles: int = 0
    annotated: int = 0
    quarantined: list[tuple[str, str, str]] = field(default_factory=list)  # key, stage, reason
    seconds: Counter = field(default_factory=Counter)  # per stage
    instances: Counter = field(default_factory=Counter)  # per category
    domains: Counter = field(default_factory=Counter)
    stitched: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """What summary.json holds."""
        return {
            "tiles": self.tiles,
            "annotated": self.annotated,
            "quarantined": [{"key": k, "stage": s, "reason": r} for k, s, r in self.quarantined],
            "seconds_per_stage": {k: round(v, 3) for k, v in self.seconds.items()},
            "instances_per_category": dict(self.instances.most_common()),
            "domains": dict(self.domains.most_common()),
            "stitched": self.stitched,
        }

    def write(self, out_dir: Path) -> Path:
        """summary.json, atomically (the same file for `ovrsis annotate` and a build)."""
        with atomic_writer(summary_file(out_dir)) as handle:
            json.dump(self.as_dict(), handle, indent=2)
        return summary_file(out_dir)

    def count(self, state: TileState) -> None:
        self.tiles += 1
        record = state.record
        if record.quarantine:
            self.quarantined.append((record.key, record.quarantine.stage, record.quarantine.reason))
            return
        self.annotated += 1
        self.instances.update(i.category for i in record.instances if not i.dropped)
        self.domains[record.domain.name if record.domain else "unknown"] += 1


class Annotator:
    """The stages, with models from a ModelSet (loaded on first use)."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        models: Models,
        out_dir: Path,
        config: AnnotateConfig | None = None,
        captions: dict[str, list[str]] | None = None,
        package_version: str = "",
    ) -> None:
        self.taxonomy = taxonomy
        self.models = SerialLoads(models)
        self.out_dir = out_dir
        config = config if config is not None else AnnotateConfig()
        self.config = config
        self.given_captions = captions or {}
        self.categorizer = CaptionCategorizer(taxonomy, config.match_threshold, config.match_margin)
        self.domains = DomainClassifier()
        # for stages run on records alone (the Prefect flow)
        self.pixels = RasterPixels(config.bands, config.max_pixels)
        self.package_version = package_version
        self.summary = AnnotateSummary()
        self._model_slot = threading.BoundedSemaphore(config.model_slots)
        self._warm: set[str] = set()  # stages that ran once in this process (their lazy loads are done)
        self.stages: dict[str, Callable[[list[TileState], PixelSource], None]] = {
            "caption": self.caption,
            "parse": self.parse,
            "match": self.match,
            "detect": self.detect,
            "segment": self.segment,
            "merge": self.merge,
            "domain": self.domain,
        }

    # --- whole runs -----------------------------------------------------------------------------

    def run(self, inputs: Path, on_tile: Callable[[], None] | None = None) -> AnnotateSummary:
        """Annotate every raster under `inputs` in one process.

        Records are appended to OUT/records.jsonl batch by batch (flushed), so a run stopped half-way
        keeps the tiles it finished; the summary is the caller's to write at the end. Temporaries an
        interrupted run left behind (`.NAME.*.part`) are removed first. Memory stays flat: GDAL's
        block cache is bounded and only what stitching needs is kept per tile."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with output_lock(self.out_dir):  # taken first: the temporaries of a build holding the folder are its own
            remove_stale_outputs(self.out_dir)
            stitchable = self._annotate_all(inputs, on_tile)
            if self.config.stitch:
                self.stitch(stitchable)
        return self.summary

    def _annotate_all(self, inputs: Path, on_tile: Callable[[], None] | None) -> dict[str, list[TileRecord]]:
        """Every tile through the stages, its record appended as its batch finishes; returns what stitching needs."""
        stitchable: dict[str, list[TileRecord]] = defaultdict(list)
        with bounded_reads(), open(records_file(self.out_dir), "w", encoding="utf-8") as handle:

            def emit(state: TileState) -> None:
                self.summary.count(state)
                record = state.record
                if self.config.stitch and record.source.transform:  # only what stitching needs, not the instances
                    stitchable[record.source.path].append(
                        TileRecord(
                            key=record.key,
                            source=record.source,
                            semantic_mask=record.semantic_mask,
                            quarantine=record.quarantine,
                        )
                    )
                write_json_line(handle, record.model_dump(mode="json"))

            def annotate_batch(batch: list[Tile | TileRecord]) -> tuple[list[TileState], Counter]:
                pixels = {t.record.key: (t.image, t.valid) for t in batch if isinstance(t, Tile)}
                states = [TileState(t.record if isinstance(t, Tile) else t) for t in batch]
                seconds = self.run_batch(states, lambda r: pixels[r.key])
                started = time.perf_counter()
                self.write(states, lambda r: pixels[r.key])
                seconds["write"] += time.perf_counter() - started
                return states, seconds

            window = self.config.batches_in_flight
            with ThreadPoolExecutor(max_workers=window, thread_name_prefix="annotate") as pool:
                batches = batched(self.tiles(inputs), self.config.batch_size)  # read here, as the window moves
                for states, seconds in in_order(batches, lambda batch: pool.submit(annotate_batch, batch), window):
                    self.summary.seconds.update(seconds)
                    for state in states:
                        emit(state)
                        if on_tile:
                            on_tile()
                    handle.flush()
        return stitchable

    def run_batch(
        self,
        states: list[TileState],
        pixels: PixelSource,
        cache: StageCache | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> Counter:
        """Every stage of the registry over one batch, in order; returns seconds per stage run.

        With a cache, a stage whose output is cached under `keys[stage]` is restored instead of run,
        and a stage that ran is stored. Model stages hold this process's model slot, so batches in
        flight on other threads run their CPU stages meanwhile."""
        seconds: Counter = Counter()
        for stage in STAGES:
            if cache is not None and cache.restore(stage, keys[stage.name], states):
                continue
            first_run = not stage.model and stage.name not in self._warm  # spaCy, MiniLM load on first use
            with (
                self.models.loading if first_run else nullcontext(),
                self._model_slot if stage.model else nullcontext(),
            ):
                started = time.perf_counter()
                run_stage(stage.name, states, self.stages[stage.name], pixels)
                seconds[stage.name] += time.perf_counter() - started
            self._warm.add(stage.name)
            if cache is not None:
                cache.store(stage, keys[stage.name], states)
        return seconds

    def tiles(self, inputs: Path) -> Iterator[Tile | TileRecord]:
        """Tiles of every raster, with quarantined records for files and tiles that cannot be used."""
        rasters, unsupported = find_rasters(inputs)
        keys = source_keys(rasters, unsupported)
        yield from keys.rekeyed(unsupported)
        stems = keys.stems
        for path in rasters:
            started = time.perf_counter()
            try:
                with RasterSource(path, self.config.bands, stems[path], self.config.max_pixels) as source:
                    for item in source.tiles(self.config.tiling):
                        self.summary.seconds["ingest"] += time.perf_counter() - started
                        yield item
                        started = time.perf_counter()
            except IngestError as error:  # unreadable, undecodable, refused, or unreadable once opened
                yield quarantined_file(path, str(error), stems[path])

    # --- stages ---------------------------------------------------------------------------------

    def caption(self, states: list[TileState], pixels: PixelSource) -> None:
        """Given captions where the caption file has the tile (or its file); the captioner for the rest."""
        uncaptioned = []
        for state in states:
            given = self._given(state.record)
            if given:
                state.captions = list(given)
                state.record.captions = [Caption(text=t, model="file") for t in given]
            else:
                uncaptioned.append(state)
        if not uncaptioned:
            return
        texts = self.models.captioner.caption([pixels(s.record)[0] for s in uncaptioned])
        _expect(
            len(texts) == len(uncaptioned), f"captioner returned {len(texts)} captions for {len(uncaptioned)} tiles"
        )
        for state, text in zip(uncaptioned, texts):
            _expect(bool(text and text.strip()), "captioner returned an empty caption")
            state.captions = [text.strip()]
            state.record.captions = [Caption(text=state.captions[0], model=self.models.captioner.model_id)]
            state.used_models.append("captioner")

    def parse(self, states: list[TileState], pixels: PixelSource) -> None:
        for state, parsed in zip(states, parse_images([s.captions for s in states])):
            state.parsed = parsed

    def match(self, states: list[TileState], pixels: PixelSource) -> None:
        for state, result in zip(states, self.categorizer.match([s.parsed for s in states])):
            record = state.record
            record.phrases, record.categories = result.phrases, result.categories
            record.unmatched, record.negated = result.unmatched, result.negated
            state.prompts = self._prompts(result.categories)

    def detect(self, states: list[TileState], pixels: PixelSource) -> None:
        prompted = [s for s in states if s.prompts]
        if not prompted:
            return
        found = self.models.detector.detect([pixels(s.record)[0] for s in prompted], [s.prompts for s in prompted])
        _expect(isinstance(found, list) and len(found) == len(prompted), "detector returned no result for some tiles")
        for state, detections in zip(prompted, found):
            state.detections = list(detections)
            state.used_models.append("detector")

    def segment(self, states: list[TileState], pixels: PixelSource) -> None:
        boxed = [s for s in states if s.detections]
        if not boxed:
            return
        boxes = [np.array([d.box for d in s.detections], dtype=np.float32) for s in boxed]
        results = self.models.segmenter.segment([pixels(s.record)[0] for s in boxed], boxes)
        _expect(len(results) == len(boxed), "segmenter returned no result for some tiles")
        for state, result in zip(boxed, results):
            _expect(
                len(result.masks) == len(state.detections),
                f"segmenter returned {len(result.masks)} masks for {len(state.detections)} boxes",
            )
            state.masks = [(encode_rle(mask), float(score)) for mask, score in zip(result.masks, result.scores)]
            state.used_models.append("segmenter")

    def merge(self, states: list[TileState], pixels: PixelSource) -> None:
        for state in states:
            instances = [
                InstanceMask(d.category, decode_rle(rle), d.score, score, d.box, d.phrase)
                for d, (rle, score) in zip(state.detections, state.masks)
            ]
            semantic, state.record.instances, state.record.conflicts = merge_instances(
                instances, self.taxonomy, pixels(state.record)[1], self.config.merge
            )
            buffer = io.BytesIO()
            Image.fromarray(semantic).save(buffer, format="PNG", compress_level=6)
            state.mask_png = buffer.getvalue()
            state.record.semantic_mask = f"{MASKS}/{confined_name(f'{state.record.key}.png', 'tile key')}"

    def domain(self, states: list[TileState], pixels: PixelSource) -> None:
        found = self.domains.classify(
            [s.captions for s in states], [[c.name for c in s.record.categories] for s in states]
        )
        for state, domain in zip(states, found):
            state.record.domain = domain
            state.record.provenance = self._provenance(state)

    def write(self, states: list[TileState], pixels: PixelSource) -> None:
        """Masks, GeoTIFF masks and overlays of the live tiles (not cached: cheap and on disk). The
        merge's PNG bytes are written as they are; a mask file that already holds them (a rebuild
        with nothing changed) is left alone, and so is its GeoTIFF."""
        for state in states:
            if not state.live:
                continue
            key, source = state.record.key, state.record.source
            path = self._tile_file(MASKS, key, ".png")
            unchanged = _holds(path, state.mask_png)
            if not unchanged:
                with atomic_path(path) as temporary:
                    temporary.write_bytes(state.mask_png)
            semantic = state.semantic_mask()
            state.record.proposal_digest = mask_digest(semantic)
            geotiff = self._tile_file(MASKS, key, ".tif")
            if self.config.write_geotiff and source.transform and not (unchanged and geotiff.is_file()):
                write_mask_geotiff(geotiff, semantic, source.crs, source.transform, class_names=self.taxonomy.names)
            if self.config.write_overlay:
                quick_look = overlay(
                    pixels(state.record)[0], semantic, len(self.taxonomy), untinted=self.taxonomy.background_indices
                )
                write_png(self._tile_file(OVERLAYS, key, ".png"), quick_look)

    def stitch(self, records_by_source: dict[str, list[TileRecord]]) -> None:
        """A full-size GeoTIFF mask per georeferenced raster cut into several tiles."""
        from affine import Affine

        started = time.perf_counter()
        for records in records_by_source.values():
            first = records[0].source
            if len(records) < 2 or not first.transform or all(r.quarantine for r in records):
                continue
            full = Affine(*first.transform) @ Affine.translation(-first.window.col_off, -first.window.row_off)
            out = self._tile_file(STITCHED, records[0].key.rsplit("__r", 1)[0], ".tif")

            def load(index: int, records: list[TileRecord] = records) -> np.ndarray | None:
                record = records[index]
                return None if record.quarantine else np.asarray(Image.open(self.out_dir / record.semantic_mask))

            stitch_to_geotiff(
                [r.source.window for r in records],
                load,
                out,
                first.raster_width,
                first.raster_height,
                first.crs,
                list(full)[:6],
                class_names=self.taxonomy.names,
            )
            self.summary.stitched.append(str(out))
        self.summary.seconds["write"] += time.perf_counter() - started

    # --- helpers --------------------------------------------------------------------------------

    def _tile_file(self, folder: str, key: str, suffix: str) -> Path:
        """OUT/FOLDER/KEY+SUFFIX, refused (UnsafeName) unless it stays in that folder: keys are planned
        safe (`pipeline.raster.ingest.source_keys`), but a record restored from the stage cache is data from disk."""
        return confined_path(self.out_dir / folder, f"{key}{suffix}", "tile key")

    def _given(self, record: TileRecord) -> list[str]:
        return given_captions(record.key, record.source.path, self.given_captions)

    def _prompts(self, categories) -> list[PromptPhrase]:
        """Category name (its prompt form), the caption's own phrase, and a few synonyms."""
        prompts: dict[str, PromptPhrase] = {}
        for proposed in categories:
            category = self.taxonomy[proposed.name]
            texts = [category.prompt_name, proposed.phrase, *category.synonyms[: self.config.synonyms_in_prompt]]
            for text in texts:
                prompts.setdefault(text.lower(), PromptPhrase(text.lower(), category.name))
        return list(prompts.values())

    def _provenance(self, state: TileState) -> dict:
        return {
            "models": self.models.provenance(set(state.used_models)),
            "taxonomy": {"name": self.taxonomy.name, "version": self.taxonomy.version},
            "merge": dataclasses.asdict(self.config.merge),
            "package_version": self.package_version,
        }


def remove_stale_outputs(out_dir: Path) -> None:
    """Delete the temporaries (`.NAME.*.part`) a stopped run left in an output folder and the
    folders the writers fill; call before writing there again (annotate and the build flow)."""
    for folder in (out_dir, *(out_dir / name for name in TILE_FOLDERS)):
        remove_stale_parts(folder)


def run_stage(stage: str, states: list[TileState], step: Callable, pixels: PixelSource) -> None:
    """Run `step` on the batch's live tiles; if it fails, tile by tile, quarantining the failures."""
    live = [s for s in states if s.live]
    if not live:
        return
    try:
        step(live, pixels)
        return
    except Exception:  # noqa: BLE001 - any model or I/O failure is isolated below, tile by tile
        if len(live) == 1:
            _quarantine(stage, live[0], *_failure())
            return
    for state in live:
        try:
            step([state], pixels)
        except Exception:  # noqa: BLE001
            _quarantine(stage, state, *_failure())


def load_caption_file(path: Path) -> dict[str, list[str]]:
    """`--captions` input: the same JSON Lines as `ovrsis categories`; ids are tile keys, file stems or names.
    Any bad line refuses the whole file (ValueError naming the line): a tile whose given caption was
    dropped would silently get a model caption instead."""
    if not path.is_file():
        raise ValueError(f"{path}: captions file not found")
    check_encoding(path)
    summary = CategorizeSummary()
    captions = {item.id: item.captions for item in iter_items(path, summary)}
    if summary.errors:
        first = summary.errors[0]
        raise ValueError(f"{path}: {len(summary.errors)} bad line(s); line {first.line}: {first.message}")
    return captions


def _holds(path: Path, data: bytes) -> bool:
    """Whether the file at `path` holds exactly `data` (the size is compared first)."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ModelOutputError(message)


def _failure() -> tuple[str, str]:
    import sys

    error = sys.exc_info()[1]
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return type(error).__name__, text


def _quarantine(stage: str, state: TileState, kind: str, text: str) -> None:
    reason = f"{kind}: {text}" if text else kind
    if "out of memory" in text.lower() or kind == "OutOfMemoryError":
        reason = f"out of memory ({reason})"
    state.record.quarantine = Quarantine(stage=stage, reason=reason)
