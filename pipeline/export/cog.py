"""Cloud-Optimized GeoTIFF checks.

The masks are written as COGs where they are made (pipeline.raster.outputs.write_mask_geotiff for tiles,
pipeline.raster.stitch for mosaics); output folders from before that change hold plain GeoTIFFs. The STAC
export asks this module which is which, so it never labels a plain GeoTIFF cloud-optimized.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.raster.gdal_env import unlisted


def cog_problems(path: Path) -> list[str]:
    """rio-cogeo's errors for `path` (empty: a valid COG). Warnings (e.g. no overviews on a tile
    smaller than one block) do not count: such a file is still read efficiently."""
    from rio_cogeo.cogeo import cog_validate

    with unlisted():  # the STAC export validates every mask in masks/
        _, errors, _ = cog_validate(str(path), quiet=True)
    return list(errors)


def is_cog(path: Path) -> bool:
    return not cog_problems(path)
