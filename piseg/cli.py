"""The `piseg` command: Pi-Seg model, training and evaluation tools."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from pipeline.cli.terminal import console, fail, run_command, set_aside
from piseg.evaluation.paper import MODELS
from piseg.faults import SkippedLog
from piseg.modeling.prompts import PROMPT_TEMPLATE, class_prompts
from taxonomy.loader import TaxonomyError, load_taxonomy

if TYPE_CHECKING:  # torch is imported by the commands that need it, so `piseg --help` starts fast
    import torch


def report_skipped(skipped: SkippedLog, what: str) -> None:
    """Exit 1 when anything was left out, the last line saying how many and where the reasons are."""
    if skipped.count:
        set_aside(f"skipped {skipped.count} {what}", skipped.path)


def torch_device(name: str | None) -> torch.device:
    """The device asked for (default: cuda when present); a name torch does not know is refused."""
    import torch

    try:
        return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        fail(f"--device {name}: {error}")


def beside_paper(ours: dict, paper: dict | None) -> str:
    """'   paper mIoU: Pi-Seg 47.54 % (Δ -1.20 pp), CAT-Seg 49.19 % (Δ -2.85 pp)' for a line of `piseg eval`'s
    summary: scores in percent, differences in percentage points, each with its unit."""
    from piseg.evaluation.report import percent_text, signed  # torch comes with it: imported once eval has it

    if not paper or "miou" not in ours:
        return ""
    parts = [
        f"{model} {percent_text(paper[model]['miou'])} (Δ {signed(ours['miou'], paper[model]['miou'])} pp)"
        for model in MODELS
        if paper.get(model)
    ]
    return "   paper mIoU: " + ", ".join(parts) if parts else ""


app = typer.Typer(name="piseg", help="Pi-Seg: open-vocabulary remote-sensing segmentation.", add_completion=False)


@app.callback()
def _root() -> None:
    """Pi-Seg: open-vocabulary remote-sensing segmentation."""


@contextmanager
def dataset_progress() -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar per dataset, made on its first report: `progress(name, done, total)`."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        yield progress


@app.command()
def classes(
    taxonomy: str = typer.Argument(..., help="Bundled taxonomy name (ovrsis95k, dlrsd, ...) or YAML path."),
    template: str = typer.Option(PROMPT_TEMPLATE, help="Prompt template with one {} for the class name."),
) -> None:
    """Print a vocabulary's mask ids, class names and the text prompts the model is given."""
    try:
        vocabulary = load_taxonomy(taxonomy)
    except TaxonomyError as error:
        fail(error)
    table = Table("id", "class", "prompt", title=f"{vocabulary.name} ({vocabulary.version})", title_justify="left")
    for category, prompt in zip(vocabulary.categories, class_prompts(vocabulary, template), strict=True):
        table.add_row(str(category.index), category.name, prompt)
    Console().print(table)


