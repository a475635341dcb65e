"""One build, without Prefect: what its batches share, one batch's work, and the steps after annotation.

    BuildPlan(config)       the taxonomy, the models configuration, the supplied captions and the stage
                            fingerprints, loaded once; each raster's windows (cached per raster) and each
                            batch's chained stage keys
    annotate_batch          one batch through the stages, in whatever process a runner put it
    BuildPlan.collect       the annotated records, with the reviews applied, into records.jsonl
    BuildPlan.select        the selection and its balance report
    BuildPlan.write_shards  the shards and manifest, assembled from the sample cache

flows/build.py wraps these in a Prefect flow and tasks and nothing more. Everything here takes the
parsed `BuildConfig` (pipeline/build/config.py), never a path: the YAML is parsed once per process. The
review ledger is the audit's (a layer above the pipeline), so `collect` takes the function that
applies it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from ovrsis.errors import IngestError
from pipeline.build.annotate import AnnotateSummary, Annotator, BatchPixels, RasterPixels, load_caption_file
from pipeline.build.batching import in_order
from pipeline.build.config import BuildConfig, Runner
from pipeline.build.stage_cache import StageCache
from pipeline.build.threads import apply_once as apply_thread_budget_once
from pipeline.build.threads import owned_cores, worker_budget
from pipeline.build.tile_state import TileState
from pipeline.dataset.balance_report import write_report
from pipeline.dataset.record_store import RecordIndex, sort_records
from pipeline.dataset.records import SCHEMA_VERSION, TileRecord
from pipeline.dataset.selection import TileCounts, select
from pipeline.dataset.shards import SampleCache, write_shards
from pipeline.dataset.tile_table import TileRows, TileTable
from pipeline.files.atomic import file_sha256
from pipeline.files.layout import records_file, report_dir
from pipeline.raster.ingest import RasterSource, find_rasters, quarantined_file
from pipeline.stages.registry import batch_key, chained_keys, digest, given_captions, stage_fingerprints
from taxonomy.loader import load_taxonomy

ANNOTATED = ".records.jsonl.annotated.part"  # batches' records as they finish (removed by the next run if cut)
APPLIED = ".records.jsonl.applied.part"  # ... with the review ledger applied, before sorting by key

ReviewApplier = Callable[[Iterator[TileRecord]], Iterator[TileRecord]]


@dataclass
class Collected:
    """What the steps after annotation need of the annotated records: the selection candidates' table
    (a reviewed tile counted from its reviewed mask), why the other tiles are no candidates, where
    each record is in records.jsonl, and the quarantined tiles."""

    table: TileTable
    counts: TileCounts
    index: RecordIndex
    quarantined: list[dict] = field(default_factory=list)


def worker_threads(runner: Runner) -> int:
    """Library threads for one batch worker of this runner (`pipeline.build.threads.worker_budget`): the
    flow process applies it before the runner starts (process workers inherit the environment), and
    every batch in the process it runs in."""
    return worker_budget(runner.kind, runner.workers, remote=runner.address is not None)


def find_rasters_of(config: BuildConfig) -> tuple[list[Path], list[TileRecord]]:
    """The rasters under the configuration's inputs (sorted, each once), and the files set aside."""
    rasters, unsupported = [], []
    for path in config.inputs:
        found, skipped = find_rasters(path)
        rasters.extend(found)
        unsupported.extend(skipped)
    return sorted(set(rasters)), unsupported


