"""`ovrsis build`, `ovrsis serve`, `ovrsis shards ...`, `ovrsis cache ...`, `ovrsis release ...` and `ovrsis
evaluate-build`: running the flow, checking its output and freezing it (flows.cli mounts `app` at the top level
of `ovrsis`)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from pipeline.cli.terminal import QuietWhileStopping, console, counting_bar, fail, set_aside
from pipeline.files.layout import manifest_file, records_file, report_dir, summary_file

app = typer.Typer()
shards_app = typer.Typer(help="Check and export the WebDataset shards of a build.", no_args_is_help=True)
cache_app = typer.Typer(
    help="The stage cache of a build: its size, and pruning what the last build did not use.", no_args_is_help=True
)
release_app = typer.Typer(
    help="Versioned releases of a build: freeze a round under a version, and what changed between two.",
    no_args_is_help=True,
)
app.add_typer(shards_app, name="shards")
app.add_typer(cache_app, name="cache")
app.add_typer(release_app, name="release")


@app.command("build")
def build(
    config: Path = typer.Option(..., "--config", "-c", help="Build configuration YAML (see pipeline/build/config.py)."),
    verbose: bool = typer.Option(False, help="Show Prefect's task-level logs."),
) -> None:
    """Run the build-ovrsis95k flow in this process (Prefect's ephemeral mode, or the server in
    PREFECT_API_URL if set). A rerun resumes from the persisted task results."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server gets 20 s to start by default, which a loaded 2-core machine can miss
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows import build as build_module
    from flows import progress as build_progress
    from pipeline.build.config import BuildConfigError, load_build_config

    try:
        build_module.check_before_build(load_build_config(config))
    except BuildConfigError as error:
        fail(error)
    # Prefect's console, and the stream of its background services (`prefect._internal`, not propagated):
    # their crash reports of a stop
    for handler in [*logging.getLogger().handlers, *logging.getLogger("prefect._internal").handlers]:
        handler.addFilter(QuietWhileStopping())
    with counting_bar("build", "tiles") as progress:
        task = progress.add_task("tiles", total=None)
        build_progress.listen(lambda done, total: progress.update(task, completed=done, total=total))
        manifest = build_module.build(str(config.resolve()))
    splits = ", ".join(
        f"{name} {info['samples']} samples in {len(info['shards'])} shards" for name, info in manifest["splits"].items()
    )
    output = load_build_config(config).output
    console.print(f"[bold]shards:[/bold] {splits} -> {output / 'shards'}")
    console.print(f"manifest: {output / 'manifest.json'}; balance report: {output / 'report' / 'balance.md'}")
    if not sum(info["samples"] for info in manifest["splits"].values()):
        fail(_why_no_samples(output))
    if manifest["quarantined"]:  # finished, good tiles sharded, some inputs skipped
        set_aside(f"{len(manifest['quarantined'])} quarantined tile(s)", summary_file(output))


def _why_no_samples(output: Path) -> str:
    """The `error:` line of a build that sharded nothing: nothing usable came out of it, whatever
    reports it wrote (exit 2, not 0)."""
    summary = json.loads((summary_file(output)).read_text(encoding="utf-8"))
    tiles, annotated = summary["tiles"], summary["annotated"]
    if not annotated:
        return f"no samples written: none of the {tiles} tiles could be annotated; reasons in {output / 'summary.json'}"
    return (
        f"no samples written: none of the {annotated} annotated tiles (of {tiles}) had a category the selection "
        f"keeps; their records: {output / 'records.jsonl'}, balance report: {output / 'report' / 'balance.md'}"
    )


@app.command("serve")
def serve(name: str = typer.Option("local", help="Deployment name.")) -> None:
    """Serve the flows as deployments build-ovrsis95k/NAME and audit-round/NAME against the Prefect API in
    PREFECT_API_URL; then `prefect deployment run build-ovrsis95k/local --param config=PATH` starts a build
    (`audit-round/local --param records=OUT` an audit round)."""
    if not os.environ.get("PREFECT_API_URL"):
        fail(
            "PREFECT_API_URL is not set: start `prefect server start` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (see README)"
        )
    from prefect import serve as serve_all

    from flows.build import build as build_flow
    from flows.round_flow import audit_round as round_flow

    serve_all(build_flow.to_deployment(name=name), round_flow.to_deployment(name=name))


