"""Evaluation datasets from local copies: where the files are, how mask values become class ids, and which
datasets form a benchmark, all read from a YAML definition (`piseg/evaluation/benchmarks.yaml` by default)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pipeline.ingest import IngestError
from piseg.inference.predict import read_image
from taxonomy.loader import Taxonomy, TaxonomyError, load_taxonomy
from taxonomy.masks import IGNORE_INDEX as IGNORE
from taxonomy.masks import values_outside

LOW_RESOLUTION_PIXELS = 800 * 800  # Table XIII: native size below 800x800 is "low resolution"


class DatasetError(ValueError):
    """A dataset definition or a dataset's files that cannot be evaluated."""


@dataclass
class LabelRule:
    """Stored mask values -> class ids. Exactly one of map / threshold / palette, or none (identity)."""

    map: dict[int, int] | None = None
    default: int | None = None
    threshold: int | str | None = (
        None  # a value, or "auto": 128 for 0/255 masks, 1 for 0/1 masks (by the image's maximum)
    )
    palette: dict[tuple[int, int, int], int] | None = None

    def apply(self, stored: np.ndarray, classes: int, where: Path) -> np.ndarray:
        if self.palette is not None:
            if stored.ndim != 3:
                raise DatasetError(f"{where}: a colour-coded mask was expected, found {stored.ndim} dimensions")
            out = np.full(stored.shape[:2], IGNORE, dtype=np.uint8)
            for colour, index in self.palette.items():
                out[np.all(stored[..., :3] == colour, axis=-1)] = index
            return out
        if stored.ndim == 3:
            stored = stored[..., 0]
        if self.threshold is not None:
            threshold = self.threshold
            if threshold == "auto":  # JPEG masks come on either scale; their artefacts stay far below the other
                threshold = 128 if stored.max() >= 128 else 1
            return (stored >= threshold).astype(np.uint8)
        if self.map is not None:
            lookup = np.full(256 if stored.dtype == np.uint8 else int(stored.max()) + 1, -1, dtype=np.int32)
            for value, index in self.map.items():
                if value < lookup.size:
                    lookup[value] = index
            out = lookup[stored]
            unlisted = out < 0
            if unlisted.any():
                if self.default is None:
                    raise DatasetError(
                        f"{where}: mask values {np.unique(stored[unlisted]).tolist()[:10]} "
                        "are not in the dataset's label map"
                    )
                out[unlisted] = self.default
            return out.astype(np.uint8)
        if bad := values_outside(stored, classes):
            raise DatasetError(f"{where}: mask values {bad[:10]} outside 0-{classes - 1} and {IGNORE}")
        return stored.astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """A mask file as stored; a truncated or damaged file is an error, never a partly decoded mask
    (PIL decodes lazily, so the whole file is decoded here, where its errors can be caught)."""
    try:
        with Image.open(path) as stored:
            stored.load()
            return np.asarray(stored)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: cannot read the mask ({error})") from error


@dataclass
class EvalSample:
    name: str
    image_path: Path
    mask_path: Path


