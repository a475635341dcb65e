"""The evaluation report: the paper's tables (per-dataset mIoU/mACC and their means, Tables III-V, V1 means
without the training set), the seen/unseen split (Table XI: ours from the crosswalk, and the paper's where it
states one), the category overlap with the training taxonomy (Figure 5) and the resolution groups (Table XIII
by whole datasets; per image as an extra), as Markdown, JSON and PNG, with the paper's numbers beside ours
when a table matches."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from piseg.config import EvalConfig
from piseg.evaluation.evaluate import DatasetResult
from piseg.evaluation.metrics import ConfusionMatrix
from piseg.evaluation.paper import MODELS
from taxonomy.crosswalk import crosswalk
from taxonomy.loader import load_taxonomy
from taxonomy.matcher import Lemmatize

ABSENT_RULES = {
    "exclude": "classes absent from a dataset's ground truth are left out of its mIoU and mACC",
    "include": "classes absent from a dataset's ground truth count with IoU 0 in mIoU when they were predicted",
}


UNITS = (
    "**Units: every score in this report is a percentage (0-100)**: mIoU, mACC, m-mIoU, m-mACC, per-class IoU "
    "and ACC and the paper's numbers, as the column headers' (%) says; Δ columns are differences in percentage "
    "points (pp). report.json holds the same scores as fractions from 0 to 1 (64.12 % here is 0.6412 there)."
)


def percent(value: float | None) -> str:
    """A score stored as a fraction (0.6412) as a table cell shows it, under a "(%)" header: "64.12"; "-"
    when there is none."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def percent_text(value: float | None) -> str:
    """A score in running text, where no header gives the unit: "64.12 %". Why the sign: a bare "0.64"
    reads as a fraction, i.e. 64 %, when it means 0.64 %."""
    shown = percent(value)
    return shown if shown == "-" else f"{shown} %"


def mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


_CROSSWALKS: dict[tuple, dict[str, str | None]] = {}


def cached_crosswalk(source: str, target: str, lemmatize: Lemmatize) -> dict[str, str | None]:
    """The crosswalk of a test vocabulary to the training one, computed once per process (lemmatising every
    class name is most of a report's time, and `piseg reproduce` writes many reports over the same vocabularies)."""
    source_taxonomy, target_taxonomy = load_taxonomy(source), load_taxonomy(target)
    key = (source, source_taxonomy.version, target, target_taxonomy.version, lemmatize)
    if key not in _CROSSWALKS:
        _CROSSWALKS[key] = crosswalk(source_taxonomy, target_taxonomy, lemmatize)
    return dict(_CROSSWALKS[key])


