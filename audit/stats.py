"""Audit statistics: the paper's Table II, per review queue, per category and per domain, with 95% intervals.

Definitions (also written into the report):
- the statistics are read from the review ledger (audit/ledger.jsonl), the latest review of each
  tile in each queue, each judged against the proposal its reviewer was shown (audit/decisions.py);
- Table II's rates come from the random-sample queue (`sample`) only, as in the paper (a random
  sample of images); every other queue (`uncertain`, `stale`, ...) gets a table of its own, which
  is not an estimate of the dataset's quality (those tiles were chosen because they look wrong);
- audited images: tiles of the queue with a completed review; audited domains: their scene domains;
- category accepted / corrected / discarded %: per proposed category (each category the build
  painted on an audited tile): kept as it was / relabelled / removed by the reviewer;
- false-positive ratio: discarded proposals over all proposals (so it equals the discard rate, as
  in the paper); images with a discarded category are counted too, as an extra row;
- mask accepted / corrected %: per kept category (accepted or relabelled): the reviewer kept its
  region unchanged / repainted, filtered or merged it; the mask IoU of shown vs reviewed region is
  a measure, not the rule;
- correction kinds: boundary (same category, outline repainted), merge (merged into another
  proposed category), filtering (an instance or region removed, pixels only taken away): the
  reviewer's per-region choice where set, else inferred; the table says how many of each source;
- added categories: categories a reviewer painted that the build had not proposed (misses), per image;
- stale reviews: reviews of a proposal that a later build changed; they are still valid judgements
  of what was shown and are counted in the rates, and listed apart;
- intervals: 95% Wilson score intervals; the estimate for the whole dataset applies the sample's
  rates (and interval bounds) to the categories the dataset's tiles hold (the same unit as the
  rates: categories with pixels in a tile's mask): the tiles in the shards where a build wrote them
  (manifest.json), else the tiles with a proposal;
- reviews that do not fit their tile (another size, a label the taxonomy lost) are not counted and
  are listed by number.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from audit.decisions import CORRECTION_KINDS, ReviewShapeError
from audit.ledger import Entry, latest_by_queue, ledger_entries, load_review
from audit.records import load_records, proposal_mask, shown_mask
from audit.review_cache import reviewed
from pipeline.dataset.records import TileRecord
from pipeline.files.atomic import atomic_path
from pipeline.files.layout import manifest_file
from pipeline.files.safe_names import confined_path
from taxonomy.loader import Taxonomy

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Z = 1.959963984540054  # 95 %
STATES = ("accepted", "corrected", "discarded")


@dataclass(frozen=True)
class Rate:
    successes: int
    total: int

    @property
    def value(self) -> float:
        return self.successes / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.successes, self.total)

    def as_dict(self) -> dict:
        low, high = self.interval
        return {
            "count": self.successes,
            "of": self.total,
            "rate": _round(self.value),
            "ci95": [_round(low), _round(high)],
        }

    def text(self) -> str:
        if not self.total:
            return "–"
        low, high = self.interval
        return f"{100 * self.value:.2f}% ({100 * low:.1f}–{100 * high:.1f}) [{self.successes}/{self.total}]"


def wilson(successes: int, total: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval: well behaved at rates near 0 or 1 and for small samples."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


PAPER_TABLE_II = {  # arXiv 2604.15652, Table II (20,000 random images across five scene domains), in %
    "category accepted": 97.25,
    "category corrected": 2.22,
    "category discarded": 0.53,
    "false-positive ratio": 0.53,
    "mask accepted": 91.66,
    "mask corrected": 8.34,
}
SAMPLE_QUEUE = "sample"


def audit_statistics(out_dir: Path, taxonomy: Taxonomy) -> dict:
    """Per queue: Table II and its breakdowns, from the ledger and the build's records."""
    records = {r.key: r for r in load_records(out_dir)}
    latest = latest_by_queue(entry for _, entry in ledger_entries(out_dir))  # entries: results read when used
    queues = sorted(latest, key=lambda q: (q != SAMPLE_QUEUE, q))
    tables = {queue: _queue_statistics(out_dir, latest[queue], records, taxonomy) for queue in queues}
    sample = tables.get(SAMPLE_QUEUE)
    dataset = dataset_size(out_dir, records, taxonomy)
    proposed = dataset["proposed categories"]
    estimate = {}
    if sample:
        estimate = {
            name: {"expected": _round(rate.value * proposed), "ci95": [_round(b * proposed) for b in rate.interval]}
            for name, rate in (
                ("discarded categories", sample["table"]["category discarded"]),
                ("corrected categories", sample["table"]["category corrected"]),
            )
        }
    return {"queues": tables, "paper": PAPER_TABLE_II, "dataset": dataset | {"estimate": estimate}}


