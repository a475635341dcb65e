"""Imagery in, masks out: the paper's Figure 2 as plain functions over batches of tiles.

    ingest/tile -> caption -> categories -> detect -> segment -> merge -> domain -> write

Every stage takes the batch's live tiles. A stage that fails for the batch is retried tile by tile,
so one bad tile (a model error, out-of-memory, an empty answer) is quarantined with the stage and
the reason, and the rest of the batch goes on. Quarantined tiles keep their record (with the
reason) and get no mask. Outputs are written atomically.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pipeline.batching import batched
from pipeline.categories import CaptionCategorizer
from pipeline.categorize_file import CategorizeSummary, iter_items
from pipeline.domains import DomainClassifier
from pipeline.ingest import BandRule, IngestError, RasterSource, Tile, TilingConfig, find_rasters, quarantined_file
from pipeline.jsonl import atomic_writer, write_json_line
from pipeline.merge import InstanceMask, MergeConfig, merge_instances
from pipeline.models.config import ModelSet
from pipeline.models.detector import PromptPhrase
from pipeline.outputs import overlay, write_mask_geotiff, write_png
from pipeline.records import Caption, Quarantine, TileRecord
from pipeline.stitch import stitch_to_geotiff
from taxonomy.loader import Taxonomy

STAGES = ("ingest", "caption", "categories", "detect", "segment", "merge", "domain", "write")


@dataclass
class AnnotateConfig:
    tiling: TilingConfig = field(default_factory=TilingConfig)
    bands: BandRule = field(default_factory=BandRule)
    merge: MergeConfig = field(default_factory=MergeConfig)
    batch_size: int = 8
    write_geotiff: bool = True
    write_overlay: bool = True
    stitch: bool = True  # also a full-size GeoTIFF mask per georeferenced raster of several tiles
    synonyms_in_prompt: int = 1


@dataclass
class AnnotateSummary:
    tiles: int = 0
    annotated: int = 0
    quarantined: list[tuple[str, str, str]] = field(default_factory=list)  # key, stage, reason
    seconds: Counter = field(default_factory=Counter)  # per stage
    instances: Counter = field(default_factory=Counter)  # per category
    domains: Counter = field(default_factory=Counter)
    stitched: list[str] = field(default_factory=list)


@dataclass
class _Work:
    """A tile in flight: its pixels, record and intermediate results."""

    tile: Tile
    captions: list[str] = field(default_factory=list)
    prompts: list[PromptPhrase] = field(default_factory=list)
    detections: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    semantic: np.ndarray | None = None
    used_models: set[str] = field(default_factory=set)

    @property
    def record(self) -> TileRecord:
        return self.tile.record


class Annotator:
    """Runs the stages; models come from a ModelSet and load on first use."""

    def __init__(self, taxonomy: Taxonomy, models: ModelSet, out_dir: Path, config: AnnotateConfig = AnnotateConfig(),
                 captions: dict[str, list[str]] | None = None, package_version: str = "") -> None:  # fmt: skip
        self.taxonomy = taxonomy
        self.models = models
        self.out_dir = out_dir
        self.config = config
        self.given_captions = captions
        self.categorizer = CaptionCategorizer(taxonomy)
        self.domains = DomainClassifier()
        self.package_version = package_version
        self.summary = AnnotateSummary()
        self._tiles_of_source: dict[str, list[TileRecord]] = defaultdict(list)  # every planned window, for stitching

    def run(self, inputs: Path, on_tile: Callable[[], None] | None = None) -> AnnotateSummary:
        """Annotate every raster under `inputs`; records go to OUT/records.jsonl."""
        rasters, unsupported = find_rasters(inputs)
        with atomic_writer(self.out_dir / "records.jsonl") as records:
            for record in unsupported:
                self._emit(records, record)
            for batch in batched(self._tiles(rasters, records), self.config.batch_size):
                for work in self.process(batch):
                    self._emit(records, work.record)
                    if on_tile:
                        on_tile()
        if self.config.stitch:
            self._stitch(self._tiles_of_source)
        return self.summary

    def process(self, tiles: Sequence[Tile]) -> list[_Work]:
        """All model stages over one batch; returns every tile, quarantined ones included."""
        works = [_Work(tile) for tile in tiles]
        live = list(works)
        for stage, step in (
            ("caption", self._caption), ("categories", self._categories), ("detect", self._detect),
            ("segment", self._segment), ("merge", self._merge), ("domain", self._domain), ("write", self._write),
        ):  # fmt: skip
            started = time.perf_counter()
            live = _isolating(stage, live, step)
            self.summary.seconds[stage] += time.perf_counter() - started
        for work in works:
            work.record.provenance = self._provenance(work)
            if not work.record.quarantine:
                self.summary.instances.update(i.category for i in work.record.instances if not i.dropped)
                self.summary.domains[work.record.domain.name] += 1
        return works

    # --- stages -------------------------------------------------------------------------------

    def _tiles(self, rasters: Iterable[Path], records) -> Iterator[Tile]:
        stems = Counter(path.stem for path in rasters)
        for path in rasters:
            stem = path.stem if stems[path.stem] == 1 else path.name  # a.tif and a.png stay apart
            started = time.perf_counter()
            try:
                source = RasterSource(path, self.config.bands, source_stem=stem)
            except (IngestError, OSError) as error:
                self._emit(records, quarantined_file(path, str(error)))
                continue
            with source:
                for item in source.tiles(self.config.tiling):
                    self.summary.seconds["ingest"] += time.perf_counter() - started
                    if isinstance(item, TileRecord):
                        self._emit(records, item)
                    else:
                        yield item
                    started = time.perf_counter()

    def _caption(self, works: list[_Work]) -> None:
        """Given captions where the caption file has the tile (or its file); the captioner for the rest."""
        uncaptioned = []
        for work in works:
            given = self._given(work.record)
            if given:
                work.captions = given
                work.record.captions = [Caption(text=t, model="file") for t in given]
            else:
                uncaptioned.append(work)
        if not uncaptioned:
            return
        texts = self.models.captioner.caption([w.tile.image for w in uncaptioned])
        _expect(len(texts) == len(uncaptioned), f"captioner returned {len(texts)} captions for {len(uncaptioned)} tiles")
        for work, text in zip(uncaptioned, texts):
            _expect(bool(text and text.strip()), "captioner returned an empty caption")
            work.captions = [text.strip()]
            work.record.captions = [Caption(text=work.captions[0], model=self.models.captioner.model_id)]
            work.used_models.add("captioner")

    def _categories(self, works: list[_Work]) -> None:
        results = self.categorizer.categorize([w.captions for w in works])
        for work, result in zip(works, results):
            record = work.record
            record.phrases, record.categories = result.phrases, result.categories
            record.unmatched, record.negated = result.unmatched, result.negated
            work.prompts = self._prompts(result.categories)

    def _detect(self, works: list[_Work]) -> None:
        prompted = [w for w in works if w.prompts]
        if not prompted:
            return
        found = self.models.detector.detect([w.tile.image for w in prompted], [w.prompts for w in prompted])
        _expect(isinstance(found, list) and len(found) == len(prompted), "detector returned no result for some tiles")
        for work, detections in zip(prompted, found):
            work.detections = detections
            work.used_models.add("detector")

    def _segment(self, works: list[_Work]) -> None:
        boxed = [w for w in works if w.detections]
        if not boxed:
            return
        boxes = [np.array([d.box for d in w.detections], dtype=np.float32) for w in boxed]
        results = self.models.segmenter.segment([w.tile.image for w in boxed], boxes)
        _expect(len(results) == len(boxed), "segmenter returned no result for some tiles")
        for work, result in zip(boxed, results):
            _expect(len(result.masks) == len(work.detections), f"segmenter returned {len(result.masks)} masks for {len(work.detections)} boxes")
            work.masks = list(zip(result.masks, result.scores))
            work.used_models.add("segmenter")

    def _merge(self, works: list[_Work]) -> None:
        for work in works:
            instances = [
                InstanceMask(d.category, mask, d.score, float(score), d.box, d.phrase)
                for d, (mask, score) in zip(work.detections, work.masks)
            ]
            work.semantic, work.record.instances, work.record.conflicts = merge_instances(
                instances, self.taxonomy, work.tile.valid, self.config.merge
            )

    def _domain(self, works: list[_Work]) -> None:
        domains = self.domains.classify([w.captions for w in works], [[c.name for c in w.record.categories] for w in works])
        for work, domain in zip(works, domains):
            work.record.domain = domain

    def _write(self, works: list[_Work]) -> None:
        for work in works:
            key, source = work.record.key, work.record.source
            write_png(self.out_dir / "masks" / f"{key}.png", work.semantic)
            work.record.semantic_mask = f"masks/{key}.png"
            if self.config.write_geotiff and source.transform:
                write_mask_geotiff(self.out_dir / "masks" / f"{key}.tif", work.semantic, source.crs, source.transform)
            if self.config.write_overlay:
                quick_look = overlay(work.tile.image, work.semantic, len(self.taxonomy))
                write_png(self.out_dir / "overlays" / f"{key}.png", quick_look)

    # --- helpers -----------------------------------------------------------------------------

    def _given(self, record: TileRecord) -> list[str]:
        """Captions supplied for this tile: by tile key, else by source file stem or name."""
        if not self.given_captions:
            return []
        path = Path(record.source.path)
        for key in (record.key, path.stem, path.name):
            if key in self.given_captions:
                return self.given_captions[key]
        return []

    def _prompts(self, categories) -> list[PromptPhrase]:
        """Category name (its prompt form), the caption's own phrase, and a few synonyms."""
        prompts: dict[str, PromptPhrase] = {}
        for proposed in categories:
            category = self.taxonomy[proposed.name]
            texts = [category.prompt_name, proposed.phrase, *category.synonyms[: self.config.synonyms_in_prompt]]
            for text in texts:
                prompts.setdefault(text.lower(), PromptPhrase(text.lower(), category.name))
        return list(prompts.values())

    def _provenance(self, work: _Work) -> dict:
        return {
            "models": self.models.provenance(work.used_models),
            "taxonomy": {"name": self.taxonomy.name, "version": self.taxonomy.version},
            "merge": dataclasses.asdict(self.config.merge),
            "package_version": self.package_version,
        }

    def _emit(self, handle, record: TileRecord) -> None:
        self.summary.tiles += 1
        if record.quarantine:
            self.summary.quarantined.append((record.key, record.quarantine.stage, record.quarantine.reason))
        else:
            self.summary.annotated += 1
        if record.source.window.width > 0:
            self._tiles_of_source[record.source.path].append(record)
        write_json_line(handle, record.model_dump(mode="json"))

    def _stitch(self, records_of: dict[str, list[TileRecord]]) -> None:
        started = time.perf_counter()
        for path, records in records_of.items():
            first = records[0].source
            if len(records) < 2 or not first.transform or all(r.quarantine for r in records):
                continue
            from rasterio.transform import Affine

            full_transform = Affine(*first.transform) @ Affine.translation(-first.window.col_off, -first.window.row_off)
            stem = records[0].key.rsplit("__r", 1)[0]
            out = self.out_dir / "stitched" / f"{stem}.tif"
            stitch_to_geotiff(
                [r.source.window for r in records], lambda i: _read_mask(self.out_dir, records[i]), out,
                first.raster_width, first.raster_height, first.crs, list(full_transform)[:6],
            )  # fmt: skip
            self.summary.stitched.append(str(out))
        self.summary.seconds["write"] += time.perf_counter() - started


