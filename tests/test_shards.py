import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset.records import Domain, SourceInfo, TileRecord, Window
from pipeline.dataset.shards import (
    SampleCache,
    ShardConfig,
    ShardError,
    ShardReader,
    export_official,
    split_keys,
    verify_shards,
    write_shards,
)

NAMES = ["building", "road", "water"]


def record(key: str, domain: str) -> TileRecord:
    source = SourceInfo(
        path="x.tif",
        sha256="0" * 64,
        window=Window(row_off=0, col_off=0, height=16, width=16),
        band_mapping=[1, 2, 3],
        stretch="none",
        dtype="uint8",
        raster_width=16,
        raster_height=16,
    )
    return TileRecord(key=key, source=source, domain=Domain(name=domain, score=1.0))


def sample_of(record: TileRecord):
    seed = int(record.key.split("_")[1])
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, (16, 16)).astype(np.uint8)
    mask[0, 0] = 255
    return rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), mask


@pytest.fixture
def records():
    return [record(f"tile_{i:03d}", "town" if i % 3 else "forest") for i in range(30)]


def build(out, records, **config):
    return write_shards(out, records, sample_of, NAMES, "sha256:test", ShardConfig(**{"max_samples": 8, **config}))


def test_split_is_deterministic_and_stratified(records):
    a, b = split_keys(records, 0.2, seed=1), split_keys(list(reversed(records)), 0.2, seed=1)
    assert a == b and len(a["val"]) == 6 and not set(a["val"]) & set(a["train"])
    forest = {r.key for r in records if r.domain.name == "forest"}
    assert len(forest & set(a["val"])) == 2  # 20 % of the 10 forest tiles
    assert split_keys(records, 0.2, seed=2) != a


def test_shards_are_byte_identical_and_match_the_manifest(tmp_path, records):
    manifest = build(tmp_path / "a", records, lossless=True)
    build(tmp_path / "b", list(reversed(records)), lossless=True)
    for shard in (tmp_path / "a" / "shards").glob("*.tar"):
        assert shard.read_bytes() == (tmp_path / "b" / "shards" / shard.name).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    train = manifest["splits"]["train"]
    assert train["samples"] == 27 and [s["samples"] for s in train["shards"]] == [8, 8, 8, 3]
    assert manifest["taxonomy"] == {"names": NAMES, "version": "sha256:test"}
    assert manifest["domains"] == {"forest": 10, "town": 20}
    total_pixels = sum(c["pixels"] for c in manifest["categories"].values())
    assert total_pixels == 30 * (16 * 16 - 1)
    assert verify_shards(tmp_path / "a") == []
    with tarfile.open(tmp_path / "a" / "shards" / "train-000000.tar") as tar:
        key = tar.getnames()[0].split(".")[0]
        assert sorted(tar.getnames()[:3]) == [f"{key}.json", f"{key}.mask.png", f"{key}.webp"]
        assert all(m.mtime == 0 for m in tar.getmembers())


def distinct(records: list[TileRecord]) -> list[TileRecord]:
    """The records with a source digest each: the sample cache tells tiles apart by what made their pixels."""
    for index, item in enumerate(records):
        item.source.sha256 = f"{index:064x}"
    return records


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((out / "shards").glob("*.tar"))}


def test_encoding_threads_and_the_sample_cache_change_no_byte(tmp_path, records):
    """Samples encoded four at a time, and then assembled from the sample cache, give the shards and
    manifest of one thread and no cache; a cached image part is not loaded again (issue 32)."""
    records, config = distinct(records), ShardConfig(max_samples=8)
    write_shards(tmp_path / "plain", records, sample_of, NAMES, "v", config)
    cache = SampleCache(tmp_path / "cache", config)
    write_shards(tmp_path / "threads", records, sample_of, NAMES, "v", config, cache=cache, workers=4)
    assert shard_bytes(tmp_path / "threads") == shard_bytes(tmp_path / "plain")

    def no_pixels(item: TileRecord):
        raise AssertionError(f"{item.key}: pixels read although the cache holds the image")

    write_shards(
        tmp_path / "cached",
        records,
        no_pixels,
        NAMES,
        "v",
        config,
        cache=cache,
        load_mask=lambda item: sample_of(item)[1],
        workers=2,
    )
    assert shard_bytes(tmp_path / "cached") == shard_bytes(tmp_path / "plain")
    for name in ("plain", "threads", "cached"):
        assert (tmp_path / name / "manifest.json").read_bytes() == (tmp_path / "plain" / "manifest.json").read_bytes()


