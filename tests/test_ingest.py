import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window as RioWindow
from rasterio.windows import transform as window_transform

from pipeline.dataset.records import TileRecord
from pipeline.raster.ingest import BandRule, IngestError, RasterSource, Tile, TilingConfig, find_rasters, plan_windows


def write_raster(path: Path, data: np.ndarray, nodata=None, crs="EPSG:32633", tiled=False) -> Path:
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": Affine(2.0, 0, 500000, 0, -2.0, 4600000),
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    return path


_TILING_256 = TilingConfig(256)
_DEFAULT_BANDS = BandRule()


def tiles_of(path, config=_TILING_256, rule=_DEFAULT_BANDS):
    with RasterSource(path, rule) as source:
        return list(source.tiles(config))


@pytest.mark.parametrize(
    ("width", "height", "size", "overlap", "expected_cols"),
    [
        (1000, 300, 256, 0, [0, 256, 512, 744]),
        (512, 512, 256, 0, [0, 256]),
        (100, 80, 256, 0, [0]),
        (600, 256, 256, 56, [0, 200, 344]),
    ],
)
def test_plan_windows(width, height, size, overlap, expected_cols):
    windows = plan_windows(width, height, size, overlap)
    assert sorted({w.col_off for w in windows}) == expected_cols
    assert all(w.col_off + w.width <= width and w.row_off + w.height <= height for w in windows)
    assert plan_windows(0, 10, 256, 0) == []


def test_invalid_tiling_is_rejected():
    with pytest.raises(ValueError, match="overlap"):
        TilingConfig(256, 256)


def test_panchromatic_uint16_spacenet(shared_real):
    path = shared_real / "spacenet" / "sample_geotiff.tif"
    tiles = tiles_of(path, TilingConfig(512, 64))
    assert len(tiles) == 4 and all(isinstance(t, Tile) for t in tiles)
    tile = tiles[1]
    assert tile.image.dtype == np.uint8 and tile.image.shape == (512, 512, 3)
    assert np.array_equal(tile.image[..., 0], tile.image[..., 2])  # one band replicated
    assert tile.image.std() > 20  # stretched, not a flat dark image
    source = tile.record.source
    assert source.band_mapping == [1, 1, 1] and source.dtype == "uint16" and source.stretch.startswith("percentile")
    with rasterio.open(path) as dataset:
        w = source.window
        expected = window_transform(RioWindow(w.col_off, w.row_off, w.width, w.height), dataset.transform)
        assert source.transform == pytest.approx(list(expected)[:6])
        assert source.crs == dataset.crs.to_wkt()
    assert tile.record.key == f"sample_geotiff__r{w.row_off}_c{w.col_off}"


def test_four_band_naip_uses_rgb(shared_real):
    path = next((shared_real / "naip").glob("*.tif"))
    tiles = tiles_of(path, TilingConfig(512))
    assert tiles[0].record.source.band_mapping == [1, 2, 3]
    with rasterio.open(path) as dataset:
        red = dataset.read(1, window=RioWindow(0, 0, 512, 512))
    assert np.array_equal(tiles[0].image[..., 0], red)  # uint8 is not stretched
    nir = tiles_of(path, TilingConfig(512), BandRule(bands=(4, 1, 2)))[0]
    assert nir.record.source.band_mapping == [4, 1, 2]


def test_neon_rgb_nodata_and_ucm_without_crs(shared_real):
    (neon,) = tiles_of(shared_real / "neon" / "OSBS_029.tif", TilingConfig(512))
    assert neon.image.shape == (400, 400, 3) and 0.9 < neon.valid.mean() < 1.0  # white 255 pixels are nodata
    assert (neon.image[~neon.valid] == 0).all()
    (ucm,) = tiles_of(shared_real / "ucm_sample" / "airplane07.tif", TilingConfig(512))
    assert ucm.record.source.crs is None and ucm.record.source.transform is None


def test_float_with_nan_and_int16_and_two_bands(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(0.2, 0.05, (1, 300, 300)).astype(np.float32)
    data[0, :50] = np.nan
    (tile,) = tiles_of(write_raster(tmp_path / "f.tif", data, nodata=np.nan), TilingConfig(512))
    assert not tile.valid[:50].any() and tile.valid[50:].all()
    assert 100 < tile.image[50:].mean() < 160
    two = rng.integers(-500, 500, (2, 64, 64)).astype(np.int16)
    (tile,) = tiles_of(write_raster(tmp_path / "i.tif", two), TilingConfig(512))
    assert tile.record.source.band_mapping == [1, 1, 1] and tile.image.max() == 255


def test_all_nodata_tile_is_quarantined(tmp_path):
    data = np.zeros((3, 512, 256), np.uint8)
    data[:, 256:] = 90
    tiles = tiles_of(write_raster(tmp_path / "half.tif", data, nodata=0), TilingConfig(256))
    quarantined = [t for t in tiles if isinstance(t, TileRecord)]
    assert len(tiles) == 2 and len(quarantined) == 1
    assert quarantined[0].quarantine.reason == "all pixels are nodata" and quarantined[0].key == "half__r0_c0"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.tif", b"", "zero-byte file"),
        ("corrupt.tif", b"II*\x00 this is not a tiff" * 20, "cannot be read as a raster"),
    ],
)
def test_broken_files_raise_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IngestError, match=message):
        RasterSource(path)


def test_band_mapping_beyond_band_count(tmp_path):
    path = write_raster(tmp_path / "rgb.tif", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(IngestError, match=r"asks for more than the 3 band"):
        RasterSource(path, BandRule(bands=(4, 3, 2)))


def test_find_rasters_quarantines_unsupported_and_skips_sidecars(tmp_path):
    write_raster(tmp_path / "a.tif", np.zeros((3, 32, 32), np.uint8))
    (tmp_path / "a.tif.aux.xml").write_text("<x/>")
    (tmp_path / "notes.bmp").write_bytes(b"BM")
    (tmp_path / "LICENSE").write_text("MIT")
    rasters, unsupported = find_rasters(tmp_path)
    assert [p.name for p in rasters] == ["a.tif"]
    assert [r.quarantine.reason for r in unsupported] == ["unsupported format .bmp"]
    with pytest.raises(FileNotFoundError):
        find_rasters(tmp_path / "missing")


def test_large_raster_is_read_window_by_window(tmp_path):
    """A 6000x6000 uint16 raster (72 MB) tiled at 512: Python-side memory stays near one tile."""
    path = tmp_path / "large.tif"
    profile = {
        "driver": "GTiff",
        "width": 6000,
        "height": 6000,
        "count": 1,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": Affine(1, 0, 500000, 0, -1, 4600000),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
    }
    with rasterio.open(path, "w", **profile) as out:
        for row in range(0, 6000, 500):
            out.write(np.full((1, 500, 6000), row, np.uint16), window=RioWindow(0, row, 6000, 500))
    tracemalloc.start()
    count = 0
    with RasterSource(path) as source, warnings.catch_warnings():
        for tile in source.tiles(TilingConfig(512)):
            count += 1
            del tile
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 144
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB: the raster was not read by windows"
