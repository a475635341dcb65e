"""The Prefect flow `build-ovrsis95k`: raw imagery to versioned WebDataset shards.

    ingest/tile -> caption -> parse -> match -> detect -> segment -> merge -> domain
                -> write outputs -> select -> shards

Tasks work on batches of tiles (`batch_size`), not single tiles. Each stage task's cache key is
the hash of its inputs (the previous stage's key, so keys chain), its stage configuration, the
model ids and the taxonomy version; results are persisted to the configured storage folder. A
rerun after a crash therefore resumes where it stopped, a rerun with nothing changed does no model
work, and changing one threshold reruns only the stages downstream of it. (Prefect's default
cache key includes the flow-run id, which would reuse nothing across runs.)

Model stages run under a per-process slot limit (`gpu_concurrency`) and carry the tag `gpu`, so a
Prefect tag concurrency limit (`prefect concurrency-limit create gpu 1`) bounds them across workers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from prefect import flow, get_run_logger, task

from flows import progress
from flows.config import BuildConfig, BuildConfigError, check_before_models, load_build_config
from flows.runners import make_task_runner
from pipeline.annotate import (AnnotateSummary, Annotator, RasterPixels, TileState, load_caption_file,
                               remove_stale_outputs, run_stage)  # fmt: skip
from pipeline.balance_report import write_report
from pipeline.batching import batched
from pipeline.ingest import IngestError, RasterSource, Tile, find_rasters, quarantined_file, source_stems
from pipeline.jsonl import atomic_writer
from pipeline.outputs import output_lock
from pipeline.records import SCHEMA_VERSION, TileRecord, write_records
from pipeline.selection import candidate_records, select
from pipeline.shards import write_shards
from pipeline.tile_table import TileTable

FLOW_NAME = "build-ovrsis95k"
GPU_STAGES = {"caption", "detect", "segment"}
STAGES = ("caption", "parse", "match", "detect", "segment", "merge", "domain")

def _cache_key(context, parameters: dict) -> str:
    return parameters["cache_key"]


@lru_cache(maxsize=2)
def _annotator(config_path: str) -> Annotator:
    """One Annotator (and so one set of loaded models) per worker process and configuration."""
    from pipeline.models.config import ModelSet, load_models_config
    from taxonomy.loader import load_taxonomy

    config = load_build_config(config_path)
    captions = load_caption_file(config.captions) if config.captions else None
    return Annotator(load_taxonomy(config.taxonomy), ModelSet(load_models_config(config.models)), config.output,
                     config.annotate_config(), captions=captions, package_version=version("ovrsis"))  # fmt: skip


@lru_cache(maxsize=2)
def _gpu_slots(config_path: str) -> threading.BoundedSemaphore:
    """Model stages running at once in this process (`gpu_concurrency`)."""
    return threading.BoundedSemaphore(load_build_config(config_path).gpu_concurrency)


def _ingest_raster(path: str, stem: str, config_path: str, cache_key: str) -> list[TileRecord]:
    """The tile records of one raster (windows, georeferencing, quarantines); pixels are re-read later."""
    config = load_build_config(config_path).annotate_config()
    try:
        with RasterSource(Path(path), config.bands, stem, config.max_pixels) as source:
            return [item.record if isinstance(item, Tile) else item for item in source.tiles(config.tiling)]
    except IngestError as error:  # unreadable, undecodable, refused by --max-pixels: the reason is recorded
        return [quarantined_file(Path(path), str(error))]


class Batch:
    """A batch of tile states passed between tasks. A plain class on purpose: Prefect walks lists,
    dataclasses and pydantic models in task parameters (looking for futures), which for deep tile
    records cost more than the stages themselves; it treats other objects as opaque."""

    __slots__ = ("states",)

    def __init__(self, states: list[TileState]) -> None:
        self.states = states


def _run_stage(stage: str, batch: Batch, config_path: str, cache_key: str) -> Batch:
    annotator = _annotator(config_path)
    states = copy.deepcopy(batch.states)  # never mutate a cached upstream result
    if stage in GPU_STAGES:
        with _gpu_slots(config_path):
            run_stage(stage, states, annotator.stages[stage], annotator.pixels)
    else:
        run_stage(stage, states, annotator.stages[stage], annotator.pixels)
    return Batch(states)


def _write_outputs(batch: Batch, config_path: str) -> list[TileRecord]:
    annotator = _annotator(config_path)
    annotator.write(batch.states, annotator.pixels)
    return [s.record for s in batch.states]


def _audit_pull(config_path: str) -> int:
    """Append every queue's completed reviews in Label Studio to the review ledger; returns how many
    were new. Applying them is `_apply_reviews`, which every build runs, server or not."""
    from audit.client import AuditClient
    from audit.session import default_title, pull_queues
    from audit.settings import server_settings

    config = load_build_config(config_path)
    client = AuditClient(server_settings(config.audit.url))
    summaries = pull_queues(client, config.output, config.audit.project or default_title(config.output))
    return sum(s.new_reviews for s in summaries)


def _apply_reviews(records: list[TileRecord], config_path: str) -> tuple[list[TileRecord], str | None]:
    """The review ledger applied to this build's proposals: the reviewed masks and categories
    replace the proposals of every reviewed tile. Returns the records and the audit round."""
    from audit.apply import apply_reviews
    from taxonomy.loader import load_taxonomy

    config = load_build_config(config_path)
    summary = apply_reviews(config.output, records, load_taxonomy(config.taxonomy))
    logger = get_run_logger()
    logger.info("reviews applied: %d tile(s) (%d stale), %d pending", summary.reviewed, summary.stale, summary.pending)
    for problem in summary.problems:
        logger.warning(problem)
    return records, summary.audit_round


def _audit_push(config_path: str) -> int:
    """Queue a domain-stratified sample (and the uncertain tiles) for review; returns tasks created."""
    from audit.client import AuditClient
    from audit.session import QueuePlan, default_title, push_queues
    from audit.settings import server_settings
    from taxonomy.loader import load_taxonomy

    config = load_build_config(config_path)
    client = AuditClient(server_settings(config.audit.url))
    plan = QueuePlan(sample=config.audit.push_sample, seed=config.audit.seed, uncertain=config.audit.uncertain)
    pushed = push_queues(client, config.output, load_taxonomy(config.taxonomy),
                         config.audit.project or default_title(config.output), config.output, plan)  # fmt: skip
    return sum(summary.created for _, summary in pushed)


def _select(records: list[TileRecord], config_path: str) -> list[str]:
    config = load_build_config(config_path)
    from taxonomy.loader import load_taxonomy

    settings = config.selection_config()
    table = TileTable.from_records(candidate_records(records, settings), load_taxonomy(config.taxonomy).names)
    selection = select(table, settings)
    write_report(config.output / "report", table, selection)
    return table.keys[selection.selected].tolist()


def _write_shards(records: list[TileRecord], selected: list[str], config_path: str, quarantined: int,
                  audit_round: str | None = None) -> dict:  # fmt: skip
    import numpy as np
    from PIL import Image

    from taxonomy.loader import load_taxonomy

    config = load_build_config(config_path)
    taxonomy = load_taxonomy(config.taxonomy)
    pixels = RasterPixels(config.annotate_config().bands)
    keep = set(selected)

    def load(record: TileRecord):
        return pixels(record)[0], np.asarray(Image.open(config.output / record.semantic_mask))

    return write_shards(
        config.output, [r for r in records if r.key in keep], load, taxonomy.names, taxonomy.version,
        config.shard_config(), build_config=config.fingerprint(), quarantined=quarantined,
        audit_round=audit_round or 0,
    )  # fmt: skip


# Tasks wrap plain module-level functions, so that Dask and Ray workers can pickle them by reference.
ingest_raster = task(_ingest_raster, name="ingest", retries=2, retry_delay_seconds=1, persist_result=True, cache_key_fn=_cache_key)
stage_task = task(_run_stage, persist_result=True, cache_key_fn=_cache_key)
write_outputs = task(_write_outputs, name="write-outputs", retries=2, retry_delay_seconds=1)
select_task = task(_select, name="select", retries=1)
shards_task = task(_write_shards, name="shards", retries=1)
audit_pull_task = task(_audit_pull, name="audit-pull", retries=2, retry_delay_seconds=5)
apply_reviews_task = task(_apply_reviews, name="apply-reviews")
audit_push_task = task(_audit_push, name="audit-push", retries=2, retry_delay_seconds=5)


@flow(name="build-stages")
def build_stages(config_path: str) -> dict:
    """The DAG itself; runs under the task runner the configuration names."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = load_build_config(config_path)
    storage = _result_storage(config)
    remove_stale_outputs(config.output)  # temporaries a killed run left behind
    rasters, unsupported = find_rasters_of(config)
    stems = source_stems(rasters)
    ingest = ingest_raster.with_options(result_storage=storage)
    ingested = [
        ingest.submit(str(path), stems[path], config_path, cache_key=_digest("ingest", _file_digest(path), stems[path],
                                                                             config.tiling.model_dump(mode="json")))
        for path in rasters
    ]  # fmt: skip
    records = [*unsupported, *(r for future in ingested for r in future.result())]
    live = [TileState(r) for r in records if not r.quarantine]
    batches = list(batched(live, config.batch_size))
    logger.info("%d rasters, %d tiles (%d quarantined at ingest), %d batches; ingest %.1f s", len(rasters), len(records),
                len(records) - len(live), len(batches), time.perf_counter() - started)  # fmt: skip

    fingerprints = stage_fingerprints(config)
    written = []
    for batch in batches:
        key = _digest("batch", [(s.record.key, s.record.source.sha256) for s in batch], config.tiling.model_dump(mode="json"))
        upstream = Batch(batch)
        for stage in STAGES:
            key = _digest(stage, key, fingerprints[stage], _captions_of(config, batch) if stage == "caption" else None)
            runner = stage_task.with_options(name=stage, result_storage=storage, tags=["gpu"] if stage in GPU_STAGES else [])
            upstream = runner.submit(stage, upstream, config_path, cache_key=key)
        written.append(write_outputs.submit(upstream, config_path))
    annotated: list[TileRecord] = []
    for done, future in enumerate(written, start=1):
        annotated.extend(future.result())
        progress.report(done, len(batches))
    logger.info("annotated %d tiles in %.1f s", len(annotated), time.perf_counter() - started)
    if config.audit.pull:  # only fills the ledger; the ledger is applied below in every build
        logger.info("%d new review(s) pulled into the ledger", audit_pull_task.submit(config_path).result())
    annotated, audit_round = apply_reviews_task.submit(annotated, config_path).result()
    all_records = sorted([*(r for r in records if r.quarantine), *annotated], key=lambda r: r.key)
    _write_records(config, all_records)
    selected = select_task.submit(annotated, config_path).result()
    quarantined = [r for r in all_records if r.quarantine]
    manifest = shards_task.submit(annotated, selected, config_path, len(quarantined), audit_round).result()
    if config.audit.push_sample or config.audit.uncertain:
        manifest["audit_tasks_created"] = audit_push_task.submit(config_path).result()
    manifest["quarantined"] = [{"key": r.key, "stage": r.quarantine.stage, "reason": r.quarantine.reason} for r in quarantined]
    logger.info("shards: %s; total %.1f s", {s: v["samples"] for s, v in manifest["splits"].items()}, time.perf_counter() - started)
    return manifest


