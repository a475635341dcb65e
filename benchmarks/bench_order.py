"""Training sample order against the released sampler's full random permutation (issue 15, item 3).

A synthetic build of RASTERS x TILES tiles: the tiles of one raster share 3 of the 35 OVRSIS95K categories
and sit side by side in key order, as `ovrsis annotate` names them. For one epoch of batches of 8 it prints
the mean number of distinct categories and of distinct rasters per batch for
  (a) key-sorted shards + a 1,000-sample buffer (the order before issue 15),
  (b) the shards as written now (seeded random order) + that 1,000-sample buffer,
  (c) the shards as written now + the data-sized buffer (the default),
  (d) a true random permutation (the released sampler).
(a) is emulated on keys (shard shuffle, then webdataset's buffer, as the stream does); (b) and (c) read the
real shards through `TrainingStream`.
Usage: python benchmarks/bench_order.py [--rasters 500 --tiles 16] [--shard-size 1000] [--smoke]
(--smoke: 4 rasters of 4 tiles, shards of 8.)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from _shared import parse_args

from pipeline.dataset.records import SourceInfo, TileRecord, Window
from pipeline.dataset.shards import ShardConfig, ShardReader, write_shards
from piseg.config import TrainConfig
from piseg.training.batches import TrainingStream

BATCH = 8


def tile_record(key: str) -> TileRecord:
    window = Window(row_off=0, col_off=0, height=8, width=8)
    return TileRecord(
        key=key,
        source=SourceInfo(
            path=f"{key}.tif",
            sha256="0" * 64,
            window=window,
            band_mapping=[1, 2, 3],
            stretch="none",
            dtype="uint8",
            raster_width=8,
            raster_height=8,
        ),
    )


def per_batch(keys: list[str], categories: dict[str, set[int]]) -> tuple[float, float]:
    """Mean distinct categories and mean distinct rasters per batch."""
    batches = [keys[i : i + BATCH] for i in range(0, len(keys) - BATCH + 1, BATCH)]
    distinct = [len(set().union(*(categories[k] for k in batch))) for batch in batches]
    rasters = [len({k.split("__")[0] for k in batch}) for batch in batches]
    return float(np.mean(distinct)), float(np.mean(rasters))


def sorted_order(keys: list[str], shard_size: int, buffer: int, seed: int = 0) -> list[str]:
    shards = [sorted(keys)[i : i + shard_size] for i in range(0, len(keys), shard_size)]
    random.Random(f"{seed}:shards:0").shuffle(shards)
    stream = ({"__key__": k} for shard in shards for k in shard)
    shuffled = wds.shuffle(buffer, initial=buffer, rng=random.Random(f"{seed}:samples:0"))
    return [sample["__key__"] for sample in shuffled(stream)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rasters", type=int, default=500)
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parse_args(parser, rasters=4, tiles=4, shard_size=8)
    rng = np.random.default_rng(0)
    categories: dict[str, set[int]] = {}
    for raster in range(args.rasters):
        shared = rng.choice(35, size=3, replace=False)
        for tile in range(args.tiles):
            categories[f"raster{raster:04d}__r{tile}_c0"] = {int(c) for c in shared if rng.random() < 0.8} or {
                int(shared[0])
            }
    keys = list(categories)
    sample = (np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((8, 8), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        write_shards(
            out,
            [tile_record(k) for k in keys],
            lambda record: sample,
            ["c"],
            "sha256:bench",
            ShardConfig(max_samples=args.shard_size, val_fraction=0),
        )
        reader = ShardReader(out)
        rows = [("(a) key-sorted shards, buffer 1000", sorted_order(keys, args.shard_size, 1000))]
        for label, buffer in (
            ("(b) seeded-order shards, buffer 1000", 1000),
            ("(c) seeded-order shards, data-sized buffer", None),
        ):
            stream = TrainingStream(reader, TrainConfig(taxonomy=None, shuffle_buffer=buffer, batch_size=BATCH))
            start = time.perf_counter()
            order = [raw["__key__"] for raw in stream.epoch_samples(0, [])]
            rows.append((f"{label} ({stream.buffer}; {time.perf_counter() - start:.1f} s)", order))
        rows.append(("(d) true random permutation", [keys[i] for i in rng.permutation(len(keys))]))
    print(f"{len(keys)} tiles from {args.rasters} rasters, shards of {args.shard_size}, batches of {BATCH}")
    print(f"{'order':<64} {'categories/batch':>17} {'rasters/batch':>14}")
    for label, order in rows:
        distinct, rasters = per_batch(order, categories)
        print(f"{label:<64} {distinct:>17.2f} {rasters:>14.2f}")


if __name__ == "__main__":
    main()
