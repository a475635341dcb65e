"""Rebuild a full-size mask from overlapping tile masks and write it as a Cloud-Optimized GeoTIFF.

Rule: every output pixel takes its label from the one tile whose centre is nearest along each
axis; with equal-size tiles that puts each seam in the middle of an overlap, where both tiles see
the most context. Each tile therefore owns a rectangular "core", the cores partition the raster,
and the stitcher writes one core per tile: memory holds one tile at a time, whatever the raster
size. Pixels that no usable tile covers (a quarantined tile) are 255 (ignore).

The cores go into a tiled GeoTIFF first, which GDAL's COG driver then copies with overviews: the COG
driver cannot be written window by window, and buffering a whole mosaic in memory would undo the
one-tile-at-a-time rule. The colour table and class names go on that first GeoTIFF, so the copy keeps
them, as the tile masks do (`pipeline.raster.outputs.style_mask_band`, `write_mask_categories`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window as RioWindow

from pipeline.dataset.records import Window
from pipeline.files.atomic import atomic_path
from pipeline.raster.gdal_env import unlisted
from pipeline.raster.outputs import COG_OPTIONS, style_mask_band, write_mask_categories
from taxonomy.masks import IGNORE_INDEX as IGNORE


def tile_cores(windows: Sequence[Window]) -> list[Window]:
    """The core of each window (same order), in raster coordinates."""
    col_seams = _seams(sorted({(w.col_off, w.width) for w in windows}))
    row_seams = _seams(sorted({(w.row_off, w.height) for w in windows}))
    cores = []
    for w in windows:
        c0, c1 = col_seams[(w.col_off, w.width)]
        r0, r1 = row_seams[(w.row_off, w.height)]
        cores.append(Window(row_off=r0, col_off=c0, height=r1 - r0, width=c1 - c0))
    return cores


def _seams(spans: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
    """Start and end of each span's core along one axis: the midpoint of each overlap."""
    cores = {}
    for i, (start, size) in enumerate(spans):
        previous_end = spans[i - 1][0] + spans[i - 1][1] if i else start
        core_start = start if previous_end <= start else (start + previous_end) // 2
        if i + 1 < len(spans):
            next_start = spans[i + 1][0]
            end = start + size
            core_end = next_start if end <= next_start else (next_start + end) // 2
        else:
            core_end = start + size
        cores[(start, size)] = (core_start, min(core_end, start + size))
    return cores


def stitch_to_geotiff(
    windows: Sequence[Window],
    load_mask: Callable[[int], np.ndarray | None],
    out_path: Path,
    width: int,
    height: int,
    crs: str | None,
    transform: Sequence[float] | None,
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write the stitched mask as a COG; `load_mask(i)` returns tile i's mask, or None for a missing tile.
    `class_names` (value = position) name the classes for GIS tools, as in the tile masks."""
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "nodata": IGNORE,
        "crs": crs,
        "transform": Affine(*transform[:6]) if transform else Affine.identity(),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".part", dir=out_path.parent)
    os.close(descriptor)  # named like the other temporaries, so remove_stale_parts clears it after a crash
    try:
        with unlisted(sidecars=False), rasterio.open(staging, "w", **profile) as out:
            style_mask_band(out, class_names)
            for index, (window, core) in enumerate(zip(windows, tile_cores(windows))):
                if core.width <= 0 or core.height <= 0:
                    continue
                mask = load_mask(index)
                r = core.row_off - window.row_off
                c = core.col_off - window.col_off
                block = (
                    np.full((core.height, core.width), IGNORE, np.uint8)
                    if mask is None
                    else mask[r : r + core.height, c : c + core.width]
                )
                out.write(block, 1, window=RioWindow(core.col_off, core.row_off, core.width, core.height))
        with unlisted(sidecars=False), atomic_path(out_path) as temporary:  # stitched/ holds one a source
            rio_copy(staging, temporary, driver="COG", **COG_OPTIONS)
    finally:
        Path(staging).unlink(missing_ok=True)
    write_mask_categories(out_path, class_names)
    return out_path
