"""Command-line entry points of the pipeline stages (mounted under `ovrsis` by flows.cli)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from taxonomy.loader import TaxonomyError, bundled_taxonomies, load_taxonomy
from taxonomy.matcher import DEFAULT_MARGIN, DEFAULT_THRESHOLD

console = Console(stderr=True)

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
Bad lines (invalid JSON, missing id, empty or non-English captions, duplicate ids) are reported
with their line number and written to --errors (default: OUT with .errors.jsonl); the other lines
are processed. Exit status 1 when no line could be processed, or with --strict when any line failed.

Bundled taxonomies: {", ".join(bundled_taxonomies())}.
"""


def categories(
    taxonomy: str = typer.Option(..., "--taxonomy", "-t", help="Bundled taxonomy name or path to a YAML file."),
    captions: Path = typer.Option(..., "--captions", "-c", help="Input JSON Lines (see above)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSON Lines (written atomically)."),
    errors: Path | None = typer.Option(None, help="Where bad lines are reported [default: OUT.errors.jsonl]."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, help="Minimum cosine similarity for an embedding match."),
    margin: float = typer.Option(DEFAULT_MARGIN, help="Required lead of the best category over the runner-up."),
    no_embedding: bool = typer.Option(False, "--no-embedding", help="Exact, synonym and lexicon matches only."),
    batch_size: int = typer.Option(1024, min=1, help="Images per batch (one spaCy pipe, one embedding call)."),
    strict: bool = typer.Option(False, help="Exit 1 if any input line fails."),
    preview: int = typer.Option(0, min=0, help="Also print the first N results, one line per image."),
) -> None:
    from pipeline.categories import CaptionCategorizer
    from pipeline.categorize_file import categorize_file

    try:
        vocabulary = load_taxonomy(taxonomy)
    except TaxonomyError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    if not captions.is_file():
        console.print(f"[red]error:[/red] {captions}: captions file not found")
        raise typer.Exit(2)
    errors_path = errors or out.with_name(out.name.removesuffix(".jsonl") + ".errors.jsonl")
    categorizer = CaptionCategorizer(
        vocabulary, threshold=threshold, margin=margin, embedder_model=None if no_embedding else "all-MiniLM-L6-v2"
    )
    total_lines = sum(1 for _ in open(captions, "rb"))
    with Progress(
        TextColumn("[bold]categories[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("lines"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("lines", total=total_lines)
        categorizer.matcher  # load the models before the bar starts counting
        summary = categorize_file(
            categorizer, captions, out, errors_path, batch_size, on_batch=lambda n: progress.advance(task, n)
        )
    _print_preview(out, preview)
    _print_summary(vocabulary.name, vocabulary.version, out, errors_path, summary)
    if summary.images == 0 or (strict and summary.errors):
        raise typer.Exit(1)


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


def _print_summary(name: str, version: str, out: Path, errors_path: Path, summary) -> None:
    console.print(
        f"[bold]{summary.images}[/bold] images, {summary.captions} captions -> {out}  "
        f"(taxonomy {name} {version})"
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
    if summary.errors or summary.warnings:
        console.print(
            f"{len(summary.errors)} line(s) skipped, {len(summary.warnings)} caption(s) dropped; details in {errors_path}"
        )
    sys.stderr.flush()
