"""GDAL does not list the folder of each file we open or write (pipeline.gdal_env).

Listing a folder is what made a 100,000-tile build slow down quadratically: every mask GeoTIFF written
into `masks/` listed all the masks before it. The kernel's inotify reports each listing of a watched
folder (an IN_ACCESS event on the folder itself), so these tests count them."""

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
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from pipeline.ingest import RasterSource, planned_tiles
from pipeline.outputs import write_mask_geotiff
from pipeline.tiling import TilingConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

IN_ACCESS, IN_ISDIR, IN_NONBLOCK = 0x1, 0x40000000, 0o4000


class FolderListings:
    """Counts the listings of one folder from now on (inotify: IN_ACCESS on the folder itself)."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.descriptor = libc.inotify_init1(IN_NONBLOCK)
        if self.descriptor < 0 or libc.inotify_add_watch(self.descriptor, os.fsencode(folder), IN_ACCESS) < 0:
            pytest.skip(f"inotify unavailable: {os.strerror(ctypes.get_errno())}")

    def count(self) -> int:
        listings = 0
        while True:
            try:
                events = os.read(self.descriptor, 65536)
            except BlockingIOError:
                return listings
            offset = 0
            while offset < len(events):
                _, mask, _, length = struct.unpack_from("iIII", events, offset)
                listings += mask == IN_ACCESS | IN_ISDIR
                offset += 16 + length

    def close(self) -> None:
        os.close(self.descriptor)


@pytest.fixture
def crowded(tmp_path):
    """A folder that already holds many files, as `masks/` does late in a build."""
    folder = tmp_path / "crowded"
    folder.mkdir()
    for index in range(2000):
        (folder / f"tile{index:05d}.png").touch()
    return folder


def test_the_watch_sees_a_listing(crowded):
    listings = FolderListings(crowded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(write_png(crowded / "plain.png")):  # GDAL's own default: the folder is listed
            pass
    assert listings.count() >= 1
    listings.close()


def test_reading_sources_does_not_list_their_folder_and_still_finds_a_world_file(crowded):
    source = write_png(crowded / "scene.png")
    (crowded / "scene.pgw").write_text("0.5\n0\n0\n-0.5\n400000\n5000000\n")  # the georeference lives here
    listings = FolderListings(crowded)
    assert planned_tiles([source], TilingConfig(32)) == 4
    with RasterSource(source) as opened:
        assert opened.dataset.transform.a == 0.5 and opened.dataset.transform.c == pytest.approx(399999.75)
    assert listings.count() == 0
    listings.close()


def test_writing_masks_does_not_list_the_masks_folder_each_time(crowded):
    """GDAL's default lists the folder twice for each mask; left is the one look of the COG driver at
    its output's folder, which reads one page of names whatever the folder holds."""
    listings = FolderListings(crowded)
    for index in range(3):
        write_mask_geotiff(
            crowded / f"mask{index}.tif", np.zeros((32, 32), np.uint8), "EPSG:32633", (0.5, 0, 400000, 0, -0.5, 5000000)
        )
    assert listings.count() <= 3
    listings.close()


def write_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path
