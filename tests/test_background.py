"""The background class through annotate -> shards -> official export, on (default) and off."""

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from pipeline.build.annotate import AnnotateConfig, Annotator, RasterPixels
from pipeline.dataset.records import read_records
from pipeline.dataset.shards import ShardConfig, export_official, verify_shards, write_shards
from pipeline.raster.ingest import TilingConfig
from pipeline.stages.merge import MergeConfig
from taxonomy import load_taxonomy

CAPTIONS = {"scene": ["many buildings and a road with cars in a residential area"]}
BACKGROUND = 34


def build(tmp_path, models, merge: MergeConfig):
    """A 256 x 384 scene whose left 40 columns are nodata, annotated, sharded and exported."""
    data = np.random.default_rng(3).integers(1, 255, (3, 256, 384), dtype=np.uint8)
    data[:, :, :40] = 0
    profile = {
        "driver": "GTiff",
        "width": 384,
        "height": 256,
        "count": 3,
        "dtype": "uint8",
        "nodata": 0,
        "crs": "EPSG:32633",
        "transform": Affine(0.5, 0, 400000, 0, -0.5, 5000000),
    }
    (tmp_path / "in").mkdir()
    with rasterio.open(tmp_path / "in" / "scene.tif", "w", **profile) as out:
        out.write(data)
    taxonomy = load_taxonomy("ovrsis95k")
    config = AnnotateConfig(tiling=TilingConfig(128, 0), merge=merge, write_overlay=False, stitch=False)
    out = tmp_path / "out"
    Annotator(taxonomy, models, out, config, captions=CAPTIONS).run(tmp_path / "in")
    records = [r for r in read_records(out / "records.jsonl") if not r.quarantine]
    pixels = RasterPixels(config.bands)
    masks = {r.key: np.asarray(Image.open(out / r.semantic_mask)) for r in records}
    manifest = write_shards(
        out,
        records,
        lambda r: (pixels(r)[0], masks[r.key]),
        taxonomy.names,
        taxonomy.version,
        ShardConfig(max_samples=4, val_fraction=0.25),
    )
    assert verify_shards(out) == []
    assert export_official(out, tmp_path / "official") == len(records) == 6
    exported = {p.stem: np.asarray(Image.open(p)) for p in sorted((tmp_path / "official").glob("*/mask/*.png"))}
    nodata = {r.key: ~pixels(r)[1] for r in records}
    claimed = {r.key: {taxonomy.index_of(i.category) for i in r.instances if not i.dropped and i.area} for r in records}
    return manifest, masks, exported, nodata, claimed


@pytest.mark.parametrize("background", ["auto", "ignore"])
def test_background_through_annotate_shards_and_export(tmp_path, tiny_models, background):
    manifest, masks, exported, nodata, claimed = build(tmp_path, tiny_models, MergeConfig(background=background))
    assert exported.keys() == masks.keys()
    background_pixels = 0
    for key, mask in masks.items():
        assert np.array_equal(exported[key], mask)  # the official layout holds the build's masks byte for byte
        assert (mask[nodata[key]] == 255).all()  # 255 is nodata, whatever the background setting
        unclaimed = ~np.isin(mask, list(claimed[key])) & ~nodata[key]
        assert unclaimed.any(), "tiny models must leave some pixels unclaimed for this test to mean anything"
        expected = BACKGROUND if background == "auto" else 255
        assert (mask[unclaimed] == expected).all()
        background_pixels += int((mask == BACKGROUND).sum())
    assert nodata[min(masks)].any()  # the first tile holds the nodata strip
    stats = manifest["categories"]["unlabeled areas, background, clutter"]
    assert stats["pixels"] == background_pixels and (stats["pixels"] > 0) == (background == "auto")
    assert stats["images"] == (len(masks) if background == "auto" else 0)


def test_overlays_leave_the_background_class_untinted():
    from pipeline.raster.outputs import overlay

    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.full((4, 4), 34, np.uint8)
    mask[0, 0], mask[1, 1] = 3, 255
    quick_look = overlay(image, mask, 35, untinted=[34])
    untouched = (quick_look == 100).all(axis=2)
    assert untouched.sum() == 15 and not untouched[0, 0]
    assert (overlay(image, mask, 35) != 100).any(axis=2).sum() == 15  # without it, the background is tinted too
