"""Synthetic shards and a tiny configuration: Pi-Seg trained end to end in seconds, on the CPU.

Colour scenes (two classes split at a random column, with noise and a few unlabelled pixels) written
through the build's own shard writer, and the `tiny` preset shrunk to 32-px crops. The tests and
benchmarks/bench_piseg.py share them; `piseg train --backbone tiny` on real shards is the user's
equivalent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.dataset.records import Domain, SourceInfo, TileRecord, Window
from pipeline.dataset.shards import ShardConfig, write_shards
from piseg.config import PiSegConfig, preset

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.uint8)
SYNTHETIC_NAMES = ["building", "tree", "water"]


def tile_record(key: str, size: int, domain: str = "town") -> TileRecord:
    """A record for a generated tile: whole-image window, one domain, no real source file."""
    source = SourceInfo(
        path=f"{key}.tif",
        sha256="0" * 64,
        window=Window(row_off=0, col_off=0, height=size, width=size),
        band_mapping=[1, 2, 3],
        stretch="none",
        dtype="uint8",
        raster_width=size,
        raster_height=size,
    )
    return TileRecord(key=key, source=source, domain=Domain(name=domain, score=1.0))


def synthetic_sample(index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two coloured regions split at a random column, with noise; the mask says which colour is where."""
    rng = np.random.default_rng(index)
    first, second = rng.choice(3, size=2, replace=False)
    mask = np.full((size, size), first, dtype=np.uint8)
    mask[:, rng.integers(size // 4, 3 * size // 4) :] = second
    image = COLOURS[mask].astype(np.int16) + rng.integers(-20, 20, (size, size, 3))
    mask[0, :3] = 255  # a few unlabelled pixels
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_synthetic_shards(
    out: Path,
    count: int = 16,
    size: int = 48,
    names: list[str] = SYNTHETIC_NAMES,
    max_samples: int = 4,
    val_fraction: float = 0.25,
) -> Path:
    records = [tile_record(f"scene_{i:03d}", size) for i in range(count)]
    samples = {r.key: synthetic_sample(i, size) for i, r in enumerate(records)}
    write_shards(
        out,
        records,
        lambda r: samples[r.key],
        names,
        "sha256:synthetic",
        ShardConfig(max_samples=max_samples, val_fraction=val_fraction, lossless=True),
    )
    return out


def tiny_config(**train: object) -> PiSegConfig:
    """The tiny preset at 32-px crops and a few iterations; `train` overrides training settings."""
    config = preset("tiny")
    settings = {
        "iters": 6,
        "batch_size": 2,
        "val_every": 1000,
        "checkpoint_every": 3,
        "log_every": 1,
        "workers": 0,
        "shuffle_buffer": 8,
        "crop": 32,
        "resize_short": 32,
    }
    settings.update(train)
    config.train = dataclasses.replace(config.train, **settings)
    config.model = dataclasses.replace(config.model, clip_resolution=32, window_size=2)
    config.eval = dataclasses.replace(config.eval, resize=48, crop=32, stride=16)
    return config
