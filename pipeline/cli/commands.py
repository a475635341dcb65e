"""`ovrsis categories` and `ovrsis annotate`: the pipeline stages on the command line (flows.cli mounts `app` at
the top level of `ovrsis`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from pipeline.build.batching import MODEL_BATCH
from pipeline.cli.terminal import EXIT_INTERRUPTED, console, counting_bar, fail, set_aside
from pipeline.files.layout import summary_file
from pipeline.raster.tiling import MAX_PIXELS, STRETCHES, BandRule, TilingConfig
from pipeline.stages.merge import BACKGROUNDS, MergeConfig
from taxonomy.loader import TaxonomyError, bundled_taxonomies, load_taxonomy
from taxonomy.matcher import DEFAULT_MARGIN, DEFAULT_THRESHOLD

app = typer.Typer()

CATEGORIES_HELP = f"""Propose taxonomy categories for images from their captions.

\b
IN (JSON Lines), one image per line, either form:
  {{"id": "tile_001", "caption": "two tennis courts next to a parking lot"}}
  {{"id": "tile_002", "captions": ["a river with a bridge", "no boats on the river"]}}
An image's categories are the union over its captions.

\b
OUT (JSON Lines), one line per valid input line, in input order:
  {{"id": "tile_001",
   "categories": [{{"name": "tennis court", "score": 1.0, "phrase": "tennis court", "method": "exact"}}, ...],
   "unmatched": ["phrase", ...],      # noun phrases that matched no category
   "negated": ["phrase", ...]}}        # phrases the caption denies ("no boats")
method: exact (a category name), synonym (a synonym, or the bundled remote-sensing lexicon),
embedding (all-MiniLM-L6-v2 similarity >= --threshold and >= --margin ahead of the runner-up).

\b
Bad lines (invalid JSON, not UTF-8, missing id, empty, non-English or over-long captions,
duplicate ids) are reported with their line number and written to --errors (default: OUT with
.errors.jsonl); the other lines are processed. A UTF-8 byte-order mark is ignored.

\b
Exit status: 0 every line processed; 1 some lines or captions skipped (the last line printed
names the errors file); 2 nothing done: refused (unknown taxonomy, missing, empty or UTF-16
input), or no line usable (the errors file says why).

