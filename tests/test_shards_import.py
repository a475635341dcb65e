"""`ovrsis shards import`: labelled pairs made elsewhere become verified shards `piseg train` reads.

The official OVRSIS95K layout ({split}/img/*.jpg + {split}/mask/*.png) is written here with a few
bad pairs among the good ones; the `folders` layout with a value map as DLRSD needs; and real
SpaceNet road tiles (where ../shared is present) imported, trained on and validated.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from flows.sample_build import ovrsis
from pipeline.dataset.shards import ShardReader, read_samples, verify_shards
from taxonomy import load_taxonomy

TAXONOMY = load_taxonomy("ovrsis95k")
BACKGROUND = TAXONOMY.index_of("unlabeled areas, background, clutter")
ROAD = TAXONOMY.index_of("road")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(ovrsis(*args), capture_output=True, text=True, timeout=600)


def write_pair(images: Path, masks: Path, stem: str, seed: int, size: int = 64, mask_size: int | None = None) -> None:
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(images / f"{stem}.jpg", quality=90)
    side = mask_size or size
    mask = rng.choice(np.array([0, 5, ROAD, BACKGROUND, 255], np.uint8), (side, side))
    Image.fromarray(mask).save(masks / f"{stem}.png")


def official_layout(root: Path) -> Path:
    for index in range(6):
        write_pair(root / "train" / "img", root / "train" / "mask", f"t{index}", index)
    for index in range(2):
        write_pair(root / "val" / "img", root / "val" / "mask", f"v{index}", 100 + index)
    write_pair(root / "train" / "img", root / "train" / "mask", "wrong_size", 7, mask_size=32)
    write_pair(root / "train" / "img", root / "train" / "mask", "bad_value", 8)
    Image.fromarray(np.full((64, 64), 77, np.uint8)).save(root / "train" / "mask" / "bad_value.png")
    (root / "train" / "img" / "broken.jpg").write_bytes(b"not an image")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "train" / "mask" / "broken.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "train" / "img" / "alone.jpg")
    return root


def test_official_layout_becomes_verified_shards_keeping_splits_and_bytes(tmp_path):
    source = official_layout(tmp_path / "OVRSIS95K")
    out = tmp_path / "out"
    result = run("shards", "import", str(source), str(out))
    assert result.returncode == 1, result.stderr[-3000:]  # finished; bad pairs set aside
    assert "3 pair(s) quarantined, 1 file(s) left out of every pair" in result.stderr
    assert verify_shards(out) == []
    manifest = ShardReader(out).manifest
    assert {name: split["samples"] for name, split in manifest["splits"].items()} == {"train": 6, "val": 2}
    assert manifest["build_config"]["imported_from"] == "OVRSIS95K"  # publishable: relative to the source
    assert manifest["tiles"] == {"imported": 8, "quarantined": 3, "left_out": 1}
    reasons = [json.loads(line) for line in (out / "import" / "quarantine.jsonl").read_text().splitlines()]
    by_key = {entry["key"]: entry["reason"] for entry in reasons}
    assert "mask 32x32 px, image 64x64 px" in by_key["wrong_size"]
    assert "[77]" in by_key["bad_value"] and "bad_value.png" in by_key["bad_value"]
    assert "broken.jpg: cannot read the image" in by_key["broken"]
    assert any("alone.jpg: no mask" in entry["reason"] for entry in reasons)
    for shard in sorted((out / "shards").glob("*.tar")):
        split = shard.name.split("-")[0]
        for key, parts in read_samples(shard, []):
            assert parts["jpg"] == (source / split / "img" / f"{key}.jpg").read_bytes()  # no re-encode
            expected = np.asarray(Image.open(source / split / "mask" / f"{key}.png"))
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(parts["mask.png"]))), expected)
            record = json.loads(parts["json"])
            assert record["source"]["path"] == f"OVRSIS95K/{split}/img/{key}.jpg"  # relative to the source
            assert record["provenance"]["layout"] == "official"

    checked = (out / "import" / "checked.jsonl").read_text()
    shards = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    again = run("shards", "import", str(source), str(out))
    assert again.returncode == 1, again.stderr[-3000:]
    assert (out / "import" / "checked.jsonl").read_text() == checked  # nothing re-checked: resumable
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == shards


def test_folders_layout_with_a_value_map_and_refusals(tmp_path):
    source = tmp_path / "DLRSD"
    for index, group in enumerate(("airplane", "beach", "airplane")):
        stem = f"{group}{index:02d}"
        images, labels = source / "Images" / group, source / "labels" / group
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 40 * index, np.uint8)).save(images / f"{stem}.tif")
        Image.fromarray(np.array([[1, 2], [17, 0]], np.uint8).repeat(16, 0).repeat(16, 1)).save(labels / f"{stem}.png")
    value_map = tmp_path / "dlrsd.yaml"
    value_map.write_text("0: null\n1: airplane\n2: bareland\n17: water\n")
    out = tmp_path / "out"
    result = run(
        "shards", "import", str(source), str(out), "--layout", "folders", "--images", "Images", "--masks", "labels",
        "--value-map", str(value_map), "--val-fraction", "0.34",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_shards(out) == []
    samples = {s.key: s for split in ("train", "val") for s in ShardReader(out).samples(split)}
    assert set(samples) == {"airplane__airplane00", "airplane__airplane02", "beach__beach01"}
    values = set(np.unique(samples["beach__beach01"].mask).tolist())
    assert values == {255, TAXONOMY.index_of("airplane"), TAXONOMY.index_of("bareland"), TAXONOMY.index_of("water")}

    value_map.write_text("1: no such class\n")
    refused = run("shards", "import", str(source), str(out), "--layout", "folders", "--value-map", str(value_map))
    assert refused.returncode == 2 and "'no such class' is not a class" in refused.stderr, refused.stderr
    missing = run("shards", "import", str(source), str(tmp_path / "o2"), "--layout", "folders")
    assert missing.returncode == 2 and "images: not a folder" in missing.stderr, missing.stderr


@pytest.mark.slow
def test_real_road_tiles_imported_then_trained_and_validated(tmp_path, shared_real):
    spacenet = shared_real / "spacenet"
    source = tmp_path / "roads"
    with (
        rasterio.open(spacenet / "road_mask_input.tif") as image,
        rasterio.open(spacenet / "sample_road_raster_mask.tif") as mask,
    ):
        band, roads = image.read(1).astype(np.float32), mask.read(1)
    low, high = np.percentile(band, [2, 98])
    grey = np.clip((band - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    side = grey.shape[0] // 4
    for row in range(4):
        for col in range(4):
            split = "val" if (row, col) in ((0, 0), (3, 3)) else "train"
            window = (slice(row * side, (row + 1) * side), slice(col * side, (col + 1) * side))
            for folder in ("img", "mask"):
                (source / split / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.repeat(grey[window][..., None], 3, axis=2)).save(
                source / split / "img" / f"r{row}c{col}.png"
            )
            Image.fromarray((roads[window] > 0).astype(np.uint8)).save(source / split / "mask" / f"r{row}c{col}.png")
    value_map = tmp_path / "roads.yaml"
    value_map.write_text(f"0: '{TAXONOMY.categories[BACKGROUND].name}'\n1: road\n")
    out = tmp_path / "out"
    result = run("shards", "import", str(source), str(out), "--value-map", str(value_map))
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_shards(out) == []
    config = tmp_path / "piseg.yaml"
    config.write_text(
        "train: {iters: 20, batch_size: 2, val_every: 10, checkpoint_every: 10, log_every: 5, workers: 0,"
        " shuffle_buffer: 8, crop: 32, resize_short: 32}\n"
        "model: {clip_resolution: 32, window_size: 2}\neval: {resize: 48, crop: 32, stride: 16}\n"
    )
    trained = subprocess.run(
        [sys.executable, "-m", "piseg.cli", "train", "--shards", str(out), "--backbone", "tiny",
         "--config", str(config), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert max(entry["step"] for entry in log) == 20
    validated = [entry for entry in log if "val_miou" in entry]  # on the imported val split
    assert validated and validated[-1]["val_samples"] == 2 and 0.0 <= validated[-1]["val_miou"] <= 1.0


def test_hostile_and_ambiguous_names_are_left_out_with_reasons_and_nothing_else_stops(tmp_path):
    """A dotted name becomes a usable key; a name two files share, a link out of the source, keys two
    pairs would share and a vanished file are each left out with the reason, never guessed, and the
    other pairs are imported. A build's output folder is refused."""
    source = tmp_path / "src"
    images, masks = source / "images", source / "masks"
    write_pair(images, masks, "a.b", 1)  # key a_b
    write_pair(images, masks, "good", 2)
    write_pair(images, masks, "twice", 3)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / "twice.png")  # twice.jpg or twice.png?
    write_pair(images / "x", masks / "x", "y", 4)  # key x__y ...
    write_pair(images, masks, "x__y", 5)  # ... and this one too
    outside = tmp_path / "secret.jpg"
    Image.fromarray(np.full((64, 64, 3), 9, np.uint8)).save(outside)
    (images / "leak.jpg").symlink_to(outside)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / "leak.png")
    (images / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / "gone.png")
    out = tmp_path / "out"
    result = run("shards", "import", str(source), str(out), "--layout", "folders", "--val-fraction", "0")
    assert result.returncode == 1, result.stderr[-3000:]
    assert verify_shards(out) == []
    assert {s.key for s in ShardReader(out).samples("train")} == {"a_b", "good"}
    reasons = "\n".join(
        json.loads(line)["reason"] for line in (out / "import" / "quarantine.jsonl").read_text().splitlines()
    )
    assert "twice.jpg" in reasons and "one name, several files" in reasons
    assert "leak.jpg: a link to a file outside" in reasons
    assert "its key 'x__y' is another pair's too" in reasons
    assert "missing.jpg" in reasons or "gone.jpg" in reasons
    assert not any(p.name == "secret.jpg" for p in out.rglob("*"))

    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "records.jsonl").write_text("")
    refused = run("shards", "import", str(source), str(tmp_path / "build"), "--layout", "folders")
    assert refused.returncode == 2 and "a build's output folder" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_label_rasters_are_tiled_as_a_build_tiles_keeping_the_georeference(tmp_path, shared_real):
    """The real SpaceNet scene (panchromatic uint16, EPSG:4326) and its road raster on the same grid, in
    the `rasters` layout: 512-px tiles as a build plans them, each with its window's transform; a
    label raster on another grid and one with two bands are left out with the reason."""
    import shutil

    from affine import Affine

    source = tmp_path / "scenes"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    shutil.copy(shared_real / "spacenet" / "road_mask_input.tif", source / "images" / "vegas.tif")
    shutil.copy(shared_real / "spacenet" / "sample_road_raster_mask.tif", source / "masks" / "vegas.tif")
    profile = {"driver": "GTiff", "width": 64, "height": 64, "dtype": "uint8", "crs": "EPSG:32633"}
    for name, labels_transform, bands in (
        ("shifted", Affine(1, 0, 110, 0, -1, 100), 1),
        ("twoband", Affine(1, 0, 100, 0, -1, 100), 2),
    ):
        with rasterio.open(
            source / "images" / f"{name}.tif", "w", count=3, transform=Affine(1, 0, 100, 0, -1, 100), **profile
        ) as out:
            out.write(np.full((3, 64, 64), 90, np.uint8))
        with rasterio.open(
            source / "masks" / f"{name}.tif", "w", count=bands, transform=labels_transform, **profile
        ) as out:
            out.write(np.ones((bands, 64, 64), np.uint8))
    value_map = tmp_path / "roads.yaml"
    value_map.write_text(f"0: '{TAXONOMY.categories[BACKGROUND].name}'\n255: road\n")  # the raster's 0 / 255
    out = tmp_path / "out"
    result = run(
        "shards", "import", str(source), str(out), "--layout", "rasters", "--tile-size", "512",
        "--value-map", str(value_map), "--val-fraction", "0",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert verify_shards(out) == []
    reasons = (out / "import" / "quarantine.jsonl").read_text()
    assert "shifted.tif: another grid" in reasons and "twoband.tif: 2 bands" in reasons
    samples = {s.key: s for s in ShardReader(out).samples("train")}
    assert set(samples) == {f"vegas__r{r}_c{c}" for r in (0, 512, 788) for c in (0, 512, 788)}
    with (
        rasterio.open(source / "images" / "vegas.tif") as image,
        rasterio.open(source / "masks" / "vegas.tif") as roads,
    ):
        for key, sample in samples.items():
            row, col = (int(part[1:]) for part in key.split("__")[1].split("_"))
            window = rasterio.windows.Window(col, row, 512, 512)
            expected = np.where(roads.read(1, window=window) > 0, ROAD, BACKGROUND)
            assert np.array_equal(sample.mask, expected), key
            transform = sample.record["source"]["transform"]
            assert np.allclose(transform, list(rasterio.windows.transform(window, image.transform))[:6])
            assert "EPSG" in sample.record["source"]["crs"] or "WGS 84" in sample.record["source"]["crs"]