class BuildPlan:
    """What every batch of one build shares: the taxonomy, the stage fingerprints, the supplied captions,
    the stage cache; and the keys the build used (for `ovrsis cache prune`). Made once, in the flow's
    process; the batches themselves get only the configuration and their keys."""

    def __init__(self, config: BuildConfig) -> None:
        from pipeline.models.config import load_models_config

        self.config = config
        self.taxonomy = load_taxonomy(config.taxonomy)
        self.annotate_config = config.annotate_config()
        self.tiling = config.tiling.model_dump(mode="json")
        self.captions = load_caption_file(config.captions) if config.captions else {}
        self.fingerprints = stage_fingerprints(
            load_models_config(config.models).model_dump(mode="json"),
            self.taxonomy.version,
            config.matching.model_dump(),
            asdict(config.merge),
            version("ovrsis"),
            SCHEMA_VERSION,
        )
        # what a worker's Annotator is built from, besides the configuration's paths: the files they name
        # may change between builds while a remote worker lives on, and an Annotator built from the old
        # ones must not fill the cache under the new keys
        self.annotator_inputs = digest("annotator", self.fingerprints, self.captions)
        self.cache = StageCache(config.storage_dir)
        self.used_keys: list[str] = []
        self.tiles_seen = 0

    def keys(self, states: list[TileState]) -> dict[str, str]:
        """The batch's chained stage keys (docs/architecture.md, "Stages and cache keys")."""
        first = batch_key([(s.record.key, s.record.source.sha256) for s in states], self.tiling)
        captions = [given_captions(s.record.key, s.record.source.path, self.captions) or None for s in states]
        keys = chained_keys(first, self.fingerprints, captions if self.config.captions else [])
        self.used_keys.extend(keys.values())
        return keys

    def tiles(self, rasters: list[Path], stems: dict[Path, str], quarantine_sink: IO[str]) -> Iterator[TileState]:
        """Live tiles of every raster, in order, keyed by `stems` (`source_keys`, planned once for the
        build); quarantined ones go straight to the sink. Rasters are ingested (or their cached
        records read) two ahead on a thread, as the batches move."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest") as pool:
            ingested = in_order(rasters, lambda path: pool.submit(self._raster_records, path, stems[path]), 2)
            for records in ingested:
                for record in records:
                    self.tiles_seen += 1
                    if record.quarantine:
                        quarantine_sink.write(record.model_dump_json() + "\n")
                    else:
                        yield TileState(record)

    def _raster_records(self, path: Path, stem: str) -> list[TileRecord]:
        """A raster's tile records from its header (windows, georeferencing); its pixels are read and
        checked by the batch tasks, once."""
        key = digest("windows", _file_digest(path), stem, self.tiling)
        self.used_keys.append(key)
        cached = self.cache.raster_records(key)
        if cached is not None:
            return cached
        config = self.annotate_config
        try:
            with RasterSource(path, config.bands, stem, config.max_pixels) as source:
                records = source.window_records(config.tiling)
        except IngestError as error:  # unreadable, undecodable, refused by --max-pixels: the reason is recorded
            return [quarantined_file(path, str(error), stem)]
        self.cache.store_raster_records(key, records)
        return records

    def collect(self, seconds: dict[str, float], apply_reviews: ReviewApplier) -> Collected:
        """The annotated records as they stream past, each with the review ledger applied
        (`apply_reviews`: the reviewed masks and categories replace the proposals of reviewed tiles),
        counted for selection; then records.jsonl (sorted by key) and summary.json written."""
        out, selection = self.config.output, self.config.selection
        rows, summary, counts = TileRows(), AnnotateSummary(), TileCounts()
        summary.seconds.update(seconds)
        with open(out / ANNOTATED, "rb") as source, open(out / APPLIED, "w", encoding="utf-8") as sink:
            for record in apply_reviews(TileRecord.model_validate_json(line) for line in source):
                summary.count(TileState(record))
                if counts.admit(record, selection):
                    rows.add(record)
                sink.write(record.model_dump_json() + "\n")
        index = sort_records(out / APPLIED, records_file(out))
        (out / APPLIED).unlink()
        (out / ANNOTATED).unlink()
        summary.write(out)
        quarantined = [{"key": k, "stage": s, "reason": r} for k, s, r in summary.quarantined]
        return Collected(rows.table(self.taxonomy.names), counts, index, quarantined)

    def select(self, collected: Collected) -> list[str]:
        """The keys selection keeps; the balance report written, and the selected count noted."""
        selection = select(collected.table, self.config.selection)
        collected.counts.selected = selection.count
        write_report(report_dir(self.config.output), collected.table, selection, collected.counts)
        return collected.table.keys[selection.selected].tolist()

    def write_shards(self, collected: Collected, selected: list[str], audit_round: str | None) -> tuple[dict, list]:
        """The shards and manifest of the selected tiles, assembled from the sample cache; returns the
        manifest and the sample parts the shards hold (what `ovrsis cache prune` keeps)."""
        config = self.config
        pixels = RasterPixels(self.annotate_config.bands)

        def load_mask(record: TileRecord) -> np.ndarray:
            return np.asarray(Image.open(config.output / record.semantic_mask))

        def load(record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
            return pixels(record)[0], load_mask(record)

        samples = sample_cache(config)
        manifest = write_shards(
            config.output,
            collected.index.subset(selected),
            load,
            self.taxonomy.names,
            self.taxonomy.version,
            config.shards,
            build_config=config.fingerprint(),
            quarantined=collected.counts.quarantined,
            tile_counts=collected.counts.as_dict(),
            audit_round=audit_round or 0,
            inputs=config.inputs,
            cache=samples,
            load_mask=load_mask,
            workers=owned_cores(),  # the annotation is over: the end phase has every core
        )
        return manifest, sorted(samples.used)


def sample_cache(config: BuildConfig) -> SampleCache:
    """Encoded shard parts by content, in the storage folder: the batch tasks fill it as they write
    each tile, so writing the shards is assembly, and a rebuild with nothing changed re-encodes nothing."""
    return SampleCache(config.storage_dir / "samples", config.shards, context=repr(config.annotate_config().bands))


def annotate_batch(
    config: BuildConfig, states: list[TileState], keys: dict[str, str], annotator_inputs: str = ""
) -> tuple[list[str], dict[str, float]]:
    """One batch through every stage (cached stages restored, the others run and stored), then its
    masks written and its image parts encoded into the sample cache; returns the records as JSON
    lines and the seconds per stage run. A batch whose every stage is cached (a rebuild with nothing
    changed) reads no pixel unless something asks for it (an overlay, an image part not cached).
    `annotator_inputs` (`BuildPlan.annotator_inputs`) picks the process's Annotator with the configuration."""
    apply_thread_budget_once(worker_threads(config.runner))  # in whatever process the runner put this batch
    annotator = annotator_of(config, annotator_inputs)
    cache, samples = StageCache(config.storage_dir), sample_cache(config)
    started = time.perf_counter()
    pixels = BatchPixels(annotator, states)
    if not all(cache.path(stage, key).is_file() for stage, key in keys.items()):
        pixels.load_all()  # stages will run: every tile read and checked (ingest quarantine) before them
    ingest = time.perf_counter() - started
    seconds = annotator.run_batch(states, pixels, cache, keys)
    seconds["ingest"] += ingest
    started = time.perf_counter()
    annotator.write(states, pixels)
    for state in states:
        if state.live and not samples.has_image(state.record):  # encoded here, while the pixels are in memory
            samples.store_image(state.record, pixels(state.record)[0])
    seconds["write"] += time.perf_counter() - started
    return [state.record.model_dump_json() for state in states], dict(seconds)


