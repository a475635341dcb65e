"""GDAL opens files here without listing their folder.

GDAL looks for a file's side-cars (`.aux.xml`, `.ovr`, `.msk`, world files) by listing its folder: at
each open (reads stop after GDAL_READDIR_LIMIT_ON_OPEN names, 1,000 by default), and, with no limit,
when its COG driver finishes a file. A build writes a mask GeoTIFF and a mask PNG per tile into one
`masks/` folder, so each COG mask listed every mask before it, and a 100,000-tile build slowed down
with the square of its tile count (figures in docs/scale.md).
"""

from __future__ import annotations

import os

SETTING = "GDAL_DISABLE_READDIR_ON_OPEN"


def unlisted(sidecars: bool = True):
    """A `rasterio.Env` in which GDAL does not list the folder of the file it opens.

    With `sidecars` (files we read: sources, ground truth, stitched masks) GDAL still finds a file's
    own side-cars by probing their names one by one, so a world file or `.aux.xml` beside a source
    still gives its georeference. Without (files we write) it looks for none: ours have none. A
    GDAL_DISABLE_READDIR_ON_OPEN set in the environment wins. Entered in a worker thread the setting is
    that thread's; in the main thread rasterio makes it process-wide while it lasts, which no worker
    notices because each opens its own files inside its own `unlisted()`."""
    import rasterio  # GDAL only where a raster is opened

    return rasterio.Env(**{SETTING: os.environ.get(SETTING, "TRUE" if sidecars else "EMPTY_DIR")})