@shards_app.command("verify")
def verify(out: Path = typer.Argument(..., help="Build output folder (holds manifest.json).")) -> None:
    """Check every shard against the manifest: presence, sha256, sample count, mask values."""
    from pipeline.dataset.shards import ShardError, read_manifest, verify_shards

    try:
        problems = verify_shards(out)
        manifest = read_manifest(out)
    except ShardError as error:
        fail(error)
    _report(problems, "problem", f"{len(problems)} problem(s) found in the shards of {out}")
    total = sum(len(s["shards"]) for s in manifest["splits"].values())
    samples = sum(s["samples"] for s in manifest["splits"].values())
    console.print(f"ok: {total} shards, {samples} samples, taxonomy {manifest['taxonomy']['version']}")


@shards_app.command("export")
def export(
    out: Path = typer.Argument(..., help="Build output folder."),
    destination: Path = typer.Argument(..., help="Folder to write."),
    layout: str = typer.Option("official", help="official: {split}/img/*.jpg and {split}/mask/*.png."),
) -> None:
    """Export the shards in the folder layout the authors' Pi-Seg / CAT-Seg code reads. Samples whose
    names could leave DESTINATION, or whose key repeats, are left out and listed (exit 1)."""
    from pipeline.dataset.shards import ShardError, export_official

    if layout != "official":
        fail(f"unknown layout {layout!r} (official)")
    skipped: list[str] = []
    try:
        count = export_official(out, destination, skipped=skipped)
    except ShardError as error:
        fail(error)
    console.print(f"{count} samples written under {destination}")
    _report(skipped, "skipped", f"{len(skipped)} shard member(s) or sample(s) left out")


@shards_app.command("import")
def import_(
    source: Path = typer.Argument(..., help="The labelled dataset: see --layout."),
    out: Path = typer.Argument(..., help="Output folder: shards/, manifest.json and import/ are written there."),
    layout: str = typer.Option(
        "official",
        help="official: SOURCE/{split}/img/STEM.jpg + SOURCE/{split}/mask/STEM.png (OVRSIS95K as released; splits "
        "kept). folders: SOURCE/IMAGES/**/STEM.* + SOURCE/MASKS/**/STEM.*, paired by path (split by --val-fraction). "
        "rasters: as folders, for GeoTIFF images with label rasters on their grid, tiled as a build tiles "
        "(--tile-size, --overlap; CRS and transform kept per tile).",
    ),
    taxonomy: str = typer.Option("ovrsis95k", "--taxonomy", "-t", help="Bundled taxonomy name or YAML file."),
    value_map: Path | None = typer.Option(
        None, help="YAML of `mask value: class name` (null: not labelled) [mask values are the taxonomy's indices]."
    ),
    images: str = typer.Option("images", help="folders layout: the images' folder under SOURCE."),
    masks: str = typer.Option("masks", help="folders layout: the masks' folder under SOURCE."),
    val_fraction: float = typer.Option(0.1, min=0.0, max=0.99, help="folders layout: share of pairs for val."),
    max_samples: int = typer.Option(1000, min=1, help="Samples per shard."),
    tile_size: int = typer.Option(1024, min=32, help="rasters layout: tile side in pixels."),
    overlap: int = typer.Option(0, min=0, help="rasters layout: overlap of neighbouring tiles in pixels."),
    seed: int = typer.Option(0, help="Seed of the split and the sample order."),
) -> None:
    """Import labelled image/mask pairs made elsewhere (the released OVRSIS95K, DLRSD, iSAID, your own
    folders) as shards `piseg train --shards OUT` reads. Every pair is checked against the taxonomy;
    bad or unmatched files are listed with their reason in OUT/import/quarantine.jsonl (exit 1); a rerun
    re-checks only the pairs whose files changed."""
    from pipeline.dataset.shards import ShardConfig
    from pipeline.dataset.shards_import import LAYOUTS, ShardImportError, ValueMap, import_pairs
    from pipeline.files.atomic import OutputBusy, output_lock
    from pipeline.raster.tiling import TilingConfig
    from taxonomy.loader import TaxonomyError, load_taxonomy

    if not source.is_dir():
        fail(f"{source}: not a folder")
    if layout not in LAYOUTS:
        fail(f"unknown layout {layout!r} (one of: {', '.join(LAYOUTS)})")
    try:
        names = load_taxonomy(taxonomy)
        mapping = ValueMap.from_yaml(value_map, names) if value_map else None
    except (TaxonomyError, ShardImportError) as error:
        fail(error)
    try:
        tiling = TilingConfig(tile_size=tile_size, overlap=overlap)
    except ValueError as error:
        fail(error)
    out.mkdir(parents=True, exist_ok=True)
    config = ShardConfig(max_samples=max_samples, val_fraction=val_fraction, seed=seed)
    try:
        with output_lock(out, wait=False), counting_bar("import", "pairs checked") as progress:
            task = progress.add_task("pairs", total=None)
            summary = import_pairs(
                source,
                out,
                names,
                layout,
                mapping,
                config,
                (images, masks),
                tiling,
                on_total=lambda total: progress.update(task, total=total),
                on_pair=lambda: progress.advance(task),
            )
    except OutputBusy as error:
        fail(error)
    except ShardImportError as error:
        fail(error)
    splits = ", ".join(f"{name} {info['samples']}" for name, info in summary.manifest["splits"].items())
    console.print(
        f"imported {summary.imported} pairs ({splits}) -> {out / 'shards'}; manifest: {out / 'manifest.json'}"
    )
    if summary.quarantined or summary.left_out:
        set_aside(
            f"{summary.quarantined} pair(s) quarantined, {summary.left_out} file(s) left out of every pair",
            summary.quarantine_file,
        )


