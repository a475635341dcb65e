"""GIS outputs of an annotate run with tiny models: COG masks, vector polygons read back through
GDAL/OGR (pyogrio's bundled GDAL: the GDAL Python bindings are not installed), a STAC collection."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pyogrio
import pyogrio.raw
import pystac
import pytest
import rasterio
import shapely
from affine import Affine
from PIL import Image
from pycocotools import mask as coco_mask
from rasterio.shutil import copy as rio_copy
from rasterio.warp import transform as warp_transform
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from flows.cli import app
from pipeline.build.annotate import AnnotateConfig, Annotator
from pipeline.dataset.records import AuditDecision, read_records, write_records
from pipeline.export.stac import MASK_WRITTEN, name_date
from pipeline.raster.ingest import TilingConfig
from pipeline.raster.outputs import palette, write_mask_geotiff
from taxonomy import load_taxonomy

PIXEL_AREA = 0.25  # |det| of the scene's transform: 0.5 m pixels
TRANSFORM = (0.5, 0, 400000, 0, -0.5, 5000000)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, tiny_models) -> Path:
    """One georeferenced scene (4 overlapping tiles, stitched) and one plain PNG photo, annotated;
    one tile then gets audit decisions, as `ovrsis audit pull` would record them."""
    from test_annotate import CAPTIONS, write_scene

    root = tmp_path_factory.mktemp("export-gis")
    write_scene(root / "in", size=(300, 400))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(
        root / "in" / "photo.png"
    )
    captions = {**CAPTIONS, "photo": CAPTIONS["scene"]}
    out = root / "out"
    config = AnnotateConfig(tiling=TilingConfig(256, 32), batch_size=5)
    Annotator(load_taxonomy("ovrsis95k"), tiny_models, out, config, captions=captions).run(root / "in")
    records = read_records(out / "records.jsonl")
    audited = next(r for r in records if r.key == "scene__r0_c0")
    audited.audit = [
        AuditDecision(target="category:building", state="accepted", reviewer="ana"),
        AuditDecision(target="mask:building", state="corrected", kind="boundary", reviewer="ana"),
    ]
    write_records(out / "records.jsonl", records)
    return out


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def read_layer(path: Path, layer: str | None = None) -> tuple[dict, np.ndarray, dict]:
    """A layer through OGR: its metadata, shapely geometries and fields by name."""
    meta, _, wkb, values = pyogrio.raw.read(path, layer=layer)
    return meta, shapely.from_wkb(wkb), dict(zip(meta["fields"], values))


def test_tile_masks_and_mosaic_are_valid_cogs(annotated):
    tifs = sorted((annotated / "masks").glob("*.tif"))
    assert len(tifs) == 4  # the PNG photo has no grid: no GeoTIFF
    for path in [*tifs, annotated / "stitched" / "scene.tif"]:
        valid, errors, _ = cog_validate(str(path), quiet=True)
        assert valid and not errors, (path, errors)
    for path in tifs:
        with rasterio.open(path) as tif:
            assert tif.crs.to_epsg() == 32633 and tif.nodata == 255
            assert np.array_equal(tif.read(1), np.asarray(Image.open(annotated / "masks" / f"{path.stem}.png")))
    with rasterio.open(annotated / "stitched" / "scene.tif") as mosaic:
        assert (mosaic.width, mosaic.height) == (400, 300) and mosaic.overviews(1) == [2]
    assert not list(annotated.rglob("*.part"))


def test_vectors_areas_match_mask_pixels_in_the_source_crs(annotated, tmp_path):
    result = invoke("export", "vectors", str(annotated), "--format", "gpkg", "--dest", str(tmp_path / "gpkg"))
    assert result.exit_code == 1, result.output  # exported, one tile left out
    assert "skipped photo__r0_c0: not georeferenced" in result.output
    gpkg = tmp_path / "gpkg" / "vectors.gpkg"
    assert [tuple(layer) for layer in pyogrio.list_layers(gpkg)] == [
        ("regions", "MultiPolygon"),
        ("instances", "MultiPolygon"),
    ]
    names = load_taxonomy("ovrsis95k").names

    meta, regions, fields = read_layer(gpkg, "regions")
    assert meta["crs"] == "EPSG:32633"
    pixels = shapely.area(regions) / PIXEL_AREA
    assert np.array_equal(pixels, fields["pixels"])
    # the regions partition the stitched mosaic: per class, area = the mosaic's pixel count
    with rasterio.open(annotated / "stitched" / "scene.tif") as mosaic:
        stitched, bounds = mosaic.read(1), mosaic.bounds
    for value in np.unique(stitched[stitched != 255]):
        assert pixels[fields["class_id"] == value].sum() == (stitched == value).sum()
        assert set(fields["category"][fields["class_id"] == value]) == {names[value]}
    assert pixels.sum() == (stitched != 255).sum()
    minx, miny, maxx, maxy = shapely.total_bounds(regions)
    assert bounds.left <= minx and maxx <= bounds.right and bounds.bottom <= miny and maxy <= bounds.top
    building = (fields["tile"] == "scene__r0_c0") & (fields["category"] == "building")
    if building.any():  # tiny random models: building may have lost every pixel to other classes
        assert set(fields["audit_category"][building]) == {"accepted"} and set(fields["audit_mask"][building]) == {
            "corrected"
        }
    assert set(fields["audit_category"][fields["tile"] != "scene__r0_c0"]) == {None}

    records = {r.key: r for r in read_records(annotated / "records.jsonl")}
    _, instances, fields = read_layer(gpkg, "instances")
    kept = sorted(
        (r.key, i.category, int(coco_mask.area(_rle(i.mask))))
        for r in records.values()
        if r.source.crs
        for i in r.instances
        if not i.dropped and i.mask
    )
    assert len(kept) > 0 and np.array_equal(shapely.area(instances) / PIXEL_AREA, fields["pixels"])
    assert sorted(zip(fields["tile"], fields["category"], fields["pixels"].tolist())) == kept

    result = invoke("export", "vectors", str(annotated), "--format", "geojson", "--dest", str(tmp_path / "geojson"))
    assert result.exit_code == 1, result.output
    for layer, count in (("regions", len(regions)), ("instances", len(instances))):
        meta, geometries, _ = read_layer(tmp_path / "geojson" / f"{layer}.geojson")
        assert meta["crs"] == "EPSG:32633" and len(geometries) == count
    assert shapely.area(read_layer(tmp_path / "geojson" / "regions.geojson")[1]).sum() == pytest.approx(
        shapely.area(regions).sum()
    )


def _rle(mask: dict) -> dict:
    return {"size": mask["size"], "counts": mask["counts"].encode()}


def test_vectors_bad_input_names_the_file(annotated, tmp_path):
    result = invoke("export", "vectors", str(tmp_path))
    assert result.exit_code == 2 and f"{tmp_path / 'records.jsonl'}: no records" in result.output
    broken = tmp_path / "broken"
    shutil.copytree(annotated, broken, ignore=shutil.ignore_patterns("stitched", "overlays"))
    (broken / "masks" / "scene__r0_c0.png").write_bytes(b"not a png")
    result = invoke("export", "vectors", str(broken))
    assert result.exit_code == 2 and f"{broken / 'masks' / 'scene__r0_c0.png'}: cannot read the mask" in result.output
    records = (annotated / "records.jsonl").read_text().splitlines()
    (broken / "records.jsonl").write_text(
        "\n".join(line for line in records if '"key":"photo__' in line.replace(" ", "")) + "\n"
    )
    result = invoke("export", "vectors", str(broken))
    assert result.exit_code == 2 and "no georeferenced tile with a mask" in result.output
    (broken / "records.jsonl").write_text(records[0] + '\n{"key": 1}\n')
    result = invoke("export", "vectors", str(broken))
    assert result.exit_code == 2 and f"{broken / 'records.jsonl'}:2: not a tile record" in result.output
    assert invoke("export", "vectors", str(annotated), "--format", "shp").exit_code == 2


def test_stac_collection_describes_tiles_and_mosaic_as_cogs(annotated, tmp_path):
    result = invoke(
        "export", "stac", str(annotated), "--dest", str(tmp_path / "stac"), "--datetime", "2024-06-01T10:30:00Z"
    )
    assert result.exit_code == 1 and "photo__r0_c0" in result.output, result.output
    collection = pystac.Collection.from_file(str(tmp_path / "stac" / "collection.json"))
    assert collection.extra_fields["ovrsis:class_names"] == load_taxonomy("ovrsis95k").names
    items = {item.id: item for item in collection.get_items()}
    assert set(items) == {f"scene__r{r}_c{c}" for r in (0, 44) for c in (0, 144)} | {"scene.stitched"}
    for item in items.values():
        mask = item.assets["mask"]
        path = Path(mask.get_absolute_href())
        assert path.is_file() and cog_validate(str(path), quiet=True)[0]
        assert mask.media_type == pystac.MediaType.COG
        classes = mask.extra_fields["classification:classes"]
        assert classes[34]["description"] == "unlabeled areas, background, clutter" and classes[-1]["value"] == 255
        assert item.properties["proj:code"] == "EPSG:32633" and item.datetime.isoformat() == "2024-06-01T10:30:00+00:00"
        with rasterio.open(path) as tif:  # the footprint holds the raster's centre, in WGS84
            x, y = tif.xy(tif.height // 2, tif.width // 2)
            (lon,), (lat,) = warp_transform(tif.crs, "EPSG:4326", [x], [y])
        west, south, east, north = item.bbox
        assert west <= lon <= east and south <= lat <= north
    assert (
        Path(items["scene__r0_c0"].assets["mask_png"].get_absolute_href())
        == (annotated / "masks" / "scene__r0_c0.png").resolve()
    )
    assert "scene__r0_c0" in items["scene.stitched"].properties["ovrsis:tiles"]


def gdal_categories(path: Path, scratch: Path) -> list[str]:
    """Band 1's category names as GDAL reports them (GetCategoryNames: gdalinfo's "Categories", QGIS's
    legend labels), read back by copying the raster to a VRT, which writes them out as XML."""
    vrt = scratch / f"{path.name}.vrt"
    rio_copy(path, vrt, driver="VRT")
    return [category.text for category in ElementTree.parse(vrt).getroot().iter("Category")]


def test_mask_cogs_carry_the_overlay_colours_and_the_class_names(annotated, tmp_path):
    names = load_taxonomy("ovrsis95k").names
    colours = palette(len(names))
    for path in [*sorted((annotated / "masks").glob("*.tif")), annotated / "stitched" / "scene.tif"]:
        with rasterio.open(path) as tif:
            colormap, tags = tif.colormap(1), tif.tags(1)
        assert [colormap[value] for value in range(len(names))] == [(*map(int, c), 255) for c in colours], path
        assert colormap[255] == (0, 0, 0, 0), path  # nodata: transparent
        assert [tags[f"CLASS_{value:03d}"] for value in range(len(names))] == names, path  # inside the COG
        assert gdal_categories(path, tmp_path) == names, path  # from the PAM side-car, as gdalinfo and QGIS
        assert cog_validate(str(path), quiet=True)[0], path


def test_mask_geotiff_class_names_are_optional_and_never_stale(tmp_path):
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    path = tmp_path / "a.tif"
    write_mask_geotiff(path, mask, "EPSG:32633", TRANSFORM, class_names=["water", "tree & <bush>", "forêt"])
    assert gdal_categories(path, tmp_path) == ["water", "tree & <bush>", "forêt"]
    write_mask_geotiff(path, mask, "EPSG:32633", TRANSFORM)  # the positional call of before: names unknown
    assert not path.with_name("a.tif.aux.xml").exists() and gdal_categories(path, tmp_path) == []
    with rasterio.open(path) as tif:
        assert np.array_equal(tif.read(1), mask) and not any(key.startswith("CLASS_") for key in tif.tags(1))
        assert tif.colormap(1)[2] == (*map(int, palette(3)[2]), 255) and tif.colormap(1)[255] == (0, 0, 0, 0)


def test_name_date_finds_acquisition_dates_in_file_names():
    assert name_date("m_3807537_ne_18_060_20180827.tif") == datetime(2018, 8, 27, tzinfo=UTC)
    assert name_date("m_3807537_ne_18_060_20180827_20190211.tif") == datetime(2018, 8, 27, tzinfo=UTC)
    assert name_date("ortho_2016-07-01.tif") == name_date("ortho_2016_07_01.tif") == datetime(2016, 7, 1, tzinfo=UTC)
    assert name_date("tile_12345678.tif") is None  # month 56
    assert name_date("id_120180827.tif") is None  # inside a longer number
    assert name_date("x_2018-0827.tif") is None  # mixed separators
    assert name_date("scan_18991231.tif") is None and name_date("plan_29991231.tif") is None
    assert name_date("scene.tif") is None


def with_sources(annotated: Path, target: Path, sources: dict[str, Path]) -> Path:
    """A copy of the annotated folder whose tiles name other source rasters (key -> path)."""
    shutil.copytree(annotated, target)
    records = read_records(target / "records.jsonl")
    for record in records:
        if record.key in sources:
            record.source.path = str(sources[record.key])
    write_records(target / "records.jsonl", records)
    return target


def write_source(path: Path, **tags: dict[str, str]) -> Path:
    """A small GeoTIFF with metadata by domain ("default" for GDAL's default domain)."""
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8", "crs": "EPSG:32633"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", transform=Affine(*TRANSFORM), **profile) as out:
        out.write(np.zeros((1, 8, 8), np.uint8))
        for domain, items in tags.items():
            out.update_tags(ns=None if domain == "default" else domain, **items)
    return path


