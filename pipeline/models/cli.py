"""`ovrsis models fetch|check`: get a preset's weights once, then build offline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from pipeline.cli.terminal import fail, print_error, set_aside
from pipeline.models.presets import PRESETS

out = Console(soft_wrap=True, highlight=False)
app = typer.Typer(
    help="Model presets: fetch their weights ahead, check which are complete locally.", no_args_is_help=True
)
PRESET_NAMES = " | ".join(PRESETS)


def _known(preset: str) -> str:
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    return preset


@app.command()
def fetch(
    preset: str = typer.Argument(..., help=f"{PRESET_NAMES}"),
    to: Path | None = typer.Option(
        None,
        "--to",
        help="A Hugging Face cache folder [the default cache]; "
        "build offline later with HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1.",
    ),
) -> None:
    """Download a preset's weights into the Hugging Face cache (or --to DIR), once.

    Prints the commit each revision resolved to (what to pin in pipeline/models/presets.py).
    Exit status: 0 all fetched; 1 some failed (each named); 2 unknown preset."""
    from pipeline.models.fetch import fetch as fetch_weights

    results = fetch_weights(_known(preset), to)
    for result in results:
        name = f"{result.weights.repo_id}@{result.weights.revision or 'main'}"
        if result.error:
            print_error(f"{name}: {result.error}")
        else:
            out.print(f"{name} -> {result.commit}")
    failed = [r for r in results if r.error]
    if failed:
        set_aside(f"{len(failed)} of {len(results)} repositories not fetched (the reasons above)")
    out.print(f"{preset}: complete in {to or 'the Hugging Face cache'}")


@app.command()
def check(
    preset: str | None = typer.Argument(None, help=f"{PRESET_NAMES} [all]"),
    cache: Path | None = typer.Option(None, "--cache", help="A Hugging Face cache folder [the default cache]."),
) -> None:
    """Say which presets are complete locally, so a build can run offline.

    Exit status: 0 every preset checked is complete; 1 some are not (what is missing is listed); 2 unknown preset."""
    from pipeline.models.fetch import missing

    names = [_known(preset)] if preset else list(PRESETS)
    incomplete = 0
    for name in names:
        absent = missing(name, cache)
        if not absent:
            out.print(f"{name}: complete")
            continue
        incomplete += 1
        out.print(f"{name}: missing " + ", ".join(f"{w.repo_id}@{w.revision or 'main'} ({why})" for w, why in absent))
    if incomplete:
        set_aside(f"{incomplete} of {len(names)} presets incomplete; `ovrsis models fetch PRESET` gets one")
