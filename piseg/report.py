"""The evaluation report: the paper's tables (per-dataset mIoU/mACC and their means, Tables III-V), the
seen/unseen split (Table XI), the category overlap with the training taxonomy (Figure 5) and the
resolution groups (Table XIII), as Markdown, JSON and PNG."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from piseg.config import EvalConfig
from piseg.evaluate import DatasetResult
from piseg.metrics import ConfusionMatrix
from taxonomy.crosswalk import crosswalk
from taxonomy.loader import load_taxonomy
from taxonomy.matcher import Lemmatize

ABSENT_RULES = {
    "exclude": "classes absent from a dataset's ground truth are left out of its mIoU and mACC",
    "include": "classes absent from a dataset's ground truth count with IoU 0 in mIoU when they were predicted",
}


def percent(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def build_report(results: list[DatasetResult], benchmark: str, train_taxonomy: str, model_name: str, absent: str,
                 lemmatize: Lemmatize, out: Path, definitions: dict, settings: EvalConfig) -> dict:  # fmt: skip
    """Write OUT/report.md, OUT/report.json and OUT/overlap.png; returns the JSON content."""
    training = load_taxonomy(train_taxonomy)
    datasets = {}
    for result in results:
        entry: dict = {"status": result.status, "problems": result.problems, "images": result.images}
        spec_taxonomy = load_taxonomy(definitions["datasets"][result.name]["taxonomy"])
        mapping = crosswalk(spec_taxonomy, training, lemmatize)
        covered = [name for name, target in mapping.items() if target is not None]
        entry["overlap"] = {"raw": len(mapping), "covered": len(covered), "test_only": len(mapping) - len(covered),
                            "coverage": len(covered) / len(mapping), "mapping": mapping}  # fmt: skip
        if result.status == "done":
            scores = ConfusionMatrix.from_counts(result.matrix).scores(absent)
            seen = [mapping[name] is not None for name in result.classes]
            entry.update(
                miou=scores.miou, macc=scores.macc, pixel_accuracy=scores.pixel_accuracy,
                classes={name: {"iou": iou, "acc": acc, "present": present, "seen": s}
                         for name, iou, acc, present, s in zip(result.classes, scores.iou, scores.acc, scores.present, seen)},
                seen_miou=mean([i for i, s in zip(scores.iou, seen) if s and i is not None]),
                unseen_miou=mean([i for i, s in zip(scores.iou, seen) if not s and i is not None]),
                resolution={group: {"images": result.group_images[group], "miou": ConfusionMatrix.from_counts(matrix).scores(absent).miou}
                            for group, matrix in sorted(result.groups.items())},
                panels=result.panels,
            )  # fmt: skip
        datasets[result.name] = entry
    done = [d for d in datasets.values() if d["status"] == "done"]
    report = {
        "benchmark": benchmark, "model": model_name, "train_taxonomy": train_taxonomy,
        "absent_class_rule": {"rule": absent, "meaning": ABSENT_RULES[absent]}, "inference": asdict(settings),
        "m_miou": mean([d["miou"] for d in done]), "m_macc": mean([d["macc"] for d in done]),
        "complete": len(done) == len(datasets), "datasets": datasets,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    overlap_figure(report, out / "overlap.png")
    return report


def inference_text(settings: dict) -> str:
    if settings["mode"] == "whole":
        return f"whole image, resized to one {settings['crop']}x{settings['crop']} view"
    return (f"sliding window (resized to {settings['resize']}x{settings['resize']}, {settings['crop']} crops at stride "
            f"{settings['stride']} and one global view, averaged)")  # fmt: skip


def markdown(report: dict) -> str:
    datasets = report["datasets"]
    names = list(datasets)
    lines = [f"# {report['benchmark']}: {report['model']}", ""]
    lines += [f"Rule for absent classes: {report['absent_class_rule']['meaning']} (`--absent {report['absent_class_rule']['rule']}`).",
              "mIoU / mACC average the classes that occur in each dataset's ground truth; m-mIoU / m-mACC average the "
              f"evaluated datasets. Inference: {inference_text(report['inference'])}.", ""]  # fmt: skip
    missing = {n: d for n, d in datasets.items() if d["status"] != "done"}
    if missing:
        lines += ["**Not evaluated** (the means leave them out):", ""]
        lines += [f"- {n}: {d['status']}: " + "; ".join(d["problems"][:3]) + (f" (+{len(d['problems']) - 3} more)" if len(d["problems"]) > 3 else "") for n, d in missing.items()]
        lines.append("")
    header = "| metric | " + " | ".join(names) + " | mean |"
    lines += ["## Results (Tables III-V layout)", "", header, "|" + "---|" * (len(names) + 2)]
    for metric, label, overall in (("miou", "mIoU", "m_miou"), ("macc", "mACC", "m_macc")):
        row = [percent(datasets[n].get(metric)) for n in names]
        lines.append(f"| {label} | " + " | ".join(row) + f" | {percent(report[overall])} |")
    lines += ["", "## Seen / unseen classes (Table XI)", "", "| dataset | seen classes | unseen classes | seen mIoU | unseen mIoU |", "|---|---|---|---|---|"]
    for name, d in datasets.items():
        mapping = d["overlap"]["mapping"]
        seen = [c for c, t in mapping.items() if t is not None]
        unseen = [c for c, t in mapping.items() if t is None]
        lines.append(f"| {name} | {len(seen)} | {len(unseen)}: {', '.join(unseen) or '-'} | {percent(d.get('seen_miou'))} | {percent(d.get('unseen_miou'))} |")
    lines += ["", f"## Category overlap with {report['train_taxonomy']} (Figure 5)", "",
              "| dataset | raw categories | covered | test-only | coverage |", "|---|---|---|---|---|"]  # fmt: skip
    for name, d in datasets.items():
        o = d["overlap"]
        lines.append(f"| {name} | {o['raw']} | {o['covered']} | {o['test_only']} | {100 * o['coverage']:.1f}% |")
    lines += ["", "Covered = the class name (or one of its parts, or its head noun) matches a training class's name or "
              "synonym; the mapping is in report.json. ![overlap](overlap.png)", ""]  # fmt: skip
    lines += ["## Resolution groups (Table XIII; low = native size below 800x800)", "", "| dataset | low: images | low mIoU | high: images | high mIoU |", "|---|---|---|---|---|"]
    for name, d in datasets.items():
        groups = d.get("resolution", {})
        low, high = groups.get("low", {}), groups.get("high", {})
        lines.append(f"| {name} | {low.get('images', 0)} | {percent(low.get('miou'))} | {high.get('images', 0)} | {percent(high.get('miou'))} |")
    lines += ["", "## Per-class IoU / ACC", ""]
    for name, d in datasets.items():
        if d["status"] != "done":
            continue
        lines += [f"### {name}", "", "| class | IoU | ACC | in ground truth | seen |", "|---|---|---|---|---|"]
        for cls, c in d["classes"].items():
            lines.append(f"| {cls} | {percent(c['iou'])} | {percent(c['acc'])} | {'yes' if c['present'] else 'no'} | {'yes' if c['seen'] else 'no'} |")
        lines += [""] + [f"![{name}]({panel})" for panel in d.get("panels", [])] + [""]
    return "\n".join(lines) + "\n"


def overlap_figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    covered = [report["datasets"][n]["overlap"]["covered"] for n in names]
    only = [report["datasets"][n]["overlap"]["test_only"] for n in names]
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 3.8))
    axis.bar(names, covered, label=f"covered by {report['train_taxonomy']}", color="#4477aa")
    axis.bar(names, only, bottom=covered, label="test-only", color="#ee6677")
    axis.set_ylabel("categories")
    axis.set_title(f"Test categories covered by {report['train_taxonomy']}", fontsize=10)
    axis.legend(fontsize=8)
    plt.setp(axis.get_xticklabels(), rotation=30, ha="right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
