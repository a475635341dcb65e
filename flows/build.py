"""The Prefect flow `build-ovrsis95k`: raw imagery to versioned WebDataset shards, as thin tasks over
the build plan (pipeline/build/plan.py), which holds everything that is not Prefect.

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

import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows import progress
from flows.runners import make_task_runner
from pipeline.build.annotate import remove_stale_outputs
from pipeline.build.batching import batched, in_order
from pipeline.build.config import BuildConfig, BuildConfigError, check_before_models, load_build_config
from pipeline.build.plan import ANNOTATED, BuildPlan, Collected, annotate_batch, find_rasters_of, worker_threads
from pipeline.build.stage_cache import write_used_keys
from pipeline.build.threads import apply as apply_thread_budget
from pipeline.build.tile_state import TileState
from pipeline.dataset.markdown import embedded_images, manifest_summary
from pipeline.files.atomic import output_lock
from pipeline.files.layout import manifest_file, report_dir, shards_dir
from pipeline.raster.ingest import planned_tiles, source_keys

FLOW_NAME = "build-ovrsis95k"


class Batch:
    """A batch of tile states handed to a task. A plain class on purpose: Prefect walks lists,
    dataclasses and pydantic models in task parameters (looking for futures), which for deep tile
    records cost more than the stages themselves; it treats other objects as opaque."""

    __slots__ = ("states",)

    def __init__(self, states: list[TileState]) -> None:
        self.states = states


def _annotate_batch(
    batch: Batch, config: BuildConfig, keys: dict[str, str], annotator_inputs: str
) -> tuple[list[str], dict[str, float]]:
    return annotate_batch(config, batch.states, keys, annotator_inputs)


def _audit_pull(config: BuildConfig) -> int:
    """Append every queue's completed reviews in Label Studio to the review ledger; returns how many
    were new. Applying them is `_records`, which every build runs, server or not. Tasks and projects
    the pull left out are logged with their reasons (also in OUT/audit/pulls.jsonl)."""
    from audit.client import AuditClient
    from audit.session import default_title, pull_queues
    from audit.settings import server_settings

    client = AuditClient(server_settings(config.audit.url))
    summaries = pull_queues(client, config.output, config.audit.project or default_title(config.output))
    logger = get_run_logger()
    for summary in summaries:
        for reason in [summary.refused] if summary.refused else summary.set_aside:
            logger.warning("%r left out of the pull: %s", summary.project, reason)
    return sum(s.new_reviews for s in summaries)


def _records(plan: BuildPlan, seconds: dict[str, float]) -> tuple[Collected, str | None]:
    """The review ledger applied to the annotated records as they stream past, then records.jsonl and
    summary.json written (`BuildPlan.collect`); returns what selection needs and the audit round."""
    from audit.apply import ApplySummary, iter_applied

    applied = ApplySummary()
    collected = plan.collect(seconds, lambda records: iter_applied(plan.config.output, records, plan.taxonomy, applied))
    logger = get_run_logger()
    logger.info("reviews applied: %d tile(s) (%d stale), %d pending", applied.reviewed, applied.stale, applied.pending)
    for problem in applied.problems:
        logger.warning(problem)
    return collected, applied.audit_round


def _audit_push(plan: BuildPlan) -> int:
    """Queue a domain-stratified sample (and the uncertain tiles) for review; returns tasks created."""
    from audit.client import AuditClient
    from audit.session import QueuePlan, default_title, push_queues
    from audit.settings import server_settings

    audit, out = plan.config.audit, plan.config.output
    queues = QueuePlan(
        sample=audit.push_sample, seed=audit.seed, uncertain=audit.uncertain, unlabelled=audit.unlabelled
    )
    client = AuditClient(server_settings(audit.url))
    pushed = push_queues(client, out, plan.taxonomy, audit.project or default_title(out), out, queues)
    return sum(summary.created for _, summary in pushed)


def _select(plan: BuildPlan, collected: Collected) -> list[str]:
    return plan.select(collected)


def _write_shards(plan: BuildPlan, collected: Collected, selected: list[str], audit_round: str | None):
    return plan.write_shards(collected, selected, audit_round)


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
    """The build itself; runs under the task runner the configuration names. Takes the path (a flow
    parameter is shown in the UI and must be JSON); the configuration parsed by `build` is reused."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = load_build_config(config_path)
    plan = BuildPlan(config)
    remove_stale_outputs(config.output)  # temporaries a killed run left behind
    rasters, unsupported = find_rasters_of(config)
    keys = source_keys(rasters, unsupported)  # before any model loads: two rasters never share a key
    if keys.renamed:
        logger.warning(keys.note())
    unsupported = keys.rekeyed(unsupported)
    total = planned_tiles(rasters, plan.annotate_config.tiling, config.tiling.max_pixels) + len(unsupported)
    seconds: dict[str, float] = {}
    done = 0
    with open(config.output / ANNOTATED, "w", encoding="utf-8") as sink:
        for record in unsupported:
            sink.write(record.model_dump_json() + "\n")

        def submit(states: list[TileState]):
            return annotate_task.submit(Batch(states), config, plan.keys(states), plan.annotator_inputs)

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
        logger.info("%d new review(s) pulled into the ledger", audit_pull_task(config))
    # The steps after annotation are called, not submitted: they run in this process, whatever the
    # runner (they need the output folder, not a model), and still show as task runs. quote(): Prefect
    # would otherwise walk these (arrays, an index of every record) looking for futures.
    collected, audit_round = records_task(quote(plan), seconds)
    selected = select_task(quote(plan), quote(collected))
    manifest, sample_keys = shards_task(quote(plan), quote(collected), quote(selected), audit_round)
    write_used_keys(config.storage_dir, [*plan.used_keys, *sample_keys], plan.tiles_seen)
    if config.audit.push_sample or config.audit.uncertain or config.audit.unlabelled:
        manifest["audit_tasks_created"] = audit_push_task(quote(plan))
    manifest["quarantined"] = collected.quarantined
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


_checked: set[str] = set()  # configurations (as JSON) this process has checked: `ovrsis build` checks
# before Prefect starts (a bad configuration fails in a second, not after a server start), the flow again
# for a served deployment; once is enough in one process


def check_before_build(config: BuildConfig) -> None:
    """check_before_models, then what the build itself needs of its output folder: that a file can
    be written there (as root, os.access says yes to anything), and that the review ledger, applied
    only after all the model work, is a readable regular file with intact lines. A ledger that was a
    directory used to read as empty, silently dropping every review; a damaged one failed the build
    after hours of model work."""
    from audit.ledger import ledger_entries, ledger_path, read_queued
    from audit.settings import AuditError

    if config.model_dump_json() in _checked:
        return
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
    _checked.add(config.model_dump_json())


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
        description=f"The dataset: {manifest_file(config.output)}",
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
        description=f"WebDataset shards in {shards_dir(config.output)}",
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


__all__ = ["FLOW_NAME", "BuildConfigError", "build", "check_before_build"]