def _report(lines: list[str], label: str, summary: str) -> None:
    """Each line after a red LABEL, then SUMMARY last, exit 1; nothing when there are none. Printed as
    text, never markup: the lines quote member names from the shards, which may hold anything."""
    if not lines:
        return
    for line in lines:
        console.print(Text.assemble((f"{label}:", "red"), " ", line), highlight=False)
    set_aside(summary)


@app.command("evaluate-build")
def evaluate_build(
    records: Path = typer.Option(..., help="A build's output folder (records.jsonl, masks/, manifest.json)."),
    ground_truth: Path = typer.Option(
        ..., help="Folder of labelled masks named after the source rasters: STEM.png|tif."
    ),
    taxonomy: str = typer.Option(..., help="The ground truth's vocabulary (bundled name or YAML path)."),
    build_taxonomy: str = typer.Option(
        "ovrsis95k",
        help="The build's vocabulary (its synonyms help map the ground truth); "
        "a manifest.json naming other classes wins.",
    ),
    min_fraction: float = typer.Option(
        0.001, help="Share of a tile's labelled pixels a class needs to count as present."
    ),
    out: Path = typer.Option(None, help="Report folder (default: RECORDS/report)."),
) -> None:
    """Score the build's auto-annotations (before and after audit) against a labelled dataset."""
    from pipeline.quality.build_quality import evaluate_build as score
    from pipeline.quality.build_quality import names_taxonomy, write_build_quality
    from pipeline.stages.categories import spacy_lemmatize
    from taxonomy.loader import TaxonomyError, load_taxonomy

    try:
        truth = load_taxonomy(taxonomy)
        build = load_taxonomy(build_taxonomy)
        manifest = manifest_file(records)
        names = json.loads(manifest.read_text())["taxonomy"]["names"] if manifest.is_file() else build.names
        if names != build.names:  # the shards say another vocabulary: compare by its names alone
            build = names_taxonomy(names)
    except TaxonomyError as error:
        fail(error)
    if not (records_file(records)).is_file():
        fail(f"{records / 'records.jsonl'}: no records (is {records} a build output folder?)")
    if not ground_truth.is_dir():
        fail(f"{ground_truth}: no such folder")
    result = score(records, ground_truth, truth, build, spacy_lemmatize, min_fraction)
    path = write_build_quality(result, out or report_dir(records))
    summary = Console(soft_wrap=True)
    for stage in ("before_audit", "after_audit"):
        c = result[stage]["categories"]
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        summary.print(
            f"{stage.replace('_', ' ')}: categories P {fmt(c['precision'])} R {fmt(c['recall'])}, "
            f"mask mIoU {fmt(result[stage]['miou'])}"
        )
    summary.print(
        f"{result['tiles']} tiles scored, {len(result['tiles_without_ground_truth'])} without ground truth -> {path}"
    )
    if result["tiles"] == 0:
        set_aside("no tile had ground truth: nothing scored", path)


CACHE_FOLDER = typer.Argument(
    ..., help="The build's storage folder (default OUTPUT/.cache), or a build configuration YAML."
)


def _storage_folder(path: Path) -> Path:
    if path.suffix in (".yaml", ".yml"):
        from pipeline.build.config import BuildConfigError, load_build_config

        try:
            return load_build_config(path).storage_dir
        except BuildConfigError as error:
            fail(error)
    if not path.is_dir():
        fail(f"{path}: no such folder")
    return path