@dataclass
class DatasetSpec:
    name: str
    taxonomy: Taxonomy
    images: list[str]
    masks: str
    labels: LabelRule = field(default_factory=LabelRule)

    @property
    def class_names(self) -> list[str]:
        return self.taxonomy.names

    def samples(self, root: Path) -> tuple[list[EvalSample], list[str]]:
        """Every image with its mask, and the problems found (no images, images without masks)."""
        problems, samples = [], []
        image_paths = sorted({Path(p) for pattern in self.images for p in glob.glob(str(root / pattern))})
        if not image_paths:
            problems.append(f"no images match {', '.join(self.images)} under {root}")
        for image in image_paths:
            folder = os.path.relpath(image.parent, root)
            mask = Path(os.path.normpath(root / self.masks.format(stem=image.stem, dir=folder)))
            if mask.is_file():
                samples.append(EvalSample(image.stem, image, mask))
            else:
                problems.append(f"{image}: no mask at {mask}")
        return samples, problems

    def read(self, sample: EvalSample) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) class-id mask of one sample."""
        try:
            image, _, _ = read_image(sample.image_path)
        except IngestError as error:  # corrupt, truncated, unsupported: its message does not name the file
            raise DatasetError(f"{sample.image_path}: {error}") from error
        stored = read_mask(sample.mask_path)
        mask = self.labels.apply(stored, len(self.class_names), sample.mask_path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(f"{sample.mask_path}: mask {mask.shape} and image {image.shape[:2]} differ in size")
        return image, mask


@dataclass
class Benchmark:
    name: str
    train_taxonomy: str
    datasets: list[DatasetSpec]


def default_definitions() -> Path:
    return Path(str(resources.files("piseg.evaluation") / "benchmarks.yaml"))


def load_definitions(path: Path | None = None) -> dict:
    path = path or default_definitions()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DatasetError(f"{path}: cannot read the benchmark definitions ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise DatasetError(f"{path}: expected a 'datasets' mapping (and 'benchmarks')")
    data["_path"] = str(path)
    return data


def dataset_spec(definitions: dict, name: str) -> DatasetSpec:
    where = definitions["_path"]
    entry = definitions["datasets"].get(name)
    if entry is None:
        raise DatasetError(f"{where}: no dataset {name!r} (have {', '.join(sorted(definitions['datasets']))})")
    missing = {"taxonomy", "images", "masks"} - set(entry)
    if missing:
        raise DatasetError(f"{where}: dataset {name!r} lacks {', '.join(sorted(missing))}")
    try:
        taxonomy = load_taxonomy(entry["taxonomy"])
    except TaxonomyError as error:
        raise DatasetError(f"{where}: dataset {name!r}: {error}") from error
    split = entry.get("paper_split")
    if split is not None:  # Table XI's split as the paper states it: checked here, before any evaluation
        named = [c for group in ("seen", "unseen") for c in (split.get(group) or [])] if isinstance(split, dict) else []
        if not named or set(split) != {"seen", "unseen"} or set(named) - set(taxonomy.names):
            raise DatasetError(
                f"{where}: dataset {name!r}: paper_split takes seen and unseen lists of its classes "
                f"({', '.join(taxonomy.names)})"
            )
    images = entry["images"] if isinstance(entry["images"], list) else [entry["images"]]
    return DatasetSpec(
        name, taxonomy, images, entry["masks"], label_rule(entry.get("labels") or {}, f"{where}: dataset {name!r}")
    )


def label_rule(data: dict, where: str) -> LabelRule:
    unknown = set(data) - {"map", "default", "threshold", "palette"}
    if unknown or len({"map", "threshold", "palette"} & set(data)) > 1:
        raise DatasetError(f"{where}: labels take one of map / threshold / palette (got {', '.join(sorted(data))})")
    palette = None
    if "palette" in data:
        palette = {
            tuple(int(v) for v in str(colour).split(",")): int(index) for colour, index in data["palette"].items()
        }
    mapping = {int(k): int(v) for k, v in data["map"].items()} if "map" in data else None
    threshold = data.get("threshold")
    if threshold is not None and threshold != "auto" and not (isinstance(threshold, int) and threshold >= 1):
        raise DatasetError(f"{where}: threshold must be a positive integer or 'auto', got {threshold!r}")
    return LabelRule(map=mapping, default=data.get("default"), threshold=threshold, palette=palette)


def load_benchmark(name: str, definitions: dict, only: list[str] | None = None) -> Benchmark:
    """A named benchmark, or a single dataset name as a one-dataset benchmark."""
    benchmarks = definitions.get("benchmarks") or {}
    if name in benchmarks:
        entry = benchmarks[name]
        names, train = list(entry["datasets"]), entry.get("train_taxonomy", "ovrsis95k")
    elif name in definitions["datasets"]:
        names, train = [name], "ovrsis95k"
    else:
        raise DatasetError(
            f"{definitions['_path']}: no benchmark or dataset {name!r} (benchmarks: {', '.join(sorted(benchmarks))})"
        )
    if only:
        unknown = set(only) - set(names)
        if unknown:
            raise DatasetError(f"{name} has no dataset {', '.join(sorted(unknown))} (has {', '.join(names)})")
        names = [n for n in names if n in only]
    return Benchmark(name, train, [dataset_spec(definitions, n) for n in names])


def resolution_group(image: np.ndarray) -> str:
    return "low" if image.shape[0] * image.shape[1] < LOW_RESOLUTION_PIXELS else "high"
