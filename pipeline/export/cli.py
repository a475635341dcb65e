"""`ovrsis export vectors|stac|hf`: an output folder for GIS tools, STAC clients and Hugging Face.

Exit codes as every command (docs/architecture.md): 0 all exported, 1 exported with some tiles left
out (not georeferenced; listed), 2 nothing exported (the message names the file at fault).
Heavy libraries (pyogrio, pystac, datasets) are imported inside the commands.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.text import Text

from pipeline.cli.terminal import console, fail, set_aside

app = typer.Typer(
    help="Export an output folder as GIS vectors, a STAC collection or a Hugging Face dataset.", no_args_is_help=True
)

OUT_HELP = "An `ovrsis annotate` or `ovrsis build` output folder (records.jsonl, masks/)."
TAXONOMY_HELP = "Class names of the masks (bundled name or YAML); default: manifest.json, else the records' taxonomy."


@app.command("vectors")
def vectors(
    out: Path = typer.Argument(..., help=OUT_HELP),
    fmt: str = typer.Option(
        "gpkg", "--format", help="gpkg (one file, layers regions and instances) or geojson (a file per layer)."
    ),
    dest: Path = typer.Option(None, help="Folder to write (default: OUT/vectors)."),
    taxonomy: str = typer.Option(None, help=TAXONOMY_HELP),
) -> None:
    """Semantic regions (per tile and class, over the tile's core) and kept instances as polygons in
    the source CRS, with category, score, tile key and audit decision. Tiles without a CRS are left out."""
    from pipeline.export.output_folder import ExportError, read_output_folder
    from pipeline.export.vectors import export_vectors

    try:
        summary = export_vectors(read_output_folder(out, taxonomy), dest or out / "vectors", fmt)
    except ExportError as error:
        fail(error)
    console.print(
        f"{summary.regions} regions, {summary.instances} instances -> {', '.join(map(str, summary.files))}",
        highlight=False,
    )
    _skipped(_lines(summary.skipped))


@app.command("stac")
def stac(
    out: Path = typer.Argument(..., help=OUT_HELP),
    dest: Path = typer.Option(None, help="Folder to write collection.json and the items into (default: OUT/stac)."),
    collection_id: str = typer.Option(None, "--id", help="Collection id (default: the folder's name)."),
    when: str = typer.Option(
        None,
        "--datetime",
        help="Acquisition time of the imagery, ISO 8601, for every item (default: the source's acquisition "
        "metadata, else a date in its file name such as NAIP's _20180827, else its TIFFTAG_DATETIME, else when "
        "the mask was written; each item's ovrsis:datetime_source says which).",
    ),
    source_hrefs: str = typer.Option(
        "none",
        "--source-hrefs",
        help="none: items name their source raster by file name only (ovrsis:source_file); absolute: also a "
        "`source` asset with the raster's absolute path (a relative one would leave OUT and DEST).",
    ),
    taxonomy: str = typer.Option(None, help=TAXONOMY_HELP),
) -> None:
    """A STAC collection: an item per georeferenced tile and per stitched mosaic, masks as COG assets with their
    class names. Mask and overlay hrefs are relative and stay inside OUT, so the collection moves with it."""
    from pipeline.export.output_folder import ExportError, read_output_folder
    from pipeline.export.stac import write_stac

    try:
        moment = _parse_datetime(when) if when else None
        path, skipped = write_stac(
            read_output_folder(out, taxonomy), dest or out / "stac", collection_id, moment, source_hrefs
        )
    except ExportError as error:
        fail(error)
    console.print(f"STAC collection -> {path}", highlight=False)
    _skipped(_lines(skipped))


@app.command("hf")
def hf(
    out: Path = typer.Argument(..., help="A build output folder (manifest.json, shards/)."),
    dest: Path = typer.Option(None, help="Folder to write (default: OUT/hf); then `datasets.load_dataset(DEST)`."),
    keep_private_fields: bool = typer.Option(
        False,
        "--keep-private-fields",
        help="Keep absolute source paths and reviewer addresses in the record column (default: paths "
        "relative to the build's inputs, reviewers as pseudonyms; fit to publish).",
    ),
    release: str | None = typer.Option(
        None, help="Export the release OUT/releases/RELEASE (`ovrsis release create`) instead of the current shards."
    ),
) -> None:
    """The shards as a Hugging Face dataset: the same image and mask bytes, a fixed-schema json part,
    and a dataset card declaring the features (class names included) and splits. Samples whose names
    could leave a folder, or whose key repeats, are left out and listed (exit 1)."""
    from pipeline.export.hf import export_hf
    from pipeline.export.output_folder import ExportError

    target = dest or out / "hf"
    skipped: list[str] = []
    try:
        counts = export_hf(out, target, keep_private_fields, skipped, release)
    except ExportError as error:
        fail(error)
    console.print(
        f"{', '.join(f'{s} {n}' for s, n in counts.items())} samples -> {target} (load_dataset({str(target)!r}))",
        highlight=False,
    )
    _skipped(skipped, "shard member(s) or sample(s)")


def _parse_datetime(text: str) -> datetime:
    from pipeline.export.output_folder import ExportError

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(f"--datetime {text!r}: not an ISO 8601 time (e.g. 2024-06-01T10:30:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _skipped(skipped: list[str], what: str = "tile(s)") -> None:
    """The first ten lines, then how many WHAT were left out, exit 1. Printed as text, never markup: the
    lines quote keys and names from the data, which may hold anything."""
    if not skipped:
        return
    for line in skipped[:10]:
        console.print(Text(f"skipped {line}"), highlight=False)
    set_aside(f"{len(skipped)} {what} left out (the first 10 listed above)")


def _lines(skipped: list[tuple[str, str]]) -> list[str]:
    """(key, reason) pairs as the lines `_skipped` prints."""
    return [f"{key}: {reason}" for key, reason in skipped]
