"""The paper's published numbers (`piseg/evaluation/paper_results.yaml`, transcribed from arXiv 2604.15652) and the
lookups that put them beside ours: per benchmark (Tables III, IV, V), UAVid's seen/unseen split (Table XI),
the resolution groups (Table XIII) and the efficiency row (Table XII). Values are returned as fractions,
like our scores; a dataset or backbone the paper does not report gives None, never a guess."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

MODELS = ("Pi-Seg", "CAT-Seg")
BACKBONES = {"vit-b": "ViT-B", "vit-l": "ViT-L"}
SOURCE = "arXiv 2604.15652"


@cache
def paper_results() -> dict[str, Any]:
    return yaml.safe_load(Path(str(resources.files("piseg.evaluation") / "paper_results.yaml")).read_text())


def _fractions(entry: dict | None, iou: str = "mIoU", acc: str = "mACC") -> dict[str, float] | None:
    if not entry or entry.get(iou) is None:
        return None
    return {"miou": entry[iou] / 100, "macc": entry[acc] / 100}


def benchmark_comparison(benchmark: str, backbone: str) -> dict[str, Any] | None:
    """{"table", "source", "datasets": {ours: {model: {miou, macc} | None}}, "mean": {model: ...} | None} for a
    benchmark the paper reports with this backbone; None otherwise."""
    data = paper_results()
    where, column = data["benchmarks"].get(benchmark), BACKBONES.get(backbone)
    if where is None or column is None:
        return None
    table = data["tables"][where["table"]]
    if "setting" in where:
        table = table[where["setting"]]
    by_model = {model: table[model][column] for model in MODELS}
    datasets = {
        ours: {model: _fractions(by_model[model].get(paper)) for model in MODELS}
        for ours, paper in data["dataset_names"].items()
        if paper in by_model["Pi-Seg"]
    }
    mean = None
    if "mean" in where:
        mean = {model: _fractions(by_model[model][where["mean"]], "m-mIoU", "m-mACC") for model in MODELS}
    table_name = where["table"].split("_")[0]
    return {"table": table_name, "backbone": column, "source": SOURCE, "datasets": datasets, "mean": mean}


def uavid_split(backbone: str) -> dict[str, Any] | None:
    """Table XI (ViT-B only): per class IoU/ACC and overall/seen/unseen means of both models."""
    if backbone != "vit-b":
        return None
    table = paper_results()["tables"]["XI_uavid_seen_unseen"]
    return {
        model: {
            name.lower(): _fractions(entry, "IoU", "ACC") if "IoU" in entry else _fractions(entry)
            for name, entry in table[model].items()
        }
        for model in MODELS
    }


def resolution_groups(backbone: str) -> dict[str, Any] | None:
    """Table XIII: {model: {group: {miou, macc}}} for the backbone, when reported."""
    table = paper_results()["tables"]["XIII_resolution_groups"]
    column = BACKBONES.get(backbone)
    if column is None or column not in table["Pi-Seg"]:
        return None
    return {
        model: {group: _fractions(entry, "m-mIoU", "m-mACC") for group, entry in table[model][column].items()}
        for model in MODELS
    }


def efficiency_row(backbone: str) -> dict[str, dict[str, float]] | None:
    """Table XII: {model: {params_M, GFLOPs_train, GFLOPs_eval, peak_mem_GB, FPS}} (4 NVIDIA H100, 600x800)."""
    column = BACKBONES.get(backbone)
    table = paper_results()["tables"]["XII_efficiency"]
    return {model: table[model][column] for model in MODELS} if column else None


def paper_comparison(benchmark: str, backbone: str) -> dict[str, Any] | None:
    """Everything the paper reports that a run of `benchmark` with `backbone` can be compared with."""
    found = {
        "benchmark": benchmark_comparison(benchmark, backbone),
        "uavid": uavid_split(backbone),
        "resolution": resolution_groups(backbone) if benchmark == "ovrsisbench-v2" else None,
    }
    return {"backbone": BACKBONES.get(backbone), "source": SOURCE, **found} if found["benchmark"] else None
