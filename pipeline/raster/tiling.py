"""The tiling settings, apart from the reader: how rasters are cut into tiles and mapped to 8-bit RGB.

They live here, with no GIS library, because the build configuration (pipeline/build/config.py) and the
command-line options read their defaults without opening a raster; pipeline/raster/ingest.py applies them
(its module docstring states the band rule and the stretch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

MAX_PIXELS = 2_500_000_000  # default refusal threshold for a raster's header (width x height)
Stretch = Literal["auto", "none", "percentile"]  # how bands become 8-bit (pipeline/raster/ingest.py)
STRETCHES: tuple[str, ...] = get_args(Stretch)


@dataclass(frozen=True)
class BandRule:
    bands: tuple[int, ...] | None = None  # 1-based; None chooses automatically (pipeline/raster/ingest.py)
    stretch: Stretch = "auto"
    low_percentile: float = 2.0
    high_percentile: float = 98.0


@dataclass(frozen=True)
class TilingConfig:
    tile_size: int = 1024
    overlap: int = 0
    min_valid_fraction: float = 0.0  # tiles with a smaller share of valid pixels are quarantined

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise ValueError(f"tile_size must be at least 16 pixels, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {self.overlap}")
