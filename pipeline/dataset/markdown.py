"""Reports as a browser shows them: the markdown a Prefect artifact carries.

A report file links its charts by relative path, which works beside the file and nowhere else: the
Prefect UI is a browser on another machine, where such a link is a broken image and a `file://`
link does nothing. `embedded_images` inlines the charts as data URIs; `manifest_summary` turns
manifest.json into tables, so the run's page says what the dataset holds without a file to open.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import unquote

from pipeline.files.safe_names import UnsafeName, confined_path

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def embedded_images(report: Path) -> str:
    """The markdown of `report` with each PNG it links beside it inlined as a data URI. Only files in
    the report's own folder are read (a link is a name from a file: it never reaches elsewhere); a
    link that names no such file becomes a note, not a broken image."""
    folder = report.parent

    def inline(match: re.Match) -> str:
        title, target = match.group(1), unquote(match.group(2))
        try:
            path = confined_path(folder, target, "chart")
        except UnsafeName:
            return f"*({title}: not embedded, {target!r} is not a file beside the report)*"
        if path.suffix.lower() != ".png" or not path.is_file():
            return f"*({title}: chart {target!r} not found beside the report)*"
        return f"![{title}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"

    return _IMAGE.sub(inline, report.read_text(encoding="utf-8"))


def manifest_summary(manifest: dict, out_dir: Path) -> str:
    """What the dataset holds, from its manifest: samples per split, tiles left out and why, and
    images and pixels per category (the background class included, as the masks hold it)."""
    splits = manifest["splits"]
    samples = sum(info["samples"] for info in splits.values())
    lines = [
        "# The dataset",
        "",
        f"{samples} samples ("
        + ", ".join(f"{name} {info['samples']}" for name, info in splits.items())
        + f") in `{out_dir / 'shards'}`; the manifest is `{out_dir / 'manifest.json'}`.",
        "",
    ]
    tiles = manifest.get("tiles")
    if tiles:
        lines += ["| tiles | count |", "|---|---:|"]
        lines += [f"| {name.replace('_', ' ')} | {value} |" for name, value in tiles.items() if value is not None]
        lines.append("")
    categories = {name: c for name, c in manifest["categories"].items() if c["images"]}
    total = sum(c["pixels"] for c in categories.values()) or 1
    lines += ["| category | images | pixels | pixel share |", "|---|---:|---:|---:|"]
    lines += [
        f"| {_cell(name)} | {c['images']} | {c['pixels']} | {c['pixels'] / total:.2%} |"
        for name, c in sorted(categories.items(), key=lambda item: -item[1]["pixels"])
    ]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a markdown table cell: a `|` would start a new cell."""
    return text.replace("|", "\\|")
