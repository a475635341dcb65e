"""Inputs whose names would give the same tile keys (issue 27, item 6): `a.b.tif` beside `a_b.tif`,
`x.tif` beside an unsupported `x.bmp`, `d1/y.tif` and `d2/y.tif`. Before the keys were checked, annotate
kept one mask of two tiles and a build crashed after all its model work ("tile key appears twice")."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from flows.cli import app as ovrsis_app
from flows.sample_build import CAPTION, run_build, write_config
from pipeline.dataset.records import TileRecord
from pipeline.dataset.shards import ShardReader
from pipeline.raster.ingest import find_rasters, quarantined_file, source_keys

SIZE = 64  # one tile a raster at --tile-size 64
COLLIDING = ("a.b.tif", "a_b.tif", "x.tif", "x.bmp")
UNIQUE = ("plain.tif", "z.tif", "z.png")  # keys exactly as before: plain, z_tif, z_png


def write_raster(path: Path, seed: int) -> Path:
    """A small georeferenced RGB raster (PNG beside GeoTIFF: the same pixels through PIL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(1, 255, (3, SIZE, SIZE), dtype=np.uint8)
    driver = "PNG" if path.suffix == ".png" else "GTiff"
    profile = {"driver": driver, "width": SIZE, "height": SIZE, "count": 3, "dtype": "uint8"}
    if driver == "GTiff":
        profile |= {"crs": "EPSG:32633", "transform": Affine(0.5, 0, 400000 + 100 * seed, 0, -0.5, 5000000)}
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    return path


def write_inputs(folder: Path) -> Path:
    """The colliding and unique rasters, an unsupported x.bmp (set aside) and captions by file stem."""
    for seed, name in enumerate(n for n in (*COLLIDING, *UNIQUE) if n != "x.bmp"):
        write_raster(folder / name, seed)
    (folder / "x.bmp").write_bytes(b"BM not decoded: unsupported")
    stems = {Path(n).stem for n in (*COLLIDING, *UNIQUE)}
    captions = folder.parent / "captions.jsonl"
    captions.write_text("".join(json.dumps({"id": s, "caption": CAPTION}) + "\n" for s in sorted(stems)))
    return folder


def read_records(out: Path) -> list[TileRecord]:
    return [TileRecord.model_validate_json(line) for line in (out / "records.jsonl").read_text().splitlines()]


def assert_both_tiles_kept(records: list[TileRecord], out: Path) -> dict[str, str]:
    """Every input has its own key and every live tile its own mask; returns source file name -> key."""
    keys = {Path(r.source.path).name: r.key for r in records}
    assert len(records) == len(keys) == len(set(keys.values())) == len(COLLIDING) + len(UNIQUE), keys
    live = [r for r in records if r.quarantine is None]
    assert len(live) == len(records) - 1 and keys["x.bmp"] not in {r.key for r in live}
    masks = {r.semantic_mask for r in live}
    assert len(masks) == len(live) and all((out / m).is_file() for m in masks)
    assert (keys["plain.tif"], keys["z.tif"], keys["z.png"]) == ("plain__r0_c0", "z_tif__r0_c0", "z_png__r0_c0")
    return keys


def test_colliding_names_get_distinct_keys_in_any_order_and_the_others_keep_theirs(tmp_path):
    rasters = [tmp_path / n for n in ("a.b.tif", "a_b.tif", "x.tif", "d1/y.tif", "d2/y.tif", *UNIQUE)]
    set_aside = [quarantined_file(tmp_path / "x.bmp", "unsupported format .bmp")]
    planned = source_keys(rasters, set_aside)
    stems = planned.stems
    assert len(set(stems.values())) == len(stems) == len(rasters) + 1
    assert [stems[tmp_path / n] for n in UNIQUE] == ["plain", "z_tif", "z_png"]
    # one file of each clash keeps its key (and its reviews): the raster whose stem is the key unchanged,
    # a raster before a file set aside, else the first path; only the others are renamed
    assert set(planned.renamed) == {tmp_path / "a.b.tif", tmp_path / "d2/y.tif", tmp_path / "x.bmp"}
    assert (stems[tmp_path / "a_b.tif"], stems[tmp_path / "x.tif"], stems[tmp_path / "d1/y.tif"]) == (
        "a_b",
        "x",
        "y_tif",
    )
    assert stems[tmp_path / "a.b.tif"].startswith("a_b_tif_") and stems[tmp_path / "x.bmp"].startswith("x_bmp_")
    assert planned.rekeyed(set_aside)[0].key == f"{stems[tmp_path / 'x.bmp']}__r0_c0"
    for path, stem in stems.items():
        if path in planned.renamed:
            assert f"{path} -> keys {stem}__r*_c*" in planned.note()
    shuffled = rasters[:]
    random.Random(1).shuffle(shuffled)
    assert source_keys(shuffled, set_aside).stems == stems
    # the same tree elsewhere (a relative path, a moved folder): the same keys
    moved = tmp_path / "elsewhere"
    assert (
        source_keys([moved / p.relative_to(tmp_path) for p in rasters]).stems[moved / "d1/y.tif"]
        == stems[tmp_path / "d1/y.tif"]
    )


def test_a_world_file_beside_its_image_is_no_input_and_renames_nothing(tmp_path):
    """x.jpg with its world file x.jgw (or .pgw, .j2w): the world file is a sidecar, not a set-aside input
    whose stem would clash with the image's and change the image's keys."""
    images = [tmp_path / "x.jpg", tmp_path / "y.png", tmp_path / "z.jp2"]
    for image, world in zip(images, ("x.jgw", "y.pgw", "z.j2w")):
        image.write_bytes(b"")
        (tmp_path / world).write_text("0.5\n0\n0\n-0.5\n100\n200\n")
    rasters, unsupported = find_rasters(tmp_path)
    assert unsupported == [] and sorted(rasters) == sorted(images)
    planned = source_keys(rasters, unsupported)
    assert planned.renamed == {} and planned.stems[tmp_path / "x.jpg"] == "x"


def test_names_that_are_no_safe_file_names_get_safe_keys(tmp_path):
    backslash, long = tmp_path / "a\\b.tif", tmp_path / ("l" * 240 + ".tif")
    stems = source_keys([backslash, long]).stems
    assert "\\" not in stems[backslash] and stems[backslash].startswith("a_b_tif_")
    assert len(f"{stems[long]}__r0_c0.proposed.png".encode()) <= 255


def annotate(inputs: Path, out: Path, models: Path):
    args = ["annotate", str(inputs), "--out", str(out), "--models", str(models), "--tile-size", str(SIZE)]
    args += ["--captions", str(inputs.parent / "captions.jsonl"), "--no-overlays"]
    return CliRunner().invoke(ovrsis_app, args)


def test_annotate_keeps_both_tiles_with_distinct_keys_stable_across_runs(tmp_path, tiny_models_yaml):
    inputs = write_inputs(tmp_path / "in")
    first = annotate(inputs, tmp_path / "out1", tiny_models_yaml)
    assert first.exit_code == 1, (first.stderr, first.exception)  # x.bmp set aside, the rest annotated
    keys = assert_both_tiles_kept(read_records(tmp_path / "out1"), tmp_path / "out1")
    note = first.stderr.split("tiles annotated")[0]  # printed before the run's summary
    for name in ("a.b.tif", "x.bmp"):
        assert f"{inputs / name} -> keys {keys[name].removesuffix('__r0_c0')}__r*_c*" in note, first.stderr
    assert "plain.tif" not in note and str(inputs / "a_b.tif") not in note and str(inputs / "x.tif") not in note
    assert (keys["a_b.tif"], keys["x.tif"]) == ("a_b__r0_c0", "x__r0_c0")  # the keys they had before the clash
    second = annotate(inputs, tmp_path / "out2", tiny_models_yaml)
    assert second.exit_code == 1 and assert_both_tiles_kept(read_records(tmp_path / "out2"), tmp_path / "out2") == keys


@pytest.mark.slow
def test_build_plans_distinct_keys_and_shards_both_tiles(tmp_path, tiny_models_yaml):
    inputs = write_inputs(tmp_path / "in")
    config = write_config(
        tmp_path / "build.yaml", inputs, tiny_models_yaml, tmp_path / "out", tiling={"tile_size": SIZE}
    )
    result = run_build(config, tmp_path / "prefect")
    assert result.returncode == 1, result.stderr[-3000:]  # finished, x.bmp quarantined
    assert "input file(s) renamed" in result.stderr and str(inputs / "a.b.tif") in result.stderr
    keys = assert_both_tiles_kept(read_records(tmp_path / "out"), tmp_path / "out")
    reader = ShardReader(tmp_path / "out")
    sharded = {s.key for split in ("train", "val") for s in reader.samples(split)}
    assert {keys["a.b.tif"], keys["a_b.tif"], keys["x.tif"]} <= sharded
