"""Writing masks, GeoTIFFs and quick-look overlays, each atomically (temporary name, then rename).

A crash mid-write leaves a `.NAME.*.part` file that no reader mistakes for a finished output;
`remove_stale_parts` clears them when the next run starts. Finished files get the mode a plain
write would give (0666 less the umask), not mkstemp's private 0600.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

IGNORE = 255
LOCK_NAME = ".writing.lock"


class OutputBusy(RuntimeError):
    """Another process is writing this output folder (a build or an annotate run)."""


@contextmanager
def output_lock(folder: Path, wait: bool = True) -> Iterator[None]:
    """Exclusive use of an output folder while its masks are (re)written: a build or annotate run
    holds it from start to end, so an `ovrsis audit pull` can never apply reviews to masks a running
    build is rewriting. With `wait=False` a held lock raises OutputBusy at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise OutputBusy(f"{folder} is being written by another process (a build or annotate run)") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mask_digest(mask: np.ndarray) -> str:
    """A digest of a mask's values (not of its PNG bytes, which depend on the encoder): how the audit
    tells which proposal a reviewer saw and whether a rebuild changed it."""
    digest = hashlib.sha256(f"{mask.shape}:{mask.dtype}".encode())
    digest.update(np.ascontiguousarray(mask).tobytes())
    return digest.hexdigest()[:24]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that is renamed to it when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.fchmod(descriptor, 0o666 & ~process_umask())
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@cache
def process_umask() -> int:
    """The umask, read once: setting it to read it is not thread-safe, so it is not read per file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_parts(folder: Path) -> list[Path]:
    """Delete the temporaries (`.NAME.*.part`) an interrupted run left in `folder`; returns them."""
    stale = sorted(folder.glob(".*.part")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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
    height, width = mask.shape
    profile = {
        "driver": "COG", "width": width, "height": height, "count": 1, "dtype": "uint8",
        "nodata": IGNORE, "crs": crs, "transform": Affine(*transform[:6]), **COG_OPTIONS,
    }  # fmt: skip
    with atomic_path(path) as temporary:
        with rasterio.open(temporary, "w", **profile) as out:
            out.write(mask, 1)
    return path


def palette(n_classes: int) -> np.ndarray:
    """A fixed colour per class id (stable across runs and machines); ignore is transparent."""
    rng = np.random.default_rng(20260417)
    colours = rng.integers(40, 256, size=(max(n_classes, 1), 3), dtype=np.uint8)
    return colours


def overlay(image: np.ndarray, mask: np.ndarray, n_classes: int, alpha: float = 0.5, untinted: Sequence[int] = ()) -> np.ndarray:
    """Quick-look: the tile with each labelled pixel tinted by its class colour; `untinted` classes (the
    taxonomy's background class) are left as they are, so the objects stand out."""
    colours = palette(n_classes)
    labelled = (mask != IGNORE) & ~np.isin(mask, list(untinted))
    blended = image.astype(np.float32).copy()
    blended[labelled] = (1 - alpha) * blended[labelled] + alpha * colours[np.minimum(mask[labelled], n_classes - 1)]
    return blended.astype(np.uint8)