@cache_app.command("stats")
def cache_stats(folder: Path = CACHE_FOLDER) -> None:
    """Files and bytes per stage, per tile of the last completed build, and what `prune` would free."""
    from rich.table import Table

    from pipeline.build.stage_cache import cache_stats as gather

    folder = _storage_folder(folder)
    stats = gather(folder)
    tiles = stats.last_build_tiles
    table = Table(
        "stage", "files", "MiB", "KiB per tile" if tiles else "", title=f"stage cache {folder}", title_justify="left"
    )
    for stage in sorted(stats.bytes, key=lambda s: -stats.bytes[s]):
        per_tile = f"{stats.bytes[stage] / tiles / 1024:.1f}" if tiles else ""
        table.add_row(stage, str(stats.files[stage]), f"{stats.bytes[stage] / 2**20:.1f}", per_tile)
    per_tile = f"{stats.total_bytes / tiles / 1024:.1f}" if tiles else ""
    table.add_row("[bold]total[/bold]", str(sum(stats.files.values())), f"{stats.total_bytes / 2**20:.1f}", per_tile)
    Console(soft_wrap=True).print(table)
    if tiles is None:
        console.print("no completed build recorded its keys here yet: `prune` would remove nothing")
    else:
        console.print(
            f"last completed build: {tiles} tiles; not used by it: {stats.unused_files} files, "
            f"{stats.unused_bytes / 2**20:.1f} MiB (`ovrsis cache prune` removes them)"
        )


@cache_app.command("prune")
def cache_prune(
    folder: Path = CACHE_FOLDER,
    everything: bool = typer.Option(False, "--all", help="Empty the cache (the next build recomputes every stage)."),
) -> None:
    """Delete the cache files the last completed build did not use (older configurations, removed
    imagery); with --all, every file. A half-finished build's files are kept unless --all."""
    from pipeline.build.stage_cache import prune_cache

    folder = _storage_folder(folder)
    try:
        removed, freed = prune_cache(folder, everything)
    except FileNotFoundError as error:
        fail(error)
    console.print(f"removed {removed} files, {freed / 2**20:.1f} MiB from {folder}")


@release_app.command("create")
def release_create(
    out: Path = typer.Argument(..., help="Build output folder (holds manifest.json and shards/)."),
    version: str = typer.Argument(..., help="The release's version, e.g. 1.0 or round-2 (one file name)."),
    licence: str = typer.Option("unspecified", help="The dataset's licence, for the card (e.g. CC-BY-4.0)."),
) -> None:
    """Freeze the build as OUT/releases/VERSION: its shards (linked), manifest, per-tile mask digests and
    pixels, the reviews the shards hold and the ledger's digest, the build configuration and a dataset card
    (sizes, classes, domains, balance, Table II). A release never changes: an existing version is refused;
    so is a ledger changed since the build (rebuild first: the shards would not hold its reviews)."""
    from audit.ledger import ledger_path
    from audit.queue import load_live_records
    from audit.stats import write_report as write_audit_report
    from flows.rounds import build_taxonomy
    from ovrsis.errors import OvrsisError, ShardError
    from pipeline.dataset.markdown import embedded_images
    from pipeline.dataset.release import ReleaseInputs, create_release, read_release
    from pipeline.dataset.shards import read_manifest
    from pipeline.files.atomic import file_sha256, output_lock
    from pipeline.files.layout import releases_dir
    from pipeline.files.safe_names import confined_path

    try:
        target = confined_path(releases_dir(out), version, "release version")  # before anything is read
        if target.exists():
            raise ShardError(f"{target}: release {version!r} exists; a release never changes (choose another version)")
        with output_lock(out, wait=False):  # no build rewrites the shards while they are linked
            manifest = read_manifest(out)
            ledger = ledger_path(out)
            if ledger.is_file() and ledger.stat().st_mtime_ns > manifest_file(out).stat().st_mtime_ns:
                raise ShardError(
                    f"{ledger} changed after the build wrote {manifest_file(out)}: rebuild first, so that the "
                    "shards hold the ledger's reviews"
                )
            fields = ("queue", "project_id", "task_id", "annotation_id", "updated_at")
            records = load_live_records(out)
            reviews = [
                {"key": r.key, **{name: getattr(r.review, name) for name in fields}}
                for r in records
                if r.review is not None
            ]  # the reviews the build applied: what the shards hold
            audit_markdown = None
            if reviews:
                write_audit_report(out, report_dir(out), build_taxonomy(manifest, records))
                audit_markdown = embedded_images(report_dir(out) / "audit_stats.md")
            balance = report_dir(out) / "balance.md"
            inputs = ReleaseInputs(reviews, file_sha256(ledger) if ledger.is_file() else None, audit_markdown)
            folder = create_release(
                out, version, inputs, licence, embedded_images(balance) if balance.is_file() else None
            )
    except OvrsisError as error:
        fail(error)
    release = read_release(folder)
    console.print(
        f"release {version}: {sum(release['samples'].values())} samples, {release['reviews']} reviews, "
        f"digest {release['digest'][:16]} -> {folder} (card: {folder / 'README.md'})",
        highlight=False,
    )