def load_caption_file(path: Path) -> dict[str, list[str]]:
    """`--captions` input: the same JSON Lines as `ovrsis categories`; ids are tile keys, file stems or names."""
    summary = CategorizeSummary()
    captions = {item.id: item.captions for item in iter_items(path, summary)}
    if summary.errors:
        first = summary.errors[0]
        raise ValueError(f"{path}: {len(summary.errors)} bad line(s); line {first.line}: {first.message}")
    return captions


def _read_mask(out_dir: Path, record: TileRecord) -> np.ndarray | None:
    from PIL import Image

    if record.quarantine or not record.semantic_mask:
        return None
    return np.asarray(Image.open(out_dir / record.semantic_mask))


class _TileFailure(RuntimeError):
    pass


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise _TileFailure(message)


def _isolating(stage: str, works: list[_Work], step: Callable[[list[_Work]], None]) -> list[_Work]:
    """Run `step` on the batch; if it fails, run it tile by tile and quarantine the tiles that fail."""
    if not works:
        return works
    try:
        step(works)
        return works
    except Exception:  # noqa: BLE001 - any model or I/O failure is isolated below, tile by tile
        if len(works) == 1:
            return _quarantine_if_failing(stage, works[0], step)
    survivors = []
    for work in works:
        survivors.extend(_quarantine_if_failing(stage, work, step))
    return survivors


def _quarantine_if_failing(stage: str, work: _Work, step) -> list[_Work]:
    try:
        step([work])
        return [work]
    except Exception as error:  # noqa: BLE001
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "out of memory" in reason.lower():
            reason = f"out of memory: {reason}"
        work.record.quarantine = Quarantine(stage=stage, reason=f"{type(error).__name__}: {reason}")
        return []
