"""`piseg reproduce`: the paper's tables from the authors' released weights, in one resumable command.

Every released `model_final.pth` under the weights folder is one run. Its path says what it was trained on
(the released configs and weight folders name the training set): a path naming DLRSD or iSAID is a V1 model
(Table III, on that benchmark), any other an OVRSIS95K model (Table IV with UAVid's seen/unseen split, Table XI,
and the resolution groups, Table XIII, then the downstream datasets, Table V). A `--plan` YAML
(`{relative path: {taxonomy, benchmarks}}`) replaces that rule for folders laid out otherwise.

Each run is converted once (`convert-released`) and each benchmark evaluated with `piseg eval`'s machinery,
which keeps finished datasets: a rerun converts and evaluates only what is missing. One report,
OUT/report.md, puts every mean beside the paper's and links each benchmark's full report."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.categories import spacy_lemmatize
from piseg.checkpoint import load_model
from piseg.config import PiSegConfig
from piseg.evaluation.benchmarks import load_benchmark
from piseg.evaluation.evaluate import checkpoint_identity, evaluate_benchmark, released_precision, run_identity
from piseg.evaluation.paper import BACKBONES, MODELS, paper_comparison
from piseg.evaluation.report import (
    PAPER_MARK,
    SUBSET_MARK,
    UNITS,
    build_report,
    flagged_models,
    inconsistency_lines,
    marked,
    percent,
    signed,
)
from piseg.released.convert import convert_released
from piseg.yaml_files import read_yaml
from taxonomy.loader import load_taxonomy

V1_TRAINING_SETS = {"dlrsd": "ovrsisbench-v1-dlrsd", "isaid": "ovrsisbench-v1-isaid"}
V2_BENCHMARKS = ["ovrsisbench-v2", "downstream"]
INFERENCE_CHOICES = ("sliding", "whole", "both")


def inference_modes(run: Run, inference: str | None) -> list[str]:
    """The inference modes a run is evaluated with: INFERENCE ("both" = sliding window, then whole image), or by
    default what the released scripts run: both for a V1 model (`eval_v1_slide.sh` and `eval_v1.sh`), the
    sliding window for an OVRSIS95K model."""
    if inference is None:
        inference = "both" if run.taxonomy in V1_TRAINING_SETS else "sliding"
    return ["sliding", "whole"] if inference == "both" else [inference]


def benchmark_key(name: str, mode: str) -> str:
    """A benchmark's key in report.json and its folder: the name for the sliding window, NAME-whole otherwise."""
    return name if mode == "sliding" else f"{name}-{mode}"


class PlanError(ValueError):
    """A weights folder or plan that names no run, or a run that cannot be set up."""


@dataclass
class Run:
    name: str  # the weights' path under the folder, made a file name
    weights: Path
    taxonomy: str
    benchmarks: list[str]


def plan_runs(weights: Path, plan: Path | None = None) -> list[Run]:
    """The runs to reproduce: every .pth under `weights`, by the path rule or by `plan`."""
    if plan is not None:
        entries = read_yaml(plan, "plan", PlanError)
        if not isinstance(entries, dict) or not entries:
            raise PlanError(f"{plan}: expected {{weights path: {{taxonomy, benchmarks}}}}, got {entries!r:.60}")
        runs = [plan_entry(plan, weights, path, entry) for path, entry in entries.items()]
        missing = [str(r.weights) for r in runs if not r.weights.is_file()]
        if missing:
            raise PlanError(f"{plan}: weights not found: {', '.join(missing)}")
        return runs
    files = sorted(weights.rglob("*.pth"))
    if not files:
        raise PlanError(f"{weights}: no released weights (*.pth) found")
    runs = []
    for path in files:
        relative = path.relative_to(weights)
        lowered = str(relative).lower()
        trained = next((name for name in V1_TRAINING_SETS if name in lowered), None)
        runs.append(
            Run(
                run_name(relative),
                path,
                trained or "ovrsis95k",
                [V1_TRAINING_SETS[trained]] if trained else V2_BENCHMARKS,
            )
        )
    return runs


