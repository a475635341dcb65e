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


# Tables of models trained on OVRSIS95K: a single dataset is evaluated with that vocabulary (`load_benchmark`),
# so its paper numbers are those of the first of these tables that has its column (Table IV, else Table V).
OVRSIS95K_BENCHMARKS = ("ovrsisbench-v2", "downstream")
# A printed mean further than this from the mean of the columns it summarises is footnoted (percentage points:
# the tables print two decimals, so rounding alone moves a mean by at most 0.005).
MEAN_TOLERANCE_PP = 0.05


def _where(benchmark: str) -> tuple[str, dict[str, Any]] | None:
    """(benchmark entry name, its table entry) for a benchmark or a single dataset; None when no table has it."""
    data = paper_results()
    if benchmark in data["benchmarks"]:
        return benchmark, data["benchmarks"][benchmark]
    column = data["dataset_names"].get(benchmark)
    for name in OVRSIS95K_BENCHMARKS:
        table = data["tables"][data["benchmarks"][name]["table"]]
        if column is not None and column in table["Pi-Seg"]["ViT-B"]:
            return name, data["benchmarks"][name]
    return None


def _table(where: dict[str, Any]) -> dict[str, Any]:
    table = paper_results()["tables"][where["table"]]
    return table[where["setting"]] if "setting" in where else table


def trained_on_ovrsis95k(benchmark: str) -> bool:
    """Whether the paper's table for BENCHMARK (or single dataset) holds models trained on OVRSIS95K: Table XI's
    UAVid split and Table XIII belong to those models only, never beside a V1 (DLRSD- or iSAID-trained) run."""
    found = _where(benchmark)
    return found is not None and found[0] in OVRSIS95K_BENCHMARKS


def benchmark_comparison(benchmark: str, backbone: str) -> dict[str, Any] | None:
    """{"table", "source", "datasets": {ours: {model: {miou, macc} | None}}, "mean": {model: ...} | None} for a
    benchmark (or single dataset) the paper reports with this backbone; None otherwise. A single dataset has
    its own column and no mean."""
    data, found, column = paper_results(), _where(benchmark), BACKBONES.get(backbone)
    if found is None or column is None:
        return None
    name, where = found
    table = _table(where)
    by_model = {model: table[model][column] for model in MODELS}
    datasets = {
        ours: {model: _fractions(by_model[model].get(paper)) for model in MODELS}
        for ours, paper in data["dataset_names"].items()
        if paper in by_model["Pi-Seg"] and (name == benchmark or ours == benchmark)
    }
    mean = None
    if "mean" in where and name == benchmark:
        mean = {model: _fractions(by_model[model][where["mean"]], "m-mIoU", "m-mACC") for model in MODELS}
    table_name = where["table"].split("_")[0]
    return {"table": table_name, "backbone": column, "source": SOURCE, "datasets": datasets, "mean": mean}


def _column_mean(columns: dict[str, Any], names: list[str]) -> dict[str, float]:
    """m-mIoU / m-mACC (percent) of the named columns that hold numbers."""
    entries = [columns[name] for name in names if (columns.get(name) or {}).get("mIoU") is not None]
    return {key: sum(entry[key] for entry in entries) / len(entries) for key in ("mIoU", "mACC")}


def _disagreement(table: str, row: str, model: str, printed: dict, computed: dict, of: str) -> dict | None:
    """A note when a printed mean (m-mIoU or m-mACC) is more than MEAN_TOLERANCE_PP from the computed one."""
    shown = {"mIoU": printed["m-mIoU"], "mACC": printed["m-mACC"]}
    if all(abs(shown[key] - computed[key]) <= MEAN_TOLERANCE_PP for key in shown):
        return None
    return {
        "table": table,
        "row": row,
        "model": model,
        "printed": {key.lower(): value / 100 for key, value in shown.items()},
        "computed": {key.lower(): value / 100 for key, value in computed.items()},
        "text": (
            f"the paper's Table {table} prints {model} {row} {shown['mIoU']:.2f} / {shown['mACC']:.2f} "
            f"(m-mIoU / m-mACC), but the mean of {of} is {computed['mIoU']:.2f} / {computed['mACC']:.2f}"
        ),
    }


def inconsistencies(benchmark: str, backbone: str) -> list[dict[str, Any]]:
    """Where the paper disagrees with itself about this benchmark and backbone: a benchmark mean (Tables III-V)
    that differs from the mean of its own dataset columns, and (Table IV) a Table XIII group mean that differs
    from the mean of Table IV's columns for the group's datasets. Computed from the transcription, so a note
    appears exactly where the printed numbers do not add up; each has the row it belongs to ("mean", "low", ...)."""
    found, column = _where(benchmark), BACKBONES.get(backbone)
    if found is None or column is None or found[0] != benchmark or "mean" not in found[1]:
        return []
    where = found[1]
    table, name = _table(where), where["table"].split("_")[0]
    notes = []
    for model in MODELS:
        columns = table[model][column]
        names = [key for key in columns if not key.startswith("mean")]
        notes.append(
            _disagreement(name, "mean", model, columns[where["mean"]], _column_mean(columns, names), "its own columns")
        )
    groups = resolution_groups(backbone) if benchmark == "ovrsisbench-v2" else None
    if groups:
        xiii = paper_results()["tables"]["XIII_resolution_groups"]
        for model in MODELS:
            for group, members in xiii["groups"].items():
                notes.append(
                    _disagreement(
                        "XIII",
                        group,
                        model,
                        xiii[model][column][group],
                        _column_mean(table[model][column], members),
                        f"Table IV's {', '.join(members)} columns",
                    )
                )
    return [note for note in notes if note]


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
    """Everything the paper reports that a run of `benchmark` with `backbone` can be compared with: Table XI's
    UAVid split and Table XIII only for the OVRSIS95K-trained tables they belong to, and the places where the
    paper's printed means disagree with its own columns (`inconsistencies`)."""
    ovrsis95k = trained_on_ovrsis95k(benchmark)
    found = {
        "benchmark": benchmark_comparison(benchmark, backbone),
        "uavid": uavid_split(backbone) if ovrsis95k else None,
        "resolution": resolution_groups(backbone) if benchmark == "ovrsisbench-v2" else None,
        "inconsistencies": inconsistencies(benchmark, backbone),
    }
    return {"backbone": BACKBONES.get(backbone), "source": SOURCE, **found} if found["benchmark"] else None
