"""Orchestration overhead: the same tiles through the Prefect flow and through the plain stage functions.

Generates rasters (default 20 x 1280x1280 px, 128 px tiles = 2,000 tiles), builds tiny models, then
times (a) `Annotator.run` (the stage functions in one process, batches of 8) and (b) the
build-ovrsis95k flow in Prefect's ephemeral mode with the thread runner (same batches, cold cache),
which also writes shards. Reports tiles/s of each and the flow/plain ratio.
Usage: python benchmarks/bench_flow_overhead.py [--rasters 20] [--workers 1]
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from flow_helpers import make_imagery, prefect_env  # noqa: E402

from pipeline.annotate import AnnotateConfig, Annotator, load_caption_file  # noqa: E402
from pipeline.ingest import TilingConfig  # noqa: E402
from pipeline.models.config import ModelSet, load_models_config  # noqa: E402
from pipeline.models.tiny import make_tiny_models  # noqa: E402
from taxonomy import load_taxonomy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rasters", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="thread-runner workers for the flow")
    parser.add_argument("--batch-size", type=int, default=32, help="tiles per batch (task), both ways")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        imagery = make_imagery(work / "data" / "rasters", count=args.rasters, size=1280)
        models = make_tiny_models(work / "tiny")
        n_tiles = args.rasters * 100

        annotator = Annotator(load_taxonomy("ovrsis95k"), ModelSet(load_models_config(models)), work / "plain",
                              AnnotateConfig(tiling=TilingConfig(128), batch_size=args.batch_size, stitch=False),
                              captions=load_caption_file(work / "data" / "captions.jsonl"))  # fmt: skip
        started = time.perf_counter()  # model loads count both ways: the flow loads its models inside too
        annotator.run(imagery)
        plain = time.perf_counter() - started

        config = work / "build.yaml"
        config.write_text(yaml.safe_dump({
            "inputs": [str(imagery)], "captions": str(work / "data" / "captions.jsonl"), "models": str(models),
            "output": str(work / "flow"), "tiling": {"tile_size": 128}, "batch_size": args.batch_size,
            "runner": {"kind": "threads", "workers": args.workers},
        }))  # fmt: skip
        code = ("import time, json; from flows.build import build; t = time.perf_counter(); "
                f"build({str(config)!r}); print(json.dumps({{'seconds': time.perf_counter() - t}}))")  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", code], env=prefect_env(work / "prefect"), capture_output=True, text=True)
        total = time.perf_counter() - started
        if result.returncode:
            sys.exit(result.stderr[-3000:])
        flow = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
    print(f"tiles                      {n_tiles} (128 px, tiny models, batches of {args.batch_size}, {os.cpu_count()} cores)")
    print(f"plain stage functions      {plain:7.1f} s  {n_tiles / plain:6.1f} tiles/s")
    print(f"Prefect flow (in-flow)     {flow:7.1f} s  {n_tiles / flow:6.1f} tiles/s  (includes shards and the balance report)")
    print(f"Prefect flow (with start)  {total:7.1f} s  (ephemeral server start-up included)")
    print(f"flow / plain               {flow / plain:7.2f}")


if __name__ == "__main__":
    main()