def plan_entry(plan: Path, weights: Path, path: object, entry: object) -> Run:
    """One run of a plan: PATH (a weights file under WEIGHTS) with {taxonomy: NAME, benchmarks: [NAME, ...]};
    any other shape is refused naming the plan and the entry, before anything is converted."""
    if not isinstance(path, str):
        raise PlanError(f"{plan}: {path!r}: each key must be a weights path under {weights}")
    if not isinstance(entry, dict) or set(entry) != {"taxonomy", "benchmarks"}:
        raise PlanError(f"{plan}: {path!r}: each entry needs taxonomy and benchmarks, and nothing else")
    taxonomy, benchmarks = entry["taxonomy"], entry["benchmarks"]
    if not isinstance(taxonomy, str):
        raise PlanError(f"{plan}: {path!r}: taxonomy must be a taxonomy name or YAML path, got {taxonomy!r}")
    if not (isinstance(benchmarks, list) and benchmarks and all(isinstance(name, str) for name in benchmarks)):
        raise PlanError(f"{plan}: {path!r}: benchmarks must be a list of benchmark names, got {benchmarks!r}")
    return Run(run_name(Path(path)), weights / path, taxonomy, benchmarks)


def run_name(relative: Path) -> str:
    parts = relative.with_suffix("").parts
    parts = parts[:-1] if len(parts) > 1 and parts[-1] == "model_final" else parts
    return "-".join(parts).replace(" ", "_")


def reproduce(
    runs: list[Run],
    data_root: Path,
    out: Path,
    definitions: dict,
    base: PiSegConfig | None,
    tokenizer: str | None,
    trust_pickle: bool,
    paper_backbone: str | None,
    device: torch.device,
    max_images: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    inference: str | None = None,
) -> dict:
    """Convert, evaluate and compare every run; writes OUT/report.md and OUT/report.json and returns the latter.
    INFERENCE: one of INFERENCE_CHOICES, or None for the released scripts' modes (`inference_modes`)."""
    summary = {
        "data_root": str(data_root),
        "max_images": max_images,
        "precision": released_precision(device),
        "runs": {},
    }
    for run in runs:
        checkpoint = out / "checkpoints" / f"{run.name}.pt"
        if not checkpoint.is_file():  # converted once; a rerun reuses it
            taxonomy = load_taxonomy(run.taxonomy)
            convert_released(run.weights, checkpoint, taxonomy.names, taxonomy.version, base, tokenizer, trust_pickle)
        model, config, _ = load_model(checkpoint, device)
        compared_with = paper_backbone or config.model.backbone
        reports = {}
        for name, mode in ((n, m) for n in run.benchmarks for m in inference_modes(run, inference)):
            settings = dataclasses.replace(config.eval, mode=mode)
            identity = run_identity(checkpoint_identity(checkpoint), settings, max_images)
            benchmark = load_benchmark(name, definitions)
            folder = out / run.name / benchmark_key(name, mode)
            results = evaluate_benchmark(
                model, benchmark, data_root, folder, settings, identity, max_images, 0, progress
            )
            report = build_report(
                results,
                name,
                benchmark.train_taxonomy,
                f"{run.name} (released weights, converted)",
                "exclude",
                spacy_lemmatize,
                folder,
                definitions,
                settings,
                paper_comparison(name, compared_with),
                max_images=max_images,
                backbone=config.model.backbone,
                precision=summary["precision"],
            )
            kept = ("m_miou", "m_macc", "means_on_subsets", "means_exclude", "complete", "paper", "resolution_groups")
            reports[benchmark_key(name, mode)] = {key: report[key] for key in kept if key in report} | {
                "benchmark": name,
                "inference": mode,
                "report": str(folder.relative_to(out) / "report.md"),
                "datasets": {n: d.get("miou") for n, d in report["datasets"].items()},
                "uavid_split": report["datasets"].get("uavid", {}).get("paper_split"),
                "uavid_subset": report["datasets"].get("uavid", {}).get("subset", False),
            }
        summary["runs"][run.name] = {
            "weights": str(run.weights),
            "taxonomy": run.taxonomy,
            "backbone": config.model.backbone,  # what ran
            "paper_backbone": BACKBONES.get(compared_with),  # the paper's column it is compared with, if any
            "benchmarks": reports,
        }
        del model
    summary["complete"] = all(b["complete"] for r in summary["runs"].values() for b in r["benchmarks"].values())
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary))
    return summary


def subset_warning(summary: dict) -> list[str]:
    """The opening warning of a capped run (`--max-images`): its means are not the paper's protocol."""
    cap = summary.get("max_images")
    if cap is None:
        return []
    return [
        f"**Subset run (`--max-images {cap}`): at most {cap} images per dataset were evaluated.** Means marked "
        f"{SUBSET_MARK} average datasets cut to those images and are not comparable with the paper's, which use "
        "every image; each benchmark's report names the datasets cut.",
        "",
    ]


