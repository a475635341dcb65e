"""`piseg reproduce`: the paper's tables from the authors' released weights, in one resumable command.

Every released `model_final.pth` under the weights folder is one run. Its path says what it was trained on
(the released configs and weight folders name the training set): a path naming DLRSD or iSAID is a V1 model
(Table III, on that benchmark), any other an OVRSIS95K model (Table IV with UAVid's seen/unseen split, Table XI,
and the resolution groups, Table XIII, then the downstream datasets, Table V). A `--plan` YAML
(`{relative path: {taxonomy, benchmarks}}`) replaces that rule for folders laid out otherwise.

Each run is converted once (`convert-released`) and each benchmark evaluated with `piseg eval`'s machinery,
which keeps finished datasets: a rerun converts and evaluates only what is missing. One report,
OUT/report.md, puts every mean beside the paper's and links each benchmark's full report.

With `--train-shards` the model is trained here first (`plan_training`, `train_here`): the same trainer and recipe
as `piseg train`, on shards from `ovrsis shards import` (the released OVRSIS95K, DLRSD or iSAID) or a build, into
OUT/train/ (a rerun with OUT/train/checkpoints/final.pt present does not train again; an interrupted one goes on
from last.pt). The shards' taxonomy picks the benchmarks as the path rule does for released weights, and the
report says the model was trained here (iterations, the shards' manifest sha256)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ovrsis.errors import PlanError
from pipeline.dataset.shards import ShardError, read_manifest
from pipeline.files.atomic import file_sha256
from pipeline.files.layout import manifest_file
from pipeline.stages.categories import spacy_lemmatize
from piseg.checkpoint import configuration_differences, load_model, read_checkpoint
from piseg.config import PiSegConfig, TrainConfig
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
# the paper's training sets and the benchmarks it reports for a model trained on each (the path rule's choice)
TRAINING_BENCHMARKS = {"ovrsis95k": V2_BENCHMARKS, **{name: [bench] for name, bench in V1_TRAINING_SETS.items()}}
TRAIN_FOLDER = "train"  # OUT/train/: checkpoints/, log.jsonl, trained.json of a model trained here
TRAINED_FILE = "trained.json"


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


@dataclass
class Run:
    name: str  # the weights' path under the folder, made a file name
    weights: Path
    taxonomy: str
    benchmarks: list[str]
    trained: dict | None = None  # a model trained here: shards, manifest_sha256, iters, backbone (else released)


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


def shards_training_set(shards: Path) -> tuple[str, dict]:
    """Which of the paper's training sets (TRAINING_BENCHMARKS) the shards' taxonomy is, by version or class
    names, with their manifest; PlanError for a folder without a readable manifest or another taxonomy."""
    try:
        manifest = read_manifest(shards)
    except ShardError as error:
        raise PlanError(f"--train-shards {error}") from None
    taxonomy = manifest.get("taxonomy") if isinstance(manifest.get("taxonomy"), dict) else {}
    for name in TRAINING_BENCHMARKS:
        known = load_taxonomy(name)
        if taxonomy.get("version") == known.version or taxonomy.get("names") == known.names:
            return name, manifest
    names = taxonomy.get("names") or []
    raise PlanError(
        f"{shards / 'manifest.json'}: taxonomy {taxonomy.get('version')!r} ({len(names)} classes) is none of the "
        f"paper's training sets ({', '.join(TRAINING_BENCHMARKS)}): no benchmark to reproduce for it "
        "(import the shards with one of those taxonomies, or use `piseg train` and `piseg eval`)"
    )


def plan_training(shards: Path, config: PiSegConfig, out: Path) -> tuple[Run, PiSegConfig]:
    """The run of a model trained here on SHARDS with CONFIG (its train.taxonomy set to the shards' training set)
    into OUT/train/, and that configuration. An OUT/train/ that holds a training of other shards, or a final
    checkpoint of another configuration or length, is refused: its evaluations would not be of this model."""
    taxonomy, manifest = shards_training_set(shards)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, taxonomy=taxonomy))
    folder = out / TRAIN_FOLDER
    build = manifest.get("build_config") if isinstance(manifest.get("build_config"), dict) else {}
    trained = {
        "shards": str(shards),
        "manifest_sha256": file_sha256(manifest_file(shards)),
        "imported_from": build.get("imported_from"),
        "iters": config.train.iters,
        "backbone": config.model.backbone,
        "checkpoint": str(folder / "checkpoints" / "final.pt"),
    }
    record = folder / TRAINED_FILE
    if record.is_file():
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError) as error:
            raise PlanError(f"{record}: unreadable ({error}): give another --out") from None
        before = before if isinstance(before, dict) else {}
        if before.get("manifest_sha256") != trained["manifest_sha256"]:
            raise PlanError(
                f"{folder}: trained on other shards ({before.get('shards')}, manifest sha256 "
                f"{str(before.get('manifest_sha256'))[:12]}), not {shards} ({trained['manifest_sha256'][:12]}): "
                "give another --out"
            )
    final = folder / "checkpoints" / "final.pt"
    if final.is_file():
        saved = read_checkpoint(final)["config"]
        differences = configuration_differences(saved, config)
        if saved.get("train", {}).get("iters") != config.train.iters:
            differences.insert(
                0, f"train.iters: checkpoint {saved.get('train', {}).get('iters')}, now {config.train.iters}"
            )
        if differences:
            raise PlanError(
                f"{final}: trained with another configuration ({'; '.join(differences[:4])}): give another --out"
            )
    return Run(f"trained-{taxonomy}", final, taxonomy, TRAINING_BENCHMARKS[taxonomy], trained), config


def train_here(
    run: Run,
    config: PiSegConfig,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> bool:
    """Train RUN (from `plan_training`) with `piseg train`'s trainer unless its final checkpoint is there;
    an interrupted training goes on from its last.pt. Whether it trained."""
    from piseg.training.train import train

    if run.weights.is_file():
        return False
    folder = run.weights.parent.parent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAINED_FILE).write_text(json.dumps(run.trained, indent=2) + "\n")
    resume = (folder / "checkpoints" / "last.pt").is_file()
    train(Path(run.trained["shards"]), config, folder, resume=resume, progress=progress, notice=notice)
    return True


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
        checkpoint = run.weights if run.trained else out / "checkpoints" / f"{run.name}.pt"
        if not checkpoint.is_file():  # converted once; a rerun reuses it
            taxonomy = load_taxonomy(run.taxonomy)
            convert_released(run.weights, checkpoint, taxonomy.names, taxonomy.version, base, tokenizer, trust_pickle)
        model, config, _ = load_model(checkpoint, device)
        compared_with = paper_backbone or config.model.backbone
        described = (
            f"{run.name} (trained here: {run.trained['iters']} iterations on {run.trained['shards']}, "
            f"manifest sha256 {run.trained['manifest_sha256'][:12]})"
            if run.trained
            else f"{run.name} (released weights, converted)"
        )
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
                described,
                "exclude",
                spacy_lemmatize,
                folder,
                definitions,
                settings,
                # a model trained here is compared only where the paper's model had its training set
                paper_comparison(name, compared_with)
                if run.trained is None or benchmark.train_taxonomy == run.taxonomy
                else None,
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
            **({"trained_here": run.trained} if run.trained else {}),
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


def trained_statement(summary: dict) -> list[str]:
    """For each model trained here: that it was, how long, on which shards, and what its paper columns are."""
    lines = []
    recipe = TrainConfig().iters
    for name, run in summary["runs"].items():
        trained = run.get("trained_here")
        if not trained:
            continue
        source = f", imported from {trained['imported_from']}" if trained.get("imported_from") else ""
        short = (
            f" Fewer iterations than the recipe's {recipe:,} (the paper's): not a reproduction of its numbers."
            if trained["iters"] < recipe
            else ""
        )
        lines += [
            f"**{name} was trained here**, not converted from the released weights: {trained['iters']:,} iterations "
            f"({trained['backbone']}) on `{trained['shards']}` (manifest sha256 `{trained['manifest_sha256']}`"
            f"{source}), checkpoint `{trained['checkpoint']}`. The paper's columns are its models trained on "
            f"the {run['taxonomy']} training set, shown only on benchmarks of that training set.{short}",
            "",
        ]
    return lines


def markdown(summary: dict) -> str:
    trained = trained_statement(summary)
    lines = [
        "# The paper's tables from a model trained here"
        if trained
        else "# The paper's tables from the released weights",
        "",
        *subset_warning(summary),
        *trained,
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
