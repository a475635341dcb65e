"""Shards and configurations for the Pi-Seg tests: the package's synthetic colour scenes
(piseg/training/synthetic.py) and real SpaceNet road tiles (when ../shared is present), written
through the build's own shard writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import yaml

from pipeline.dataset.shards import ShardConfig, write_shards
from piseg.config import PiSegConfig
from piseg.training.synthetic import tile_record


def write_road_shards(out: Path, spacenet: Path, tiles_per_side: int = 4) -> Path:
    """16 real SpaceNet tiles (panchromatic uint16, percentile-stretched to RGB) with the road mask."""
    with (
        rasterio.open(spacenet / "road_mask_input.tif") as image_file,
        rasterio.open(spacenet / "sample_road_raster_mask.tif") as mask_file,
    ):
        band = image_file.read(1).astype(np.float32)
        roads = mask_file.read(1)
    low, high = np.percentile(band, [2, 98])
    grey = np.clip((band - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    side = grey.shape[0] // tiles_per_side
    records, samples = [], {}
    for row in range(tiles_per_side):
        for col in range(tiles_per_side):
            key = f"road_r{row}_c{col}"
            window = (slice(row * side, (row + 1) * side), slice(col * side, (col + 1) * side))
            records.append(tile_record(key, side))
            samples[key] = (np.repeat(grey[window][..., None], 3, axis=2), (roads[window] > 0).astype(np.uint8))
    write_shards(
        out,
        records,
        lambda r: samples[r.key],
        ["background", "road"],
        "sha256:road",
        ShardConfig(max_samples=8, val_fraction=0.25, lossless=True),
    )
    return out


def write_config(path: Path, config: PiSegConfig) -> Path:
    data = json.loads(json.dumps(config.to_dict()))  # tuples -> lists for YAML
    data["model"].pop("architecture")  # the preset's
    path.write_text(yaml.safe_dump(data))
    return path
