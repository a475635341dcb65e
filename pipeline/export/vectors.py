"""Instances and semantic regions as polygons in the source CRS: `ovrsis export vectors`.

Two layers, so a GIS user can filter objects and land cover apart:

    regions     one MultiPolygon per (tile, class): the tile's mask polygonised over the tile's *core*
                (pipeline.raster.stitch.tile_cores), so overlapping tiles never double a region and the layer
                matches the stitched mosaic pixel for pixel. Pixels 255 (nodata, ignore) are left out.
    instances   one MultiPolygon per instance the merge kept (its SAM mask, COCO RLE in the record), over
                the whole tile: an object seen by two overlapping tiles appears twice, with each tile key.

Attributes: `tile` (key), `category`, `class_id` (mask value; -1 for an instance whose category is not
in the class names), `score` (the category's match score for regions, the detector score for
instances), `mask_score`, `pixels`, the audit decisions (`audit_category`: pending | accepted |
corrected | discarded, `corrected_to`, `audit_mask`: accepted | corrected), `reviewed` (a human
review replaced the tile's mask; instances are still the proposal's) and `stale`.

Polygons come from rasterio.features.shapes with the tile's affine transform (4-connected pixel
edges), so each polygon's area is its pixel count times |det(transform)|. Tiles without a transform
and a CRS are not exported (they have no place on a map): they are listed as skipped.
A GeoPackage holds both layers; GeoJSON is one layer per file. A build spanning several CRSs gets
one layer (or file) per CRS, suffixed with its EPSG code.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine
from PIL import Image

from pipeline.dataset.records import TileRecord, Window
from pipeline.export.output_folder import ExportError, OutputFolder, georeferenced
from pipeline.files.atomic import atomic_path
from pipeline.raster.stitch import tile_cores
from taxonomy.masks import IGNORE_INDEX as IGNORE

FORMATS = {"gpkg": "GPKG", "geojson": "GeoJSON"}
FIELDS = [
    "tile",
    "category",
    "class_id",
    "score",
    "mask_score",
    "pixels",
    "audit_category",
    "corrected_to",
    "audit_mask",
    "reviewed",
    "stale",
]


@dataclass
class VectorSummary:
    files: list[Path] = field(default_factory=list)
    regions: int = 0
    instances: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tile key, why)


def export_vectors(folder: OutputFolder, dest: Path, fmt: str = "gpkg") -> VectorSummary:
    """Write the regions and instances layers under `dest` (a folder): `vectors.gpkg`, or
    `regions.geojson` and `instances.geojson`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown vector format {fmt!r} (one of {', '.join(FORMATS)})")
    summary = VectorSummary()
    tiles = []
    for record in folder.usable():
        if georeferenced(record):
            tiles.append(record)
        else:
            summary.skipped.append((record.key, "not georeferenced (no transform and CRS): it has no place on a map"))
    if not tiles:
        raise ExportError(
            f"{folder.path / 'records.jsonl'}: no georeferenced tile with a mask to export "
            f"({len(folder.records)} records, {len(summary.skipped)} without a CRS)"
        )
    cores = _cores(folder.records)
    by_crs: dict[str, list[TileRecord]] = defaultdict(list)
    for record in tiles:
        by_crs[record.source.crs].append(record)
    dest.mkdir(parents=True, exist_ok=True)
    for crs, records in sorted(by_crs.items(), key=lambda item: _crs_suffix(item[0])):
        suffix = "" if len(by_crs) == 1 else f"_{_crs_suffix(crs)}"
        regions, instances = _features(folder, records, cores)
        summary.regions += len(regions)
        summary.instances += len(instances)
        for name, features in (("regions", regions), ("instances", instances)):
            path = dest / ("vectors.gpkg" if fmt == "gpkg" else f"{name}{suffix}.geojson")
            _write_layer(path, f"{name}{suffix}", features, crs, FORMATS[fmt], first=path not in summary.files)
            if path not in summary.files:
                summary.files.append(path)
    return summary


def _cores(records: list[TileRecord]) -> dict[str, Window]:
    """Each tile's core within its source raster, from all of that raster's windows (quarantined
    tiles included: their cores are simply not exported, as the stitcher leaves them 255)."""
    by_source: dict[tuple[str, str], list[TileRecord]] = defaultdict(list)
    for record in records:
        by_source[(record.source.path, record.source.sha256)].append(record)
    cores = {}
    for group in by_source.values():
        for record, core in zip(group, tile_cores([r.source.window for r in group])):
            cores[record.key] = core
    return cores