@app.command()
def info(
    backbone: str = typer.Option("vit-b", help="vit-b (ViT-B/16 at 384) or vit-l (ViT-L/14 at 336)."),
    reduction: int = typer.Option(1, help="Image-SPM reduction ratio r (released configs: 1)."),
    flops: bool = typer.Option(True, help="Also count GFLOPs (eval: sliding window on 600x800; train: one crop)."),
    classes: int = typer.Option(1, help="Classes in the FLOP count (the head's cost grows with them)."),
) -> None:
    """Parameters (total, trainable) of Pi-Seg and the CAT-Seg baseline, from the configuration alone."""
    import dataclasses

    from piseg.config import ConfigError, preset
    from piseg.evaluation.counts import (
        FLOP_RULE,
        PAPER_EVAL_GFLOPS,
        eval_flops,
        meta_model,
        parameter_table,
        train_flops,
        variant,
    )

    try:
        config = preset(backbone)
    except ConfigError as error:
        fail(error)
    config.model = dataclasses.replace(config.model, spm=dataclasses.replace(config.model.spm, reduction=reduction))
    table = Table(
        "model",
        "total",
        "trainable",
        "paper total",
        "difference",
        title=f"{backbone}, r = {reduction}",
        title_justify="left",
    )
    for row in parameter_table(config.model):
        difference = f"{(row.total - row.paper_total) / row.paper_total:+.3%}" if row.paper_total else "-"
        paper = f"{row.paper_total / 1e6:.2f}M" if row.paper_total else "-"
        table.add_row(row.name, f"{row.total:,} ({row.total / 1e6:.2f}M)", f"{row.trainable:,}", paper, difference)
    Console().print(table)
    if flops:
        model = meta_model(variant(config.model, True))
        evaluation = eval_flops(model, config.eval, classes=classes) / 1e9
        training = train_flops(model, config.train.crop, classes=classes) / 1e9
        paper = (
            f"paper (Table XII, fvcore, eval): {PAPER_EVAL_GFLOPS[backbone]}\n" if backbone in PAPER_EVAL_GFLOPS else ""
        )
        Console(soft_wrap=True).print(
            f"GFLOPs with {classes} class(es): eval (600x800, sliding window) "
            f"{evaluation:.2f} = {evaluation / 2:.2f} GMACs; "
            f"train (one {config.train.crop} crop, text encoder and SPMs on) "
            f"{training:.2f} = {training / 2:.2f} GMACs\n"
            f"{paper}rule: {FLOP_RULE}"
        )


@contextmanager
def training_progress(total: int, shown: bool = True) -> Iterator[tuple[Progress, Callable[[int, int, dict], None]]]:
    """The training bar (step, loss, it/s) of `piseg train` and `piseg reproduce --train-shards`:
    `(bar, progress)`, `progress(step, total, values)` being the trainer's callback."""
    columns = (
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[speed]:.2f} it/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not shown) as bar:
        task = bar.add_task("train", total=total, loss=float("nan"), speed=0.0)

        def progress(step: int, total: int, values: dict) -> None:
            bar.update(task, completed=step, loss=values["loss"], speed=values["it_per_s"])

        yield bar, progress


