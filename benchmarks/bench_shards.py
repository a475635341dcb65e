"""Shard writing throughput (MB/s) against a plain `tar` of the same files, and (--images) the image
encodings a shard can hold, on real imagery.

Throughput: encodes N random-content 512x512 tiles with masks (JPEG q95 + PNG + JSON record), then times
(a) `write_shards` (webdataset TarWriter, sha256, manifest, statistics), including the encoding,
and (b) the same encoded files written to a folder and packed with `tar cf` (encoding excluded).

--images: 512x512 tiles of the real NAIP, NEON and UC Merced rasters in ../shared/data/real, each encoded as
JPEG q95 (the old default), PNG and lossless WebP (the default now): bytes per pixel, encode and decode
speed (decode = what the trainer does per sample), and whether the pixels come back exactly.
Usage: python benchmarks/bench_shards.py [--samples 1000] [--images] [--smoke]
(--smoke: 2 samples; --images takes seconds as it is.)
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import SHARED_REAL, parse_args, require
from PIL import Image

from pipeline.dataset.records import Domain, SourceInfo, TileRecord, Window
from pipeline.dataset.shards import ShardConfig, decode_image, encode_image, encode_mask, image_bytes_of, write_shards
from taxonomy import load_taxonomy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--images", action="store_true", help="Compare image encodings on real imagery instead.")
    args = parse_args(parser, samples=2)
    if args.images:
        return compare_encodings()
    taxonomy = load_taxonomy("ovrsis95k")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    masks = [np.repeat(np.arange(35, dtype=np.uint8), 512 * 512 // 35 + 1)[: 512 * 512].reshape(512, 512)]
    records = []
    for i in range(args.samples):
        source = SourceInfo(
            path="x.tif",
            sha256="0" * 64,
            window=Window(row_off=0, col_off=0, height=512, width=512),
            band_mapping=[1, 2, 3],
            stretch="none",
            dtype="uint8",
            raster_width=512,
            raster_height=512,
        )
        records.append(TileRecord(key=f"tile_{i:06d}", source=source, domain=Domain(name="town", score=1.0)))

    def sample(record):
        shift = int(record.key[-6:]) % 512
        return np.roll(base, shift, axis=1), masks[0]

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        started = time.perf_counter()
        write_shards(
            work / "out",
            records,
            sample,
            taxonomy.names,
            taxonomy.version,
            ShardConfig(max_samples=500, lossless=False),
        )
        shard_seconds = time.perf_counter() - started
        shard_bytes = sum(p.stat().st_size for p in (work / "out" / "shards").glob("*.tar"))

        files = work / "files"
        files.mkdir()
        config = ShardConfig(lossless=False)
        started = time.perf_counter()
        for record in records:
            image, mask = sample(record)
            encoded_parts(image, mask, record, config)
        encode_seconds = time.perf_counter() - started
        for record in records:
            image, mask = sample(record)
            for extension, payload in encoded_parts(image, mask, record, config).items():
                (files / f"{record.key}.{extension}").write_bytes(payload)
        started = time.perf_counter()
        subprocess.run(["tar", "cf", str(work / "plain.tar"), "-C", str(files), "."], check=True)
        tar_seconds = time.perf_counter() - started
    mb = shard_bytes / 1e6
    print(f"samples            {args.samples} (512x512 JPEG q95 + mask PNG + record JSON), {mb:.0f} MB of shards")
    print(
        f"write_shards       {shard_seconds:6.2f} s  {mb / shard_seconds:7.1f} MB/s  "
        "(encoding + tar + sha256 + statistics)"
    )
    print(
        f"  of which encode  {encode_seconds:6.2f} s; "
        f"tar + sha256 + statistics alone: {mb / (shard_seconds - encode_seconds):7.1f} MB/s"
    )
    print(f"plain tar cf       {tar_seconds:6.2f} s  {mb / tar_seconds:7.1f} MB/s  (pre-encoded files)")


def encoded_parts(image: np.ndarray, mask: np.ndarray, record: TileRecord, config: ShardConfig) -> dict[str, bytes]:
    """A sample's parts as the shard writer makes them (image, mask PNG, record JSON), without a tar."""
    extension, image_bytes = image_bytes_of(image, record, config)
    record_json = json.dumps(unpublished(record.model_dump(mode="json")), sort_keys=True, separators=(",", ":"))
    return {extension: image_bytes, "mask.png": encode_mask(mask), "json": record_json.encode()}


def unpublished(record: dict) -> dict:
    """The record's JSON as it is (`keep_private_fields`): what publishing adds is not encoding."""
    return record


def real_tiles(size: int = 512) -> list[np.ndarray]:
    import rasterio

    tiles = []
    for path in sorted(require(SHARED_REAL).glob("*/*.tif")):
        with rasterio.open(path) as raster:
            if raster.count < 3 or raster.dtypes[0] != "uint8":
                continue
            pixels = raster.read([1, 2, 3]).transpose(1, 2, 0)
        step = min(size, *pixels.shape[:2])
        tiles += [
            np.ascontiguousarray(pixels[r : r + step, c : c + step])
            for r in range(0, pixels.shape[0] - step + 1, step)
            for c in range(0, pixels.shape[1] - step + 1, step)
        ]
    return tiles


def compare_encodings() -> None:
    tiles = real_tiles()
    megapixels = sum(t.shape[0] * t.shape[1] for t in tiles) / 1e6
    print(f"{len(tiles)} real tiles (NAIP, NEON, UC Merced; up to 512x512), {megapixels:.1f} MP")
    print(f"{'encoding':<24} {'bytes/pixel':>11} {'encode MP/s':>11} {'decode MP/s':>11}  exact")
    for label, config in (
        ("JPEG q95 (old default)", ShardConfig(lossless=False)),
        ("PNG level 6", None),
        ("lossless WebP (default)", ShardConfig()),
    ):
        started = time.perf_counter()
        if config is None:
            encoded = []
            for tile in tiles:
                buffer = io.BytesIO()
                Image.fromarray(tile).save(buffer, format="PNG", compress_level=6)
                encoded.append(buffer.getvalue())
        else:
            encoded = [encode_image(tile, config)[1] for tile in tiles]
        encode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        decoded = [decode_image(data) for data in encoded]
        decode_seconds = time.perf_counter() - started
        exact = all(np.array_equal(a, b) for a, b in zip(tiles, decoded))
        size = sum(map(len, encoded)) / (megapixels * 1e6)
        print(
            f"{label:<24} {size:>11.3f} {megapixels / encode_seconds:>11.1f} "
            f"{megapixels / decode_seconds:>11.1f}  {'yes' if exact else 'no'}"
        )


if __name__ == "__main__":
    main()