def _features(
    folder: OutputFolder, records: list[TileRecord], cores: dict[str, Window]
) -> tuple[list[dict], list[dict]]:
    import shapely
    from pycocotools import mask as coco_mask
    from rasterio.features import shapes

    def polygons(array: np.ndarray, transform: Affine) -> dict[int, shapely.Geometry]:
        """One MultiPolygon per value; parsed by GEOS from GeoJSON text, as building one shapely
        Polygon per part in Python is ten times slower on speckled masks."""
        found: dict[int, list] = defaultdict(list)
        for geometry, value in shapes(array, mask=array != IGNORE, connectivity=4, transform=transform):
            found[int(value)].append(geometry["coordinates"])
        return {
            value: shapely.from_geojson(json.dumps({"type": "MultiPolygon", "coordinates": parts}))
            for value, parts in found.items()
        }

    regions, instances = [], []
    for record in records:
        tile_transform = Affine(*record.source.transform[:6])
        mask = _read_mask(folder.path / record.semantic_mask)
        audit = _audit(record)
        scores = {c.name: c.score for c in record.categories}
        core, window = cores[record.key], record.source.window
        r0, c0 = core.row_off - window.row_off, core.col_off - window.col_off
        clipped = np.ascontiguousarray(mask[r0 : r0 + core.height, c0 : c0 + core.width])
        core_transform = tile_transform @ Affine.translation(c0, r0)
        for value, geometry in sorted(polygons(clipped, core_transform).items()):
            if value >= len(folder.class_names):
                raise ExportError(
                    f"{folder.path / record.semantic_mask}: mask value {value} "
                    f"outside the {len(folder.class_names)} classes"
                )
            name = folder.class_names[value]
            regions.append(
                _feature(geometry, record, name, value, scores.get(name), None, int((clipped == value).sum()), audit)
            )
        for instance in record.instances:
            if instance.dropped or not instance.mask:
                continue
            decoded = coco_mask.decode({"size": instance.mask["size"], "counts": instance.mask["counts"].encode()})
            array = np.where(decoded > 0, 1, IGNORE).astype(np.uint8)
            found = polygons(array, tile_transform)
            if not found:
                continue
            class_id = folder.class_names.index(instance.category) if instance.category in folder.class_names else -1
            instances.append(
                _feature(
                    found[1],
                    record,
                    instance.category,
                    class_id,
                    instance.detector_score,
                    instance.mask_score,
                    int(decoded.sum()),
                    audit,
                )
            )
    return regions, instances


def _feature(geometry, record: TileRecord, category: str, class_id: int, score, mask_score, pixels: int, audit) -> dict:
    decision = audit.get(f"category:{category}")
    mask_decision = audit.get(f"mask:{category}")
    return {
        "geometry": geometry,
        "tile": record.key,
        "category": category,
        "class_id": class_id,
        "score": np.nan if score is None else float(score),
        "mask_score": np.nan if mask_score is None else float(mask_score),
        "pixels": pixels,
        "audit_category": decision.state if decision else None,
        "corrected_to": decision.corrected_to if decision else None,
        "audit_mask": mask_decision.state if mask_decision else None,
        "reviewed": record.review is not None,
        "stale": bool(record.review and record.review.stale),
    }


def _audit(record: TileRecord) -> dict:
    return {decision.target: decision for decision in record.audit}


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            mask = np.asarray(opened)
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: cannot read the mask ({error})") from None
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ExportError(f"{path}: not a uint8 single-band mask (shape {mask.shape}, {mask.dtype})")
    return mask


def _crs_suffix(crs: str) -> str:
    from rasterio.crs import CRS

    epsg = CRS.from_wkt(crs).to_epsg()
    return f"epsg{epsg}" if epsg else "crs" + hashlib.sha256(crs.encode()).hexdigest()[:8]


def _write_layer(path: Path, layer: str, features: list[dict], crs: str, driver: str, first: bool) -> None:
    """One layer, via pyogrio (GDAL/OGR). A GeoPackage's first layer goes to a temporary file that is
    renamed into place, later layers are added to it; a GeoJSON file is written whole the same way."""
    import pyogrio.raw
    import shapely

    geometry = np.array([shapely.to_wkb(f["geometry"]) for f in features], dtype=object)
    field_data = [np.array([f[name] for f in features], dtype=_dtype(name)) for name in FIELDS]
    write = dict(
        geometry=geometry,
        field_data=field_data,
        fields=FIELDS,
        layer=layer,
        driver=driver,
        geometry_type="MultiPolygon",
        crs=crs,
    )
    if first:
        with atomic_path(path) as temporary, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The filename extension should be", RuntimeWarning)  # the .part name
            os.unlink(temporary)  # GDAL creates the file; an empty one is not a GeoPackage
            pyogrio.raw.write(temporary, **write)
    else:
        pyogrio.raw.write(path, **write)


def _dtype(name: str):
    return {
        "class_id": np.int32,
        "pixels": np.int64,
        "score": np.float64,
        "mask_score": np.float64,
        "reviewed": np.bool_,
        "stale": np.bool_,
    }.get(name, object)
