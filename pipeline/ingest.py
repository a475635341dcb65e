"""Ingest any remote-sensing raster as 8-bit RGB tiles, reading window by window.

Band rule (documented in the README and recorded per tile):
- bands: explicit 1-based `bands=(r, g, b)`, else the bands whose colour interpretation is red,
  green, blue, else bands 1, 2, 3; a raster with fewer than 3 bands is panchromatic: band 1 is
  replicated to R, G and B.
- stretch: `auto` leaves uint8 as it is and maps every other type (uint16, int16, float) with a
  per-band percentile stretch (2-98 % by default) to 0-255. The percentiles come from one decimated
  read of the whole raster (at most ~1024 px on its long side), so every tile of a raster gets the
  same mapping and no tile's histogram changes its neighbour's colours.
- nodata: pixels the dataset mask marks invalid (nodata value, alpha or internal mask) are black in
  the image and become 255 (ignore) in every mask; a tile with no valid pixel is quarantined.

Large rasters are never read whole: tiles come from windowed reads, so memory stays flat.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window as RioWindow
from rasterio.windows import transform as window_transform

from pipeline.records import Quarantine, SourceInfo, TileRecord, Window, tile_key

SUPPORTED_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".img", ".vrt")
SIDECAR_SUFFIXES = (".xml", ".aux", ".ovr", ".json", ".jsonl", ".geojson", ".txt", ".md", ".prj", ".tfw", ".wld")
STATS_MAX_SIDE = 1024


class IngestError(ValueError):
    """A raster that cannot be tiled; the message says why."""


@dataclass(frozen=True)
class BandRule:
    bands: tuple[int, ...] | None = None  # 1-based; None chooses automatically (see module docstring)
    stretch: Literal["auto", "none", "percentile"] = "auto"
    low_percentile: float = 2.0
    high_percentile: float = 98.0


@dataclass(frozen=True)
class TilingConfig:
    tile_size: int = 1024
    overlap: int = 0
    min_valid_fraction: float = 0.0  # tiles with a smaller share of valid pixels are quarantined

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise ValueError(f"tile_size must be at least 16 pixels, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {self.overlap}")


@dataclass
class Tile:
    """An ingested tile: the 8-bit RGB pixels, which pixels are valid, and its record."""

    image: np.ndarray  # (H, W, 3) uint8
    valid: np.ndarray  # (H, W) bool
    record: TileRecord


def find_rasters(path: Path) -> tuple[list[Path], list[TileRecord]]:
    """Rasters under a folder (recursively) or the single file given. Other files come back as
    quarantined records, so the summary lists them; sidecars (.xml, .ovr, ...) are skipped quietly."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: input not found")
    candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    rasters, unsupported = [], []
    for candidate in candidates:
        suffix = candidate.suffix.lower()
        if suffix in SUPPORTED_SUFFIXES:
            rasters.append(candidate)
        elif candidate == path or not _is_sidecar(candidate):
            unsupported.append(quarantined_file(candidate, f"unsupported format {suffix or '(no extension)'}"))
    return rasters, unsupported


def source_stems(rasters: list[Path]) -> dict[Path, str]:
    """The name each raster's tile keys start with: its stem, or its name with dots replaced when two
    files share a stem (a.tif and a.png). Never a dot: WebDataset reads dots as extensions."""
    counts = Counter(p.stem for p in rasters)
    return {p: (p.stem if counts[p.stem] == 1 else p.name).replace(".", "_") for p in rasters}


def _is_sidecar(path: Path) -> bool:
    """Files that travel with imagery (metadata, licences, world files) are not inputs."""
    name = path.name.lower()
    return name.startswith((".", "license", "licence", "readme", "copying")) or path.suffix.lower() in SIDECAR_SUFFIXES