def build_report(
    results: list[DatasetResult],
    benchmark: str,
    train_taxonomy: str,
    model_name: str,
    absent: str,
    lemmatize: Lemmatize,
    out: Path,
    definitions: dict,
    settings: EvalConfig,
    paper: dict | None = None,
) -> dict:
    """Write OUT/report.md, OUT/report.json and OUT/overlap.png; returns the JSON content. `paper`
    (`piseg.evaluation.paper.paper_comparison`) puts the paper's numbers beside ours."""
    protocol = (definitions.get("benchmarks") or {}).get(benchmark) or {}
    datasets = {}
    for result in results:
        entry: dict = {"status": result.status, "problems": result.problems, "images": result.images}
        definition = definitions["datasets"][result.name]
        mapping = cached_crosswalk(definition["taxonomy"], train_taxonomy, lemmatize)
        covered = [name for name, target in mapping.items() if target is not None]
        entry["overlap"] = {
            "raw": len(mapping),
            "covered": len(covered),
            "test_only": len(mapping) - len(covered),
            "coverage": len(covered) / len(mapping),
            "mapping": mapping,
        }
        if result.status == "done":
            scores = ConfusionMatrix.from_counts(result.matrix).scores(absent)
            seen = [mapping[name] is not None for name in result.classes]
            entry.update(
                miou=scores.miou,
                macc=scores.macc,
                pixel_accuracy=scores.pixel_accuracy,
                classes={
                    name: {"iou": iou, "acc": acc, "present": present, "seen": s}
                    for name, iou, acc, present, s in zip(result.classes, scores.iou, scores.acc, scores.present, seen)
                },
                seen_miou=mean([i for i, s in zip(scores.iou, seen) if s and i is not None]),
                unseen_miou=mean([i for i, s in zip(scores.iou, seen) if not s and i is not None]),
                resolution={
                    group: {
                        "images": result.group_images[group],
                        "miou": ConfusionMatrix.from_counts(matrix).scores(absent).miou,
                    }
                    for group, matrix in sorted(result.groups.items())
                },
                panels=result.panels,
            )
            if "paper_split" in definition:
                entry["paper_split"] = stated_split(entry["classes"], definition["paper_split"])
        if paper and paper["benchmark"]:
            entry["paper"] = paper["benchmark"]["datasets"].get(result.name)
        datasets[result.name] = entry
    done = {name: d for name, d in datasets.items() if d["status"] == "done"}
    excluded = protocol.get("train_dataset")
    counted = [d for name, d in done.items() if name != excluded]
    report = {
        "benchmark": benchmark,
        "model": model_name,
        "train_taxonomy": train_taxonomy,
        "absent_class_rule": {"rule": absent, "meaning": ABSENT_RULES[absent]},
        "inference": asdict(settings),
        "m_miou": mean([d["miou"] for d in counted]),
        "m_macc": mean([d["macc"] for d in counted]),
        "means_exclude": excluded,
        "complete": len(done) == len(datasets),
        "datasets": datasets,
        "benchmark_datasets": protocol.get("datasets") or list(datasets),
    }
    if excluded:  # Table III averages without the training set; the mean with it, for reference
        report["m_miou_with_training_set"] = mean([d["miou"] for d in done.values()])
        report["m_macc_with_training_set"] = mean([d["macc"] for d in done.values()])
    if "resolution_groups" in protocol:
        report["resolution_groups"] = {
            group: {
                "datasets": names,
                "evaluated": [n for n in names if n in done],
                "m_miou": mean([done[n]["miou"] for n in names if n in done]),
                "m_macc": mean([done[n]["macc"] for n in names if n in done]),
            }
            for group, names in protocol["resolution_groups"].items()
        }
    report["paper"] = paper
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    overlap_figure(report, out / "overlap.png")
    return report


def stated_split(classes: dict[str, dict], split: dict[str, list[str]]) -> dict:
    """A seen/unseen split as a paper states it (Table XI; checked by `piseg.evaluation.benchmarks.dataset_spec`):
    mIoU/mACC over its seen, unseen and all listed classes; classes it does not list (UAVid's background) are in
    none."""
    groups = {"overall": split["seen"] + split["unseen"], "seen": split["seen"], "unseen": split["unseen"]}
    return {
        name: {"miou": mean([classes[c]["iou"] for c in members]), "macc": mean([classes[c]["acc"] for c in members])}
        for name, members in groups.items()
    } | {"classes": split}


def inference_text(settings: dict) -> str:
    if settings["mode"] == "whole":
        pad = settings.get("whole_pad", 0)
        return f"whole image, resized to one {settings['crop']}x{settings['crop']} view" + (
            f" after padding to a multiple of {pad}" if pad else ""
        )
    return (
        f"sliding window (resized to {settings['resize']}x{settings['resize']}, {settings['crop']} crops at stride "
        f"{settings['stride']} and one global view, averaged)"
    )


def signed(ours: float | None, theirs: float | None) -> str:
    """OURS - THEIRS (fractions) in percentage points, for a "(pp)" column: "+1.20"; "-" when either is missing."""
    return "-" if ours is None or theirs is None or math.isnan(ours) else f"{100 * (ours - theirs):+.2f}"


def paper_cells(ours: dict, paper: dict | None) -> list[str]:
    """Paper Pi-Seg and CAT-Seg mIoU / mACC, and our mIoU's delta to each."""
    paper = paper or {}
    cells = []
    for model in MODELS:
        theirs = paper.get(model) or {}
        cells += [percent(theirs.get("miou")), percent(theirs.get("macc"))]
    return cells + [signed(ours.get("miou"), (paper.get(model) or {}).get("miou")) for model in MODELS]


