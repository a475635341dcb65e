"""Peak memory and speed while tiling a generated raster far larger than memory-friendly sizes.

Writes a 20000x20000 uint16 GeoTIFF (800 MB of pixels, tiled, deflate) window by window, then
ingests it into 1024 px tiles (percentile stretch, RGB conversion) and reports tiles/s and the
process's peak resident memory, sampled every 50 ms. Flat memory = windowed reads work.
Usage: python benchmarks/bench_tiling.py [--size 20000] [--tile-size 1024] [--smoke]
(--smoke: a 1024x1024 raster, 256 px tiles.)
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rasterio
from _shared import parse_args
from affine import Affine
from rasterio.windows import Window

from pipeline.raster.ingest import RasterSource, TilingConfig


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def write_large(path: Path, size: int) -> None:
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": Affine(0.5, 0, 400000, 0, -0.5, 5000000),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    x = np.arange(size, dtype=np.uint32)
    with rasterio.open(path, "w", **profile) as out:
        for row in range(0, size, 1000):
            rows = np.arange(row, min(row + 1000, size), dtype=np.uint32)[:, None]
            out.write(
                ((x[None, :] * 7 + rows * 13) % 4000).astype(np.uint16)[None], window=Window(0, row, size, len(rows))
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tile-size", type=int, default=1024)
    args = parse_args(parser, size=1024, tile_size=256)
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "large.tif"
        started = time.perf_counter()
        write_large(path, args.size)
        print(
            f"raster {args.size}x{args.size} uint16 ({args.size**2 * 2 / 2**20:.0f} MiB of pixels), "
            f"{path.stat().st_size / 2**20:.0f} MiB on disk, written in {time.perf_counter() - started:.1f} s"
        )
        baseline = rss_mib()
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mib())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        tiles = 0
        with rasterio.Env(GDAL_CACHEMAX=128):
            with RasterSource(path) as source:
                for _ in source.tiles(TilingConfig(args.tile_size)):
                    tiles += 1
                    if tiles == 1:
                        after_first = rss_mib()
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        print(
            f"tiles              {tiles} of {args.tile_size} px in {elapsed:.1f} s ({tiles / elapsed:.1f} tiles/s, "
            f"{args.size**2 * 2 / 2**20 / elapsed:.0f} MiB/s of source pixels)"
        )
        print(
            f"resident memory    before {baseline:.0f} MiB, after first tile {after_first:.0f} MiB, "
            f"peak {peak[0]:.0f} MiB"
        )
        print(f"growth over run    {peak[0] - after_first:.0f} MiB (GDAL block cache capped at 128 MiB)")


if __name__ == "__main__":
    main()
