"""The Prefect flow `build-ovrsis95k`: raw imagery to versioned WebDataset shards.

    plan windows -> per batch: read tiles -> caption -> parse -> match -> detect -> segment -> merge -> domain -> write
                -> apply the review ledger -> records.jsonl -> select -> shards -> artifacts

One Prefect task per batch of tiles (`batch_size`): it runs the stage registry (pipeline/stages/registry.py)
through `Annotator.run_batch`, exactly as `ovrsis annotate` does, with the chained stage cache
(pipeline/build/stage_cache.py) in the storage folder. A stage's key hashes the previous key, the stage's
fingerprint and (for captions) the supplied captions, so a rerun after a crash restores what was
finished, a rerun with nothing changed does no model work, and changing one threshold reruns only
the stages after it. Prefect persists no task result and caches nothing itself: one task run per
batch is the whole orchestration cost (docs/architecture.md, "Orchestration").

At most `runner.workers + 1` batch tasks are in flight (`pipeline.build.batching.in_order`), so one batch's
CPU stages overlap another's model stages without holding every batch at once. The flow process
keeps per tile only a key and a few numbers for selection: records go to disk as batches finish
and are read back by key when sharded (pipeline/dataset/record_store.py), so its memory does not grow with
the number of tiles. Model stages hold a per-process slot (`gpu_concurrency`); batch tasks carry the
tag `gpu`, so a Prefect tag concurrency limit (`prefect concurrency-limit create gpu 1`) bounds how
many run at once across workers.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows import progress
from flows.runners import make_task_runner, worker_threads
from pipeline.build.annotate import (
    AnnotateSummary,
    Annotator,
    BatchPixels,
    RasterPixels,
    TileState,
    load_caption_file,
    remove_stale_outputs,
)
from pipeline.build.batching import batched, in_order
from pipeline.build.config import BuildConfig, BuildConfigError, check_before_models, load_build_config
from pipeline.build.stage_cache import StageCache, write_used_keys
from pipeline.build.threads import apply as apply_thread_budget
from pipeline.build.threads import apply_once as apply_thread_budget_once
from pipeline.build.threads import owned_cores
from pipeline.dataset.balance_report import write_report
from pipeline.dataset.markdown import embedded_images, manifest_summary
from pipeline.dataset.record_store import RecordIndex, sort_records
from pipeline.dataset.records import SCHEMA_VERSION, TileRecord
from pipeline.dataset.selection import TileCounts, select
from pipeline.dataset.shards import SampleCache, write_shards
from pipeline.dataset.tile_table import TileRows, TileTable
from pipeline.files.atomic import output_lock
from pipeline.files.layout import records_file, report_dir
from pipeline.raster.ingest import IngestError, RasterSource, find_rasters, planned_tiles, quarantined_file, source_keys
from pipeline.stages.registry import batch_key, chained_keys, digest, given_captions, stage_fingerprints

FLOW_NAME = "build-ovrsis95k"
ANNOTATED = ".records.jsonl.annotated.part"  # batches' records as they finish (removed by the next run if cut)
APPLIED = ".records.jsonl.applied.part"  # ... with the review ledger applied, before sorting by key


@lru_cache(maxsize=4)
def _settings(config_path: str, modified: int) -> BuildConfig:
    return load_build_config(config_path)


def settings_of(config_path: str) -> BuildConfig:
    """The configuration, parsed once per process and file version (tasks call this per batch)."""
    return _settings(config_path, os.stat(config_path).st_mtime_ns)


_ANNOTATOR_LOCK = threading.Lock()


def annotator_of(config_path: str) -> Annotator:
    """The process's one Annotator for this configuration. Locked, because the thread runner starts
    two batches at once: unlocked, both missed the cache and built an Annotator each, whose model
    loads (each serialised only within its own Annotator) then overlapped, and a SAM built while
    transformers had torch patched for meta-device loading came out empty ("Cannot copy out of meta
    tensor"), quarantining a batch of good tiles."""
    with _ANNOTATOR_LOCK:
        return _annotator(config_path, os.stat(config_path).st_mtime_ns)


@lru_cache(maxsize=2)
def _annotator(config_path: str, modified: int) -> Annotator:
    """One Annotator (and so one set of loaded models) per worker process and configuration."""
    from pipeline.models.config import ModelSet, load_models_config
    from taxonomy.loader import load_taxonomy

    config = settings_of(config_path)
    captions = load_caption_file(config.captions) if config.captions else None
    return Annotator(
        load_taxonomy(config.taxonomy),
        ModelSet(load_models_config(config.models)),
        config.output,
        config.annotate_config(),
        captions=captions,
        package_version=version("ovrsis"),
    )


class Batch:
    """A batch of tile states handed to a task. A plain class on purpose: Prefect walks lists,
    dataclasses and pydantic models in task parameters (looking for futures), which for deep tile
    records cost more than the stages themselves; it treats other objects as opaque."""

    __slots__ = ("states",)

    def __init__(self, states: list[TileState]) -> None:
        self.states = states


def _annotate_batch(batch: Batch, config_path: str, keys: dict[str, str]) -> tuple[list[str], dict[str, float]]:
    """One batch through every stage (cached stages restored, the others run and stored), then its
    masks written and its image parts encoded into the sample cache; returns the records as JSON
    lines and the seconds per stage run. A batch whose every stage is cached (a rebuild with nothing
    changed) reads no pixel unless something asks for it (an overlay, an image part not cached)."""
    config = settings_of(config_path)
    apply_thread_budget_once(worker_threads(config.runner))  # in whatever process the runner put this task
    annotator = annotator_of(config_path)
    cache, samples = StageCache(config.storage_dir), _sample_cache(config)
    started = time.perf_counter()
    pixels = BatchPixels(annotator, batch.states)
    if not all(cache.path(stage, key).is_file() for stage, key in keys.items()):
        pixels.load_all()  # stages will run: every tile read and checked (ingest quarantine) before them
    ingest = time.perf_counter() - started
    seconds = annotator.run_batch(batch.states, pixels, cache, keys)
    seconds["ingest"] += ingest
    started = time.perf_counter()
    annotator.write(batch.states, pixels)
    for state in batch.states:
        if state.live and not samples.has_image(state.record):  # encoded here, while the pixels are in memory
            samples.store_image(state.record, pixels(state.record)[0])
    seconds["write"] += time.perf_counter() - started
    return [state.record.model_dump_json() for state in batch.states], dict(seconds)


def _audit_pull(config_path: str) -> int:
    """Append every queue's completed reviews in Label Studio to the review ledger; returns how many
    were new. Applying them is `_records`, which every build runs, server or not. Tasks and projects
    the pull left out are logged with their reasons (also in OUT/audit/pulls.jsonl)."""
    from audit.client import AuditClient
    from audit.session import default_title, pull_queues
    from audit.settings import server_settings

    config = settings_of(config_path)
    client = AuditClient(server_settings(config.audit.url))
    summaries = pull_queues(client, config.output, config.audit.project or default_title(config.output))
    logger = get_run_logger()
    for summary in summaries:
        for reason in [summary.refused] if summary.refused else summary.set_aside:
            logger.warning("%r left out of the pull: %s", summary.project, reason)
    return sum(s.new_reviews for s in summaries)


def _records(
    config_path: str, seconds: dict[str, float]
) -> tuple[TileTable, TileCounts, RecordIndex, str | None, list[dict]]:
    """The review ledger applied to the annotated records as they stream past (the reviewed masks
    and categories replace the proposals of reviewed tiles), then records.jsonl and summary.json
    written. Returns the selection candidates' table (a reviewed tile counted from its reviewed mask),
    why the other tiles are not candidates, the records' index, the audit round and the quarantined
    tiles."""
    from audit.apply import ApplySummary, iter_applied
    from taxonomy.loader import load_taxonomy

    config = settings_of(config_path)
    taxonomy = load_taxonomy(config.taxonomy)
    out, selection = config.output, config.selection
    applied, rows, summary, counts = ApplySummary(), TileRows(), AnnotateSummary(), TileCounts()
    summary.seconds.update(seconds)
    with open(out / ANNOTATED, "rb") as source, open(out / APPLIED, "w", encoding="utf-8") as sink:
        records = (TileRecord.model_validate_json(line) for line in source)
        for record in iter_applied(out, records, taxonomy, applied):
            summary.count(TileState(record))
            if counts.admit(record, selection):
                rows.add(record)
            sink.write(record.model_dump_json() + "\n")
    index = sort_records(out / APPLIED, records_file(out))
    (out / APPLIED).unlink()
    (out / ANNOTATED).unlink()
    summary.write(out)
    logger = get_run_logger()
    logger.info("reviews applied: %d tile(s) (%d stale), %d pending", applied.reviewed, applied.stale, applied.pending)
    for problem in applied.problems:
        logger.warning(problem)
    quarantined = [{"key": k, "stage": s, "reason": r} for k, s, r in summary.quarantined]
    return rows.table(taxonomy.names), counts, index, applied.audit_round, quarantined


def _audit_push(config_path: str) -> int:
    """Queue a domain-stratified sample (and the uncertain tiles) for review; returns tasks created."""
    from audit.client import AuditClient
    from audit.session import QueuePlan, default_title, push_queues
    from audit.settings import server_settings
    from taxonomy.loader import load_taxonomy

    config = settings_of(config_path)
    client = AuditClient(server_settings(config.audit.url))
    plan = QueuePlan(
        sample=config.audit.push_sample,
        seed=config.audit.seed,
        uncertain=config.audit.uncertain,
        unlabelled=config.audit.unlabelled,
    )
    pushed = push_queues(
        client,
        config.output,
        load_taxonomy(config.taxonomy),
        config.audit.project or default_title(config.output),
        config.output,
        plan,
    )
    return sum(summary.created for _, summary in pushed)


def _select(table: TileTable, counts: TileCounts, config_path: str) -> list[str]:
    config = settings_of(config_path)
    selection = select(table, config.selection)
    counts.selected = selection.count
    write_report(report_dir(config.output), table, selection, counts)
    return table.keys[selection.selected].tolist()


def _sample_cache(config: BuildConfig) -> SampleCache:
    """Encoded shard parts by content, in the storage folder: the batch tasks fill it as they write
    each tile, so writing the shards is assembly, and a rebuild with nothing changed re-encodes nothing."""
    bands = config.annotate_config().bands
    return SampleCache(config.storage_dir / "samples", config.shards, context=repr(bands))


def _write_shards(
    index: RecordIndex, selected: list[str], config_path: str, counts: TileCounts, audit_round: str | None = None
) -> dict:
    import numpy as np
    from PIL import Image

    from taxonomy.loader import load_taxonomy

    config = settings_of(config_path)
    taxonomy = load_taxonomy(config.taxonomy)
    pixels = RasterPixels(config.annotate_config().bands)

    def load_mask(record: TileRecord):
        return np.asarray(Image.open(config.output / record.semantic_mask))

    def load(record: TileRecord):
        return pixels(record)[0], load_mask(record)

    samples = _sample_cache(config)
    manifest = write_shards(
        config.output,
        index.subset(selected),
        load,
        taxonomy.names,
        taxonomy.version,
        config.shards,
        build_config=config.fingerprint(),
        quarantined=counts.quarantined,
        tile_counts=counts.as_dict(),
        audit_round=audit_round or 0,
        inputs=config.inputs,
        cache=samples,
        load_mask=load_mask,
        workers=owned_cores(),  # the annotation is over: the end phase has every core
    )
    return manifest, sorted(samples.used)  # the sample parts the shards hold: what `ovrsis cache prune` keeps


# Tasks wrap plain module-level functions, so that Dask and Ray workers can pickle them by reference.
# No task persists its result or computes a cache key from its inputs: the stage cache is ours.
annotate_task = task(
    _annotate_batch,
    name="annotate-batch",
    retries=1,
    retry_delay_seconds=1,
    tags=["gpu"],
    persist_result=False,
    cache_policy=NO_CACHE,
)
records_task = task(_records, name="records", persist_result=False, cache_policy=NO_CACHE)
select_task = task(_select, name="select", retries=1, persist_result=False, cache_policy=NO_CACHE)
shards_task = task(_write_shards, name="shards", retries=1, persist_result=False, cache_policy=NO_CACHE)
audit_pull_task = task(
    _audit_pull, name="audit-pull", retries=2, retry_delay_seconds=5, persist_result=False, cache_policy=NO_CACHE
)
audit_push_task = task(
    _audit_push, name="audit-push", retries=2, retry_delay_seconds=5, persist_result=False, cache_policy=NO_CACHE
)


@flow(name="build-stages")
def build_stages(config_path: str) -> dict:
    """The build itself; runs under the task runner the configuration names."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = settings_of(config_path)
    remove_stale_outputs(config.output)  # temporaries a killed run left behind
    rasters, unsupported = find_rasters_of(config)
    keys = source_keys(rasters, unsupported)  # before any model loads: two rasters never share a key
    if keys.renamed:
        logger.warning(keys.note())
    unsupported = keys.rekeyed(unsupported)
    total = planned_tiles(rasters, config.annotate_config().tiling, config.tiling.max_pixels) + len(unsupported)
    plan = _Plan(config)
    seconds: dict[str, float] = {}
    done = 0
    with open(config.output / ANNOTATED, "w", encoding="utf-8") as sink:
        for record in unsupported:
            sink.write(record.model_dump_json() + "\n")

        def submit(states: list[TileState]):
            return annotate_task.submit(Batch(states), config_path, plan.keys(states))

        live = plan.tiles(rasters, keys.stems, sink)
        for lines, batch_seconds in in_order(batched(live, config.batch_size), submit, config.runner.workers + 1):
            sink.writelines(line + "\n" for line in lines)
            for stage, value in batch_seconds.items():
                seconds[stage] = seconds.get(stage, 0.0) + value
            done += len(lines)
            progress.report(done, max(total, done))
    progress.report(max(total, done), max(total, done))  # every tile done (quarantined ones never reach a batch)
    logger.info("annotated %d tiles in %.1f s", plan.tiles_seen, time.perf_counter() - started)
    if config.audit.pull:  # only fills the ledger; the ledger is applied below in every build
        logger.info("%d new review(s) pulled into the ledger", audit_pull_task(config_path))
    # The steps after annotation are called, not submitted: they run in this process, whatever the
    # runner (they need the output folder, not a model), and still show as task runs. quote(): Prefect
    # would otherwise walk these (arrays, an index of every record) looking for futures.
    table, counts, index, audit_round, quarantined = records_task(config_path, seconds)
    selected = select_task(quote(table), counts, config_path)
    manifest, sample_keys = shards_task(quote(index), quote(selected), config_path, counts, audit_round)
    write_used_keys(config.storage_dir, [*plan.used_keys, *sample_keys], plan.tiles_seen)
    if config.audit.push_sample or config.audit.uncertain or config.audit.unlabelled:
        manifest["audit_tasks_created"] = audit_push_task(config_path)
    manifest["quarantined"] = quarantined
    logger.info(
        "shards: %s; total %.1f s",
        {s: v["samples"] for s, v in manifest["splits"].items()},
        time.perf_counter() - started,
    )
    return manifest


@flow(name=FLOW_NAME)
def build(config: str) -> dict:
    """Build an OVRSIS95K-style dataset from the configuration file at `config`."""
    path = str(Path(config).resolve())
    settings = load_build_config(path)
    check_before_build(settings)
    # before the runner starts: worker processes inherit the caps (pipeline/build/threads.py)
    apply_thread_budget(worker_threads(settings.runner))
    # No `ovrsis audit pull` applies reviews to masks while they are rewritten. Progress and artifacts
    # go to this run, the one `prefect deployment run --watch` names, not to the build-stages subflow.
    with output_lock(settings.output), progress.listening(progress.RunProgress(get_run_logger())):
        manifest = build_stages.with_options(task_runner=make_task_runner(settings.runner))(path)
        try:
            _publish_artifacts(settings, manifest)
        except Exception as error:  # noqa: BLE001 (the shards are written: an unreachable API must not undo that)
            get_run_logger().warning("artifacts not published (the files in %s are): %s", settings.output, error)
    return manifest


def check_before_build(config: BuildConfig) -> None:
    """check_before_models, then what the build itself needs of its output folder: that a file can
    be written there (as root, os.access says yes to anything), and that the review ledger, applied
    only after all the model work, is a readable regular file with intact lines. A ledger that was a
    directory used to read as empty, silently dropping every review; a damaged one failed the build
    after hours of model work."""
    from audit.ledger import ledger_entries, ledger_path, read_queued
    from audit.settings import AuditError

    check_before_models(config)
    try:
        with tempfile.TemporaryFile(dir=config.output):
            pass
    except OSError as error:
        raise BuildConfigError(f"{config.output}: cannot write the build output ({error.strerror})") from error
    ledger = ledger_path(config.output)
    if ledger.exists() and not ledger.is_file():
        raise BuildConfigError(f"{ledger}: the review ledger is not a regular file; move it away or restore the file")
    try:
        for _ in ledger_entries(config.output):  # every line checked, one at a time (memory flat in its size)
            pass
        for _ in read_queued(config.output):  # applying reads it too
            pass
    except OSError as error:
        raise BuildConfigError(f"{ledger}: cannot read the review ledger ({error.strerror})") from error
    except AuditError as error:
        raise BuildConfigError(str(error)) from error


class _Plan:
    """What every batch of one build shares: the stage fingerprints, the supplied captions, the
    stage cache; and the keys the build used (for `ovrsis cache prune`)."""

    def __init__(self, config: BuildConfig) -> None:
        from pipeline.models.config import load_models_config
        from taxonomy.loader import load_taxonomy

        self.config = config
        self.tiling = config.tiling.model_dump(mode="json")
        self.captions = load_caption_file(config.captions) if config.captions else {}
        self.fingerprints = stage_fingerprints(
            load_models_config(config.models).model_dump(mode="json"),
            load_taxonomy(config.taxonomy).version,
            config.matching.model_dump(),
            asdict(config.merge),
            version("ovrsis"),
            SCHEMA_VERSION,
        )
        self.cache = StageCache(config.storage_dir)
        self.used_keys: list[str] = []
        self.tiles_seen = 0

    def keys(self, states: list[TileState]) -> dict[str, str]:
        first = batch_key([(s.record.key, s.record.source.sha256) for s in states], self.tiling)
        captions = [given_captions(s.record.key, s.record.source.path, self.captions) or None for s in states]
        keys = chained_keys(first, self.fingerprints, captions if self.config.captions else [])
        self.used_keys.extend(keys.values())
        return keys

    def tiles(self, rasters: list[Path], stems: dict[Path, str], quarantine_sink) -> Iterator[TileState]:
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
        config = self.config.annotate_config()
        try:
            with RasterSource(path, config.bands, stem, config.max_pixels) as source:
                records = source.window_records(config.tiling)
        except IngestError as error:  # unreadable, undecodable, refused by --max-pixels: the reason is recorded
            return [quarantined_file(path, str(error), stem)]
        self.cache.store_raster_records(key, records)
        return records


def _publish_artifacts(config: BuildConfig, manifest: dict) -> None:
    """The balance report, the dataset's summary, the shards, the quarantine table and the audit
    statistics on the flow run's Artifacts tab, where Prefect users look. Charts are embedded in the
    markdown (data URIs: a browser cannot follow a path on the build machine), and so is what
    manifest.json says, since a file:// link does nothing in a browser."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    report = report_dir(config.output) / "balance.md"
    if report.is_file():
        create_markdown_artifact(
            embedded_images(report),
            key="balance-report",
            description="Category and domain balance before and after selection",
        )
    create_markdown_artifact(
        manifest_summary(manifest, config.output),
        key="manifest",
        description=f"The dataset: {config.output / 'manifest.json'}",
    )
    create_table_artifact(
        [
            {
                "split": name,
                "samples": info["samples"],
                "shards": len(info["shards"]),
                "bytes": sum(s["bytes"] for s in info["shards"]),
            }
            for name, info in manifest["splits"].items()
        ],
        key="shards",
        description=f"WebDataset shards in {config.output / 'shards'}",
    )
    create_table_artifact(
        manifest["quarantined"] or [{"key": "", "stage": "", "reason": "no tile quarantined"}],
        key="quarantine",
        description="Tiles and files set aside, with the reason",
    )
    audit = _audit_statistics(config)
    if audit:
        create_markdown_artifact(audit, key="audit-statistics", description="Human audit (Table II) per review queue")


def _audit_statistics(config: BuildConfig) -> str | None:
    """Table II per queue (report/audit_stats.md, rewritten), where the ledger holds reviews; else None."""
    from audit.ledger import ledger_entries
    from audit.stats import write_report as write_audit_report
    from taxonomy.loader import load_taxonomy

    if next(ledger_entries(config.output), None) is None:
        return None
    write_audit_report(config.output, report_dir(config.output), load_taxonomy(config.taxonomy))
    return embedded_images(report_dir(config.output) / "audit_stats.md")


def find_rasters_of(config: BuildConfig) -> tuple[list[Path], list[TileRecord]]:
    rasters, unsupported = [], []
    for path in config.inputs:
        found, skipped = find_rasters(path)
        rasters.extend(found)
        unsupported.extend(skipped)
    return sorted(set(rasters)), unsupported


@lru_cache(maxsize=256)
def _file_digest(path: Path) -> str:
    from pipeline.files.atomic import file_sha256

    try:
        return file_sha256(path)
    except OSError as error:  # unreadable: the ingest quarantines it with the reason
        return f"unreadable: {error.strerror}"


__all__ = ["FLOW_NAME", "BuildConfigError", "build", "check_before_build"]