PAPER_HEADER = (
    " paper Pi-Seg mIoU (%) | paper Pi-Seg mACC (%) | paper CAT-Seg mIoU (%) | paper CAT-Seg mACC (%) |"
    " Δ mIoU vs Pi-Seg (pp) | Δ mIoU vs CAT-Seg (pp) |"
)


def markdown(report: dict) -> str:
    datasets, paper = report["datasets"], report.get("paper")
    compared = paper["benchmark"] if paper else None
    lines = [f"# {report['benchmark']}: {report['model']}", "", UNITS, ""]
    lines += [
        f"Rule for absent classes: {report['absent_class_rule']['meaning']} "
        f"(`--absent {report['absent_class_rule']['rule']}`).",
        "mIoU / mACC average the classes that occur in each dataset's ground truth; m-mIoU / m-mACC average the "
        f"evaluated datasets. Inference: {inference_text(report['inference'])}.",
        "",
    ]
    if report.get("means_exclude"):
        lines += [
            f"As in the paper's Table III, the means leave out the training set ({report['means_exclude']}); with it: "
            f"m-mIoU {percent_text(report['m_miou_with_training_set'])}, "
            f"m-mACC {percent_text(report['m_macc_with_training_set'])}.",
            "",
        ]
    if compared:
        lines += [
            f"Paper columns: Table {compared['table']} of {compared['source']}, {compared['backbone']} (the paper's "
            "numbers as printed; Δ = ours − paper, in percentage points).",
            "",
        ]
    missing = {n: d for n, d in datasets.items() if d["status"] != "done"}
    if missing:
        lines += ["**Not evaluated** (the means leave them out):", ""]
        lines += [
            f"- {n}: {d['status']}: "
            + "; ".join(d["problems"][:3])
            + (f" (+{len(d['problems']) - 3} more)" if len(d["problems"]) > 3 else "")
            for n, d in missing.items()
        ]
        lines.append("")
    header, rule = "| dataset | mIoU (%) | mACC (%) |", "|---|---|---|"
    if compared:
        header, rule = header + PAPER_HEADER, rule + "---|" * 6
    lines += ["## Results (Tables III-V layout)", "", header, rule]
    for name, d in datasets.items():
        row = [name, percent(d.get("miou")), percent(d.get("macc"))]
        lines.append("| " + " | ".join(row + (paper_cells(d, d.get("paper")) if compared else [])) + " |")
    label = f"mean w/o {report['means_exclude']}" if report.get("means_exclude") else "mean"
    averaged = [n for n in report["benchmark_datasets"] if n != report.get("means_exclude")]
    counted = sum(datasets.get(n, {}).get("status") == "done" for n in averaged)
    if counted < len(averaged):  # a partial mean (missing files, --datasets) is not the paper's mean
        label += f" ({counted} of {len(averaged)} datasets)"
    ours = {"miou": report["m_miou"], "macc": report["m_macc"]}
    row = [f"**{label}**", percent(report["m_miou"]), percent(report["m_macc"])]
    lines.append("| " + " | ".join(row + (paper_cells(ours, compared["mean"]) if compared else [])) + " |")
    lines += [
        "",
        "## Seen / unseen classes (Table XI)",
        "",
        "Automatic split: a class is seen when the crosswalk maps it to a class of the training taxonomy.",
        "",
        "| dataset | seen classes | unseen classes | seen mIoU (%) | unseen mIoU (%) |",
        "|---|---|---|---|---|",
    ]
    for name, d in datasets.items():
        mapping = d["overlap"]["mapping"]
        seen = [c for c, t in mapping.items() if t is not None]
        unseen = [c for c, t in mapping.items() if t is None]
        lines.append(
            f"| {name} | {len(seen)} | {len(unseen)}: {', '.join(unseen) or '-'} | "
            f"{percent(d.get('seen_miou'))} | {percent(d.get('unseen_miou'))} |"
        )
    for name, d in datasets.items():
        if "paper_split" not in d:
            continue
        split = d["paper_split"]
        theirs = (paper or {}).get("uavid") if name == "uavid" else None
        lines += [
            "",
            f"{name}, the split the paper states (seen: {', '.join(split['classes']['seen'])}; unseen: "
            f"{', '.join(split['classes']['unseen'])}; overall: those six):",
            "",
            "| group | mIoU (%) | mACC (%) |" + (PAPER_HEADER if theirs else ""),
            "|---|---|---|" + ("---|" * 6 if theirs else ""),
        ]
        for group in ("overall", "seen", "unseen"):
            cells = [group, percent(split[group]["miou"]), percent(split[group]["macc"])]
            if theirs:
                cells += paper_cells(split[group], {model: theirs[model][group] for model in theirs})
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Category overlap with {report['train_taxonomy']} (Figure 5)",
        "",
        "| dataset | raw categories | covered | test-only | coverage (covered / raw, %) |",
        "|---|---|---|---|---|",
    ]
    for name, d in datasets.items():
        o = d["overlap"]
        lines.append(f"| {name} | {o['raw']} | {o['covered']} | {o['test_only']} | {100 * o['coverage']:.1f} |")
    lines += [
        "",
        "Covered = the class name (or one of its parts, or its head noun) matches a training class's name or "
        "synonym; the mapping is in report.json. ![overlap](overlap.png)",
        "",
    ]
    if "resolution_groups" in report:
        theirs = (paper or {}).get("resolution")
        lines += [
            "## Resolution groups (Table XIII: whole datasets by native size; m-mIoU = mean over the group's datasets)",
            "",
            "| group | datasets (evaluated) | m-mIoU (%) | m-mACC (%) |" + (PAPER_HEADER if theirs else ""),
            "|---|---|---|---|" + ("---|" * 6 if theirs else ""),
        ]
        for group, g in report["resolution_groups"].items():
            cells = [
                group,
                f"{', '.join(g['evaluated'])} ({len(g['evaluated'])} of {len(g['datasets'])})",
                percent(g["m_miou"]),
                percent(g["m_macc"]),
            ]
            if theirs:
                cells += paper_cells({"miou": g["m_miou"]}, {model: theirs[model].get(group) for model in theirs})
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Resolution per image (extra: each image grouped by its own size; low = below 800x800)",
        "",
        "| dataset | low: images | low mIoU (%) | high: images | high mIoU (%) |",
        "|---|---|---|---|---|",
    ]
    for name, d in datasets.items():
        groups = d.get("resolution", {})
        low, high = groups.get("low", {}), groups.get("high", {})
        lines.append(
            f"| {name} | {low.get('images', 0)} | {percent(low.get('miou'))} | "
            f"{high.get('images', 0)} | {percent(high.get('miou'))} |"
        )
    lines += [
        "",
        "## Per-class IoU and ACC",
        "",
        "One row per class of the dataset, over all its labelled pixels: IoU = TP / (TP + FP + FN), ACC = TP / "
        "(TP + FN) (the class's recall), both in %. '-' = not scored: the class does not occur in the dataset's "
        "ground truth, so it has no ACC, and the absent-class rule above leaves its IoU out (`--absent include` "
        "scores a predicted one 0). 'Seen in training': the crosswalk maps the class to a class of the training "
        "taxonomy.",
        "",
    ]
    if any(d.get("panels") for d in datasets.values()):
        lines += [
            "Panels: image | ground truth | prediction, with a legend of the classes either mask shows; black = "
            "not labelled (255, not scored).",
            "",
        ]
    for name, d in datasets.items():
        if d["status"] != "done":
            continue
        lines += [
            f"### {name}",
            "",
            "| class | IoU (%) | ACC = recall (%) | occurs in ground truth | seen in training |",
            "|---|---|---|---|---|",
        ]
        for cls, c in d["classes"].items():
            lines.append(
                f"| {cls} | {percent(c['iou'])} | {percent(c['acc'])} | "
                f"{'yes' if c['present'] else 'no'} | {'yes' if c['seen'] else 'no'} |"
            )
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