def test_sample_cache_misses_on_another_source_or_setting(tmp_path, records):
    item = distinct(records)[0]
    image = sample_of(item)[0]
    cache = SampleCache(tmp_path, ShardConfig())
    assert not cache.has_image(item)
    cache.store_image(item, image)
    assert cache.has_image(item) and cache.image(item)[0] == "webp"
    changed = item.model_copy(deep=True)
    changed.source.sha256 = "f" * 64  # the file changed
    assert cache.image(changed) is None
    assert SampleCache(tmp_path, ShardConfig(lossless=False)).image(item) is None
    assert SampleCache(tmp_path, ShardConfig(), context="other bands").image(item) is None
    path = cache._path(cache.image_key(item))
    path.write_bytes(b"webp\n")  # damaged (cut short): a miss, written again
    assert cache.image(item) is None
    cache.store_image(item, image)
    assert cache.image(item) == ("webp", path.read_bytes().partition(b"\n")[2]) and path.stat().st_size > 5


def test_reader_round_trip_and_checks(tmp_path, records):
    build(tmp_path, records, lossless=True)
    reader = ShardReader(tmp_path, expected_names=NAMES)
    samples = {s.key: s for s in reader.samples("val")}
    assert len(samples) == 3
    for key, sample in samples.items():
        image, mask = sample_of(record(key, "x"))
        assert np.array_equal(sample.image, image) and np.array_equal(sample.mask, mask)
        assert sample.record["key"] == key
    with pytest.raises(ShardError, match="not the 2 classes configured"):
        ShardReader(tmp_path, expected_names=["building", "road"])
    with pytest.raises(ShardError, match="same names, different order"):
        ShardReader(tmp_path, expected_names=["road", "building", "water"])


def test_corruption_and_bad_mask_values_are_found(tmp_path, records):
    build(tmp_path, records)
    shard = tmp_path / "shards" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any("sha256 differs" in p for p in verify_shards(tmp_path))
    with pytest.raises(ShardError, match="sha256 differs"):
        ShardReader(tmp_path)

    def bad_mask(r):
        image, mask = sample_of(r)
        mask[1, 1] = 3
        return image, mask

    with pytest.raises(ShardError, match=r"tile_000: mask values \[3\] outside the taxonomy's 3 classes"):
        write_shards(tmp_path / "bad", records[:3], bad_mask, NAMES, "v", ShardConfig(val_fraction=0))
    write_shards(tmp_path / "bad", records[:3], bad_mask, [*NAMES, "tree"], "v", ShardConfig(val_fraction=0))
    manifest = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    manifest["taxonomy"]["names"] = NAMES  # shards that claim a smaller taxonomy than their masks use
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps(manifest))
    assert any("mask values [3] outside the taxonomy" in p for p in verify_shards(tmp_path / "bad"))


def test_missing_manifest_and_dotted_keys(tmp_path, records):
    with pytest.raises(ShardError, match="no manifest"):
        ShardReader(tmp_path)
    with pytest.raises(ShardError, match="contains '.'"):
        write_shards(tmp_path, [record("a.tif__r0_c0", "town")], lambda r: sample_of(record("t_1", "x")), NAMES, "v")


