"""Evaluation datasets from local copies: where the files are, how mask values become class ids, and which
datasets form a benchmark, all read from a YAML definition (`piseg/evaluation/benchmarks.yaml` by default)."""

from __future__ import annotations

import glob
import os
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovrsis.errors import DatasetError
from pipeline.raster.ingest import IngestError
from piseg.inference.predict import read_image
from piseg.yaml_files import read_yaml
from taxonomy.loader import Taxonomy, TaxonomyError, load_taxonomy
from taxonomy.masks import IGNORE_INDEX as IGNORE
from taxonomy.masks import values_outside

LOW_RESOLUTION_PIXELS = 800 * 800  # Table XIII: native size below 800x800 is "low resolution"
TOP_LEVEL_KEYS = ("datasets", "benchmarks")
DATASET_KEYS = ("taxonomy", "images", "masks", "labels", "paper_split")
REQUIRED_DATASET_KEYS = ("taxonomy", "images", "masks")
LABEL_KEYS = ("map", "default", "threshold", "palette")
BENCHMARK_KEYS = ("datasets", "train_taxonomy", "train_dataset", "resolution_groups")
MASK_FIELDS = ("stem", "dir")  # what a dataset's `masks` pattern may name


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
    """The benchmark definitions file as a mapping (its path under "_path", for messages). Only its outline
    is checked here: each dataset and benchmark entry is checked where it is used (`dataset_spec`,
    `load_benchmark`), before any evaluation, so a broken entry blocks only the runs that need it."""
    path = path or default_definitions()
    data = read_yaml(path, "benchmark definitions", DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with 'datasets' (and 'benchmarks'), got {shown(data)}")
    if not isinstance(data.get("datasets"), dict):
        raise DatasetError(f"{path}: datasets: expected a mapping of dataset names, got {shown(data.get('datasets'))}")
    unknown = [str(key) for key in data if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise DatasetError(f"{path}: unknown key {', '.join(unknown)} (known: {', '.join(TOP_LEVEL_KEYS)})")
    if data.get("benchmarks") is not None and not isinstance(data["benchmarks"], dict):
        raise DatasetError(
            f"{path}: benchmarks: expected a mapping of benchmark names, got {shown(data['benchmarks'])}"
        )
    for section in TOP_LEVEL_KEYS:
        odd = [key for key in data.get(section) or {} if not isinstance(key, str)]
        if odd:
            raise DatasetError(f"{path}: {section}: names must be strings, got {odd[0]!r}")
    data["_path"] = str(path)
    return data


def shown(value: Any) -> str:
    """VALUE for an error line: its repr, cut short (a pasted section can be long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def string_list(value: Any) -> list[str] | None:
    """VALUE when it is a non-empty list of strings, else None."""
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    return None


def mask_pattern_problem(pattern: str) -> str | None:
    """What is wrong with a `masks` pattern, or None. Why here: a bad pattern would otherwise fail on the
    first image, after the model is loaded, with a KeyError or a format error instead of the file's name."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as error:
        return f"masks {pattern!r}: {error}"
    odd = [name for name in names if name not in MASK_FIELDS]
    if odd:
        return f"masks {pattern!r} names {{{odd[0]}}}; it may name only {{stem}} and {{dir}}"
    return None


def dataset_spec(definitions: dict, name: str) -> DatasetSpec:
    """The dataset NAME of the definitions, every key checked (types, unknown keys, its taxonomy loaded)."""
    path = definitions["_path"]
    where = f"{path}: dataset {name!r}"
    entry = definitions["datasets"].get(name)
    if entry is None:
        raise DatasetError(f"{path}: no dataset {name!r} (have {', '.join(sorted(definitions['datasets']))})")
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected a mapping with {', '.join(REQUIRED_DATASET_KEYS)}, got {shown(entry)}")
    unknown = [str(key) for key in entry if key not in DATASET_KEYS]
    if unknown:
        raise DatasetError(f"{where}: unknown key {', '.join(unknown)} (known: {', '.join(DATASET_KEYS)})")
    missing = [key for key in REQUIRED_DATASET_KEYS if key not in entry]
    if missing:
        raise DatasetError(f"{where} lacks {', '.join(missing)}")
    if not isinstance(entry["taxonomy"], str):
        raise DatasetError(
            f"{where}: taxonomy must be a bundled taxonomy name or a YAML path, got {shown(entry['taxonomy'])}"
        )
    images = string_list([entry["images"]] if isinstance(entry["images"], str) else entry["images"])
    if images is None:
        raise DatasetError(f"{where}: images must be a glob or a list of globs, got {shown(entry['images'])}")
    if not isinstance(entry["masks"], str):
        raise DatasetError(
            f"{where}: masks must be a path pattern with {{stem}} (and {{dir}}), got {shown(entry['masks'])}"
        )
    if problem := mask_pattern_problem(entry["masks"]):
        raise DatasetError(f"{where}: {problem}")
    try:
        taxonomy = load_taxonomy(entry["taxonomy"])
    except TaxonomyError as error:
        raise DatasetError(f"{where}: {error}") from error
    split = entry.get("paper_split")
    if split is not None:  # Table XI's split as the paper states it: checked here, before any evaluation
        lists = [string_list(split.get(group)) for group in ("seen", "unseen")] if isinstance(split, dict) else [None]
        named = [c for group in lists for c in group or []]
        if None in lists or set(split) != {"seen", "unseen"} or set(named) - set(taxonomy.names):
            raise DatasetError(
                f"{where}: paper_split takes seen and unseen lists of its classes ({', '.join(taxonomy.names)})"
            )
    labels = entry.get("labels")
    if labels is not None and not isinstance(labels, dict):
        raise DatasetError(
            f"{where}: labels must be a mapping with one of map / threshold / palette, got {shown(labels)}"
        )
    return DatasetSpec(name, taxonomy, images, entry["masks"], label_rule(labels or {}, where, len(taxonomy.names)))


def class_id(value: Any, classes: int) -> bool:
    """Whether VALUE is a class id of a vocabulary of CLASSES names, or the ignore value."""
    return isinstance(value, int) and not isinstance(value, bool) and (0 <= value < classes or value == IGNORE)


def label_rule(data: dict, where: str, classes: int) -> LabelRule:
    """The dataset's `labels` entry checked: every stored value, colour and class id is of the right type and
    range, so that a typo is refused with the file's name before any evaluation, never met on a mask."""
    unknown = set(data) - set(LABEL_KEYS)
    if unknown or len({"map", "threshold", "palette"} & set(data)) > 1:
        raise DatasetError(f"{where}: labels take one of map / threshold / palette (got {', '.join(map(str, data))})")
    ids = f"class ids 0-{classes - 1} or {IGNORE}"
    palette = None
    if "palette" in data:
        if not isinstance(data["palette"], dict):
            raise DatasetError(f"{where}: palette must map 'r,g,b' colours to class ids, got {shown(data['palette'])}")
        palette = {}
        for colour, index in data["palette"].items():
            parts = str(colour).split(",")
            channels = [int(part) for part in parts if part.strip().isdigit()]
            if len(parts) != 3 or len(channels) != 3 or max(channels) > 255:
                raise DatasetError(f"{where}: palette colour {colour!r} is not 'r,g,b' with values 0-255")
            if not class_id(index, classes):
                raise DatasetError(f"{where}: palette colour {colour!r} maps to {index!r}; use {ids}")
            palette[tuple(channels)] = index
    mapping = None
    if "map" in data:
        if not isinstance(data["map"], dict):
            raise DatasetError(f"{where}: map must map stored values to class ids, got {shown(data['map'])}")
        mapping = {}
        for value, index in data["map"].items():
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise DatasetError(f"{where}: map key {value!r} is not a stored mask value (an integer from 0)")
            if not class_id(index, classes):
                raise DatasetError(f"{where}: map sends {value} to {index!r}; use {ids}")
            mapping[value] = index
    default = data.get("default")
    if default is not None and (mapping is None or not class_id(default, classes)):
        raise DatasetError(f"{where}: default goes with map and must be one of the {ids}, got {default!r}")
    threshold = data.get("threshold")
    positive = isinstance(threshold, int) and not isinstance(threshold, bool) and threshold >= 1
    if threshold is not None and threshold != "auto" and not positive:
        raise DatasetError(f"{where}: threshold must be a positive integer or 'auto', got {threshold!r}")
    return LabelRule(map=mapping, default=default, threshold=threshold, palette=palette)


def benchmark_entry(definitions: dict, name: str) -> tuple[list[str], str]:
    """The benchmark NAME's datasets and training taxonomy, its entry checked: its datasets are defined, its
    training taxonomy loads, and its train_dataset and resolution groups name only its datasets (the report
    relies on each, after the evaluation: a problem found there would cost the whole run)."""
    where = f"{definitions['_path']}: benchmark {name!r}"
    entry = definitions["benchmarks"][name]
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected a mapping with datasets (and train_taxonomy), got {shown(entry)}")
    unknown = [str(key) for key in entry if key not in BENCHMARK_KEYS]
    if unknown:
        raise DatasetError(f"{where}: unknown key {', '.join(unknown)} (known: {', '.join(BENCHMARK_KEYS)})")
    names = string_list(entry.get("datasets"))
    if names is None:
        raise DatasetError(f"{where}: datasets must be a list of dataset names, got {shown(entry.get('datasets'))}")
    undefined = [n for n in names if n not in definitions["datasets"]]
    if undefined:
        raise DatasetError(f"{where}: no dataset {undefined[0]!r} (have {', '.join(sorted(definitions['datasets']))})")
    if len(set(names)) != len(names):
        raise DatasetError(f"{where}: datasets repeat: {', '.join(names)}")
    train = entry.get("train_taxonomy", "ovrsis95k")
    if not isinstance(train, str):
        raise DatasetError(f"{where}: train_taxonomy must be a taxonomy name or YAML path, got {shown(train)}")
    try:
        load_taxonomy(train)
    except TaxonomyError as error:
        raise DatasetError(f"{where}: train_taxonomy: {error}") from error
    if "train_dataset" in entry and entry["train_dataset"] not in names:
        raise DatasetError(f"{where}: train_dataset {entry['train_dataset']!r} is not one of its datasets")
    groups = entry.get("resolution_groups")
    if groups is not None:
        lists = {group: string_list(members) for group, members in groups.items()} if isinstance(groups, dict) else {}
        if not lists or any(m is None or set(m) - set(names) for m in lists.values()):
            raise DatasetError(f"{where}: resolution_groups must map group names to lists of its datasets")
    return names, train


def load_benchmark(name: str, definitions: dict, only: list[str] | None = None) -> Benchmark:
    """A named benchmark, or a single dataset name as a one-dataset benchmark; every entry it uses checked."""
    benchmarks = definitions.get("benchmarks") or {}
    if name in benchmarks:
        names, train = benchmark_entry(definitions, name)
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
