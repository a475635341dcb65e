"""What a crowded folder costs GDAL: one mask GeoTIFF written, and one source opened, beside N files.

GDAL lists the folder of a file it opens (and its COG driver lists the folder of each file it
finishes) unless GDAL_DISABLE_READDIR_ON_OPEN says not to. A build writes two files a tile into
`masks/`, so with GDAL's default the cost of a tile grows with the tiles before it. This prints, for
folders of 0 / 10,000 / 100,000 empty files, the milliseconds per mask written (`write_mask_geotiff`)
and per source opened (`RasterSource`), with GDAL's default and with this toolkit's setting
(pipeline.raster.gdal_env.unlisted).

Usage: python benchmarks/bench_gdal_listing.py [--files 0 10000 100000] [--repeat 20] [--smoke]
(--smoke: folders of 0 and 10 files, 2 repeats.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import parse_args
from PIL import Image

from pipeline.raster.gdal_env import SETTING
from pipeline.raster.ingest import RasterSource
from pipeline.raster.outputs import write_mask_geotiff

TRANSFORM = (0.5, 0.0, 400000.0, 0.0, -0.5, 5000000.0)


def milliseconds(action, repeat: int) -> float:
    action(-1)  # GDAL's drivers and PROJ's database load on first use
    started = time.perf_counter()
    for index in range(repeat):
        action(index)
    return (time.perf_counter() - started) / repeat * 1000


def mask_writes(folder: Path, mask: np.ndarray, label: str, repeat: int) -> float:
    return milliseconds(
        lambda index: write_mask_geotiff(folder / f"mask-{label}{index}.tif", mask, "EPSG:32633", TRANSFORM), repeat
    )


def source_opens(source: Path, repeat: int) -> float:
    return milliseconds(lambda index: RasterSource(source).close(), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[0, 10000, 100000])
    parser.add_argument("--repeat", type=int, default=20)
    args = parse_args(parser, files=[0, 10], repeat=2)
    mask = np.random.default_rng(0).integers(0, 5, (128, 128), dtype=np.uint8)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    print(f"{'files in the folder':>20} {'setting':>10} {'ms a mask written':>18} {'ms a source opened':>19}")
    for count in args.files:
        with tempfile.TemporaryDirectory(prefix="bench-listing-") as work:
            folder = Path(work)
            for index in range(count):
                (folder / f"tile{index:06d}.png").touch()
            source = folder / "source.png"
            image.save(source)
            for label, value in (("default", "FALSE"), ("unlisted", None)):
                if value is None:
                    os.environ.pop(SETTING, None)  # unlisted() picks its own value
                else:
                    os.environ[SETTING] = value  # unlisted() lets the environment win: GDAL's default
                written, opened = mask_writes(folder, mask, label, args.repeat), source_opens(source, args.repeat)
                print(f"{count:>20,} {label:>10} {written:>18.1f} {opened:>19.1f}", flush=True)
    os.environ.pop(SETTING, None)


if __name__ == "__main__":
    main()
