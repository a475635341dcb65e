"""Balanced selection: what the build holds per category and domain, and an optional cap.

OVRSIS95K is "balanced": frequent classes (building, tree, road) must not drown the rare ones.
`select_tiles` keeps every tile unless caps are set; with caps it visits tiles rarest-first (the
tile's rarest category decides) and keeps a tile only while none of its categories and not its
domain is already at its cap, so rare categories keep all their tiles and frequent ones are
thinned. The order is deterministic (ties by key). The report is Markdown plus PNG bar charts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.outputs import atomic_path
from pipeline.records import TileRecord


@dataclass(frozen=True)
class SelectionConfig:
    max_tiles_per_category: int | None = None  # cap on tiles that contain a category
    max_tiles_per_domain: int | None = None
    drop_unlabeled: bool = True  # tiles whose mask has no labelled pixel


@dataclass
class Statistics:
    tiles: int
    category_tiles: Counter
    category_pixels: Counter
    domain_tiles: Counter


def kept_categories(record: TileRecord) -> list[str]:
    """Categories that own pixels in the tile's semantic mask after the merge."""
    return sorted({i.category for i in record.instances if not i.dropped and i.area > 0})


def statistics(records: Sequence[TileRecord]) -> Statistics:
    tiles, pixels, domains = Counter(), Counter(), Counter()
    for record in records:
        domains[record.domain.name if record.domain else "unknown"] += 1
        for instance in record.instances:
            if not instance.dropped:
                pixels[instance.category] += instance.area
        tiles.update(kept_categories(record))
    return Statistics(len(records), tiles, pixels, domains)


def select_tiles(records: Sequence[TileRecord], config: SelectionConfig = SelectionConfig()) -> list[TileRecord]:
    candidates = [r for r in records if not r.quarantine and (kept_categories(r) or not config.drop_unlabeled)]
    if config.max_tiles_per_category is None and config.max_tiles_per_domain is None:
        return sorted(candidates, key=lambda r: r.key)
    frequency = statistics(candidates).category_tiles
    rarity = {r.key: min((frequency[c] for c in kept_categories(r)), default=0) for r in candidates}
    kept, per_category, per_domain = [], Counter(), Counter()
    for record in sorted(candidates, key=lambda r: (rarity[r.key], r.key)):
        categories = kept_categories(record)
        domain = record.domain.name if record.domain else "unknown"
        if config.max_tiles_per_category is not None and any(per_category[c] >= config.max_tiles_per_category for c in categories):
            continue
        if config.max_tiles_per_domain is not None and per_domain[domain] >= config.max_tiles_per_domain:
            continue
        kept.append(record)
        per_category.update(categories)
        per_domain[domain] += 1
    return sorted(kept, key=lambda r: r.key)


def write_report(folder: Path, before: Statistics, after: Statistics, names: Sequence[str]) -> Path:
    """balance.md with per-category and per-domain tables, and PNG bar charts beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Balance of the build", "",
        f"Tiles: {before.tiles} annotated, {after.tiles} selected for the shards.", "",
        "## Categories", "", "| category | tiles (all) | tiles (selected) | pixels (selected) |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    for name in names:
        if before.category_tiles[name] or after.category_tiles[name]:
            lines.append(f"| {name} | {before.category_tiles[name]} | {after.category_tiles[name]} | {after.category_pixels[name]} |")
    lines += ["", "## Domains", "", "| domain | tiles (all) | tiles (selected) |", "|---|---:|---:|"]
    for domain in sorted(set(before.domain_tiles) | set(after.domain_tiles)):
        lines.append(f"| {domain} | {before.domain_tiles[domain]} | {after.domain_tiles[domain]} |")
    lines += ["", "![tiles per category](categories.png)", "", "![tiles per domain](domains.png)", ""]
    for filename, counters, title in (
        ("categories.png", (before.category_tiles, after.category_tiles), "tiles per category"),
        ("domains.png", (before.domain_tiles, after.domain_tiles), "tiles per domain"),
    ):
        labels = [n for n in (names if filename == "categories.png" else sorted(set(counters[0]) | set(counters[1]))) if counters[0][n]]
        figure, axis = plt.subplots(figsize=(max(6, 0.45 * len(labels) + 2), 4), dpi=100)
        positions = range(len(labels))
        axis.bar([p - 0.2 for p in positions], [counters[0][n] for n in labels], width=0.4, label="annotated")
        axis.bar([p + 0.2 for p in positions], [counters[1][n] for n in labels], width=0.4, label="selected")
        axis.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=8)
        axis.set_title(title)
        axis.legend()
        figure.tight_layout()
        with atomic_path(folder / filename) as temporary:
            figure.savefig(temporary, format="png", metadata={"Software": None})
        plt.close(figure)
    report = folder / "balance.md"
    with atomic_path(report) as temporary:
        temporary.write_text("\n".join(lines))
    return report
