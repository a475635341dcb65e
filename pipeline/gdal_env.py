"""GDAL opens files here without listing their folder.

By default GDAL lists a file's whole folder each time it opens one, and again when its COG driver
finishes one, to look for side-car files (`.aux.xml`, `.ovr`, `.msk`, world files). A build writes a
mask GeoTIFF and a mask PNG per tile into one `masks/` folder, so each new mask listed every mask
before it: 7 ms a mask beside no files, 161 ms beside 100,000, and a 100,000-tile build slowed
quadratically (docs/scale.md). Sources in one flat folder of many images paid the same on every open.
"""

from __future__ import annotations

import os

SETTING = "GDAL_DISABLE_READDIR_ON_OPEN"


def unlisted(sidecars: bool = True):
    """A `rasterio.Env` in which GDAL does not list the folder of the file it opens.

    With `sidecars` (files we read: sources, ground truth, stitched masks) GDAL still finds a file's
    own side-cars by probing their names one by one, so a world file or `.aux.xml` beside a source
    still gives its georeference. Without (files we write) it looks for none: ours have none. A
    GDAL_DISABLE_READDIR_ON_OPEN set in the environment wins."""
    import rasterio  # GDAL only where a raster is opened

    return rasterio.Env(**{SETTING: os.environ.get(SETTING, "TRUE" if sidecars else "EMPTY_DIR")})
