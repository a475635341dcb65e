"""Audit statistics: the paper's Table II, per category and per domain, with 95% Wilson intervals.

Definitions (also written into the report):
- audited images: tiles whose task has at least one submitted review;
- audited domains: distinct scene domains among them;
- category accepted / corrected / discarded %: share of the categories the build proposed on
  audited images that the reviewers kept as they were / relabelled / removed;
- added categories: categories reviewers painted that the build had not proposed (misses), per
  audited image;
- mask accepted / corrected %: among kept, correctly labelled categories, share whose reviewed
  mask equals the proposal (IoU >= 0.999) / was repainted;
- false-positive ratio: share of audited images with at least one discarded category;
- estimate for the whole dataset: each rate applied to all proposed categories of the build,
  with the interval's bounds (valid for a random sample; the uncertain queue is not random).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from pipeline.outputs import atomic_path
from pipeline.records import TileRecord

Z = 1.959963984540054  # 95 %


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
        return {"count": self.successes, "of": self.total, "rate": _round(self.value), "ci95": [_round(low), _round(high)]}

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


def audit_statistics(records: list[TileRecord]) -> dict:
    audited = [r for r in records if r.audit and any(d.state != "pending" for d in r.audit)]
    category_states: Counter = Counter()
    mask_states: Counter = Counter()
    per_category: dict[str, Counter] = defaultdict(Counter)
    per_domain: dict[str, Counter] = defaultdict(Counter)
    ious: list[float] = []
    added = images_with_discard = 0
    for record in audited:
        domain = record.domain.name if record.domain else "unknown"
        for decision in record.audit:
            kind, name = decision.target.split(":", 1)
            if kind == "category":
                if decision.state == "corrected" and decision.corrected_to == name:
                    added += 1  # painted by the reviewer, not proposed by the build
                    continue
                category_states[decision.state] += 1
                per_category[name][decision.state] += 1
                per_domain[domain][decision.state] += 1
            elif kind == "mask":
                mask_states[decision.state] += 1
                per_category[name]["mask " + decision.state] += 1
                if decision.mask_iou is not None:
                    ious.append(decision.mask_iou)
        images_with_discard += any(d.state == "discarded" for d in record.audit)
    n_categories = sum(category_states[s] for s in ("accepted", "corrected", "discarded"))
    n_masks = mask_states["accepted"] + mask_states["corrected"]
    all_proposed = sum(len(r.categories) for r in records if not r.quarantine and not r.audit) + n_categories

    def rates(counter: Counter) -> dict:
        total = sum(counter[s] for s in ("accepted", "corrected", "discarded"))
        return {s: Rate(counter[s], total) for s in ("accepted", "corrected", "discarded")}

    table = {
        "audited images": len(audited),
        "audited domains": len({r.domain.name if r.domain else "unknown" for r in audited}),
        "category accepted": Rate(category_states["accepted"], n_categories),
        "category corrected": Rate(category_states["corrected"], n_categories),
        "category discarded": Rate(category_states["discarded"], n_categories),
        "mask accepted": Rate(mask_states["accepted"], n_masks),
        "mask corrected": Rate(mask_states["corrected"], n_masks),
        "false-positive ratio": Rate(images_with_discard, len(audited)),
        "added categories per audited image": round(added / len(audited), 4) if audited else float("nan"),
    }
    estimate = {
        name: {"expected": _round(rate.value * all_proposed), "ci95": [_round(b * all_proposed) for b in rate.interval]}
        for name, rate in (("discarded categories", table["category discarded"]), ("corrected categories", table["category corrected"]))
    }  # fmt: skip
    return {
        "table": table,
        "per_category": {name: rates(counter) for name, counter in sorted(per_category.items())},
        "per_domain": {name: rates(counter) for name, counter in sorted(per_domain.items())},
        "mask_iou": sorted(ious),
        "dataset": {"tiles": sum(1 for r in records if not r.quarantine), "proposed categories": all_proposed, "estimate": estimate},
    }


def write_report(records: list[TileRecord], folder: Path) -> dict:
    """audit_stats.md, audit_stats.json, iou.png and rates.png in `folder`."""
    stats = audit_statistics(records)
    folder.mkdir(parents=True, exist_ok=True)
    payload = _jsonable(stats)
    with atomic_path(folder / "audit_stats.json") as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True))
    with atomic_path(folder / "audit_stats.md") as temporary:
        temporary.write_text(_markdown(stats))
    _charts(stats, folder)
    return payload


def _markdown(stats: dict) -> str:
    table = stats["table"]
    lines = ["# Audit statistics", "", "Rates with 95% Wilson intervals and [count/total].", "",
             "## Table II", "", "| row | value |", "|---|---|"]  # fmt: skip
    for row, value in table.items():
        lines.append(f"| {row} | {value.text() if isinstance(value, Rate) else value} |")
    lines += ["", "## Per category", "", "| category | accepted | corrected | discarded |", "|---|---|---|---|"]
    for name, rates in stats["per_category"].items():
        lines.append(f"| {name} | {rates['accepted'].text()} | {rates['corrected'].text()} | {rates['discarded'].text()} |")
    lines += ["", "## Per domain", "", "| domain | accepted | corrected | discarded |", "|---|---|---|---|"]
    for name, rates in stats["per_domain"].items():
        lines.append(f"| {name} | {rates['accepted'].text()} | {rates['corrected'].text()} | {rates['discarded'].text()} |")
    ious = stats["mask_iou"]
    if ious:
        lines += ["", f"## Proposed vs corrected mask IoU ({len(ious)} masks)", "",
                  f"median {ious[len(ious) // 2]:.3f}, min {ious[0]:.3f}, max {ious[-1]:.3f}", "", "![IoU](iou.png)"]  # fmt: skip
    dataset = stats["dataset"]
    lines += ["", "## Estimate for the whole dataset", "",
              f"{dataset['tiles']} tiles, {dataset['proposed categories']} proposed categories.", ""]  # fmt: skip
    for name, estimate in dataset["estimate"].items():
        lines.append(f"- {name}: about {estimate['expected']} (95%: {estimate['ci95'][0]}–{estimate['ci95'][1]})")
    lines += ["", "![rates per category](rates.png)", "", "## Definitions", "", __doc__.split("Definitions (also written into the report):")[1].strip(), ""]
    return "\n".join(lines)


def _charts(stats: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.hist(stats["mask_iou"] or [float("nan")], bins=20, range=(0, 1), color="#4477aa")
    axis.set_xlabel("IoU of proposed vs reviewed mask")
    axis.set_ylabel("masks")
    axis.set_title("mask IoU after review")
    figure.tight_layout()
    with atomic_path(folder / "iou.png") as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)

    names = list(stats["per_category"]) or ["(none)"]
    figure, axis = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4), dpi=100)
    bottom = [0.0] * len(names)
    for state, colour in (("accepted", "#228833"), ("corrected", "#ccbb44"), ("discarded", "#ee6677")):
        values = [stats["per_category"].get(n, {}).get(state, Rate(0, 0)).value if n in stats["per_category"] else 0 for n in names]
        values = [0.0 if math.isnan(v) else v for v in values]
        axis.bar(names, values, bottom=bottom, color=colour, label=state)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.set_ylim(0, 1)
    axis.set_ylabel("share of proposed categories")
    axis.set_title("audit decisions per category")
    axis.tick_params(axis="x", rotation=60, labelsize=8)
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(folder / "rates.png") as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


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