def dataset_size(out_dir: Path, records: dict[str, TileRecord], taxonomy: Taxonomy) -> dict:
    """The population the whole-dataset estimate scales to: the tiles in the shards and the categories
    their masks hold (manifest.json, background classes left out), where a build wrote shards; else
    the tiles that can reach them (not quarantined, something proposed), the sample's population. A
    tile the selection dropped is not in the dataset, so it never inflates the estimate."""
    from pipeline.dataset.shards import ShardError, read_manifest

    try:
        manifest = read_manifest(out_dir) if (manifest_file(out_dir)).is_file() else None
    except ShardError:
        manifest = None  # damaged: the tiles with a proposal stand in (the report says which)
    if manifest is not None and manifest["taxonomy"]["names"] == taxonomy.names:
        background = {taxonomy.categories[i].name for i in taxonomy.background_indices}
        return {
            "tiles": sum(split["samples"] for split in manifest["splits"].values()),
            "proposed categories": sum(
                c["images"] for name, c in manifest["categories"].items() if name not in background
            ),
            "source": "the shards (manifest.json)",
        }
    candidates = [r for r in records.values() if not r.quarantine and _painted(r)]
    return {
        "tiles": len(candidates),
        "proposed categories": sum(len(_painted(r)) for r in candidates),
        "source": "the tiles with a proposal (no shards written yet)",
    }


def _queue_statistics(
    out_dir: Path, latest: dict[str, Entry], records: dict[str, TileRecord], taxonomy: Taxonomy
) -> dict:
    categories: Counter = Counter()
    masks: Counter = Counter()
    kinds: Counter = Counter()
    kind_sources: Counter = Counter()
    per_category: dict[str, Counter] = defaultdict(Counter)
    per_domain: dict[str, Counter] = defaultdict(Counter)
    ious: list[float] = []
    images = images_with_discard = added = stale = unfit = 0
    domains: set[str] = set()
    for key, entry in sorted(latest.items()):
        record = records.get(key)
        if record is None or record.quarantine:
            continue
        review = load_review(out_dir, entry)
        proposal = proposal_mask(out_dir, record)
        try:
            kept_shown = shown_mask(out_dir, review.proposal_digest)
            shown = proposal if kept_shown is None else kept_shown
            _, decisions = reviewed(out_dir, review, shown, taxonomy, cache=kept_shown is not None)
        except ReviewShapeError:
            unfit += 1
            continue
        images += 1
        stale += review.is_stale_for(proposal)
        domain = record.domain.name if record.domain else "unknown"
        domains.add(domain)
        for decision in decisions:
            kind, name = decision.target.split(":", 1)
            if kind == "category" and decision.kind == "added":
                added += 1
            elif kind == "category":
                categories[decision.state] += 1
                per_category[name][decision.state] += 1
                per_domain[domain][decision.state] += 1
            else:
                masks[decision.state] += 1
                per_category[name]["mask " + decision.state] += 1
                ious.append(decision.mask_iou)
                if decision.kind:
                    kinds[decision.kind] += 1
                    kind_sources[decision.kind_source] += 1
        images_with_discard += any(d.state == "discarded" for d in decisions)
    n_categories = sum(categories[s] for s in STATES)
    n_masks = masks["accepted"] + masks["corrected"]
    table = {
        "audited images": images,
        "audited domains": len(domains),
        "category accepted": Rate(categories["accepted"], n_categories),
        "category corrected": Rate(categories["corrected"], n_categories),
        "category discarded": Rate(categories["discarded"], n_categories),
        "false-positive ratio": Rate(categories["discarded"], n_categories),
        "mask accepted": Rate(masks["accepted"], n_masks),
        "mask corrected": Rate(masks["corrected"], n_masks),
        **{f"mask correction: {k}": Rate(kinds[k], masks["corrected"]) for k in CORRECTION_KINDS},
        "images with a discarded category": Rate(images_with_discard, images),
        "added categories per audited image": round(added / images, 4) if images else float("nan"),
        "stale reviews": stale,
        "reviews that do not fit their tile (not counted)": unfit,
    }
    return {
        "table": table,
        "correction kind source": {"reviewer": kind_sources["reviewer"], "inferred": kind_sources["inferred"]},
        "per_category": {name: _rates(counter) for name, counter in sorted(per_category.items())},
        "per_domain": {name: _rates(counter) for name, counter in sorted(per_domain.items())},
        "mask_iou": sorted(ious),
    }


