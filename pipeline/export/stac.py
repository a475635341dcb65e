"""A STAC collection describing an output folder's rasters and masks: `ovrsis export stac`.

One Item per georeferenced tile (its footprint, projection, the mask GeoTIFF, the mask PNG, the
quick-look overlay and the source raster as assets) and one per stitched mosaic; the mask assets
carry the class names through the classification extension (value -> name, 255 = nodata), so a
STAC client can render and query them without this repository. Asset hrefs are relative, so the
collection moves with the output folder.

STAC requires a time per Item. Nothing in an output folder says when the imagery was taken, so the
time is `--datetime` when given, else the source raster's TIFFTAG_DATETIME, else when the mask file
was written; the property `ovrsis:datetime_source` says which.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from pipeline.export.cog import is_cog
from pipeline.export.output_folder import ExportError, OutputFolder, georeferenced, key_problem
from pipeline.gdal_env import unlisted
from pipeline.records import TileRecord
from taxonomy.masks import IGNORE_INDEX as IGNORE


def write_stac(
    folder: OutputFolder, dest: Path, collection_id: str | None = None, when: datetime | None = None
) -> tuple[Path, list[tuple[str, str]]]:
    """Write `dest/collection.json` and its items; returns the collection's path and the tiles left out (key, why)."""
    import pystac

    usable = folder.usable()
    skipped = [(repr(r.key), problem) for r in usable if (problem := key_problem(r))]  # each item is DEST/KEY/
    named = [r for r in usable if key_problem(r) is None]
    skipped += [(r.key, "not georeferenced (no transform and CRS)") for r in named if not georeferenced(r)]
    tiles = [r for r in named if georeferenced(r)]
    if not tiles:
        raise ExportError(f"{folder.path / 'records.jsonl'}: no georeferenced tile with a mask to describe")
    classes = _classes(folder.class_names)
    items = [_tile_item(folder, record, classes, when) for record in tiles]
    items += _mosaic_items(folder, tiles, classes, {item.id: item for item in items})
    collection = pystac.Collection(
        id=collection_id or folder.path.resolve().name,
        description=f"Open-vocabulary segmentation masks of {folder.path.resolve().name}: {len(tiles)} tiles, "
        f"{len(folder.class_names)} classes (mask value = class index, 255 = nodata).",
        extent=pystac.Extent(
            pystac.SpatialExtent([_union([item.bbox for item in items])]),
            pystac.TemporalExtent([[min(i.datetime for i in items), max(i.datetime for i in items)]]),
        ),
        license="other",
        extra_fields={"ovrsis:class_names": list(folder.class_names)},
    )
    collection.add_items(items)
    dest.mkdir(parents=True, exist_ok=True)
    collection.normalize_hrefs(str(dest.resolve()))
    collection.make_all_asset_hrefs_relative()
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return dest / "collection.json", skipped


def _tile_item(folder: OutputFolder, record: TileRecord, classes: list, when: datetime | None):
    import pystac

    window = record.source.window
    when, source_of_time = _datetime(folder, record, when)
    item = _item(
        record.key, record.source.crs, record.source.transform, window.height, window.width, when, source_of_time
    )
    item.properties["ovrsis:domain"] = record.domain.name if record.domain else None
    item.properties["ovrsis:categories"] = [c.name for c in record.categories]
    item.properties["ovrsis:reviewed"] = record.review is not None
    tif = folder.path / "masks" / f"{record.key}.tif"
    if tif.is_file():
        _add_mask(item, "mask", tif, classes)
    item.add_asset(
        "mask_png",
        pystac.Asset(
            str((folder.path / record.semantic_mask).resolve()),
            media_type=pystac.MediaType.PNG,
            roles=["labels"],
            title="mask as PNG (value = class index, 255 = nodata)",
        ),
    )
    overlay = folder.path / "overlays" / f"{record.key}.png"
    if overlay.is_file():
        item.add_asset(
            "overlay", pystac.Asset(str(overlay.resolve()), media_type=pystac.MediaType.PNG, roles=["overview"])
        )
    source = Path(record.source.path)
    if source.is_file():
        item.add_asset(
            "source",
            pystac.Asset(
                str(source.resolve()),
                roles=["data"],
                title=f"source raster (window {window.row_off}, {window.col_off}, {window.height} x {window.width})",
            ),
        )
    return item


