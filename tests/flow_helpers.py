"""Shared set-up for the build-flow tests: generated imagery, a config, the environment."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import rasterio
import yaml
from affine import Affine

CAPTION = "many buildings and trees along a road with cars near a river"


def make_imagery(folder: Path, count: int = 3, size: int = 512) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        profile = {
            "driver": "GTiff",
            "width": size,
            "height": size,
            "count": 3,
            "dtype": "uint8",
            "crs": "EPSG:32633",
            "transform": Affine(0.5, 0, 400000 + 1000 * index, 0, -0.5, 5000000),
        }
        with rasterio.open(folder / f"scene{index}.tif", "w", **profile) as out:
            out.write(rng.integers(1, 255, (3, size, size), dtype=np.uint8))
    (folder / "broken.tif").write_bytes(b"not a raster" * 20)  # must be quarantined, never sharded
    captions = folder.parent / "captions.jsonl"
    captions.write_text("".join(json.dumps({"id": f"scene{i}", "caption": CAPTION}) + "\n" for i in range(count)))
    return folder


def write_config(path: Path, imagery: Path, models: Path, output: Path, **settings) -> Path:
    config = {
        "inputs": [str(imagery)],
        "captions": str(imagery.parent / "captions.jsonl"),
        "models": str(models),
        "output": str(output),
        "tiling": {"tile_size": 128},
        "batch_size": 4,
        "shards": {"max_samples": 16, "val_fraction": 0.25},
        **settings,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def prefect_env(home: Path, api_url: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def ovrsis(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((output / "shards").glob("*.tar"))} | {
        "manifest.json": (output / "manifest.json").read_bytes()
    }
