"""Shard writing throughput (MB/s) against a plain `tar` of the same files.

Encodes N random-content 512x512 tiles with masks (JPEG q95 + PNG + JSON record), then times
(a) `write_shards` (webdataset TarWriter, sha256, manifest, statistics), including the encoding,
and (b) the same encoded files written to a folder and packed with `tar cf` (encoding excluded).
Usage: python benchmarks/bench_shards.py [--samples 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.records import Domain, SourceInfo, TileRecord, Window
from pipeline.shards import ShardConfig, _encode, write_shards
from taxonomy import load_taxonomy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    taxonomy = load_taxonomy("ovrsis95k")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    masks = [np.repeat(np.arange(35, dtype=np.uint8), 512 * 512 // 35 + 1)[: 512 * 512].reshape(512, 512)]
    records = []
    for i in range(args.samples):
        source = SourceInfo(path="x.tif", sha256="0" * 64, window=Window(row_off=0, col_off=0, height=512, width=512),
                            band_mapping=[1, 2, 3], stretch="none", dtype="uint8", raster_width=512, raster_height=512)  # fmt: skip
        records.append(TileRecord(key=f"tile_{i:06d}", source=source, domain=Domain(name="town", score=1.0)))

    def sample(record):
        shift = int(record.key[-6:]) % 512
        return np.roll(base, shift, axis=1), masks[0]

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        started = time.perf_counter()
        write_shards(work / "out", records, sample, taxonomy.names, taxonomy.version, ShardConfig(max_samples=500))
        shard_seconds = time.perf_counter() - started
        shard_bytes = sum(p.stat().st_size for p in (work / "out" / "shards").glob("*.tar"))

        files = work / "files"
        files.mkdir()
        started = time.perf_counter()
        for record in records:
            image, mask = sample(record)
            _encode(record.key, image, mask, record, ShardConfig())
        encode_seconds = time.perf_counter() - started
        for record in records:
            image, mask = sample(record)
            for extension, payload in _encode(record.key, image, mask, record, ShardConfig()).items():
                if extension != "__key__":
                    (files / f"{record.key}.{extension}").write_bytes(payload)
        started = time.perf_counter()
        subprocess.run(["tar", "cf", str(work / "plain.tar"), "-C", str(files), "."], check=True)
        tar_seconds = time.perf_counter() - started
    mb = shard_bytes / 1e6
    print(f"samples            {args.samples} (512x512 JPEG q95 + mask PNG + record JSON), {mb:.0f} MB of shards")
    print(f"write_shards       {shard_seconds:6.2f} s  {mb / shard_seconds:7.1f} MB/s  (encoding + tar + sha256 + statistics)")
    print(f"  of which encode  {encode_seconds:6.2f} s; tar + sha256 + statistics alone: {mb / (shard_seconds - encode_seconds):7.1f} MB/s")
    print(f"plain tar cf       {tar_seconds:6.2f} s  {mb / tar_seconds:7.1f} MB/s  (pre-encoded files)")


if __name__ == "__main__":
    main()
