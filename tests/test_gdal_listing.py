"""GDAL does not list the folder of each file we open or write (pipeline.raster.gdal_env).

Listing a folder is what made a 100,000-tile build slow down with the square of its tiles: every
mask GeoTIFF written into `masks/` listed all the masks before it. The kernel's inotify reports each
listing of a watched folder (IN_ACCESS on the folder itself), so these tests count them; GDAL's own
default is what `GDAL_DISABLE_READDIR_ON_OPEN=FALSE` in the environment gives (it wins)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from pipeline.raster.gdal_env import SETTING
from pipeline.raster.ingest import RasterSource, planned_tiles
from pipeline.raster.outputs import write_mask_geotiff
from pipeline.raster.tiling import TilingConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

IN_ACCESS, IN_ISDIR, IN_NONBLOCK = 0x1, 0x40000000, 0o4000
WORLD_FILE = "0.5\n0\n0\n-0.5\n400000\n5000000\n"  # 0.5 m pixels; the first pixel's centre at (400000, 5000000)


class FolderListings:
    """Counts the listings of one folder (inotify: IN_ACCESS on the folder itself, not a file in it)."""

    def __init__(self, folder: Path) -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            self.descriptor = libc.inotify_init1(IN_NONBLOCK)
        except (OSError, AttributeError) as error:
            pytest.skip(f"inotify unavailable: {error}")
        if self.descriptor < 0:
            pytest.skip(f"inotify unavailable: {os.strerror(ctypes.get_errno())}")
        if libc.inotify_add_watch(self.descriptor, os.fsencode(folder), IN_ACCESS) < 0:
            os.close(self.descriptor)
            pytest.skip(f"inotify cannot watch {folder}: {os.strerror(ctypes.get_errno())}")

    def count(self) -> int:
        """Listings since the last count."""
        listings = 0
        while True:
            try:
                events = os.read(self.descriptor, 65536)
            except BlockingIOError:
                return listings
            offset = 0
            while offset < len(events):
                _, mask, _, length = struct.unpack_from("iIII", events, offset)
                listings += mask == IN_ACCESS | IN_ISDIR and length == 0
                offset += 16 + length


@pytest.fixture(autouse=True)
def gdal_default_setting(monkeypatch):
    monkeypatch.delenv(SETTING, raising=False)  # a caller's setting would decide what the tests see


@pytest.fixture
def crowded(tmp_path):
    """A folder that already holds many files, as `masks/` does late in a build."""
    folder = tmp_path / "crowded"
    folder.mkdir()
    for index in range(2000):
        (folder / f"tile{index:05d}.png").touch()
    return folder


@pytest.fixture
def listings(crowded):
    watch = FolderListings(crowded)
    os.listdir(crowded)
    if watch.count() != 1:
        os.close(watch.descriptor)
        pytest.skip("this filesystem does not report a folder's listings to inotify")
    yield watch
    os.close(watch.descriptor)


@pytest.mark.parametrize("name, world", [("scene.png", "scene.pgw"), ("scene.tif", "scene.tfw")])
def test_reading_sources_does_not_list_their_folder_and_still_finds_a_world_file(crowded, listings, name, world):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(crowded / name)  # no georeference inside: it is in the world file
    (crowded / world).write_text(WORLD_FILE)
    listings.count()
    assert planned_tiles([crowded / name], TilingConfig(32)) == 4
    with RasterSource(crowded / name) as source:
        assert source.dataset.transform == Affine(0.5, 0, 399999.75, 0, -0.5, 5000000.25)
    assert listings.count() == 0

    with warnings.catch_warnings():  # the check can fail: GDAL's default lists the folder
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.Env(**{SETTING: "FALSE"}), rasterio.open(crowded / name):
            pass
    assert listings.count() >= 1


def test_writing_masks_lists_the_masks_folder_less_than_gdal_would(crowded, listings, monkeypatch):
    """Left, per mask, is the COG driver's one look at its output's folder, which reads one page of
    names whatever the folder holds; GDAL's default adds a whole listing per mask."""

    def listings_per_mask(label: str) -> list[int]:
        counts = []
        for index in range(3):
            mask = np.zeros((32, 32), np.uint8)
            write_mask_geotiff(crowded / f"{label}{index}.tif", mask, "EPSG:32633", (0.5, 0, 4e5, 0, -0.5, 5e6))
            counts.append(listings.count())
        return counts

    ours = listings_per_mask("unlisted")
    monkeypatch.setenv(SETTING, "FALSE")
    gdal_default = listings_per_mask("default")
    assert max(ours) <= 1 and sum(ours) < sum(gdal_default), (ours, gdal_default)