def stac_items(dest: Path) -> dict[str, pystac.Item]:
    return {item.id: item for item in pystac.Collection.from_file(str(dest / "collection.json")).get_items()}


def test_stac_item_times_come_from_the_source_and_say_from_where(annotated, tmp_path):
    processed = {"TIFFTAG_DATETIME": "2019:05:06 07:08:09"}  # when the file was made
    out = with_sources(
        annotated,
        tmp_path / "out",
        {
            "scene__r0_c0": write_source(
                tmp_path / "src" / "a.tif", IMAGERY={"ACQUISITIONDATETIME": "2017-03-04 05:06:07"}, default=processed
            ),
            "scene__r0_c144": write_source(tmp_path / "src" / "ortho_2016-07-01.tif", default=processed),
            "scene__r44_c0": write_source(tmp_path / "src" / "plain.tif", default=processed),
            "scene__r44_c144": tmp_path / "gone" / "scene.tif",
        },
    )
    result = invoke("export", "stac", str(out))
    assert result.exit_code == 1, result.output  # the photo is left out
    items = stac_items(out / "stac")
    found = {key: (item.datetime.isoformat(), item.properties["ovrsis:datetime_source"]) for key, item in items.items()}
    written = datetime.fromtimestamp((out / "masks" / "scene__r44_c144.png").stat().st_mtime, UTC).replace(
        microsecond=0
    )
    assert found == {
        "scene__r0_c0": ("2017-03-04T05:06:07+00:00", "acquisition-metadata"),
        "scene__r0_c144": ("2016-07-01T00:00:00+00:00", "file-name"),
        "scene__r44_c0": ("2019-05-06T07:08:09+00:00", "tiff-tag"),
        "scene__r44_c144": (written.isoformat(), MASK_WRITTEN),
        "scene.stitched": ("2017-03-04T05:06:07+00:00", "acquisition-metadata"),  # its first tile's
    }
    result = invoke("export", "stac", str(out), "--dest", str(tmp_path / "set"), "--datetime", "2021-02-03")
    assert result.exit_code == 1, result.output
    assert {
        (i.datetime.isoformat(), i.properties["ovrsis:datetime_source"]) for i in stac_items(tmp_path / "set").values()
    } == {("2021-02-03T00:00:00+00:00", "setting")}