Bundled taxonomies: {", ".join(bundled_taxonomies())}.
"""


@app.command("categories", help=CATEGORIES_HELP)
def categories(
    taxonomy: str = typer.Option(..., "--taxonomy", "-t", help="Bundled taxonomy name or path to a YAML file."),
    captions: Path = typer.Option(..., "--captions", "-c", help="Input JSON Lines (see above)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSON Lines (written atomically)."),
    errors: Path | None = typer.Option(None, help="Where bad lines are reported [default: OUT.errors.jsonl]."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, help="Minimum cosine similarity for an embedding match."),
    margin: float = typer.Option(DEFAULT_MARGIN, help="Required lead of the best category over the runner-up."),
    no_embedding: bool = typer.Option(
        False, "--no-embedding", help="Exact, synonym, lexicon and relation matches only."
    ),
    batch_size: int = typer.Option(1024, min=1, help="Images per batch (one spaCy pipe, one embedding call)."),
    preview: int = typer.Option(0, min=0, help="Also print the first N results, one line per image."),
    suggest: Path | None = typer.Option(
        None,
        "--suggest",
        help="Also write the most frequent unmatched phrases, grouped under their nearest "
        "categories with scores, as a YAML synonyms snippet to review and paste into the taxonomy.",
    ),
) -> None:
    from pipeline.stages.categories import CaptionCategorizer
    from pipeline.stages.categorize_file import categorize_file

    try:
        vocabulary = load_taxonomy(taxonomy)
    except TaxonomyError as error:
        fail(error)
    try:
        _check_captions_file(captions)
    except (ValueError, OSError) as error:
        fail(error)
    errors_path = errors or out.with_name(out.name.removesuffix(".jsonl") + ".errors.jsonl")
    categorizer = CaptionCategorizer(
        vocabulary, threshold=threshold, margin=margin, embedder_model=None if no_embedding else "all-MiniLM-L6-v2"
    )
    total_lines = sum(1 for _ in open(captions, "rb"))
    with counting_bar("categories", "lines") as progress:
        task = progress.add_task("lines", total=total_lines)
        _ = categorizer.matcher  # load the models before the bar starts counting
        summary = categorize_file(
            categorizer, captions, out, errors_path, batch_size, on_batch=lambda n: progress.advance(task, n)
        )
    _print_preview(out, preview)
    _print_summary(vocabulary.name, vocabulary.version, out, summary)
    if suggest is not None and summary.images:
        from taxonomy.suggest import write_suggestions

        suggester = categorizer if not no_embedding else CaptionCategorizer(vocabulary)
        count = write_suggestions(suggester.matcher, summary.unmatched, summary.images, suggest)
        console.print(f"{count} synonym suggestions -> {suggest}", highlight=False)
    skipped = f"{len(summary.errors)} line(s) skipped, {len(summary.warnings)} caption(s) dropped"
    if summary.images == 0:
        console.print(f"{skipped}; reasons in {errors_path}", highlight=False)
        fail(f"no line of {captions} could be used; reasons in {errors_path}")
    if summary.errors or summary.warnings:
        set_aside(skipped, errors_path)  # after the suggestions line: the last line names the errors file


def _check_captions_file(captions: Path) -> None:
    """Refuse, before any model loads, an input that cannot hold a single caption line."""
    from pipeline.files.jsonl import check_encoding

    if not captions.is_file():
        raise ValueError(f"{captions}: captions file not found")
    check_encoding(captions)
    with open(captions, "rb") as handle:
        if not any(line.strip() for line in handle):
            raise ValueError(f"{captions}: no caption lines (the file is empty)")


def _print_preview(out: Path, count: int) -> None:
    if not count:
        return
    table = Table("id", "categories (method)", "negated", title="per image", title_justify="left")
    with open(out, encoding="utf-8") as handle:
        for _, line in zip(range(count), handle):
            row = json.loads(line)
            found = ", ".join(f"{c['name']} ({c['method']})" for c in row["categories"])
            table.add_row(row["id"], found, ", ".join(row["negated"]))
    console.print(table)


def _print_summary(name: str, version: str, out: Path, summary) -> None:
    console.print(
        f"[bold]{summary.images}[/bold] images, {summary.captions} captions -> {out}  (taxonomy {name} {version})"
    )
    if summary.images:
        table = Table("category", "images", title="proposed categories", title_justify="left")
        for category, count in summary.categories.most_common(15):
            table.add_row(category, str(count))
        console.print(table)
        methods = ", ".join(f"{m} {n}" for m, n in summary.methods.most_common())
        console.print(f"by method: {methods or 'none'}; images with no category: {summary.images_without_category}")
        unmatched = ", ".join(f"{p} ({n})" for p, n in summary.unmatched.most_common(10))
        console.print(f"most frequent unmatched phrases: {unmatched or 'none'}")
    for problem in summary.errors[:10]:
        console.print(f"[yellow]line {problem.line}:[/yellow] {problem.message}")
    if len(summary.errors) > 10:
        console.print(f"... and {len(summary.errors) - 10} more")
    sys.stderr.flush()


ANNOTATE_HELP = """Annotate a raster or a folder of rasters: tiles, captions, categories, boxes, masks.

\b
Writes to OUT:
  records.jsonl      one tile record per line (quarantined tiles included, with their reason)
  masks/KEY.png      uint8 semantic mask: value i = i-th taxonomy category;
                     unclaimed pixels = its background class, 255 = nodata
  masks/KEY.tif      the same mask as a GeoTIFF on the tile's grid (georeferenced inputs)
  overlays/KEY.png   quick-look: the tile tinted by class
  stitched/NAME.tif  full-size mask of each georeferenced raster cut into several tiles
  summary.json       counts, per-stage seconds, quarantined tiles (written at the end)

\b
records.jsonl grows as tiles finish: a stopped run keeps them (no summary.json means stopped).
Bad files and tiles (unreadable, corrupt, truncated, broken links, other formats, a header over
--max-pixels, all nodata, a model failing on a tile) are quarantined with the reason; the run goes on.
Exit status: 0 every tile annotated; 1 some quarantined (the last line printed says how many and
names summary.json); 2 nothing done: refused (bad option, taxonomy, models, captions file, empty
input folder), or no tile could be annotated (summary.json says why).

