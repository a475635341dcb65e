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
    max_images: int | None = None,
    backbone: str | None = None,
    precision: dict | None = None,
) -> dict:
    """Write OUT/report.md, OUT/report.json and OUT/overlap.png; returns the JSON content. `paper`
    (`piseg.evaluation.paper.paper_comparison`) puts the paper's numbers beside ours. `max_images` (the run's
    cap per dataset), `backbone` (the model that ran, whatever paper backbone it is compared with) and
    `precision` (`released_precision`) are recorded so a report says what produced its numbers."""
    protocol = (definitions.get("benchmarks") or {}).get(benchmark) or {}
    datasets = {}
    for result in results:
        entry: dict = {
            "status": result.status,
            "problems": result.problems,
            "images": result.images,
            "available": result.available,
            "subset": result.status == "done" and is_subset(result, max_images),
        }
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
        "backbone": backbone,
        "paper_backbone": paper["backbone"] if paper else None,
        "max_images": max_images,
        "precision": precision,
        "train_taxonomy": train_taxonomy,
        "absent_class_rule": {"rule": absent, "meaning": ABSENT_RULES[absent]},
        "inference": asdict(settings),
        "m_miou": mean([d["miou"] for d in counted]),
        "m_macc": mean([d["macc"] for d in counted]),
        "means_on_subsets": any(d["subset"] for d in counted),
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
                "on_subsets": any(done[n]["subset"] for n in names if n in done),
            }
            for group, names in protocol["resolution_groups"].items()
        }
    report["paper"] = paper
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    overlap_figure(report, out / "overlap.png")
    return report


def is_subset(result: DatasetResult, max_images: int | None) -> bool:
    """Whether a dataset's scores come from only part of it (`--max-images`). A result saved before the dataset
    size was recorded counts as a subset under a cap: unknown is not whole."""
    return max_images is not None and (result.available is None or result.images < result.available)


SUBSET_MARK = "†"
PAPER_MARK = "‡"


def subset_lines(report: dict) -> list[str]:
    """The warning that opens a report of a capped run: which datasets were cut, and what † means."""
    if report.get("max_images") is None:
        return []
    cut = [name for name, d in report["datasets"].items() if d.get("subset")]
    return [
        f"**Subset run (`--max-images {report['max_images']}`): "
        + (
            f"{len(cut)} of {len(report['datasets'])} datasets were cut to their first {report['max_images']} "
            f"images ({', '.join(cut)}).** Scores and means marked {SUBSET_MARK} come from those subsets and are "
            "not comparable with the paper's, which use every image."
            if cut
            else f"no dataset has more than {report['max_images']} images, so every score uses whole datasets.**"
        ),
        "",
    ]


def marked(label: str, subset: bool) -> str:
    """A row label with the subset mark when its scores come from cut datasets."""
    return f"{label} {SUBSET_MARK}" if subset else label


def flagged_models(paper: dict | None, row: str) -> set[str]:
    """The models whose printed paper numbers in ROW ("mean", "low", ...) disagree with the paper's own columns."""
    return {note["model"] for note in (paper or {}).get("inconsistencies") or [] if note["row"] == row}


def inconsistency_lines(paper: dict | None, rows: tuple[str, ...]) -> list[str]:
    """Footnotes for the paper's self-disagreements in ROWS, under the table whose cells carry the mark."""
    notes = [note for note in (paper or {}).get("inconsistencies") or [] if note["row"] in rows]
    return [f"{PAPER_MARK} The paper disagrees with itself: {note['text']}." for note in notes] + (
        [""] if notes else []
    )


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


