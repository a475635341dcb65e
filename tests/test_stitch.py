import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.raster.ingest import plan_windows
from pipeline.raster.stitch import stitch_to_geotiff, tile_cores


@pytest.mark.parametrize(
    ("width", "height", "size", "overlap"),
    [(1000, 700, 256, 0), (1000, 700, 256, 64), (300, 200, 256, 100), (256, 256, 256, 0)],
)
def test_cores_partition_the_raster(width, height, size, overlap):
    windows = plan_windows(width, height, size, overlap)
    coverage = np.zeros((height, width), np.int32)
    for window, core in zip(windows, tile_cores(windows)):
        assert window.col_off <= core.col_off and core.col_off + core.width <= window.col_off + window.width
        assert window.row_off <= core.row_off and core.row_off + core.height <= window.row_off + window.height
        coverage[core.row_off : core.row_off + core.height, core.col_off : core.col_off + core.width] += 1
    assert (coverage == 1).all()


def test_seam_is_the_middle_of_the_overlap():
    windows = plan_windows(456, 256, 256, 56)  # columns at 0 and 200: overlap 200..256
    cores = tile_cores(windows)
    assert [(c.col_off, c.col_off + c.width) for c in cores] == [(0, 228), (228, 456)]


def test_stitched_geotiff_has_the_source_grid_and_nearest_centre_labels(tmp_path):
    windows = plan_windows(600, 400, 256, 64)
    masks = [np.full((w.height, w.width), i, np.uint8) for i, w in enumerate(windows)]
    missing = 2  # a quarantined tile: its core must become 255
    transform = [0.5, 0, 733601.0, 0, -0.5, 3725139.0]
    out = stitch_to_geotiff(
        windows, lambda i: None if i == missing else masks[i], tmp_path / "full.tif", 600, 400, "EPSG:32616", transform
    )
    with rasterio.open(out) as dataset:
        assert (dataset.width, dataset.height) == (600, 400)
        assert dataset.crs.to_epsg() == 32616 and dataset.transform == Affine(*transform)
        assert dataset.nodata == 255
        stitched = dataset.read(1)
    for i, core in enumerate(tile_cores(windows)):
        block = stitched[core.row_off : core.row_off + core.height, core.col_off : core.col_off + core.width]
        assert (block == (255 if i == missing else i)).all()
    assert not list(tmp_path.glob("*.part"))