\b
--models: `default` (Florence-2, GroundingDINO, SAM; weights from the hub or a local cache),
`tiny` (random-weight models built locally for tests and dry runs: masks are meaningless),
or a YAML file (see pipeline/models/config.py).
--captions: existing captions (JSON Lines as for `ovrsis categories`; ids are tile keys,
file stems or file names) instead of running the captioner; tiles it lacks are captioned.
"""


@app.command("annotate", help=ANNOTATE_HELP)
def annotate(
    input_path: Path = typer.Argument(..., help="A raster file or a folder (searched recursively)."),
    taxonomy: str = typer.Option("ovrsis95k", "--taxonomy", "-t", help="Bundled taxonomy name or YAML path."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    captions: Path | None = typer.Option(None, help="Captions JSON Lines to use instead of the captioner."),
    models: str = typer.Option("default", help="default | fast | best (presets) | tiny | path to a models YAML."),
    tile_size: int = typer.Option(TilingConfig.tile_size, help="Tile side in pixels."),
    overlap: int = typer.Option(TilingConfig.overlap, help="Overlap between neighbouring tiles in pixels."),
    bands: str | None = typer.Option(None, help="1-based bands used as R,G,B, e.g. '4,3,2' [auto]."),
    stretch: str = typer.Option(BandRule.stretch, help=" | ".join(STRETCHES) + " (2-98 %% per band)."),
    batch_size: int = typer.Option(MODEL_BATCH, min=1, help="Tiles per model batch."),
    min_area: int = typer.Option(MergeConfig.min_area, min=0, help="Instances smaller than this (pixels) are dropped."),
    fill_holes: bool = typer.Option(MergeConfig.fill_holes, help="Fill holes inside each instance mask."),
    background: str = typer.Option(
        MergeConfig.background,
        help="Unclaimed pixels: auto (the taxonomy's background class if it has one, "
        "else 255), class (the background class, required) or ignore (255).",
    ),
    geotiff: bool = typer.Option(True, help="Also write GeoTIFF masks for georeferenced tiles."),
    overlays: bool = typer.Option(True, help="Write quick-look overlay PNGs."),
    stitch: bool = typer.Option(True, help="Write full-size stitched masks."),
    max_pixels: float = typer.Option(
        MAX_PIXELS,
        min=1,
        help="Quarantine rasters whose header claims more pixels (width x height); 1e10 and the like are accepted.",
    ),
) -> None:
    from importlib.metadata import version

    from pipeline.build.annotate import AnnotateConfig, Annotator, load_caption_file
    from pipeline.models.config import ModelSet, load_models_config
    from pipeline.raster.ingest import find_rasters, planned_tiles, source_keys

    try:
        vocabulary = load_taxonomy(taxonomy)
        config = AnnotateConfig(
            tiling=TilingConfig(tile_size, overlap),
            bands=BandRule(bands=_parse_bands(bands), stretch=_choice(stretch, STRETCHES, "--stretch")),
            merge=MergeConfig(min_area, fill_holes, _choice(background, BACKGROUNDS, "--background")),
            batch_size=batch_size,
            write_geotiff=geotiff,
            write_overlay=overlays,
            stitch=stitch,
            max_pixels=int(max_pixels),
        )
        model_set = ModelSet(load_models_config(models))
        given = load_caption_file(captions) if captions else None
        rasters, skipped = find_rasters(input_path)
        if not rasters and not skipped:
            raise ValueError(f"{input_path}: no files in the input folder")
        keys = source_keys(rasters, skipped)  # the run plans the same keys; said here, before any model loads
        out.mkdir(parents=True, exist_ok=True)
    except (TaxonomyError, ValueError, OSError) as error:
        fail(error)
    if keys.renamed:
        console.print(keys.note(), style="yellow", markup=False, highlight=False)
    annotator = Annotator(vocabulary, model_set, out, config, captions=given, package_version=version("ovrsis"))
    try:
        with counting_bar("annotate", "tiles") as progress:
            task = progress.add_task(
                "tiles", total=(planned_tiles(rasters, config.tiling, config.max_pixels) + len(skipped)) or None
            )
            summary = annotator.run(input_path, on_tile=lambda: progress.advance(task))
    except KeyboardInterrupt:
        console.print(
            f"interrupted: the {annotator.summary.tiles} tiles finished are in {out / 'records.jsonl'}", highlight=False
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    summary.write(out)
    _print_annotate_summary(out, summary)
    if models == "tiny":
        console.print("[dim]tiny random-weight models: the masks show the plumbing, not a real segmentation[/dim]")
    if summary.annotated == 0:
        fail(f"none of the {summary.tiles} tiles could be annotated; reasons in {out / 'summary.json'}")
    if summary.quarantined:
        set_aside(f"{len(summary.quarantined)} of {summary.tiles} tiles quarantined", summary_file(out))


def _parse_bands(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError as error:
        raise ValueError(f"--bands must be comma-separated band numbers, got {text!r}") from error
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise ValueError(f"--bands takes 1 or 3 band numbers (1-based), got {text!r}")
    return bands


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _print_annotate_summary(out: Path, summary) -> None:
    console.print(f"[bold]{summary.annotated}[/bold] of {summary.tiles} tiles annotated -> {out}")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in summary.seconds.items())
    console.print(f"time per stage: {stages}")
    instances = ", ".join(f"{k} {v}" for k, v in summary.instances.most_common(10)) or "none"
    console.print(f"instances: {instances}")
    console.print(f"domains: {', '.join(f'{k} {v}' for k, v in summary.domains.most_common()) or 'none'}")
    if summary.stitched:
        console.print(f"stitched: {', '.join(summary.stitched)}")
    if summary.quarantined:
        table = Table("tile", "stage", "reason", title=f"{len(summary.quarantined)} quarantined", title_justify="left")
        for key, stage, reason in summary.quarantined:
            table.add_row(key, stage, reason)
        console.print(table)


VIEW_HELP = """Write a static HTML gallery of an output folder and say where it is: OUT/gallery/index.html.