def markdown(summary: dict) -> str:
    lines = [
        "# The paper's tables from the released weights",
        "",
        *subset_warning(summary),
        UNITS,
        "",
        "Each row: our mean over the evaluated datasets beside the paper's (Pi-Seg and CAT-Seg, the same backbone; "
        "Δ = ours − paper). The full report of each benchmark (per dataset, per class) is linked.",
        "",
        "| run | benchmark (table) | inference | datasets | m-mIoU (%) | m-mACC (%) "
        "| paper Pi-Seg m-mIoU (%) | paper CAT-Seg m-mIoU (%) | Δ vs Pi-Seg (pp) | Δ vs CAT-Seg (pp) | report |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    footnotes: dict[str, None] = {}  # the paper's self-disagreements behind a ‡, each once, in order
    for run_name, run in summary["runs"].items():
        for bench in run["benchmarks"].values():
            paper = bench.get("paper")
            compared = (paper or {}).get("benchmark") or {}
            mean = compared.get("mean") or {}
            flagged = flagged_models(paper, "mean")
            pi, cat = (
                (percent((mean.get(m) or {}).get("miou")) + (f" {PAPER_MARK}" if m in flagged else "")) for m in MODELS
            )
            footnotes |= dict.fromkeys(inconsistency_lines(paper, ("mean",))[:-1])
            evaluated = sum(v is not None for v in bench["datasets"].values())
            label = f"{bench['benchmark']} ({compared.get('table', '-')}" + (
                f", w/o {bench['means_exclude']})" if bench.get("means_exclude") else ")"
            )
            theirs = [(mean.get(m) or {}).get("miou") for m in MODELS]
            lines.append(
                f"| {run_name} | {label} | {bench['inference']} | {evaluated} of {len(bench['datasets'])} | "
                f"{marked(percent(bench['m_miou']), bench['means_on_subsets'])} | "
                f"{marked(percent(bench['m_macc']), bench['means_on_subsets'])} | {pi} | {cat} | "
                f"{signed(bench['m_miou'], theirs[0])} | {signed(bench['m_miou'], theirs[1])} | "
                f"[report]({bench['report']}) |"
            )
    lines += ["", *footnotes] if footnotes else []
    for run_name, run in summary["runs"].items():
        bench = run["benchmarks"].get("ovrsisbench-v2")
        if not bench:
            continue
        paper = bench.get("paper") or {}
        if bench.get("uavid_split"):
            theirs = paper.get("uavid") or {}
            lines += [
                "",
                f"## Table XI: UAVid seen / unseen ({run_name}, the paper's split)",
                "",
                "| group | mIoU (%) | mACC (%) | paper Pi-Seg mIoU (%) | paper CAT-Seg mIoU (%) |",
                "|---|---|---|---|---|",
            ]
            for group in ("overall", "seen", "unseen"):
                ours = bench["uavid_split"][group]
                lines.append(
                    f"| {marked(group, bench['uavid_subset'])} | {percent(ours['miou'])} | {percent(ours['macc'])} | "
                    f"{percent((theirs.get('Pi-Seg') or {}).get(group, {}).get('miou'))} | "
                    f"{percent((theirs.get('CAT-Seg') or {}).get(group, {}).get('miou'))} |"
                )
        if bench.get("resolution_groups"):
            theirs = paper.get("resolution") or {}
            lines += [
                "",
                f"## Table XIII: resolution groups ({run_name}, whole datasets)",
                "",
                "| group | datasets evaluated | m-mIoU (%) | paper Pi-Seg m-mIoU (%) | paper CAT-Seg m-mIoU (%) |",
                "|---|---|---|---|---|",
            ]
            for group, g in bench["resolution_groups"].items():
                flagged = flagged_models(paper, group) if theirs else set()
                pi, cat = (
                    percent(((theirs.get(m) or {}).get(group) or {}).get("miou"))
                    + (f" {PAPER_MARK}" if m in flagged else "")
                    for m in MODELS
                )
                lines.append(
                    f"| {marked(group, g['on_subsets'])} | {len(g['evaluated'])} of {len(g['datasets'])} | "
                    f"{percent(g['m_miou'])} | {pi} | {cat} |"
                )
            if theirs:
                lines += ["", *inconsistency_lines(paper, tuple(bench["resolution_groups"]))]
    return "\n".join(lines) + "\n"