@app.command()
def train(
    shards: Path = typer.Option(..., "--shards", help="A build's output folder (manifest.json + shards/)."),
    config_file: Path = typer.Option(None, "--config", help="YAML overriding the recipe (model/train/eval sections)."),
    backbone: str = typer.Option(None, help="vit-b, vit-l or tiny (default: the file's, else vit-b)."),
    iters: int = typer.Option(None, help="Training iterations (default: the recipe's 40,000)."),
    out: Path = typer.Option(Path("runs/piseg"), help="Run folder: checkpoints/, log.jsonl, tensorboard/."),
    resume: bool = typer.Option(False, help="Go on from OUT/checkpoints/last.pt (same configuration)."),
) -> None:
    """Train Pi-Seg on the build's shards (multi-GPU: `torchrun --nproc_per_node N -m piseg.cli train ...`)."""
    import os

    from pipeline.dataset.shards import ShardError
    from piseg.checkpoint import CheckpointError
    from piseg.config import ConfigError, load_config
    from piseg.training.train import TrainingError
    from piseg.training.train import train as run_training

    try:
        config = load_config(config_file, backbone, {"train": {"iters": iters}} if iters else None)
    except ConfigError as error:
        fail(error)
    main_process = os.environ.get("RANK", "0") == "0"
    with training_progress(config.train.iters, main_process) as (bar, progress):
        try:
            final = run_training(
                shards, config, out, resume=resume, progress=progress, notice=lambda line: bar.console.print(line)
            )
        except (ShardError, CheckpointError, TrainingError, ValueError) as error:
            bar.stop()  # the error is the last line, under the bar
            fail(error)
    if main_process:
        Console().print(f"final checkpoint: {final}")
        report_skipped(SkippedLog(out, fresh=False), "unreadable shards/samples")


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Images or rasters (JPEG, PNG, GeoTIFF of any bands/dtype)."),
    checkpoint: Path = typer.Option(..., help="A checkpoint from `piseg train`."),
    classes: str = typer.Option(..., help="Class names: 'building, road, water' (use ';' to keep commas in a name)."),
    out: Path = typer.Option(Path("predictions"), help="Folder for STEM.png, STEM.overlay.png (and STEM.mask.tif)."),
    device: str = typer.Option(None, help="cuda, cpu, ... (default: cuda when present)."),
    tile_size: int = typer.Option(
        2048, help="Rasters larger than this are predicted in windows and stitched (STEM.mask.tif)."
    ),
    overlap: int = typer.Option(128, help="Overlap of those windows, in pixels."),
    keep_going: bool = typer.Option(
        True,
        "--keep-going/--fail-fast",
        help="An image that cannot be read or predicted is skipped, the others are "
        "predicted, and the run exits 1 naming OUT/skipped.jsonl (default); "
        "--fail-fast stops at the first such image (exit 2).",
    ),
) -> None:
    """Segment images into any class names with the sliding-window scheme of the evaluation."""
    from piseg.checkpoint import CheckpointError
    from piseg.inference.predict import PREDICT_FAULTS, Predictor, parse_class_names

    if tile_size < 16 or not 0 <= overlap < tile_size:
        fail(f"--tile-size must be at least 16 and --overlap in [0, tile size), got {tile_size} and {overlap}")
    try:
        names = parse_class_names(classes)
        predictor = Predictor(checkpoint, str(torch_device(device)))
    except (CheckpointError, ValueError) as error:
        fail(error)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"{out}: cannot create the output folder ({error.strerror or error})")
    skipped = SkippedLog(out, fresh=True)
    columns = (TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        for path in bar.track(images):
            try:
                predictor.predict_files([path], names, out, tile_size, overlap)
            except PREDICT_FAULTS as error:  # one bad image must not stop the others
                if not keep_going:
                    bar.stop()
                    fail(f"{path}: {error} (--fail-fast)")
                skipped.add(f"{path}: {error}", str(path))
                console.print(f"[yellow]skipped[/yellow] {path}: {error}", markup=True, highlight=False)
    if skipped.count == len(images):
        fail(f"none of the {len(images)} images could be predicted; reasons in {skipped.path}")
    Console().print(f"wrote {out}/ ({len(names)} classes: {', '.join(names)})")
    report_skipped(skipped, f"of {len(images)} images")


@app.command(name="convert-released")
def convert_released(
    weights: Path = typer.Argument(..., help="The authors' released model_final.pth (Pi-Seg or CAT-Seg, detectron2)."),
    out: Path = typer.Option(..., help="Where to write the Pi-Seg checkpoint."),
    taxonomy: str = typer.Option("ovrsis95k", help="The vocabulary the weights were trained on (V1: dlrsd or isaid)."),
    backbone: str = typer.Option(
        None, help="Preset for the settings the weights do not carry (default: the one the weights show)."
    ),
    config: Path = typer.Option(
        None, help="YAML configuration instead of a preset (evaluation scheme, noise families)."
    ),
    tokenizer: str = typer.Option(
        "auto",
        help="CLIP tokenizer: hub id or local folder (default: the preset's CLIP id); "
        "'none' = the byte-level one of random-weight models.",
    ),
    trust_pickle: bool = typer.Option(False, help="Unpickle everything in the file (only for a file you trust)."),
) -> None:
    """Convert released detectron2 weights into a Pi-Seg checkpoint (no detectron2 needed)."""
    from piseg.config import ConfigError, load_config
    from piseg.released.convert import ReleasedCheckpointError
    from piseg.released.convert import convert_released as convert

    try:
        vocabulary = load_taxonomy(taxonomy)
        base = load_config(config, backbone) if (config or backbone) else None
        summary = convert(
            weights,
            out,
            vocabulary.names,
            vocabulary.version,
            base,
            None if tokenizer == "none" else tokenizer,
            trust_pickle,
        )
    except (TaxonomyError, ConfigError, ReleasedCheckpointError, OSError) as error:  # OSError: OUT cannot be written
        fail(error)
    spms = [name for name, on in (("Text-SPM", summary["text_spm"]), ("Image-SPM", summary["image_spm"])) if on]
    reduction = f" (r = {summary['reduction']})" if summary["image_spm"] else ""
    Console(soft_wrap=True).print(
        f"wrote {out}: {summary['backbone']}, {summary['tensors']} tensors ({summary['parameters']:,} parameters), "
        f"{summary['layers']} aggregation layers, {' + '.join(spms) or 'no SPM (CAT-Seg)'}{reduction}, "
        f"{summary['classes']} classes of {taxonomy}"
    )


@app.command()
def bench(
    backbone: str = typer.Option("vit-b", help="vit-b, vit-l (or tiny, for a quick check)."),
    classes: int = typer.Option(35, help="Classes the model segments into."),
    repeats: int = typer.Option(3, help="Timed runs per model (after one warm-up)."),
    device: str = typer.Option(None, help="cuda, cpu, ... (default: cuda when present)."),
) -> None:
    """Efficiency table (Table XII) at 600x800: parameters, GMACs (train per step), inference memory, FPS, here."""
    from piseg.config import ConfigError, preset
    from piseg.evaluation.efficiency import device_name, measure, memory_kind
    from piseg.evaluation.paper import BACKBONES, SOURCE, efficiency_row

    try:
        config = preset(backbone)
    except ConfigError as error:
        fail(error)
    chosen = torch_device(device)
    rows = measure(config, chosen, classes, repeats)
    batch = config.train.batch_size
    table = Table(
        Column("model", no_wrap=True),
        "params",
        f"GMACs train (per step, batch {batch})",
        "GMACs eval (per image)",
        f"inference memory (GB): {memory_kind(chosen)}",
        "peak training GPU memory (GB)",
        "FPS",
        title=f"{backbone}, {classes} classes, 600x800, device: {device_name(chosen)}",
        title_justify="left",
    )
    for row in rows:
        table.add_row(
            row.model,
            f"{row.parameters / 1e6:.2f}M",
            f"{row.train_gmacs_per_step:.2f}",
            f"{row.eval_gmacs:.2f}",
            f"{row.inference_memory_gb:.2f}",
            "- (not measured)",
            f"{row.fps:.2f}",
        )
    paper = efficiency_row(backbone)
    for model, row in (paper or {}).items():
        table.add_row(
            f"{model}, paper",
            f"{row['params_M']:.2f}M",
            f"{row['GFLOPs_train']:.2f}",
            f"{row['GFLOPs_eval']:.2f}",
            "-",
            f"{row['peak_mem_GB']:.2f}",
            f"{row['FPS']:.2f}",
        )
    Console(soft_wrap=True).print(table)
    if paper:
        Console(soft_wrap=True).print(
            f"Paper rows: Table XII of {SOURCE} ({BACKBONES[backbone]}), device: NVIDIA H100 (the paper trains on 4 "
            "with 2 images each); its 'GFLOPs' are printed in the GMACs columns: they match fvcore's multiply-add "
            "count (eval 608.62 for ViT-B, where our counter's 2-per-multiply-add FLOPs are twice our GMACs) and "
            "its train figure is per step; its memory is peak training memory, which this command does not measure."
        )
    Console(soft_wrap=True).print(
        f"GMACs = multiply-adds / 1e9 (torch.utils.flop_counter's FLOPs / 2). Train = one step: {batch} crops of "
        f"{config.train.crop} with the SPMs on, the text encoder run once for the {classes} classes; eval = one "
        "600x800 image through the sliding window, text cached."
    )


@app.command(name="eval")
def evaluate(
    benchmark: str = typer.Option(
        ..., help="ovrsisbench-v2, ovrsisbench-v1-dlrsd, ovrsisbench-v1-isaid, building, road, flood, or one dataset."
    ),
    data_root: Path = typer.Option(..., help="Folder holding the downloaded test sets."),
    out: Path = typer.Option(..., help="Report folder: report.md, report.json, overlap.png, panels/, datasets/."),
    checkpoint: Path = typer.Option(None, help="A checkpoint from `piseg train`."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Evaluate training-free dense CLIP instead (the floor)."),
    backbone: str = typer.Option("vit-b", help="With --zero-shot: the CLIP preset (vit-b, vit-l, tiny)."),
    clip: str = typer.Option(None, help="With --zero-shot: CLIP hub id or folder (default: the preset's)."),
    datasets: str = typer.Option(None, help="Only these datasets of the benchmark (comma-separated)."),
    benchmarks: Path = typer.Option(None, help="Benchmark definitions YAML (default: the bundled one)."),
    absent: str = typer.Option("exclude", help="Classes absent from the ground truth: exclude (default) or include."),
    inference: str = typer.Option(
        None, help="sliding (default; V2) or whole (one view per image, the V1 scripts' no-slide)."
    ),
    max_images: int = typer.Option(None, help="Evaluate at most N images per dataset (quick looks)."),
    panels: int = typer.Option(3, help="Qualitative panels per dataset."),
    device: str = typer.Option(None, help="cuda, cpu, ... (default: cuda when present)."),
    compare_paper: bool = typer.Option(
        True,
        help="Print the paper's Pi-Seg and CAT-Seg numbers beside ours, with the delta, "
        "when the paper reports this benchmark for the backbone.",
    ),
    paper_backbone: str = typer.Option(
        None, help="Compare with the paper's numbers for this backbone (vit-b, vit-l; default: the model's)."
    ),
) -> None:
    """Evaluate a checkpoint (or zero-shot CLIP) on a benchmark, the paper's way; resumable per dataset."""
    import dataclasses

    from pipeline.stages.categories import spacy_lemmatize
    from piseg.checkpoint import CheckpointError, load_model
    from piseg.config import INFERENCE_MODES, ConfigError, preset
    from piseg.evaluation.benchmarks import DatasetError, load_benchmark, load_definitions
    from piseg.evaluation.evaluate import checkpoint_identity, evaluate_benchmark, released_precision, run_identity
    from piseg.evaluation.paper import paper_comparison
    from piseg.evaluation.report import ABSENT_RULES, SUBSET_MARK, build_report, percent_text
    from piseg.modeling.clip_backbone import load_clip
    from piseg.modeling.zero_shot import ZeroShotClip

    if (checkpoint is None) == (not zero_shot):
        fail("give either --checkpoint C or --zero-shot")
    if absent not in ABSENT_RULES:
        fail(f"--absent must be one of {', '.join(ABSENT_RULES)}")
    if inference is not None and inference not in INFERENCE_MODES:
        fail(f"--inference must be one of {', '.join(INFERENCE_MODES)}")
    chosen = torch_device(device)
    try:
        definitions = load_definitions(benchmarks)
        selected = load_benchmark(
            benchmark, definitions, [d.strip() for d in datasets.split(",")] if datasets else None
        )
        if zero_shot:
            config = preset(backbone)
            model_config = dataclasses.replace(config.model, clip=clip or config.model.clip)
            model = ZeroShotClip(load_clip(model_config), model_config.prompt_template).to(chosen).eval()
            model_name, identity = (
                f"zero-shot CLIP ({model_config.clip or backbone + ', random weights'})",
                f"zero-shot:{model_config.clip}:{backbone}",
            )
        else:
            model, config, _ = load_model(checkpoint, chosen)
            model_name, identity = f"Pi-Seg checkpoint {checkpoint.name}", checkpoint_identity(checkpoint)
        out.mkdir(parents=True, exist_ok=True)  # an unwritable OUT is refused before any work
    except (ConfigError, DatasetError, CheckpointError, OSError) as error:
        fail(error)
    settings = dataclasses.replace(config.eval, mode=inference or config.eval.mode)
    precision = released_precision(chosen)
    run = run_identity(identity, settings, max_images)
    with dataset_progress() as progress:
        results = evaluate_benchmark(model, selected, data_root, out, settings, run, max_images, panels, progress)
    paper = paper_comparison(selected.name, paper_backbone or config.model.backbone) if compare_paper else None
    report = build_report(
        results,
        selected.name,
        selected.train_taxonomy,
        model_name,
        absent,
        spacy_lemmatize,
        out,
        definitions,
        settings,
        paper,
        max_images=max_images,
        backbone=config.model.backbone,
        precision=precision,
    )
    for name, entry in report["datasets"].items():
        status = (
            f"mIoU {percent_text(entry['miou'])}  mACC {percent_text(entry['macc'])}"
            if entry["status"] == "done"
            else f"[yellow]{entry['status']}[/yellow]"
        )
        name = f"{name} {SUBSET_MARK}" if entry["subset"] else name
        Console(soft_wrap=True).print(f"{name}: {status}{beside_paper(entry, entry.get('paper'))}")
    if report["m_miou"] is not None:
        label = f"m-mIoU w/o {report['means_exclude']}" if report["means_exclude"] else "m-mIoU"
        averaged = [n for n in report["benchmark_datasets"] if n != report["means_exclude"]]
        counted = sum(report["datasets"].get(n, {}).get("status") == "done" for n in averaged)
        label += f" ({counted} of {len(averaged)} datasets)" if counted < len(averaged) else ""
        label += f" {SUBSET_MARK}" if report["means_on_subsets"] else ""
        ours = {"miou": report["m_miou"]}
        Console(soft_wrap=True).print(
            f"{label} {percent_text(report['m_miou'])}  m-mACC {percent_text(report['m_macc'])}"
            f"{beside_paper(ours, paper['benchmark']['mean'] if paper else None)}  -> {out / 'report.md'}"
        )
    if report["means_on_subsets"]:
        Console(soft_wrap=True).print(
            f"{SUBSET_MARK} --max-images {max_images}: scores from the first {max_images} images of a dataset, "
            "not comparable with the paper's"
        )
    if compare_paper and paper is None:
        Console(soft_wrap=True).print(
            f"(the paper reports no {selected.name} numbers for {paper_backbone or config.model.backbone})"
        )
    if not report["complete"]:
        left_out = [name for name, entry in report["datasets"].items() if entry["status"] != "done"]
        set_aside(
            f"{len(left_out)} of {len(report['datasets'])} datasets not evaluated ({', '.join(left_out)})",
            out / "report.md",
        )


@app.command()
def reproduce(
    weights: Path = typer.Option(
        None, help="Folder holding the authors' released weights (*.pth, e.g. the V1 and V2 downloads)."
    ),
    train_shards: Path = typer.Option(
        None,
        "--train-shards",
        help="Instead of --weights: train here first (as `piseg train`, into OUT/train/) on these shards "
        "(`ovrsis shards import` of OVRSIS95K, DLRSD or iSAID), then evaluate on their benchmarks.",
    ),
    config_file: Path = typer.Option(
        None, "--config", help="With --train-shards: YAML overriding the recipe, as `piseg train --config`."
    ),
    iters: int = typer.Option(None, help="With --train-shards: training iterations (default: the recipe's 40,000)."),
    data_root: Path = typer.Option(..., help="Folder holding the downloaded test sets (as for `piseg eval`)."),
    out: Path = typer.Option(
        ..., help="Output: report.md (every comparison), checkpoints/, one folder per run and benchmark."
    ),
    plan: Path = typer.Option(
        None, help="YAML {weights path: {taxonomy, benchmarks}} instead of reading the training set from the paths."
    ),
    benchmarks: Path = typer.Option(None, help="Benchmark definitions YAML (default: the bundled one)."),
    backbone: str = typer.Option(
        None,
        help="Preset for settings the weights do not carry (default: the one the weights show); "
        "with --train-shards, the model to train (vit-b, vit-l, tiny; default: the --config file's, else vit-b).",
    ),
    tokenizer: str = typer.Option(
        "auto", help="CLIP tokenizer: hub id or folder (default: the preset's); 'none' = byte-level."
    ),
    trust_pickle: bool = typer.Option(
        False, help="Unpickle everything in the weight files (only for files you trust)."
    ),
    paper_backbone: str = typer.Option(
        None, help="Compare with the paper's numbers for this backbone (default: the weights')."
    ),
    max_images: int = typer.Option(None, help="Evaluate at most N images per dataset (quick looks)."),
    inference: str = typer.Option(
        None,
        help="sliding, whole or both (default: as the released scripts: both for V1 models, sliding for the others).",
    ),
    device: str = typer.Option(None, help="cuda, cpu, ... (default: cuda when present)."),
) -> None:
    """Tables III, IV, V, XI and XIII from the released weights (or a model trained here with --train-shards):
    convert (or train), evaluate, compare; resumable."""
    from pipeline.dataset.shards import ShardError
    from piseg.checkpoint import CheckpointError
    from piseg.config import ConfigError, load_config, preset
    from piseg.evaluation.benchmarks import DatasetError, load_benchmark, load_definitions
    from piseg.evaluation.reproduce import INFERENCE_CHOICES, PlanError, plan_runs, plan_training, train_here
    from piseg.evaluation.reproduce import reproduce as run_all
    from piseg.released.convert import ReleasedCheckpointError
    from piseg.training.train import TrainingError

    if (weights is None) == (train_shards is None):
        fail(
            "give either --weights DIR (evaluate the released weights) or --train-shards SHARDS "
            "(train here, then evaluate), not both: one report is of one kind of model"
        )
    if train_shards is None and (config_file is not None or iters is not None):
        fail("--config and --iters set the training of --train-shards; released weights are not trained")
    if train_shards is not None and plan is not None:
        fail("--plan maps released weight files; with --train-shards the shards' taxonomy picks the benchmarks")
    if inference is not None and inference not in INFERENCE_CHOICES:
        fail(f"--inference must be one of {', '.join(INFERENCE_CHOICES)}")
    chosen = torch_device(device)
    training = None
    try:
        definitions = load_definitions(benchmarks)
        if train_shards is not None:
            config = load_config(config_file, backbone, {"train": {"iters": iters}} if iters else None)
            run, training = plan_training(train_shards, config, out)
            runs = [run]
        else:
            runs = plan_runs(weights, plan)
        for run in runs:  # every name checked before hours of evaluation
            load_taxonomy(run.taxonomy)
            for name in run.benchmarks:
                load_benchmark(name, definitions)
        base = preset(backbone) if backbone and training is None else None
        out.mkdir(parents=True, exist_ok=True)
    except (PlanError, DatasetError, ConfigError, TaxonomyError, CheckpointError, OSError) as error:
        fail(error)
    for run in runs:
        console.print(f"{run.name}: {run.weights} ({run.taxonomy}) -> {', '.join(run.benchmarks)}", highlight=False)
    if training is not None:
        with training_progress(training.train.iters) as (bar, progress):
            try:
                trained = train_here(runs[0], training, progress, notice=lambda line: bar.console.print(line))
            except (ShardError, CheckpointError, TrainingError, ValueError, OSError) as error:
                bar.stop()  # the error is the last line, under the bar
                fail(error)
        console.print(
            f"trained {training.train.iters} iterations: {runs[0].weights}"
            if trained
            else f"{runs[0].weights} is there: not trained again",
            highlight=False,
        )
    with dataset_progress() as progress:
        try:
            summary = run_all(
                runs,
                data_root,
                out,
                definitions,
                base,
                None if tokenizer == "none" else tokenizer,
                trust_pickle,
                paper_backbone,
                chosen,
                max_images,
                progress,
                inference,
            )
        except (ReleasedCheckpointError, CheckpointError, DatasetError, OSError) as error:
            fail(error)
    Console(soft_wrap=True).print(f"wrote {out / 'report.md'}")
    if not summary["complete"]:
        set_aside("some datasets were not evaluated", f"each benchmark's report (linked from {out / 'report.md'})")


def main() -> None:
    """`piseg`: every command inside the one error boundary (pipeline.cli.terminal.run_command)."""
    run_command(app)


if __name__ == "__main__":
    main()
