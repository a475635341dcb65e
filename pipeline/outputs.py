"""Writing masks, GeoTIFFs and quick-look overlays, each atomically (`pipeline.files.atomic_path`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.files import atomic_path
from pipeline.gdal_env import unlisted
from taxonomy.masks import IGNORE_INDEX as IGNORE


def mask_digest(mask: np.ndarray) -> str:
    """A digest of a mask's values (not of its PNG bytes, which depend on the encoder): how the audit
    tells which proposal a reviewer saw and whether a rebuild changed it."""
    digest = hashlib.sha256(f"{mask.shape}:{mask.dtype}".encode())
    digest.update(np.ascontiguousarray(mask).tobytes())
    return digest.hexdigest()[:24]


def write_png(path: Path, array: np.ndarray) -> Path:
    """uint8 (H, W) or (H, W, 3) as PNG; masks keep their exact values (mode L, no palette)."""
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG", optimize=False, compress_level=6)
    return path


# Cloud-Optimized GeoTIFF settings for every mask GeoTIFF (tile masks and stitched mosaics): GIS tools
# and STAC clients read COGs by HTTP range requests, and overviews let a whole mosaic show at once.
# Overviews take the most frequent label (`mode`): class ids are labels, never averaged.
COG_OPTIONS = {"compress": "deflate", "blocksize": 256, "overview_resampling": "mode"}


def write_mask_geotiff(path: Path, mask: np.ndarray, crs: str | None, transform: Sequence[float]) -> Path:
    """The tile's mask on the tile's own grid (same CRS and affine transform, nodata 255), written as a
    Cloud-Optimized GeoTIFF by GDAL's COG driver (rasterio buffers the tile in memory: tiles are small)."""
    import rasterio  # GDAL only where a GeoTIFF is written: readers of records and ledgers import this module
    from affine import Affine

    height, width = mask.shape
    profile = {
        "driver": "COG",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "nodata": IGNORE,
        "crs": crs,
        "transform": Affine(*transform[:6]),
        **COG_OPTIONS,
    }
    with unlisted(sidecars=False), atomic_path(path) as temporary:  # masks/ holds two files a tile
        with rasterio.open(temporary, "w", **profile) as out:
            out.write(mask, 1)
    return path


def palette(n_classes: int) -> np.ndarray:
    """A fixed colour per class id (stable across runs and machines); ignore is transparent."""
    rng = np.random.default_rng(20260417)
    colours = rng.integers(40, 256, size=(max(n_classes, 1), 3), dtype=np.uint8)
    return colours


def overlay(
    image: np.ndarray, mask: np.ndarray, n_classes: int, alpha: float = 0.5, untinted: Sequence[int] = ()
) -> np.ndarray:
    """Quick-look: the tile with each labelled pixel tinted by its class colour; `untinted` classes (the
    taxonomy's background class) are left as they are, so the objects stand out."""
    colours = palette(n_classes)
    labelled = (mask != IGNORE) & ~np.isin(mask, list(untinted))
    blended = image.astype(np.float32).copy()
    blended[labelled] = (1 - alpha) * blended[labelled] + alpha * colours[np.minimum(mask[labelled], n_classes - 1)]
    return blended.astype(np.uint8)