_ANNOTATOR_LOCK = threading.Lock()


def annotator_of(config: BuildConfig, inputs: str = "") -> Annotator:
    """The process's one Annotator for this configuration. Locked, because the thread runner starts
    two batches at once: unlocked, both missed the cache and built an Annotator each, whose model
    loads (each serialised only within its own Annotator) then overlapped, and a SAM built while
    transformers had torch patched for meta-device loading came out empty ("Cannot copy out of meta
    tensor"), quarantining a batch of good tiles. One per configuration and INPUTS (the digest of the
    models, taxonomy and captions the plan saw): a worker that outlives a build never reuses an Annotator
    built from files that have changed since."""
    with _ANNOTATOR_LOCK:
        return _annotator(config.model_dump_json(), inputs)


@lru_cache(maxsize=2)
def _annotator(config_json: str, inputs: str) -> Annotator:
    """One Annotator (and so one set of loaded models) per worker process and configuration (keyed by
    its JSON: a configuration object is not hashable)."""
    from pipeline.models.config import ModelSet, load_models_config

    config = BuildConfig.model_validate(json.loads(config_json))
    captions = load_caption_file(config.captions) if config.captions else None
    return Annotator(
        load_taxonomy(config.taxonomy),
        ModelSet(load_models_config(config.models)),
        config.output,
        config.annotate_config(),
        captions=captions,
        package_version=version("ovrsis"),
    )


@lru_cache(maxsize=256)
def _file_digest(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as error:  # unreadable: the ingest quarantines it with the reason
        return f"unreadable: {error.strerror}"