def test_export_official_layout(tmp_path, records):
    build(tmp_path / "out", records)
    count = export_official(tmp_path / "out", tmp_path / "official")
    assert count == 30
    assert len(list((tmp_path / "official" / "train" / "img").glob("*.jpg"))) == 27
    mask = np.asarray(
        Image.open(
            tmp_path
            / "official"
            / "val"
            / "mask"
            / f"{sorted(p.stem for p in (tmp_path / 'official' / 'val' / 'img').glob('*.jpg'))[0]}.png"
        )
    )
    assert mask.dtype == np.uint8 and mask.shape == (16, 16)
    json.loads((tmp_path / "out" / "manifest.json").read_text())
    Image.open(io.BytesIO((tmp_path / "official" / "train" / "img" / "tile_001.jpg").read_bytes())).verify()


def test_image_bytes_keep_the_source_or_are_lossless(tmp_path):
    """A whole JPEG/PNG source keeps its own bytes; an EXIF-rotated JPEG (whose bytes decode to other pixels
    than the upright tile) and a window of a larger raster are stored losslessly (WebP); JPEG only on request."""
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.jpg", quality=80)
    Image.fromarray(pixels).save(tmp_path / "whole.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", quality=80, exif=exif)

    def tile(
        name: str, path: Path, window: tuple[int, int, int, int], image: np.ndarray
    ) -> tuple[TileRecord, np.ndarray]:
        row, col, height, width = window
        full = Image.open(path).size
        source = SourceInfo(
            path=str(path),
            sha256="0" * 64,
            window=Window(row_off=row, col_off=col, height=height, width=width),
            band_mapping=[1, 2, 3],
            stretch="none",
            dtype="uint8",
            raster_width=full[0],
            raster_height=full[1],
        )
        return TileRecord(key=name, source=source, domain=Domain(name="town", score=1.0)), image

    decoded = {name: np.asarray(Image.open(tmp_path / name).convert("RGB")) for name in ("whole.jpg", "whole.png")}
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rotated.jpg")).convert("RGB"))
    tiles = [
        tile("jpeg_0", tmp_path / "whole.jpg", (0, 0, 16, 24), decoded["whole.jpg"]),
        tile("png_0", tmp_path / "whole.png", (0, 0, 16, 24), decoded["whole.png"]),
        tile("rotated_0", tmp_path / "rotated.jpg", (0, 0, 24, 16), upright),
        tile("window_0", tmp_path / "whole.png", (0, 0, 8, 8), pixels[:8, :8]),
    ]
    masks = {r.key: np.zeros(image.shape[:2], dtype=np.uint8) for r, image in tiles}
    by_key = {r.key: image for r, image in tiles}
    manifest = write_shards(
        tmp_path / "out",
        [r for r, _ in tiles],
        lambda r: (by_key[r.key], masks[r.key]),
        NAMES,
        "v",
        ShardConfig(val_fraction=0),
    )
    assert manifest["image_format"] == "mixed"
    with tarfile.open(tmp_path / "out" / "shards" / "train-000000.tar") as tar:
        stored = {
            m.name: tar.extractfile(m).read() for m in tar.getmembers() if not m.name.endswith((".json", ".mask.png"))
        }
    assert stored["jpeg_0.jpg"] == (tmp_path / "whole.jpg").read_bytes()
    assert stored["png_0.png"] == (tmp_path / "whole.png").read_bytes()
    assert set(stored) == {"jpeg_0.jpg", "png_0.png", "rotated_0.webp", "window_0.webp"}
    for sample in ShardReader(tmp_path / "out").samples("train"):
        assert np.array_equal(sample.image, by_key[sample.key]), sample.key  # bit for bit, every kind
    write_shards(
        tmp_path / "lossy",
        [r for r, _ in tiles if r.key == "window_0"],
        lambda r: (by_key[r.key], masks[r.key]),
        NAMES,
        "v",
        ShardConfig(val_fraction=0, lossless=False),
    )
    assert ShardReader(tmp_path / "lossy").manifest["image_format"] == "jpg"
