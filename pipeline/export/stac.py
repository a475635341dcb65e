"""A STAC collection describing an output folder's rasters and masks: `ovrsis export stac`.

One Item per georeferenced tile (its footprint, projection, the mask GeoTIFF, the mask PNG and the
quick-look overlay as assets) and one per stitched mosaic; the mask assets carry the class names
through the classification extension (value -> name, 255 = nodata), so a STAC client can render and
query them without this repository.

Every href stays inside the output folder or DEST: asset hrefs are relative to the item, and the
assets all lie in the output folder (a record whose mask path leaves it is left out), so the
collection moves with the output folder. The source raster lies elsewhere: a relative href to it
would climb out of both folders (`../../../../...`), break when either moves, and publish a local
path. So items name the source only by its file name and window (`ovrsis:source_file`,
`ovrsis:source_window`), and a `source` asset with the source's absolute path is added only on
request (`source_hrefs="absolute"`, `--source-hrefs absolute`).

STAC requires a time per Item, meant as when the imagery was taken (a user found 2009 and 2020 NAIP
scenes both dated the day of the build). In order of authority, `ovrsis:datetime_source` saying which:
  setting                 `--datetime`;
  acquisition-metadata    the source's acquisition time (GDAL's IMAGERY ACQUISITIONDATETIME, which
                          its satellite-product readers fill, or keys such as ACQUISITION_DATE,
                          DATE_ACQUIRED, SENSING_TIME, EXIF DateTimeOriginal);
  file-name               the first date (YYYYMMDD, YYYY-MM-DD, YYYY_MM_DD) in the source's file
                          name, as NAIP names its acquisition date (m_3807537_ne_18_060_20180827);
  tiff-tag                the source's TIFFTAG_DATETIME, last of the source's evidence: TIFF defines
                          it as when the file was made, often a processing date;
  mask-written (no acquisition date found)   when the mask PNG was written.
A mosaic takes the time of its first tile.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.dataset.records import TileRecord
from pipeline.export.cog import is_cog
from pipeline.export.output_folder import ExportError, OutputFolder, georeferenced, key_problem
from pipeline.files.layout import masks_dir, overlays_dir, stitched_dir
from pipeline.raster.gdal_env import unlisted
from taxonomy.masks import IGNORE_INDEX as IGNORE

if TYPE_CHECKING:  # pystac is imported inside the export, as every heavy library of the commands
    import pystac

SOURCE_HREFS = ("none", "absolute")
MASK_WRITTEN = "mask-written (no acquisition date found)"
# Metadata keys naming when the imagery was acquired, compared case-insensitively in GDAL's IMAGERY,
# default and EXIF domains: GDAL's own (IMAGERY), then the spellings of common products.
ACQUISITION_KEYS = (
    "ACQUISITIONDATETIME",
    "ACQUISITION_DATETIME",
    "ACQUISITIONDATE",
    "ACQUISITION_DATE",
    "DATE_ACQUIRED",
    "SENSING_TIME",
    "EXIF_DATETIMEORIGINAL",
)
# A date not inside a longer number, with one separator (or none) used twice: 20180827, 2018-08-27.
_NAME_DATE = re.compile(r"(?<!\d)(\d{4})([-_]?)(\d{2})\2(\d{2})(?!\d)")
_OLDEST_YEAR = 1900  # older "dates" in a name are numbers, not acquisitions


def write_stac(
    folder: OutputFolder,
    dest: Path,
    collection_id: str | None = None,
    when: datetime | None = None,
    source_hrefs: str = "none",
) -> tuple[Path, list[tuple[str, str]]]:
    """Write `dest/collection.json` and its items; returns the collection's path and the tiles left out (key, why).
    `when` sets every item's time; `source_hrefs` is "none" (items name their source file only) or
    "absolute" (also a `source` asset with the source raster's absolute path)."""
    import pystac
    from pystac.utils import make_relative_href

    if source_hrefs not in SOURCE_HREFS:
        raise ExportError(f"--source-hrefs {source_hrefs!r}: one of {', '.join(SOURCE_HREFS)}")
    usable = folder.usable()
    skipped = [(repr(r.key), problem) for r in usable if (problem := key_problem(r))]  # each item is DEST/KEY/
    named = [r for r in usable if key_problem(r) is None]
    skipped += [(r.key, "not georeferenced (no transform and CRS)") for r in named if not georeferenced(r)]
    tiles = []
    for record in (r for r in named if georeferenced(r)):
        if _mask_inside(folder, record):
            tiles.append(record)
        else:
            skipped.append((record.key, f"mask {record.semantic_mask!r} leaves the output folder"))
    if not tiles:
        raise ExportError(f"{folder.path / 'records.jsonl'}: no georeferenced tile with a mask to describe")
    classes = _classes(folder.class_names)
    times = _Times(folder, when)
    items = [_tile_item(folder, record, classes, times, source_hrefs) for record in tiles]
    items += _mosaic_items(folder, tiles, classes, {item.id: item for item in items})
    collection = pystac.Collection(
        id=collection_id or _absolute(folder.path).name,
        description=f"Open-vocabulary segmentation masks of {_absolute(folder.path).name}: {len(tiles)} tiles, "
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
    collection.normalize_hrefs(str(_absolute(dest)))
    for item in items:
        for key, asset in item.assets.items():
            if key != "source":  # absolute by choice: relative, it would climb out of DEST and OUT
                asset.href = make_relative_href(asset.href, item.get_self_href())
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return dest / "collection.json", skipped


def _absolute(path: Path) -> Path:
    """`path` made absolute without resolving symbolic links: hrefs between DEST and OUT stay relative
    to the folders as the user named them (a `masks/` linked to another disk is not climbed out to)."""
    return Path(os.path.abspath(path))


def _mask_inside(folder: OutputFolder, record: TileRecord) -> bool:
    """Whether the record's mask path stays in the output folder: records.jsonl may come from
    elsewhere, and a `../x.png` would become an href leaving it."""
    root = _absolute(folder.path)
    return _absolute(root / record.semantic_mask).is_relative_to(root)


def _tile_item(
    folder: OutputFolder, record: TileRecord, classes: list, times: _Times, source_hrefs: str
) -> pystac.Item:
    import pystac

    window = record.source.window
    when, source_of_time = times.of(record)
    item = _item(
        record.key, record.source.crs, record.source.transform, window.height, window.width, when, source_of_time
    )
    item.properties["ovrsis:domain"] = record.domain.name if record.domain else None
    item.properties["ovrsis:categories"] = [c.name for c in record.categories]
    item.properties["ovrsis:reviewed"] = record.review is not None
    _name_source(item, record)
    tif = masks_dir(folder.path) / f"{record.key}.tif"
    if tif.is_file():
        _add_mask(item, "mask", tif, classes)
    item.add_asset(
        "mask_png",
        pystac.Asset(
            str(_absolute(folder.path / record.semantic_mask)),
            media_type=pystac.MediaType.PNG,
            roles=["labels"],
            title="mask as PNG (value = class index, 255 = nodata)",
        ),
    )
    overlay = overlays_dir(folder.path) / f"{record.key}.png"
    if overlay.is_file():
        item.add_asset(
            "overlay", pystac.Asset(str(_absolute(overlay)), media_type=pystac.MediaType.PNG, roles=["overview"])
        )
    source = Path(record.source.path)
    if source_hrefs == "absolute" and source.is_file():
        item.add_asset(
            "source",
            pystac.Asset(str(_absolute(source)), roles=["data"], title="source raster (window: ovrsis:source_window)"),
        )
    return item


def _name_source(item: pystac.Item, record: TileRecord) -> None:
    """The source raster by file name and window only: its folder is the user's machine's business."""
    window = record.source.window
    item.properties["ovrsis:source_file"] = Path(record.source.path).name
    item.properties["ovrsis:source_window"] = {
        "row_off": window.row_off,
        "col_off": window.col_off,
        "height": window.height,
        "width": window.width,
    }


def _mosaic_items(folder: OutputFolder, tiles: list[TileRecord], classes: list, tile_items: dict) -> list:
    """An Item per stitched mosaic (stitched/STEM.tif), timed and sourced like its first tile."""
    import rasterio

    by_stem: dict[str, list[TileRecord]] = defaultdict(list)
    for record in tiles:
        by_stem[record.key.rsplit("__r", 1)[0]].append(record)
    items = []
    for path in sorted((stitched_dir(folder.path)).glob("*.tif")):
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
        item.properties["ovrsis:source_file"] = first.properties["ovrsis:source_file"]
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
        str(_absolute(path)),
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


class _Times:
    """Each tile's time and where it came from (see the module's docstring). A source raster holds many
    tiles, so what its metadata and name say is found once per source."""

    def __init__(self, folder: OutputFolder, setting: datetime | None) -> None:
        self.folder, self.setting = folder, setting
        self.by_source: dict[str, tuple[datetime, str] | None] = {}

    def of(self, record: TileRecord) -> tuple[datetime, str]:
        if self.setting is not None:
            return self.setting, "setting"
        path = record.source.path
        if path not in self.by_source:
            self.by_source[path] = acquisition_time(Path(path))
        return self.by_source[path] or self._mask_written(record)

    def _mask_written(self, record: TileRecord) -> tuple[datetime, str]:
        mask = self.folder.path / record.semantic_mask
        try:
            written = mask.stat().st_mtime
        except OSError as error:
            raise ExportError(f"{mask}: cannot read the mask ({error.strerror})") from None
        return datetime.fromtimestamp(written, UTC).replace(microsecond=0), MASK_WRITTEN


def acquisition_time(source: Path) -> tuple[datetime, str] | None:
    """When the source raster's imagery was taken, and from what: its acquisition metadata, else a date
    in its file name (which needs no file: the source may have moved since the build), else its
    TIFFTAG_DATETIME; None when none says. Naive times are taken as UTC."""
    tags = _source_tags(source)
    for key in ACQUISITION_KEYS:
        if (found := _parse_time(tags.get(key))) is not None:
            return found, "acquisition-metadata"
    if (found := name_date(source.name)) is not None:
        return found, "file-name"
    if (found := _parse_time(tags.get("TIFFTAG_DATETIME"))) is not None:
        return found, "tiff-tag"
    return None


def name_date(name: str) -> datetime | None:
    """The first real calendar date in a file name (midnight UTC): `m_3807537_ne_18_060_20180827.tif`
    -> 2018-08-27. Digits inside a longer number, impossible dates, years before 1900 and days after
    today are not dates of an acquisition and are passed over."""
    today = datetime.now(UTC)
    for match in _NAME_DATE.finditer(name):
        year, _, month, day = match.groups()
        try:
            found = datetime(int(year), int(month), int(day), tzinfo=UTC)
        except ValueError:
            continue
        if _OLDEST_YEAR <= found.year and found <= today:
            return found
    return None


def _source_tags(source: Path) -> dict[str, str]:
    """The source's metadata, upper-cased keys, GDAL's IMAGERY domain first; empty when the source is
    missing or unreadable (a moved or deleted source still has a file name to date it by)."""
    if not source.is_file():
        return {}
    import rasterio

    tags: dict[str, str] = {}
    try:
        with unlisted(), rasterio.open(source) as dataset:
            for domain in ("EXIF", None, "IMAGERY"):  # later domains win
                tags |= {key.upper(): value for key, value in dataset.tags(ns=domain).items()}
    except rasterio.RasterioIOError:
        return {}
    return tags


def _parse_time(text: str | None) -> datetime | None:
    """ISO 8601 (2018-08-27, 2018-08-27T10:30:00Z, 20180827) or TIFF/EXIF (2018:08:27 10:30:00), as
    UTC when no zone is given; None for anything else (EXIF's blank `0000:00:00 00:00:00` included)."""
    if not text or not text.strip():
        return None
    text = text.strip()
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        try:
            found = datetime.strptime(text, "%Y:%m:%d %H:%M:%S")
        except ValueError:
            return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _bounds(corners) -> list[float]:
    xs, ys = zip(*corners)
    return [min(xs), min(ys), max(xs), max(ys)]


def _union(boxes) -> list[float]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