@flow(name=FLOW_NAME)
def build(config: str) -> dict:
    """Build an OVRSIS95K-style dataset from the configuration file at `config`."""
    path = str(Path(config).resolve())
    settings = load_build_config(path)
    check_before_models(settings)
    with output_lock(settings.output):  # no `ovrsis audit pull` applies reviews to masks while they are rewritten
        return build_stages.with_options(task_runner=make_task_runner(settings.runner))(path)


def find_rasters_of(config: BuildConfig) -> tuple[list[Path], list[TileRecord]]:
    rasters, unsupported = [], []
    for path in config.inputs:
        found, skipped = find_rasters(path)
        rasters.extend(found)
        unsupported.extend(skipped)
    return sorted(set(rasters)), unsupported


def stage_fingerprints(config: BuildConfig) -> dict[str, object]:
    """What each stage's output depends on, besides its input."""
    import spacy

    from pipeline.models.config import load_models_config
    from pipeline.phrases import SPACY_MODEL
    from taxonomy.loader import load_taxonomy

    models = load_models_config(config.models).model_dump(mode="json")
    taxonomy = load_taxonomy(config.taxonomy).version
    code = {"package": version("ovrsis"), "schema": SCHEMA_VERSION}
    return {
        "caption": [code, models["captioner"]],
        "parse": [code, SPACY_MODEL, spacy.__version__],
        "match": [code, taxonomy, config.matching.model_dump(), _lexicon_digest()],
        "detect": [code, models["detector"]],
        "segment": [code, models["segmenter"]],
        "merge": [code, taxonomy, config.merge.model_dump()],
        "domain": [code, _domains_digest()],
    }