def paper_cells(ours: dict, paper: dict | None, flagged: set[str] = frozenset()) -> list[str]:
    """Paper Pi-Seg and CAT-Seg mIoU / mACC, and our mIoU's delta to each; a FLAGGED model's numbers carry the
    mark of a footnote saying the paper's own columns give another value."""
    paper = paper or {}
    cells = []
    for model in MODELS:
        theirs = paper.get(model) or {}
        mark = f" {PAPER_MARK}" if model in flagged else ""
        cells += [percent(theirs.get("miou")) + mark, percent(theirs.get("macc")) + mark]
    return cells + [signed(ours.get("miou"), (paper.get(model) or {}).get("miou")) for model in MODELS]


PAPER_HEADER = (
    " paper Pi-Seg mIoU (%) | paper Pi-Seg mACC (%) | paper CAT-Seg mIoU (%) | paper CAT-Seg mACC (%) |"
    " Δ mIoU vs Pi-Seg (pp) | Δ mIoU vs CAT-Seg (pp) |"
)


def markdown(report: dict) -> str:
    datasets, paper = report["datasets"], report.get("paper")
    compared = paper["benchmark"] if paper else None
    lines = [f"# {report['benchmark']}: {report['model']}", "", *subset_lines(report), UNITS, ""]
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
            "numbers as printed; Δ = ours − paper, in percentage points)"
            + (f"; the model evaluated here is {report['backbone']}." if report.get("backbone") else "."),
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
        row = [marked(name, d.get("subset", False)), percent(d.get("miou")), percent(d.get("macc"))]
        lines.append("| " + " | ".join(row + (paper_cells(d, d.get("paper")) if compared else [])) + " |")
    label = f"mean w/o {report['means_exclude']}" if report.get("means_exclude") else "mean"
    averaged = [n for n in report["benchmark_datasets"] if n != report.get("means_exclude")]
    counted = sum(datasets.get(n, {}).get("status") == "done" for n in averaged)
    if counted < len(averaged):  # a partial mean (missing files, --datasets) is not the paper's mean
        label += f" ({counted} of {len(averaged)} datasets)"
    ours = {"miou": report["m_miou"], "macc": report["m_macc"]}
    row = [
        marked(f"**{label}**", report.get("means_on_subsets", False)),
        percent(report["m_miou"]),
        percent(report["m_macc"]),
    ]
    cells = paper_cells(ours, compared["mean"], flagged_models(paper, "mean")) if compared else []
    lines.append("| " + " | ".join(row + cells) + " |")
    lines += ["", *inconsistency_lines(paper, ("mean",))] if flagged_models(paper, "mean") else []
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
            f"| {marked(name, d.get('subset', False))} | {len(seen)} | {len(unseen)}: {', '.join(unseen) or '-'} | "
            f"{percent(d.get('seen_miou'))} | {percent(d.get('unseen_miou'))} |"
        )
    for name, d in datasets.items():
        if "paper_split" not in d:
            continue
        split = d["paper_split"]
        theirs = (paper or {}).get("uavid") if name == "uavid" else None
        elsewhere = (
            "; the paper's Table XI numbers belong to models trained on OVRSIS95K, so none are shown beside this run"
            if paper and not theirs
            else ""
        )
        lines += [
            "",
            f"{marked(name, d.get('subset', False))}, the split the paper states (seen: "
            f"{', '.join(split['classes']['seen'])}; unseen: {', '.join(split['classes']['unseen'])}; "
            f"overall: those six){elsewhere}:",
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
                marked(group, g.get("on_subsets", False)),
                f"{', '.join(g['evaluated'])} ({len(g['evaluated'])} of {len(g['datasets'])})",
                percent(g["m_miou"]),
                percent(g["m_macc"]),
            ]
            if theirs:
                by_model = {model: theirs[model].get(group) for model in theirs}
                cells += paper_cells({"miou": g["m_miou"]}, by_model, flagged_models(paper, group))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if theirs:
            lines += inconsistency_lines(paper, tuple(report["resolution_groups"]))
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
            f"| {marked(name, d.get('subset', False))} | {low.get('images', 0)} | {percent(low.get('miou'))} | "
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
            f"### {marked(name, d['subset'])}",
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
