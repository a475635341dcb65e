"""A build without data: generated GeoTIFFs with captions, a build configuration for them, and an
isolated Prefect environment to run `ovrsis build` in.

The flow's tests, the benchmarks that time it at scale and anyone trying the flow before they have
imagery need the same thing. One generator in the package keeps them building the same imagery the
same way (a benchmark measures the build the tests check), where copies under tests/ and benchmarks/,
reached through sys.path edits, drifted apart. It stays light (numpy, rasterio, yaml; no Prefect or
torch at import): test collection and a benchmark's --help load it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import yaml
from affine import Affine

CAPTION = "many buildings and trees along a road with cars near a river"
BROKEN = "broken.tif"


def make_imagery(
    folder: Path, count: int = 3, size: int = 512, *, linked: bool = False, broken: bool = True, unnamed: int = 0
) -> Path:
    """Write `count` random RGB GeoTIFFs `scene0.tif`, `scene1.tif`, ... of `size` x `size` px into
    `folder`, and `folder.parent / "captions.jsonl"` giving each the same caption (CAPTION names
    categories of every kind, so a build needs no captioner and finds something to segment).

    linked: write one raster and hard-link it under all `count` names: one file's worth of disk for
    any count, for builds at scale; each name is still its own source with its own tile keys.
    Otherwise each raster has its own pixels and lies beside the previous one on the map.
    broken: also write `broken.tif`, bytes that are no raster, which a build must quarantine and never
    shard; a build that quarantines anything exits 1.
    unnamed: the last `unnamed` scenes get a caption that names nothing ("a view"), so their tiles get no
    proposal until a reviewer paints one (the unlabelled queue, reviews that bring a tile in).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        path = folder / f"scene{index}.tif"
        if linked and index:
            os.link(folder / "scene0.tif", path)
            continue
        profile = {
            "driver": "GTiff",
            "width": size,
            "height": size,
            "count": 3,
            "dtype": "uint8",
            "crs": "EPSG:32633",
            "transform": Affine(0.5, 0, 400000 + 1000 * index, 0, -0.5, 5000000),
        }
        with rasterio.open(path, "w", **profile) as out:
            out.write(rng.integers(1, 255, (3, size, size), dtype=np.uint8))
    if broken:
        (folder / BROKEN).write_bytes(b"not a raster" * 20)
    captions = folder.parent / "captions.jsonl"
    texts = [CAPTION if i < count - unnamed else "a view" for i in range(count)]
    captions.write_text(
        "".join(json.dumps({"id": f"scene{i}", "caption": text}) + "\n" for i, text in enumerate(texts))
    )
    return folder


def write_config(path: Path, imagery: Path, models: Path | str, output: Path, **settings: object) -> Path:
    """Write a build configuration for a `make_imagery` folder: its captions, `models` (a models YAML
    or a preset name), 128 px tiles, batches of 4 and shards of at most 16 samples, a quarter of them
    for validation, so that a few dozen tiles still make several tasks, shards and both splits.

    settings: top-level sections, each replacing the one here whole (a build at scale passes its own
    `batch_size` and `shards`; `shards={}` keeps the build's defaults).
    """
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


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """This process's environment for an `ovrsis` subprocess with its own Prefect home (database,
    settings): no PREFECT_* setting of the caller's leaks in, no analytics, warnings only. Without
    `api_url` the build starts Prefect's temporary server; with it, it talks to that server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def ovrsis(*args: str) -> list[str]:
    """The argv of `ovrsis ARGS` run by this interpreter, which need not have its scripts on PATH."""
    return [sys.executable, "-m", "flows.cli", *args]


def run_build(config: Path, prefect_home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`ovrsis build --config CONFIG` to its end in an isolated Prefect environment, output captured."""
    return subprocess.run(
        ovrsis("build", "--config", str(config)),
        env=prefect_env(prefect_home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
