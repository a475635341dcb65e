"""Orchestration overhead: the same tiles through the Prefect flow and through the plain stage functions.

Generates rasters (default 20 x 1280x1280 px, 128 px tiles = 2,000 tiles), builds tiny models, then
times the same work both ways: (a) `Annotator.run` (the stage functions in one process) followed by
selection, the balance report and the shards, as plain function calls; (b) the build-ovrsis95k
flow in Prefect's ephemeral mode with the thread runner (same batches, cold cache), which does the
same (timed after Prefect's temporary server is up, as a served deployment finds it). Reports
tiles/s of each, the flow/plain ratio and the orchestration cost per tile.
Usage: python benchmarks/bench_flow_overhead.py [--rasters 20] [--size 1280] [--workers 1] [--smoke]
(--smoke: one 256x256 raster, 4 tiles.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import parse_args

from flows.sample_build import make_imagery, prefect_env, write_config
from pipeline.build.annotate import AnnotateConfig, Annotator, load_caption_file
from pipeline.models.config import ModelSet, load_models_config
from pipeline.models.tiny import make_tiny_models
from pipeline.raster.ingest import TilingConfig
from taxonomy import load_taxonomy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rasters", type=int, default=20)
    parser.add_argument("--size", type=int, default=1280, help="raster side in pixels (128 px tiles)")
    parser.add_argument("--workers", type=int, default=1, help="thread-runner workers for the flow")
    parser.add_argument("--batch-size", type=int, default=32, help="tiles per batch (task), both ways")
    args = parse_args(parser, rasters=1, size=256, batch_size=2)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        imagery = make_imagery(work / "data" / "rasters", count=args.rasters, size=args.size)
        models = make_tiny_models(work / "tiny")
        n_tiles = args.rasters * (args.size // 128) ** 2

        annotator = Annotator(
            load_taxonomy("ovrsis95k"),
            ModelSet(load_models_config(models)),
            work / "plain",
            AnnotateConfig(tiling=TilingConfig(128), batch_size=args.batch_size, stitch=False),
            captions=load_caption_file(work / "data" / "captions.jsonl"),
        )
        started = time.perf_counter()  # model loads count both ways: the flow loads its models inside too
        annotator.run(imagery)
        select_and_shard(work / "plain")
        plain = time.perf_counter() - started

        config = write_config(
            work / "build.yaml",
            imagery,
            models,
            work / "flow",
            batch_size=args.batch_size,
            shards={},  # the build's defaults
            runner={"kind": "threads", "workers": args.workers},
            overlays=True,
        )
        # a no-op flow first starts Prefect's temporary server, as a running server would be: what is
        # timed is the build, not the server's start (reported on its own line)
        code = (
            "import time, json; from prefect import flow; from flows.build import build; "
            "flow(lambda: None, name='warm-up')(); t = time.perf_counter(); "
            f"build({str(config)!r}); print(json.dumps({{'seconds': time.perf_counter() - t}}))"
        )
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", code], env=prefect_env(work / "prefect"), capture_output=True, text=True
        )
        total = time.perf_counter() - started
        if result.returncode:
            sys.exit(result.stderr[-3000:])
        flow = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
    print(
        f"tiles                      {n_tiles} (128 px, tiny models, batches of {args.batch_size}, "
        f"{os.cpu_count()} cores)"
    )
    print(f"plain stage functions      {plain:7.1f} s  {n_tiles / plain:6.1f} tiles/s")
    print(
        f"Prefect flow (in-flow)     {flow:7.1f} s  {n_tiles / flow:6.1f} tiles/s  "
        "(both: shards and the balance report)"
    )
    print(f"Prefect flow (with start)  {total:7.1f} s  (Python, imports and the temporary server's start-up included)")
    print(f"flow / plain               {flow / plain:7.2f}")
    print(f"orchestration per tile     {(flow - plain) / n_tiles * 1000:7.2f} ms")


def select_and_shard(out: Path) -> None:
    """What the flow does after annotating, as plain calls: selection, the balance report, shards."""
    import numpy as np
    from PIL import Image

    from pipeline.build.annotate import RasterPixels
    from pipeline.dataset.balance_report import write_report
    from pipeline.dataset.record_store import sort_records
    from pipeline.dataset.selection import SelectionConfig, is_candidate, select
    from pipeline.dataset.shards import write_shards
    from pipeline.dataset.tile_table import TileRows
    from pipeline.raster.ingest import BandRule

    taxonomy, selection = load_taxonomy("ovrsis95k"), SelectionConfig()
    index = sort_records(out / "records.jsonl", out / "sorted.jsonl")
    rows = TileRows()
    for record in index.values():
        if is_candidate(record, selection):
            rows.add(record)
    table = rows.table(taxonomy.names)
    chosen = select(table, selection)
    write_report(out / "report", table, chosen)
    pixels = RasterPixels(BandRule())
    write_shards(
        out,
        index.subset(table.keys[chosen.selected].tolist()),
        lambda r: (pixels(r)[0], np.asarray(Image.open(out / r.semantic_mask))),
        taxonomy.names,
        taxonomy.version,
    )


if __name__ == "__main__":
    main()
