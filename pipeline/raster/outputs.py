"""Writing masks, GeoTIFFs and quick-look overlays, each atomically (`pipeline.files.atomic.atomic_path`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from pipeline.files.atomic import atomic_path
from pipeline.raster.gdal_env import unlisted
from taxonomy.masks import IGNORE_INDEX as IGNORE

if TYPE_CHECKING:  # rasterio is imported where a GeoTIFF is written (see write_mask_geotiff)
    from rasterio.io import BufferedDatasetWriter, DatasetWriter


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


def write_mask_geotiff(
    path: Path,
    mask: np.ndarray,
    crs: str | None,
    transform: Sequence[float],
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """The tile's mask on the tile's own grid (same CRS and affine transform, nodata 255), written as a
    Cloud-Optimized GeoTIFF by GDAL's COG driver (rasterio buffers the tile in memory: tiles are small).

    The file carries the overlays' colours as its colour table, so a GIS shows classes, not grey values;
    with `class_names` it also names them (`style_mask_band`, `write_mask_categories`)."""
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
    with unlisted(sidecars=False), atomic_path(path) as temporary:  # masks/ holds three files a tile
        with rasterio.open(temporary, "w", **profile) as out:
            out.write(mask, 1)
            style_mask_band(out, class_names)  # before closing: the COG driver copies it from rasterio's buffer
    write_mask_categories(path, class_names)
    return path


def mask_colormap() -> dict[int, tuple[int, int, int, int]]:
    """The GeoTIFF colour table: every class value in its `palette` colour (the overlays' colours;
    `palette(n)` is the first n of these whatever n is, so no class count is needed), ignore (255)
    black and fully transparent, so nodata never hides what lies under the mask."""
    colours = palette(IGNORE)
    return {value: (*map(int, colours[value]), 255) for value in range(IGNORE)} | {IGNORE: (0, 0, 0, 0)}


def style_mask_band(dataset: DatasetWriter | BufferedDatasetWriter, class_names: Sequence[str] | None) -> None:
    """Colour table and class names on band 1 of a mask GeoTIFF open for writing (rasterio dataset).

    The names go into the band's metadata, which GeoTIFF keeps inside the file (the GDAL_METADATA tag),
    so a COG fetched alone over HTTP still names its classes: `CLASS_024=building`, the value padded to
    three digits because GDAL lists metadata sorted as text. GDAL reads *category names* (what `gdalinfo`
    prints as Categories and QGIS uses as legend labels) only from a side-car: `write_mask_categories`."""
    dataset.write_colormap(1, mask_colormap())
    if class_names:
        dataset.update_tags(1, **{f"CLASS_{value:03d}": name for value, name in enumerate(class_names)})


def write_mask_categories(path: Path, class_names: Sequence[str] | None) -> None:
    """`PATH.aux.xml`: GDAL's side-car (PAM) holding the mask's category names, value = position.

    GDAL's GeoTIFF and COG drivers (3.10 here) keep category names only there, never inside the TIFF,
    and QGIS labels a colour table's entries with them. Written here rather than by GDAL, which would
    name it after the temporary file the mask is written to. Without `class_names` an older side-car is
    removed: its names would describe a mask that is no longer there."""
    sidecar = path.with_name(f"{path.name}.aux.xml")
    if not class_names:
        sidecar.unlink(missing_ok=True)
        return
    root = ElementTree.Element("PAMDataset")
    band = ElementTree.SubElement(root, "PAMRasterBand", band="1")
    categories = ElementTree.SubElement(band, "CategoryNames")
    for name in class_names:
        ElementTree.SubElement(categories, "Category").text = name
    ElementTree.indent(root)
    with atomic_path(sidecar) as temporary:
        temporary.write_bytes(ElementTree.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n")


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
