"""CPU stages overlapping model stages: a simulated GPU, one batch in flight against three.

The tiny models' stages are slowed by a fixed sleep per tile (`--model-ms`), as a GPU would take
that long and leave the CPU free. `Annotator.run` annotates the same generated imagery twice: with
one batch in flight (read, stages and writing strictly one after another) and with three (one
batch read, one in the model stages, one merged and written). Reports wall time, the summed
model-stage and CPU-stage times, and how close each run comes to max(model, CPU) rather than
their sum.

Usage: python benchmarks/bench_overlap.py [--rasters 4] [--size 1024] [--model-ms 40] [--batch-size 16] [--smoke]
(--smoke: one 256x256 raster, 4 tiles, 1 ms a tile, batches of 2.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from _shared import parse_args
from affine import Affine

from pipeline.build.annotate import AnnotateConfig, Annotator
from pipeline.models.config import ModelSet, load_models_config
from pipeline.models.tiny import make_tiny_models
from pipeline.raster.ingest import TilingConfig
from pipeline.stages.registry import MODEL_STAGES
from taxonomy import load_taxonomy

CAPTIONS = {"scene": ["many buildings and trees along a road with cars near a river"]}


class SlowModel:
    """A model that takes `seconds` per image longer, sleeping (the GIL is free, as during GPU work)."""

    def __init__(self, model, seconds: float) -> None:
        self._model, self._seconds = model, seconds

    def __getattr__(self, name: str):
        attribute = getattr(self._model, name)
        if name not in ("caption", "detect", "segment"):
            return attribute

        def slowed(images, *args):
            time.sleep(self._seconds * len(images))
            return attribute(images, *args)

        return slowed


class SlowModels:
    def __init__(self, models: ModelSet, seconds: float) -> None:
        self._models, self._seconds = models, seconds
        self.captioner = SlowModel(models.captioner, seconds)
        self.detector = SlowModel(models.detector, seconds)
        self.segmenter = SlowModel(models.segmenter, seconds)

    def provenance(self, used: set[str]) -> dict:
        return self._models.provenance(used)


def make_rasters(folder: Path, count: int, size: int = 1024) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(0.5, 0, 400000, 0, -0.5, 5000000),
    }
    for index in range(count):
        with rasterio.open(folder / f"scene{index}.tif", "w", **profile) as out:
            out.write(rng.integers(1, 255, (3, size, size), dtype=np.uint8))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rasters", type=int, default=4, help="rasters to annotate (128 px tiles)")
    parser.add_argument("--size", type=int, default=1024, help="raster side in pixels (1024: 64 tiles)")
    parser.add_argument("--model-ms", type=float, default=40.0, help="added per tile and model stage")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parse_args(parser, rasters=1, size=256, model_ms=1.0, batch_size=2)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        imagery = make_rasters(work / "in", args.rasters, args.size)
        captions = {f"scene{i}": CAPTIONS["scene"] for i in range(args.rasters)}
        models = SlowModels(ModelSet(load_models_config(make_tiny_models(work / "tiny"))), args.model_ms / 1000)
        taxonomy = load_taxonomy("ovrsis95k")
        results = {}
        for in_flight in (1, 3, 1, 3):  # twice each, alternating: the first pass also loads spaCy and MiniLM
            config = AnnotateConfig(
                tiling=TilingConfig(128),
                batch_size=args.batch_size,
                stitch=False,
                write_overlay=False,
                batches_in_flight=in_flight,
            )
            annotator = Annotator(taxonomy, models, work / f"out{in_flight}", config, captions=captions)
            started = time.perf_counter()
            summary = annotator.run(imagery)
            wall = time.perf_counter() - started
            model = sum(v for k, v in summary.seconds.items() if k in MODEL_STAGES)
            cpu = sum(v for k, v in summary.seconds.items() if k not in MODEL_STAGES)
            results[in_flight] = (wall, model, cpu, summary.tiles)
    print(
        f"{results[1][3]} tiles of 128 px, tiny models + {args.model_ms:.0f} ms a tile per model stage (sleep), "
        f"batches of {args.batch_size}"
    )
    print(
        f"{'batches in flight':<18} {'wall s':>7} {'model s':>8} {'CPU s':>7} {'sum s':>7} {'max s':>7} {'wall/max':>9}"
    )
    for in_flight, (wall, model, cpu, _) in sorted(results.items()):
        print(
            f"{in_flight:<18} {wall:7.1f} {model:8.1f} {cpu:7.1f} "
            f"{model + cpu:7.1f} {max(model, cpu):7.1f} {wall / max(model, cpu):9.2f}"
        )
    print(
        "(CPU s counts ingest, the CPU stages and writing; model s the three model stages; second pass of each shown)"
    )


if __name__ == "__main__":
    main()
