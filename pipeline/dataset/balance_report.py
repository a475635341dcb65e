"""The balance report: what the selection did, before and after, in numbers and bar charts.

`report/balance.md` states, for all candidate tiles and for the selected ones: tiles and pixels per
category, the normalised entropy of tiles per category (1 = every category in the same number of
tiles), the max/min ratio of tiles per category, the categories under the quota, and tiles per
domain. PNG charts beside it show the same before/after, each bar labelled with its count. Pixels
are those of the tile's labels as the dataset will carry them: the reviewed mask where a review was
applied, else the merged instances' areas (pipeline.dataset.tile_table.category_pixels), so the selected
column equals the manifest's categories. The background class (never an instance, never chosen for)
is not counted here; the manifest counts it from the masks. The first lines say how many of the
build's tiles were left out before selection, and why (`TileCounts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.dataset.selection import Selection, TileCounts
from pipeline.dataset.tile_table import TileTable
from pipeline.files.atomic import atomic_path


@dataclass(frozen=True)
class Balance:
    """One side of the report: all candidate tiles, or the selected ones."""

    tiles: int
    category_tiles: np.ndarray
    category_pixels: np.ndarray
    domain_tiles: np.ndarray

    @classmethod
    def of(cls, table: TileTable, rows: np.ndarray) -> Balance:
        return cls(int(rows.sum()), table.category_tiles(rows), table.category_pixels(rows), table.domain_tiles(rows))

    def entropy(self, present: np.ndarray) -> float:
        """Entropy of tiles per category over the `present` categories, divided by its maximum."""
        counts = self.category_tiles[present]
        if len(counts) < 2 or counts.sum() == 0:
            return 1.0
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum() / np.log(len(counts)))

    def max_min(self, present: np.ndarray) -> float:
        counts = self.category_tiles[present]
        return float(counts.max() / counts.min()) if len(counts) and counts.min() > 0 else float("inf")


CHARTS = {
    "categories.png": "tiles per category",
    "pixels.png": "pixel share per category",
    "domains.png": "tiles per domain",
}


def write_report(folder: Path, table: TileTable, selection: Selection, counts: TileCounts | None = None) -> Path:
    """balance.md with the summary, per-category and per-domain tables, and PNG charts beside it
    (`CHARTS`, linked by relative path: the report is read from its folder)."""
    everything = np.ones(len(table), bool)
    before, after = Balance.of(table, everything), Balance.of(table, selection.selected)
    present = before.category_tiles > 0
    quota = selection.quota
    goal = np.minimum(before.category_tiles, quota) if quota is not None else before.category_tiles
    names = np.array(table.categories, dtype=object)
    rule = f"target reached with a quota of {quota} tiles per category" if quota is not None else "every candidate kept"
    lines = ["# Balance of the build", ""]
    if counts is not None:
        lines += [" ".join(counts.sentences()), ""]
    lines += [
        f"{before.tiles} candidate tiles, {after.tiles} selected ({rule}).",
        "",
        "| | candidates | selected |",
        "|---|---:|---:|",
        f"| tiles | {before.tiles} | {after.tiles} |",
        f"| normalised entropy of tiles per category | {before.entropy(present):.3f} | {after.entropy(present):.3f} |",
        f"| max/min tiles per category | {before.max_min(present):.1f} | {after.max_min(present):.1f} |",
    ]
    if quota is not None:
        lines += [
            f"| categories under the quota ({quota}) | {_listed(names[present & (before.category_tiles < quota)])} "
            f"| {_listed(names[present & (after.category_tiles < quota)])} |",
            f"| categories below min(available, quota) | - | {_listed(names[after.category_tiles < goal])} |",
        ]
    lines += [
        "",
        "## Categories",
        "",
        "| category | tiles (candidates) | tiles (selected) "
        "| pixels (candidates) | pixels (selected) | pixel share (selected) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    share = after.category_pixels / max(int(after.category_pixels.sum()), 1)
    for j in np.flatnonzero(present):
        lines.append(
            f"| {names[j]} | {before.category_tiles[j]} | {after.category_tiles[j]} | {before.category_pixels[j]} "
            f"| {after.category_pixels[j]} | {share[j]:.2%} |"
        )
    lines += ["", "## Domains", "", "| domain | tiles (candidates) | tiles (selected) |", "|---|---:|---:|"]
    for d, domain in enumerate(table.domains):
        lines.append(f"| {domain} | {before.domain_tiles[d]} | {after.domain_tiles[d]} |")
    lines.append("")
    for name, title in CHARTS.items():
        lines += [f"![{title}]({name})", ""]
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(names[present])
    _chart(
        folder / "categories.png",
        labels,
        before.category_tiles[present],
        after.category_tiles[present],
        "tiles per category (log scale)",
        log=True,
        unit="tiles",
    )
    _chart(
        folder / "pixels.png",
        labels,
        _shares(before.category_pixels)[present],
        share[present],
        "pixel share per category",
        unit="share",
    )
    _chart(
        folder / "domains.png",
        list(table.domains),
        before.domain_tiles,
        after.domain_tiles,
        "tiles per domain",
        unit="tiles",
    )
    report = folder / "balance.md"
    with atomic_path(report) as temporary:
        temporary.write_text("\n".join(lines))
    return report


def _listed(names: np.ndarray) -> str:
    return ", ".join(names) if len(names) else "none"


def _shares(pixels: np.ndarray) -> np.ndarray:
    return pixels / max(int(pixels.sum()), 1)


def _chart(
    path: Path,
    labels: list[str],
    before: np.ndarray,
    after: np.ndarray,
    title: str,
    unit: str,
    log: bool = False,
) -> None:
    """Candidates beside selected per label, each bar topped by its value; the legend sits above the
    plot, where it can hide no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(6, 0.55 * len(labels) + 2), 4.5), dpi=100)
    positions = np.arange(len(labels))
    text = (lambda v: f"{v:.1%}") if unit == "share" else (lambda v: f"{int(v)}")
    for offset, values, name in ((-0.2, before, "candidates"), (0.2, after, "selected")):
        bars = axis.bar(positions + offset, values, width=0.4, label=name)
        axis.bar_label(bars, labels=[text(v) for v in values], fontsize=6, rotation=90, padding=2)
    axis.set_xticks(positions, labels, rotation=60, ha="right", fontsize=8)
    if log and len(labels) and before.max() > 0:
        axis.set_yscale("log")
    axis.margins(y=0.25)  # headroom for the value labels
    axis.set_ylabel("share of labelled pixels" if unit == "share" else unit)
    axis.set_title(title, pad=24)
    axis.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False, fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", metadata={"Software": None})
    plt.close(figure)
