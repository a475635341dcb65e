"""The `piseg` command: Pi-Seg model, training and evaluation tools."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from piseg.prompts import PROMPT_TEMPLATE, class_prompts
from taxonomy.loader import TaxonomyError, load_taxonomy

err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(code)

app = typer.Typer(name="piseg", help="Pi-Seg: open-vocabulary remote-sensing segmentation.", add_completion=False)


@app.callback()
def _root() -> None:
    """Pi-Seg: open-vocabulary remote-sensing segmentation."""


@app.command()
def classes(
    taxonomy: str = typer.Argument(..., help="Bundled taxonomy name (ovrsis95k, dlrsd, ...) or YAML path."),
    template: str = typer.Option(PROMPT_TEMPLATE, help="Prompt template with one {} for the class name."),
) -> None:
    """Print a vocabulary's mask ids, class names and the text prompts the model is given."""
    try:
        vocabulary = load_taxonomy(taxonomy)
    except TaxonomyError as error:
        fail(str(error))
    table = Table("id", "class", "prompt", title=f"{vocabulary.name} ({vocabulary.version})", title_justify="left")
    for category, prompt in zip(vocabulary.categories, class_prompts(vocabulary, template)):
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
    from piseg.info import FLOP_RULE, eval_flops, meta_model, parameter_table, train_flops, variant

    try:
        config = preset(backbone)
    except ConfigError as error:
        fail(str(error))
    config.model = dataclasses.replace(config.model, spm=dataclasses.replace(config.model.spm, reduction=reduction))
    table = Table("model", "total", "trainable", "paper total", "difference", title=f"{backbone}, r = {reduction}", title_justify="left")
    for row in parameter_table(config.model):
        difference = f"{(row.total - row.paper_total) / row.paper_total:+.3%}" if row.paper_total else "-"
        paper = f"{row.paper_total / 1e6:.2f}M" if row.paper_total else "-"
        table.add_row(row.name, f"{row.total:,} ({row.total / 1e6:.2f}M)", f"{row.trainable:,}", paper, difference)
    Console().print(table)
    if flops:
        model = meta_model(variant(config.model, True))
        evaluation = eval_flops(model, config.eval, classes=classes) / 1e9
        training = train_flops(model, config.train.crop, classes=classes) / 1e9
        Console(soft_wrap=True).print(
            f"GFLOPs with {classes} class(es): eval (600x800, sliding window) {evaluation:.2f} = {evaluation / 2:.2f} GMACs; "
            f"train (one {config.train.crop} crop, text encoder and SPMs on) {training:.2f} = {training / 2:.2f} GMACs\n"
            f"rule: {FLOP_RULE}"
        )


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

    from piseg.checkpoint import CheckpointError
    from piseg.config import ConfigError, load_config
    from piseg.train import TrainingError
    from piseg.train import train as run_training
    from pipeline.shards import ShardError

    try:
        config = load_config(config_file, backbone, {"train": {"iters": iters}} if iters else None)
    except ConfigError as error:
        fail(str(error))
    main_process = os.environ.get("RANK", "0") == "0"
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
               TextColumn("{task.fields[speed]:.2f} it/s"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=err, disable=not main_process) as bar:
        task = bar.add_task("train", total=config.train.iters, loss=float("nan"), speed=0.0)

        def progress(step: int, total: int, values: dict) -> None:
            bar.update(task, completed=step, loss=values["loss"], speed=values["it_per_s"])

        try:
            final = run_training(shards, config, out, resume=resume, progress=progress)
        except (ShardError, CheckpointError, TrainingError, ValueError) as error:
            fail(str(error), 1)
    if main_process:
        Console().print(f"final checkpoint: {final}")


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Images or rasters (JPEG, PNG, GeoTIFF of any bands/dtype)."),
    checkpoint: Path = typer.Option(..., help="A checkpoint from `piseg train`."),
    classes: str = typer.Option(..., help="Class names: 'building, road, water' (use ';' to keep commas in a name)."),
    out: Path = typer.Option(Path("predictions"), help="Folder for STEM.png, STEM.overlay.png (and STEM.mask.tif)."),
    device: str = typer.Option(None, help="cuda, cpu, ... (default: cuda when present)."),
) -> None:
    """Segment images into any class names with the sliding-window scheme of the evaluation."""
    from piseg.checkpoint import CheckpointError
    from piseg.predict import Predictor, parse_class_names

    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        fail(f"no such image: {', '.join(missing)}")
    try:
        names = parse_class_names(classes)
        predictor = Predictor(checkpoint, device)
    except (CheckpointError, ValueError) as error:
        fail(str(error))
    columns = (TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err) as bar:
        for path in bar.track(images):
            try:
                predictor.predict_files([path], names, out)
            except Exception as error:  # one unreadable image must not stop the others
                err.print(f"[yellow]skipped[/yellow] {path}: {error}", markup=True, highlight=False)
    Console().print(f"wrote {out}/ ({len(names)} classes: {', '.join(names)})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
