"""GIS outputs of an annotate run with tiny models: COG masks, vector polygons read back through
GDAL/OGR (pyogrio's bundled GDAL: the GDAL Python bindings are not installed), a STAC collection."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pystac
import pytest
import rasterio
import shapely
from PIL import Image
from pycocotools import mask as coco_mask
from rasterio.warp import transform as warp_transform
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from flows.cli import app
from pipeline.annotate import AnnotateConfig, Annotator
from pipeline.ingest import TilingConfig
from pipeline.records import AuditDecision, read_records, write_records
from taxonomy import load_taxonomy

PIXEL_AREA = 0.25  # |det| of the scene's transform: 0.5 m pixels


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