def plan_windows(width: int, height: int, tile_size: int, overlap: int) -> list[Window]:
    """Tiles of `tile_size` stepping by `tile_size - overlap`; the last row and column are moved
    back to end at the raster's edge (so no tile is padded), and a raster smaller than a tile is
    one tile of its own size."""
    if width <= 0 or height <= 0:
        return []
    step = tile_size - overlap

    def offsets(size: int) -> list[int]:
        if size <= tile_size:
            return [0]
        starts = list(range(0, size - tile_size + 1, step))
        if starts[-1] + tile_size < size:
            starts.append(size - tile_size)
        return starts

    return [
        Window(row_off=r, col_off=c, height=min(tile_size, height), width=min(tile_size, width))
        for r in offsets(height)
        for c in offsets(width)
    ]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class RasterSource:
    """One open raster with its band mapping and stretch fixed; yields tiles by windowed reads."""

    def __init__(self, path: Path, rule: BandRule = BandRule(), source_stem: str | None = None) -> None:
        self.path = path
        self.rule = rule
        self.stem = source_stem or path.stem
        if path.stat().st_size == 0:
            raise IngestError("zero-byte file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dataset = rasterio.open(path)
        except RasterioIOError as error:
            raise IngestError(f"cannot be read as a raster ({_first_line(error)})") from error
        try:
            self._check()
            self.bands = self._choose_bands()
            self.ranges = self._stretch_ranges()
        except BaseException:
            self.dataset.close()
            raise

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc) -> None:
        self.dataset.close()

    @cached_property
    def sha256(self) -> str:
        """Hashed only when a record needs it: readers that just re-read pixels skip the whole-file read."""
        return file_sha256(self.path)

    @property
    def georeferenced(self) -> bool:
        return self.dataset.crs is not None

    def tiles(self, config: TilingConfig) -> Iterator[Tile | TileRecord]:
        """Each window as a Tile, or as a quarantined TileRecord saying why it cannot be used."""
        for window in plan_windows(self.dataset.width, self.dataset.height, config.tile_size, config.overlap):
            record = TileRecord(key=tile_key(self.stem, window.row_off, window.col_off), source=self._source(window))
            try:
                image, valid = self.read(window)
            except (RasterioIOError, ValueError) as error:
                record.quarantine = Quarantine(stage="ingest", reason=f"read failed: {_first_line(error)}")
                yield record
                continue
            valid_fraction = float(valid.mean()) if valid.size else 0.0
            if not valid.any():
                record.quarantine = Quarantine(stage="ingest", reason="all pixels are nodata")
                yield record
            elif valid_fraction < config.min_valid_fraction:
                reason = f"only {valid_fraction:.1%} valid pixels (< {config.min_valid_fraction:.0%})"
                record.quarantine = Quarantine(stage="ingest", reason=reason)
                yield record
            else:
                yield Tile(image=image, valid=valid, record=record)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        rio_window = RioWindow(window.col_off, window.row_off, window.width, window.height)
        data = self.dataset.read(list(self.bands), window=rio_window)
        valid = self.dataset.dataset_mask(window=rio_window) > 0
        image = np.stack([self._to_uint8(band, i) for i, band in enumerate(data)], axis=-1)
        image[~valid] = 0
        return image, valid

    def _check(self) -> None:
        dataset = self.dataset
        if dataset.width == 0 or dataset.height == 0:
            raise IngestError(f"raster has zero size ({dataset.width}x{dataset.height})")
        if dataset.count == 0:
            raise IngestError("raster has no bands")
        if np.dtype(dataset.dtypes[0]).kind == "c":
            raise IngestError(f"complex data type {dataset.dtypes[0]} is not imagery")
        if self.rule.bands and max(self.rule.bands) > dataset.count:
            raise IngestError(f"band mapping {self.rule.bands} asks for more than the {dataset.count} band(s) present")

    def _choose_bands(self) -> tuple[int, int, int]:
        if self.rule.bands:
            bands = tuple(self.rule.bands)
            return bands * 3 if len(bands) == 1 else bands[:3]  # type: ignore[return-value]
        count = self.dataset.count
        if count < 3:
            return (1, 1, 1)
        interp = list(self.dataset.colorinterp)
        wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        if all(c in interp for c in wanted):
            return tuple(interp.index(c) + 1 for c in wanted)  # type: ignore[return-value]
        return (1, 2, 3)

    def _stretch_mode(self) -> str:
        if self.rule.stretch == "auto":
            return "none" if self.dataset.dtypes[0] == "uint8" else "percentile"
        return self.rule.stretch

    def _stretch_ranges(self) -> list[tuple[float, float]] | None:
        if self._stretch_mode() == "none":
            return None
        dataset = self.dataset
        scale = max(dataset.width, dataset.height) / STATS_MAX_SIDE
        shape = (max(1, round(dataset.height / max(scale, 1))), max(1, round(dataset.width / max(scale, 1))))
        unique_bands = sorted(set(self.bands))
        sample = dataset.read(unique_bands, out_shape=(len(unique_bands), *shape), resampling=Resampling.nearest)
        valid = dataset.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
        ranges = {}
        for band, values in zip(unique_bands, sample):
            values = values[valid & np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values[valid]
            if values.size == 0:
                ranges[band] = (0.0, 1.0)
                continue
            low, high = np.percentile(values, [self.rule.low_percentile, self.rule.high_percentile])
            ranges[band] = (float(low), float(high) if high > low else float(low) + 1.0)
        return [ranges[b] for b in self.bands]

    def _to_uint8(self, band: np.ndarray, position: int) -> np.ndarray:
        if self.ranges is None:
            return band.astype(np.uint8, copy=False) if band.dtype == np.uint8 else np.clip(band, 0, 255).astype(np.uint8)
        low, high = self.ranges[position]
        scaled = (band.astype(np.float32) - low) * (255.0 / (high - low))
        return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8)

    def _source(self, window: Window) -> SourceInfo:
        dataset = self.dataset
        rio_window = RioWindow(window.col_off, window.row_off, window.width, window.height)
        mode = self._stretch_mode()
        return SourceInfo(
            path=str(self.path),
            sha256=self.sha256,
            window=window,
            crs=dataset.crs.to_wkt() if dataset.crs else None,
            transform=list(window_transform(rio_window, dataset.transform))[:6] if self.georeferenced else None,
            band_mapping=list(self.bands),
            stretch="none" if mode == "none" else f"percentile {self.rule.low_percentile:g}-{self.rule.high_percentile:g} per band",
            nodata=dataset.nodata,
            dtype=dataset.dtypes[0],
            raster_width=dataset.width,
            raster_height=dataset.height,
        )


def quarantined_file(path: Path, reason: str) -> TileRecord:
    """A record standing for a whole file that could not be tiled."""
    source = SourceInfo(
        path=str(path), sha256=file_sha256(path) if path.is_file() else "", window=Window(row_off=0, col_off=0, height=0, width=0),
        band_mapping=[], stretch="none", dtype="unknown", raster_width=0, raster_height=0,
    )  # fmt: skip
    return TileRecord(key=tile_key(path.stem, 0, 0), source=source, quarantine=Quarantine(stage="ingest", reason=reason))


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