@release_app.command("diff")
def release_diff(
    a: Path = typer.Argument(..., help="The earlier release folder (OUT/releases/VERSION)."),
    b: Path = typer.Argument(..., help="The later release folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole difference as JSON."),
) -> None:
    """What changed from release A to release B: tiles added and removed, categories changed per tile,
    mask pixels changed per category (pixel by pixel), reviews added."""
    from ovrsis.errors import OvrsisError
    from pipeline.dataset.release import diff_releases

    try:
        change = diff_releases(a, b)
    except OvrsisError as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps(asdict(change), indent=2, sort_keys=True))
        return
    out = Console(soft_wrap=True)
    out.print(
        f"tiles: {len(change.added)} added, {len(change.removed)} removed, {len(change.masks_changed)} masks changed"
    )
    for key, moved in change.categories_changed.items():
        out.print(Text(f"  {key}: +{', '.join(moved['gained']) or '-'} / -{', '.join(moved['lost']) or '-'}"))
    for name, pixels in change.pixels_changed.items():
        out.print(Text(f"  {name}: +{pixels['gained']} / -{pixels['lost']} pixels"))
    out.print(f"reviews: {len(change.reviews_added)} added")


def audit_round(
    records: Path = typer.Option(..., "--records", help="The build output folder (records.jsonl, masks/, audit/)."),
    signal: str = typer.Option("combined", help="combined | disagreement | uncertainty | low_confidence | random."),
    count: int = typer.Option(50, min=1, help="Tiles in the ranked queue."),
    iters: int = typer.Option(2000, min=1, help="Pi-Seg training iterations on the reviewed tiles."),
    backbone: str = typer.Option("vit-b", help="vit-b, vit-l or tiny (tests)."),
    seed: int = typer.Option(0, help="Training and random-order seed."),
    push: bool = typer.Option(False, "--push", help="Push the ranked queue to Label Studio as TITLE (ranked)."),
    disagreement: float = typer.Option(
        0.25,
        min=0.0,
        max=1.0,
        help="With --push: show the model's mask beside the proposal, labelled as Pi-Seg's, where 1 - IoU with "
        "the proposal is at least this (1: never).",
    ),
    project: str | None = typer.Option(None, help="Project title [ovrsis audit: <records folder name>]."),
    url: str | None = typer.Option(None, help="Label Studio URL [LABEL_STUDIO_URL or http://127.0.0.1:8089]."),
) -> None:
    """One audit round: Pi-Seg trained on the reviewed tiles (from the previous round's model), its
    disagreement with each unreviewed tile's proposal and its uncertainty scored, and the next queue
    ranked (written to OUT/audit/rounds/NNN/round.json; with --push, queued in Label Studio). The
    random sample queue (`ovrsis audit push`) stays random, for Table II."""
    from audit.client import AuditClient
    from audit.settings import server_settings
    from flows.rounds import run_round
    from ovrsis.errors import OvrsisError
    from pipeline.files.atomic import output_lock

    try:
        client = AuditClient(server_settings(url)) if push else None
        if client is not None:
            client.check()  # before hours of training, not after
        with output_lock(records, wait=False):  # no build rewrites masks and records under the round
            result = run_round(records, signal, count, iters, backbone, seed, notice=lambda line: console.print(line))
            if client is not None:
                _push_ranked(client, records, result, project, disagreement)
    except OvrsisError as error:
        fail(error)
    console.print(
        f"round {result.number}: trained on {result.trained_on} reviewed tile(s) -> {result.checkpoint}; "
        f"{len(result.queue)} tile(s) queued by {signal} -> {result.folder / 'round.json'}",
        highlight=False,
    )


def _push_ranked(client, out: Path, result, project: str | None, floor: float) -> None:
    from audit.pull import queue_title
    from audit.queue import load_live_records, push
    from audit.session import default_title
    from flows.rounds import build_taxonomy, second_opinions

    by_key = {r.key: r for r in load_live_records(out)}
    manifest = json.loads(manifest_file(out).read_text())
    taxonomy = build_taxonomy(manifest, list(by_key.values()))
    title = queue_title(project or default_title(out), "ranked")
    opinions = second_opinions(out, result.folder, floor) if floor < 1.0 else {}
    records = [by_key[k] for k in result.queue]
    summary = push(client, out, taxonomy, records, title, out, "ranked", second_opinions=opinions)
    console.print(
        f"{summary.created} task(s) created in {title!r}, {len(opinions)} with Pi-Seg's mask beside the proposal",
        highlight=False,
    )