def _captions_of(config: BuildConfig, batch: list[TileState]) -> list:
    if not config.captions:
        return []
    given = _given_captions(str(config.captions))
    found = []
    for state in batch:
        path = Path(state.record.source.path)
        found.append(next((given[k] for k in (state.record.key, path.stem, path.name) if k in given), None))
    return found


@lru_cache(maxsize=4)
def _given_captions(path: str) -> dict[str, list[str]]:
    return load_caption_file(Path(path))


def _write_records(config: BuildConfig, records: list[TileRecord]) -> None:
    write_records(config.output / "records.jsonl", records)
    summary = AnnotateSummary()
    for record in records:
        summary.count(TileState(record))
    with atomic_writer(config.output / "summary.json") as handle:
        json.dump(summary.as_dict(), handle, indent=2)


def _result_storage(config: BuildConfig):
    """A LocalFileSystem block for this storage folder, saved (Prefect requires it) and passed as the
    instance: naming it by slug would make every task load the block from the API (~45 ms a task)."""
    from prefect.filesystems import LocalFileSystem

    folder = config.storage_dir.resolve()
    block = LocalFileSystem(basepath=str(folder))
    block.save("ovrsis-results-" + hashlib.sha256(str(folder).encode()).hexdigest()[:12], overwrite=True)
    return block


@lru_cache(maxsize=256)
def _file_digest(path: Path) -> str:
    from pipeline.ingest import file_sha256

    try:
        return file_sha256(path)
    except OSError as error:  # unreadable: the ingest task quarantines it with the reason
        return f"unreadable: {error.strerror}"


def _lexicon_digest() -> str:
    from taxonomy.loader import load_lexicon

    return _digest(load_lexicon())


def _domains_digest() -> str:
    from taxonomy.loader import load_taxonomy

    return load_taxonomy("domains").version


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


__all__ = ["FLOW_NAME", "BuildConfigError", "build"]