def test_stac_dates_the_real_naip_scenes_apart(shared_real, annotated, tmp_path):
    naip = {path.name[-12:-4]: path for path in (shared_real / "naip").glob("m_*.tif")}
    assert set(naip) == {"20090818", "20200831"}, naip
    sources = {"scene__r0_c0": naip["20090818"], "scene__r0_c144": naip["20090818"]}
    sources |= {"scene__r44_c0": naip["20200831"], "scene__r44_c144": naip["20200831"]}
    out = with_sources(annotated, tmp_path / "out", sources)
    assert invoke("export", "stac", str(out)).exit_code == 1
    items = stac_items(out / "stac")
    for key, source in sources.items():
        day = datetime.strptime(source.name[-12:-4], "%Y%m%d").replace(tzinfo=UTC)
        assert (items[key].datetime, items[key].properties["ovrsis:datetime_source"]) == (day, "file-name"), key
        assert items[key].properties["ovrsis:source_file"] == source.name and "source" not in items[key].assets
    interval = pystac.Collection.from_file(str(out / "stac" / "collection.json")).extent.temporal.intervals[0]
    assert [moment.year for moment in interval] == [2009, 2020]


def written_hrefs(dest: Path) -> list[tuple[Path, str, str]]:
    """(file, link rel or asset key, href) for every href in the JSON files an export wrote."""
    found = []
    for path in sorted(dest.rglob("*.json")):
        document = json.loads(path.read_text())
        found += [(path, link["rel"], link["href"]) for link in document.get("links", [])]
        found += [(path, key, asset["href"]) for key, asset in document.get("assets", {}).items()]
    return found