def _painted(record: TileRecord) -> set[str]:
    """The categories a tile's proposal shows (the instances the merge kept): Table II's unit."""
    return {i.category for i in record.instances if not i.dropped and i.area > 0}


def _rates(counter: Counter) -> dict:
    total = sum(counter[s] for s in STATES)
    return {s: Rate(counter[s], total) for s in STATES}


def write_report(out_dir: Path, folder: Path, taxonomy: Taxonomy) -> dict:
    """audit_stats.md, audit_stats.json, and per queue iou-QUEUE.png and rates-QUEUE.png in `folder`."""
    stats = audit_statistics(out_dir, taxonomy)
    folder.mkdir(parents=True, exist_ok=True)
    payload = _jsonable(stats)
    with atomic_path(folder / "audit_stats.json") as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True))
    with atomic_path(folder / "audit_stats.md") as temporary:
        temporary.write_text(_markdown(stats))
    for queue, queue_stats in stats["queues"].items():
        _charts(queue_stats, folder, queue)
    return payload


def _markdown(stats: dict) -> str:
    lines = [
        "# Audit statistics",
        "",
        "Rates with 95% Wilson intervals and [count/total]; the paper's Table II beside ours.",
        "",
    ]
    if not stats["queues"]:
        lines += ["No reviews in the ledger yet (`ovrsis audit pull`).", ""]
    for queue, queue_stats in stats["queues"].items():
        title = "Table II (random sample)" if queue == SAMPLE_QUEUE else f"Queue `{queue}` (not a random sample)"
        lines += [f"## {title}", "", "| row | ours | paper |", "|---|---|---|"]
        for row, value in queue_stats["table"].items():
            ours = value.text() if isinstance(value, Rate) else value
            paper = f"{PAPER_TABLE_II[row]:.2f}%" if row in PAPER_TABLE_II and queue == SAMPLE_QUEUE else ""
            lines.append(f"| {row} | {ours} | {paper} |")
        sources = queue_stats["correction kind source"]
        lines += [
            "",
            f"Correction kinds: {sources['reviewer']} chosen by the reviewer, {sources['inferred']} inferred.",
            "",
        ]
        for heading, rows in (("category", queue_stats["per_category"]), ("domain", queue_stats["per_domain"])):
            lines += [
                f"### Per {heading} ({queue})",
                "",
                f"| {heading} | accepted | corrected | discarded |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {name} | {r['accepted'].text()} | {r['corrected'].text()} | {r['discarded'].text()} |"
                for name, r in rows.items()
            ]
            lines.append("")
        ious = queue_stats["mask_iou"]
        if ious:
            lines += [
                f"Shown vs reviewed mask IoU ({len(ious)} masks): median {ious[len(ious) // 2]:.3f}, "
                f"min {ious[0]:.3f}, max {ious[-1]:.3f}",
                "",
                f"![IoU]({quote(f'iou-{queue}.png')}) ![rates]({quote(f'rates-{queue}.png')})",
                "",
            ]
    dataset = stats["dataset"]
    lines += [
        "## Estimate for the whole dataset (from the random sample)",
        "",
        f"{dataset['tiles']} tiles, {dataset['proposed categories']} categories on them, counted from "
        f"{dataset['source']}.",
        "",
    ]
    for name, estimate in dataset["estimate"].items():
        lines.append(f"- {name}: about {estimate['expected']} (95%: {estimate['ci95'][0]}–{estimate['ci95'][1]})")
    lines += ["", "## Definitions", "", __doc__.split("Definitions (also written into the report):")[1].strip(), ""]
    return "\n".join(lines)


STATE_COLOURS = {"accepted": "#228833", "corrected": "#ccbb44", "discarded": "#ee6677"}
LABEL_SIZE = 7  # points: the count labels beside the bars


def _charts(stats: dict, folder: Path, queue: str) -> None:
    """A queue's two charts, each written whole or not at all, under a name kept inside `folder` (the
    queue's name comes from Label Studio)."""
    for name, figure in (
        (f"iou-{queue}.png", iou_figure(stats, queue)),
        (f"rates-{queue}.png", rates_figure(stats, queue)),
    ):
        with atomic_path(confined_path(folder, name, "queue chart")) as temporary:
            figure.savefig(temporary, format="png")


