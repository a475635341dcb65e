"""Benchmark evaluation: every dataset of a benchmark through the sliding-window inference, a streaming
confusion matrix per dataset (and per resolution group), qualitative panels, results saved per dataset
so an interrupted evaluation resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.raster.outputs import palette, write_png
from piseg.config import EvalConfig
from piseg.evaluation.benchmarks import Benchmark, DatasetError, DatasetSpec, resolution_group
from piseg.evaluation.metrics import ConfusionMatrix
from piseg.figures import LegendEntry, class_legend, compose
from piseg.inference.scheme import predict_mask
from taxonomy.masks import IGNORE_INDEX as IGNORE


@dataclass
class DatasetResult:
    name: str
    classes: list[str]
    status: str  # "done" | "missing files" | "unreadable files" (problems lists each)
    run: str  # identity of the model and settings that produced it (for resuming)
    images: int = 0  # evaluated
    available: int | None = None  # in the dataset (more than `images` under --max-images); None: not recorded
    matrix: list[list[int]] = field(default_factory=list)
    groups: dict[str, list[list[int]]] = field(default_factory=dict)  # resolution group -> matrix
    group_images: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    panels: list[str] = field(default_factory=list)


def released_precision(device: torch.device) -> dict[str, bool | str]:
    """Evaluation's float precision as the released code sets it: TF32 matmuls and cuDNN convolutions on CUDA
    (`train_net.py` enables both before an eval-only run too). Returns what is in force, for report.json, since
    TF32 moves scores in the last digits and a report must say which arithmetic produced it."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return {
        "device": device.type,
        "tf32_matmul": device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": device.type == "cuda" and torch.backends.cudnn.allow_tf32,
    }


def run_identity(model_id: str, settings: EvalConfig, max_images: int | None) -> str:
    text = json.dumps({"model": model_id, "eval": asdict(settings), "max_images": max_images}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_identity(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return f"checkpoint:{digest.hexdigest()}"


def evaluate_benchmark(
    model: nn.Module,
    benchmark: Benchmark,
    root: Path,
    out: Path,
    settings: EvalConfig,
    run: str,
    max_images: int | None = None,
    panels: int = 3,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[DatasetResult]:
    """Results per dataset; datasets already evaluated by the same run under OUT/datasets are reused."""
    (out / "datasets").mkdir(parents=True, exist_ok=True)
    results = []
    for spec in benchmark.datasets:
        saved = out / "datasets" / f"{spec.name}.json"
        previous = saved_result(saved)
        if previous is not None and previous.run == run and previous.status == "done":
            results.append(previous)
            continue
        result = evaluate_dataset(model, spec, root, out, settings, run, max_images, panels, progress)
        saved.write_text(json.dumps(asdict(result)) + "\n")
        results.append(result)
    return results


def saved_result(path: Path) -> DatasetResult | None:
    """A dataset's result from an earlier run; a missing or damaged file (a run killed while writing) is none."""
    try:
        return DatasetResult(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@torch.no_grad()
def evaluate_dataset(
    model: nn.Module,
    spec: DatasetSpec,
    root: Path,
    out: Path,
    settings: EvalConfig,
    run: str,
    max_images: int | None,
    panels: int,
    progress: Callable[[str, int, int], None] | None,
) -> DatasetResult:
    samples, problems = spec.samples(root)
    result = DatasetResult(spec.name, spec.class_names, "missing files", run, problems=problems)
    if problems:  # never half-evaluate a dataset silently
        return result
    result.available = len(samples)
    samples = samples[:max_images] if max_images else samples
    device = next(model.parameters()).device
    text = model.encode_classes(spec.class_names)
    classes = len(spec.class_names)
    matrix = ConfusionMatrix(classes, device=device)
    groups: dict[str, ConfusionMatrix] = {}
    counts: dict[str, int] = {}
    for index, sample in enumerate(samples):
        try:
            image, mask = spec.read(sample)
        except (DatasetError, OSError) as error:  # a corrupt, truncated or unmapped file names itself
            result.problems.append(str(error))
        if not result.problems:  # after an unreadable file the dataset is not scored, only searched for others
            pixels = torch.from_numpy(image.copy()).permute(2, 0, 1).to(device)
            prediction = predict_mask(model, pixels, text, settings)
            target = torch.from_numpy(mask.astype(np.int64))
            matrix.update(prediction, target)
            group = resolution_group(image)
            groups.setdefault(group, ConfusionMatrix(classes, device=device)).update(prediction, target)
            counts[group] = counts.get(group, 0) + 1
            if index < panels:
                result.panels.append(
                    str(
                        write_panel(
                            out / "panels" / spec.name / f"{sample.name}.png",
                            image,
                            mask,
                            prediction.cpu().numpy().astype(np.uint8),
                            spec.class_names,
                            f"{spec.name}: {sample.name}",
                        ).relative_to(out)
                    )
                )
        if progress is not None:
            progress(spec.name, index + 1, len(samples))
    if result.problems:
        result.status = "unreadable files"
        return result
    result.status, result.images = "done", len(samples)
    result.matrix = matrix.matrix.tolist()
    result.groups = {name: m.matrix.tolist() for name, m in groups.items()}
    result.group_images = counts
    return result


def panel_legend(class_names: list[str], truth: np.ndarray, prediction: np.ndarray) -> list[LegendEntry]:
    """The legend of a panel: every class either mask shows, in id order; a class only the ground truth shows
    is marked "(only in ground truth)" (a miss) and one only the prediction shows "(only in prediction)" (a
    false alarm), so the panel reads at a glance; not-labelled pixels (255) get their black entry."""
    in_truth, predicted = set(np.unique(truth).tolist()), set(np.unique(prediction).tolist())
    notes = {index: "(only in ground truth)" for index in in_truth - predicted} | {
        index: "(only in prediction)" for index in predicted - in_truth
    }
    return class_legend(class_names, palette(len(class_names)), sorted(in_truth | predicted), notes)


def write_panel(
    path: Path, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, class_names: list[str], heading: str
) -> Path:
    """Image | ground truth | prediction, each titled, under HEADING, with the legend of `panel_legend`;
    not-labelled pixels (255) black. Why a legend: class colours are arbitrary, the panel is useless without one."""
    lookup = np.zeros((IGNORE + 1, 3), dtype=np.uint8)  # ids beyond the classes (only 255 occurs) stay black
    lookup[: len(class_names)] = palette(len(class_names))
    figure = compose(
        [("image", image), ("ground truth", lookup[truth]), ("prediction", lookup[prediction])],
        panel_legend(class_names, truth, prediction),
        heading,
        "Classes in the ground truth or the prediction:",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, figure)