def test_stac_hrefs_stay_inside_out_unless_absolute_is_chosen(annotated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(annotated, out)
    source = Path(next(r for r in read_records(out / "records.jsonl") if r.key == "scene__r0_c0").source.path)
    assert source.is_file() and not source.is_relative_to(out)
    for dest in (out / "stac", tmp_path / "elsewhere"):
        result = invoke("export", "stac", str(out), "--dest", str(dest))
        assert result.exit_code == 1, result.output
        hrefs = written_hrefs(dest)
        assert {key for _, key, _ in hrefs} >= {"root", "item", "mask", "mask_png", "overlay"}
        for path, key, href in hrefs:
            assert not Path(href).is_absolute(), (path, key, href)
            target = Path(os.path.normpath(path.parent / href))
            assert target.exists() and (target.is_relative_to(out) or target.is_relative_to(dest)), (path, key, href)
        assert stac_items(dest)["scene__r0_c0"].properties["ovrsis:source_file"] == source.name

    moved = tmp_path / "moved"
    out.rename(moved)  # the collection in OUT moves with it
    for item in stac_items(moved / "stac").values():
        assert all(Path(asset.get_absolute_href()).is_relative_to(moved) for asset in item.assets.values())
        assert all(Path(asset.get_absolute_href()).is_file() for asset in item.assets.values())

    result = invoke("export", "stac", str(moved), "--dest", str(tmp_path / "abs"), "--source-hrefs", "absolute")
    assert result.exit_code == 1, result.output
    for path, key, href in written_hrefs(tmp_path / "abs"):
        assert Path(href).is_absolute() == (key == "source"), (path, key, href)
        assert key != "source" or href == os.path.abspath(source)
    assert "source" in stac_items(tmp_path / "abs")["scene__r0_c0"].assets
    result = invoke("export", "stac", str(moved), "--source-hrefs", "relative")
    assert result.exit_code == 2 and "--source-hrefs 'relative': one of none, absolute" in result.output


def test_stac_leaves_out_a_tile_whose_mask_path_leaves_the_output_folder(annotated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(annotated, out)
    records = read_records(out / "records.jsonl")
    escaping = next(r for r in records if r.key == "scene__r0_c0")
    shutil.copy(out / escaping.semantic_mask, tmp_path / "outside.png")
    escaping.semantic_mask = "../outside.png"
    write_records(out / "records.jsonl", records)
    result = invoke("export", "stac", str(out))
    assert result.exit_code == 1 and "scene__r0_c0: mask '../outside.png' leaves the output folder" in result.output
    assert "scene__r0_c0" not in stac_items(out / "stac")
    assert all(not href.startswith("../../..") for _, _, href in written_hrefs(out / "stac"))