def iou_figure(stats: dict, queue: str) -> Figure:
    """Histogram of the shown-vs-reviewed mask IoU, each bar labelled with its count of masks, so a
    tall bar of 3 masks is not read as a trend."""
    ious = stats["mask_iou"]
    figure = _figure(6, 3.5)
    axis = figure.add_subplot()
    counts, _, bars = axis.hist(ious, bins=20, range=(0, 1), color="#4477aa")
    axis.bar_label(bars, labels=[f"{count:.0f}" if count else "" for count in counts], fontsize=LABEL_SIZE)
    axis.set_ylim(0, max(1.0, float(max(counts, default=0))) * 1.15)  # headroom for the tallest bar's count
    axis.set_xlim(0, 1)
    axis.set_xlabel("IoU of the shown proposal vs the reviewed mask (0–1; 1: kept unchanged)")
    axis.set_ylabel("reviewed masks (count)")
    axis.set_title(f"mask IoU after review ({queue}; n = {len(ious)} masks)", parse_math=False)  # ($ is no TeX)
    if not ious:
        axis.text(0.5, 0.5, "no reviewed masks yet", transform=axis.transAxes, ha="center", va="center")
    return figure


def rates_figure(stats: dict, queue: str) -> Figure:
    """Per category, one bar per decision (accepted, corrected, discarded) as a share of the category's
    proposals, each labelled "8.1 % (12/148)": a share alone hides whether it rests on 3 reviews or 300.
    Horizontal bars keep the category names and the labels readable for all 35 categories; the legend
    sits below the axes, where it covers no bar."""
    per_category = stats["per_category"]
    names = list(per_category)
    figure = _figure(8, 1.8 + 0.5 * max(1, len(names)))
    axis = figure.add_subplot()
    proposals = sum(per_category[name]["accepted"].total for name in names)
    axis.set_title(f"audit decisions per category ({queue}; n = {proposals} proposals)", parse_math=False)
    axis.set_xlim(0, 100)
    axis.set_xticks(range(0, 101, 20))
    axis.set_xlabel("share of the category's proposals on audited tiles (%)")
    axis.set_ylabel("proposed category")
    if not names:
        axis.set_yticks([])
        axis.text(0.5, 0.5, "no reviewed proposals yet", transform=axis.transAxes, ha="center", va="center")
        return figure
    height = 0.8 / len(STATE_COLOURS)
    for offset, (state, colour) in enumerate(STATE_COLOURS.items()):
        rates = [per_category[name][state] for name in names]
        bars = axis.barh(
            [index + (offset - 1) * height for index in range(len(names))],
            [0.0 if math.isnan(rate.value) else 100 * rate.value for rate in rates],
            height=height,
            color=colour,
            label=state,
        )
        labels = [_rate_label(rate) if rate.total else "no proposals" if offset == 0 else "" for rate in rates]
        axis.bar_label(bars, labels=labels, padding=3, fontsize=LABEL_SIZE)
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.set_ylim(len(names) - 0.5, -0.5)  # first category on top
    figure.legend(loc="outside lower center", ncols=len(STATE_COLOURS), fontsize=8)
    _fit_labels(figure, axis)
    return figure


def _figure(width: float, height: float) -> Figure:
    """A figure drawn by Agg (PNG, no display), laid out so that labels and the legend stay inside it.
    A plain Figure, not pyplot: no global state or backend switch in a library that runs inside builds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _rate_label(rate: Rate) -> str:
    return f"{100 * rate.value:.1f} % ({rate.successes}/{rate.total})"


def _fit_labels(figure: Figure, axis: Axes) -> None:
    """Widen the x axis past 100 % so that the label of a full bar ends inside the axes: how far that is
    depends on the label's length and the room the category names leave the axes."""
    figure.draw_without_rendering()  # lays the figure out: the labels' extents are final
    renderer = figure.canvas.get_renderer()
    right = max(text.get_window_extent(renderer).x1 for text in axis.texts)
    inverse = axis.transData.inverted()
    overshoot = inverse.transform((right, 0))[0]
    if overshoot > 100:
        axis.set_xlim(0, overshoot * 1.02)


def _jsonable(value):
    if isinstance(value, Rate):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _round(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 4)
