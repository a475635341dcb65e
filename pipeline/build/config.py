"""The build configuration: one validated YAML file holds everything a build depends on.

    inputs: [imagery/]                 # rasters or folders
    captions: captions.jsonl           # optional: existing captions (tiles it lacks are captioned)
    taxonomy: ovrsis95k                # bundled name or YAML path
    models: default                    # default | fast | best | tiny | models YAML (pipeline/models/config.py)
    output: out/                       # shards, manifest, masks, records, reports
    storage: out/.cache                # the stage cache (resume and selective reruns) [default: OUTPUT/.cache]
    tiling: {tile_size: 1024, overlap: 0, bands: null, stretch: auto, min_valid_fraction: 0.0, max_pixels: 2500000000}
                                       # max_pixels: a raster whose header claims more is quarantined unread
    matching: {threshold: 0.9229, margin: 0.06}
    merge: {min_area: 16, fill_holes: false, background: auto}   # auto: unclaimed pixels -> the taxonomy's background
                                       # class (propose: false) if it has one; ignore: 255
    selection: {target_tiles: 95000, quota_per_category: null, drop_unlabeled: true, domain_weight: 1.0,
                pixel_weight: 0.25}    # N tiles balanced over categories and domains (pipeline/dataset/selection.py);
                                       # target_tiles: all keeps every labelled tile
    shards: {max_samples: 1000, max_bytes: 1073741824, lossless: true, jpeg_quality: 95, val_fraction: 0.1, seed: 0}
                                       # lossless: whole JPEG/PNG sources keep their bytes, other tiles
                                       # lossless WebP; false: JPEG at jpeg_quality (a second lossy generation)
                                       # keep_private_fields: false (default): sample JSON and manifest carry
                                       # paths relative to the inputs and pseudonymous reviewers (to publish)
    batch_size: 32                     # tiles per task (one task run per batch: ~30 ms of orchestration)
    overlays: false                    # quick-look overlay PNGs (off: a full-size PNG a tile would cost
                                       # about as much disk as the masks; `ovrsis annotate` writes them)
    runner: {kind: threads, workers: 2, address: null}   # threads | processes | dask | ray
    audit: {pull: false, push_sample: 0, uncertain: 0, unlabelled: 0, seed: 0, project: null, url: null}
    gpu_concurrency: 1                 # model stages running at once in one process

`merge`, `selection` and `shards` are the pipeline's own configuration classes (MergeConfig,
SelectionConfig, ShardConfig: one definition each, validated here by pydantic); `tiling` gathers
TilingConfig, BandRule and the raster size limit, with their defaults. Relative paths are resolved
against the configuration file's folder. Everything is checked before
any model loads: inputs exist, the output folder is writable, the taxonomy and models config load.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ovrsis.errors import BuildConfigError
from pipeline.build.batching import TASK_BATCH
from pipeline.dataset.selection import SelectionConfig
from pipeline.dataset.shards import ShardConfig
from pipeline.files.layout import cache_dir
from pipeline.models.presets import PRESETS
from pipeline.raster.tiling import MAX_PIXELS, BandRule, Stretch, TilingConfig
from pipeline.stages.merge import MergeConfig
from taxonomy.matcher import DEFAULT_MARGIN, DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from pipeline.build.annotate import AnnotateConfig

MIN_FREE_BYTES = 100 * 2**20


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Tiling(_Section):
    """TilingConfig and BandRule in one YAML section, with their defaults."""

    tile_size: int = TilingConfig.tile_size
    overlap: int = TilingConfig.overlap
    bands: list[int] | None = None
    stretch: Stretch = BandRule.stretch
    min_valid_fraction: float = TilingConfig.min_valid_fraction
    max_pixels: int = Field(MAX_PIXELS, gt=0)


class Matching(_Section):
    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN


class Audit(_Section):
    # before selection: pull Label Studio's reviews into the ledger (OUT/audit/ledger.jsonl) first. The ledger
    # itself is applied by every build, pull or not, so a rebuild never drops a review.
    pull: bool = False
    push_sample: int = Field(0, ge=0)  # after sharding: push this many tiles (stratified by domain) for review
    uncertain: int = Field(0, ge=0)  # ... and this many least-certain tiles in a second project
    unlabelled: int = Field(0, ge=0)  # ... and this many tiles nothing was proposed for, to label what captions missed
    seed: int = 0
    project: str | None = None  # default "ovrsis audit: <output folder name>"
    url: str | None = None  # default LABEL_STUDIO_URL or http://127.0.0.1:8089; token from the environment


class Runner(_Section):
    kind: Literal["threads", "processes", "dask", "ray"] = "threads"
    workers: int = Field(2, ge=1)
    address: str | None = None  # an existing Dask scheduler or Ray cluster


class BuildConfig(_Section):
    inputs: list[Path]
    captions: Path | None = None
    taxonomy: str = "ovrsis95k"
    models: str = "default"
    output: Path
    storage: Path | None = None
    tiling: Tiling = Tiling()
    matching: Matching = Matching()
    merge: MergeConfig = MergeConfig()
    selection: SelectionConfig = SelectionConfig()
    shards: ShardConfig = ShardConfig()
    batch_size: int = Field(TASK_BATCH, ge=1)  # tiles per task (pipeline/build/batching.py says why not 8)
    overlays: bool = False
    runner: Runner = Runner()
    audit: Audit = Audit()
    gpu_concurrency: int = Field(1, ge=1)

    @field_validator("inputs")
    @classmethod
    def _some_inputs(cls, value: list[Path]) -> list[Path]:
        if not value:
            raise ValueError("at least one input raster or folder is needed")
        return value

    @property
    def storage_dir(self) -> Path:
        return self.storage or cache_dir(self.output)

    def annotate_config(self) -> AnnotateConfig:
        from pipeline.build.annotate import AnnotateConfig  # the stages (and torch) only when a build runs

        t = self.tiling
        return AnnotateConfig(
            tiling=TilingConfig(t.tile_size, t.overlap, t.min_valid_fraction),
            bands=BandRule(bands=tuple(t.bands) if t.bands else None, stretch=t.stretch),
            merge=self.merge,
            batch_size=self.batch_size,
            match_threshold=self.matching.threshold,
            match_margin=self.matching.margin,
            max_pixels=t.max_pixels,
            write_overlay=self.overlays,
            model_slots=self.gpu_concurrency,
        )

    def fingerprint(self) -> dict:
        """What the shards depend on (recorded in the manifest): no output or cache paths."""
        return self.model_dump(
            mode="json", exclude={"output", "storage", "runner", "gpu_concurrency", "batch_size", "audit", "overlays"}
        )


def load_build_config(path: str | Path) -> BuildConfig:
    """Read and validate; relative paths are resolved against the file's folder. Parsed once per process
    and version of the file: `ovrsis build` checks the configuration before Prefect starts, and the flow
    it then runs asks for the same file."""
    path = Path(path)
    if not path.is_file():
        raise BuildConfigError(f"{path}: configuration file not found")
    stat = path.stat()
    return _parsed(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _parsed(path: Path, modified: int, size: int) -> BuildConfig:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise BuildConfigError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise BuildConfigError(f"{path}: expected a mapping of settings")
    try:
        config = BuildConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise BuildConfigError(f"{path}: {problems}") from error
    base = path.resolve().parent
    updates = {
        "inputs": [_resolve(base, p) for p in config.inputs],
        "captions": _resolve(base, config.captions) if config.captions else None,
        "output": _resolve(base, config.output),
        "storage": _resolve(base, config.storage) if config.storage else None,
    }
    if config.taxonomy.endswith((".yaml", ".yml")):
        updates["taxonomy"] = str(_resolve(base, Path(config.taxonomy)))
    if config.models not in (*PRESETS, "tiny"):
        updates["models"] = str(_resolve(base, Path(config.models)))
    return config.model_copy(update=updates)


def check_before_models(config: BuildConfig) -> None:
    """Fail fast, before any model loads: inputs, output folder, disk space, taxonomy, models config."""
    from pipeline.models.config import load_models_config
    from taxonomy.loader import TaxonomyError, load_taxonomy

    for path in config.inputs:
        if not path.exists():
            raise BuildConfigError(f"input {path} does not exist")
    if config.captions and not config.captions.is_file():
        raise BuildConfigError(f"captions file {config.captions} does not exist")
    for folder in (config.output, config.storage_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BuildConfigError(f"cannot create {folder}: {error.strerror}") from error
        if not os.access(folder, os.W_OK):
            raise BuildConfigError(f"{folder} is not writable")
        free = shutil.disk_usage(folder).free
        if free < MIN_FREE_BYTES:
            raise BuildConfigError(
                f"{folder}: only {free / 2**20:.0f} MiB free (need at least {MIN_FREE_BYTES / 2**20:.0f} MiB)"
            )
    try:
        load_taxonomy(config.taxonomy)
        load_models_config(config.models)
    except (TaxonomyError, ValueError, FileNotFoundError) as error:
        raise BuildConfigError(str(error)) from error
    try:
        config.annotate_config()
    except ValueError as error:
        raise BuildConfigError(f"tiling: {error}") from error


def _resolve(base: Path, path: Path) -> Path:
    path = Path(os.path.expanduser(path))
    return path if path.is_absolute() else base / path