def _mosaic_items(folder: OutputFolder, tiles: list[TileRecord], classes: list, tile_items: dict) -> list:
    """An Item per stitched mosaic (stitched/STEM.tif), timed like its tiles."""
    import rasterio

    by_stem: dict[str, list[TileRecord]] = defaultdict(list)
    for record in tiles:
        by_stem[record.key.rsplit("__r", 1)[0]].append(record)
    items = []
    for path in sorted((folder.path / "stitched").glob("*.tif")):
        stem = path.name.removesuffix(".tif").removesuffix(".mask")
        if stem not in by_stem:
            continue
        try:
            with unlisted(), rasterio.open(path) as dataset:
                crs, transform, height, width = dataset.crs, dataset.transform, dataset.height, dataset.width
        except rasterio.RasterioIOError as error:
            raise ExportError(f"{path}: cannot read the stitched mask ({error})") from None
        first = tile_items[by_stem[stem][0].key]
        item = _item(
            f"{stem}.stitched",
            crs.to_wkt(),
            list(transform)[:6],
            height,
            width,
            first.datetime,
            first.properties["ovrsis:datetime_source"],
        )
        item.properties["ovrsis:tiles"] = sorted(r.key for r in by_stem[stem])
        _add_mask(item, "mask", path, classes)
        items.append(item)
    return items


def _item(item_id: str, crs: str, transform, height: int, width: int, when: datetime, source_of_time: str):
    import pystac
    from affine import Affine
    from pystac.extensions.projection import ProjectionExtension
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    affine = Affine(*transform[:6])
    corners = [affine @ (0, 0), affine @ (width, 0), affine @ (width, height), affine @ (0, height)]
    footprint = {"type": "Polygon", "coordinates": [[*corners, corners[0]]]}
    geometry = transform_geom(CRS.from_wkt(crs), "EPSG:4326", footprint)
    xs, ys = zip(*geometry["coordinates"][0])
    item = pystac.Item(
        item_id, geometry, [min(xs), min(ys), max(xs), max(ys)], when, {"ovrsis:datetime_source": source_of_time}
    )
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = CRS.from_wkt(crs).to_epsg()
    projection.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=None if epsg else crs,
        shape=[height, width],
        transform=list(transform[:6]),
        bbox=_bounds(corners),
    )
    return item


def _add_mask(item, key: str, path: Path, classes: list) -> None:
    import pystac
    from pystac.extensions.classification import ClassificationExtension

    cog = is_cog(path)
    asset = pystac.Asset(
        str(path.resolve()),
        media_type=pystac.MediaType.COG if cog else pystac.MediaType.GEOTIFF,
        roles=["labels", "data"],
        title="mask (value = class index, 255 = nodata)" + ("" if cog else "; not cloud-optimized"),
    )
    item.add_asset(key, asset)
    ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=classes)


def _classes(names: list[str]) -> list:
    """Classification-extension classes: `name` must be a slug, so the full name goes to `description`."""
    from pystac.extensions.classification import Classification

    found = [
        Classification.create(
            value=i, name=re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or f"class_{i}", description=name
        )
        for i, name in enumerate(names)
    ]
    return found + [Classification.create(value=IGNORE, name="nodata", description="nodata / ignore", nodata=True)]


def _datetime(folder: OutputFolder, record: TileRecord, when: datetime | None) -> tuple[datetime, str]:
    if when is not None:
        return when, "option"
    source = Path(record.source.path)
    if source.is_file():
        import rasterio

        try:
            with unlisted(), rasterio.open(source) as dataset:
                tag = dataset.tags().get("TIFFTAG_DATETIME")
            if tag:
                return datetime.strptime(tag.strip(), "%Y:%m:%d %H:%M:%S").replace(
                    tzinfo=UTC
                ), "source TIFFTAG_DATETIME"
        except (rasterio.RasterioIOError, ValueError):
            pass  # an unreadable source or odd tag: fall back to the mask's time
    written = (folder.path / record.semantic_mask).stat().st_mtime
    return datetime.fromtimestamp(written, UTC).replace(microsecond=0), "mask written"


def _bounds(corners) -> list[float]:
    xs, ys = zip(*corners)
    return [min(xs), min(ys), max(xs), max(ys)]


def _union(boxes) -> list[float]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