\b
Open it from disk (no server, nothing fetched from elsewhere). Each tile shows its image, its mask
coloured by class and the overlay (thumbnails of at most --thumb-size px), with a legend of the
classes in its mask (colour, name, share of the tile), its domain, caption and review state;
quarantined tiles show the stage and the reason. Filters: category (tiles whose mask shows it),
domain, review state (reviewed, stale review, queued and pending, not reviewed) and quarantine.
Pages of 48 tiles; the page loads only the data and thumbnails it shows, so it stays light for
100,000 tiles. Each run replaces the gallery whole (a stopped run leaves the previous one).

\b
Exit status: 0 written (quarantined tiles are shown, not left out); 1 written, but some tiles are
shown without an image or a mask (a source raster moved, a mask missing) or some lines of
records.jsonl hold no record: the page and the lines printed say which; 2 refused: OUT is not an
output folder or its records.jsonl is empty or holds no record, a build or annotate run is writing
OUT, or OUT/gallery is a folder `ovrsis view` did not write.
"""


@app.command("view", help=VIEW_HELP)
def view(
    out: Path = typer.Argument(..., help="An `ovrsis annotate` or `ovrsis build` output folder (records.jsonl)."),
    taxonomy: str | None = typer.Option(
        None, "--taxonomy", "-t", help="Bundled taxonomy name or YAML path [default: the one the records name]."
    ),
    thumb_size: int = typer.Option(256, min=16, max=2048, help="Longest side of a thumbnail, in pixels."),
) -> None:
    from pipeline.export.gallery import GalleryError, existing_records, records_taxonomy, write_gallery
    from pipeline.files.atomic import OutputBusy, output_lock

    try:
        records = existing_records(out)
        with open(records, "rb") as handle:
            lines = sum(1 for line in handle if line.strip())
        if not lines:
            raise GalleryError(f"{records}: empty, no tile to show")
        vocabulary = load_taxonomy(taxonomy) if taxonomy else records_taxonomy(out)
        with output_lock(out, wait=False), counting_bar("view", "tiles") as progress:
            task = progress.add_task("tiles", total=lines)
            summary = write_gallery(out, vocabulary, thumb_size=thumb_size, on_tile=lambda: progress.advance(task))
    except (GalleryError, TaxonomyError, OutputBusy) as error:
        fail(error)
    if summary.tiles == 0:
        fail(f"{records}: none of its {summary.bad_lines} lines is a tile record; the first: {summary.problems[0]}")
    console.print(
        f"[bold]{summary.tiles}[/bold] tiles ({summary.quarantined} quarantined) in {summary.seconds:.1f} s "
        f"-> {summary.index.resolve().as_uri()}",
        highlight=False,
    )
    for problem in summary.problems:
        console.print(problem, style="yellow", markup=False, highlight=False)
    if summary.problem_tiles or summary.bad_lines:
        set_aside(
            f"{summary.problem_tiles} of {summary.tiles} tiles shown incomplete, "
            f"{summary.bad_lines} line(s) of {records} not a record",
            summary.index,
        )
