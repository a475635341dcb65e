"""GeoTIFF label rasters beside their images, tiled as `ovrsis annotate` tiles: the `rasters` layout
of `ovrsis shards import` (pipeline/dataset/shards_import.py).

A labelled scene is often two rasters on one grid: the image (any band count and bit depth the
build reads) and a one-band raster of class values. Each pair is planned into the build's windows
(`RasterSource.window_records`: the same keys, band mapping, stretch and georeference a build gives
its tiles), and each window read from both rasters, so a tile's record keeps its CRS and affine
transform. Pixels the image marks as nodata become 255 (not labelled) in the mask, as in a build
(the importer does it after mapping the values).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window as RioWindow

from ovrsis.errors import LabelRasterError
from pipeline.dataset.records import SourceInfo, Window
from pipeline.raster.gdal_env import unlisted
from pipeline.raster.ingest import BandRule, IngestError, RasterSource
from pipeline.raster.tiling import TilingConfig

RASTER_SUFFIXES = (".tif", ".tiff")


def label_problem(image: rasterio.io.DatasetReader, labels: rasterio.io.DatasetReader) -> str | None:
    """Why `labels` cannot label `image` pixel for pixel, or None."""
    if labels.count != 1:
        return f"{labels.count} bands: a label raster is one band of class values"
    if not np.issubdtype(np.dtype(labels.dtypes[0]), np.integer):
        return f"values of type {labels.dtypes[0]}: class values are integers"
    if (labels.width, labels.height) != (image.width, image.height):
        return f"{labels.width}x{labels.height} px, its image {image.width}x{image.height} px"
    if image.crs and labels.crs and image.crs != labels.crs:
        return "another coordinate reference system than its image"
    if image.crs and labels.crs and not image.transform.almost_equals(labels.transform):
        return "another grid (affine transform) than its image"
    return None


def tile_sources(image: Path, labels: Path, stem: str, tiling: TilingConfig) -> list[SourceInfo]:
    """The windows of one image/label pair, as the build plans them; LabelRasterError (naming the file)
    when the pair cannot be tiled."""
    try:
        with unlisted(), RasterSource(image, BandRule(), stem) as source, rasterio.open(labels) as label_file:
            if problem := label_problem(source.dataset, label_file):
                raise LabelRasterError(f"{labels}: {problem}")
            return [record.source for record in source.window_records(tiling)]
    except IngestError as error:
        raise LabelRasterError(f"{image}: {error}") from error
    except (RasterioIOError, OSError) as error:
        raise LabelRasterError(f"{labels}: cannot read the label raster ({error})") from error


def read_tile(image: Path, labels: Path, stem: str, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The window's 8-bit RGB pixels, its label values and the image's valid pixels (the caller maps
    the values to classes, then marks the invalid ones 255); LabelRasterError naming the file."""
    try:
        pixels, valid = _image(str(image), stem).read(window)
        with unlisted():
            values = _labels(str(labels)).read(
                1, window=RioWindow(window.col_off, window.row_off, window.width, window.height)
            )
    except IngestError as error:
        raise LabelRasterError(f"{image}: {error}") from error
    except (RasterioIOError, OSError) as error:
        raise LabelRasterError(f"{labels}: cannot read the label raster ({error})") from error
    if not valid.any():
        raise LabelRasterError(f"{image}: window {window.row_off},{window.col_off}: all pixels are nodata")
    if values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise LabelRasterError(f"{labels}: values outside 0-255 in window {window.row_off},{window.col_off}")
    return pixels, values.astype(np.uint8), valid


@lru_cache(maxsize=4)
def _image(path: str, stem: str) -> RasterSource:
    """A few rasters kept open: windows of one raster come one after another (keys sort by raster)."""
    with unlisted():
        return RasterSource(Path(path), BandRule(), stem)


@lru_cache(maxsize=4)
def _labels(path: str) -> rasterio.io.DatasetReader:
    with unlisted():
        return rasterio.open(path)
