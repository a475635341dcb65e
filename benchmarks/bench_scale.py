"""A build at OVRSIS95K scale: wall time, tiles/s, peak memory, cache and output size per tile.

Generates one 1280x1280 GeoTIFF and hard-links it under as many names as the tile count needs
(100 tiles of 128 px each: 1,000 names for 100,000 tiles, one file on disk; every name is its own
source with its own tile keys), builds tiny models, then runs `ovrsis build` for each size in a
subprocess (thread runner, or `--runner dask`: a local Dask cluster of worker processes), polling the
resident memory of the build process, of its whole tree, and of its largest worker. Reports per
size: wall time, tiles/s, peak RSS of the build process (and of its whole tree, the ephemeral
Prefect server included), stage cache bytes per tile, outputs beside the shards against the
shards, and the Prefect database size. A second run of the smallest size with nothing changed
shows the cost of a build that does no model work.

Usage: python benchmarks/bench_scale.py [--tiles 2000 20000 100000] [--tile-size 128] [--keep DIR]
                                        [--runner threads|dask] [--workers 2] [--smoke]
(--smoke: 100 tiles of 32 px, built and rebuilt; the work folder is removed unless --keep names it.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _shared import parse_args

from flows.sample_build import make_imagery, ovrsis, prefect_env, write_config
from pipeline.models.tiny import make_tiny_models


def folder_bytes(path: Path, exclude: tuple[Path, ...] = ()) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if Path(root, d) not in exclude]
        total += sum(Path(root, f).stat().st_size for f in files)
    return total


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:  # it ended between listing and reading
        return 0


def _is_prefect_server(process: psutil.Process) -> bool:
    try:
        return "prefect.server" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def run_build(config: Path, home: Path) -> dict:
    """Run one build; poll the resident memory of the build process, its whole tree, and its largest
    child other than the Prefect server (a Dask or Ray worker; 0 with the thread runner)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        ovrsis("build", "--config", str(config)),
        env=prefect_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = {"process": 0, "tree": 0, "worker": 0}

    def poll() -> None:
        build = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                children = build.children(recursive=True)
            except psutil.Error:
                break
            own = _rss(build)
            sizes = {child.pid: _rss(child) for child in children}
            workers = [sizes[child.pid] for child in children if not _is_prefect_server(child)]
            peak["process"] = max(peak["process"], own)
            peak["tree"] = max(peak["tree"], own + sum(sizes.values()))
            peak["worker"] = max(peak["worker"], *workers, 0)
            time.sleep(0.25)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, stderr = process.communicate()
    watcher.join()
    if process.returncode not in (0, 1):
        sys.exit(f"build failed ({process.returncode}):\n{stderr[-3000:]}")
    return {"seconds": time.perf_counter() - started, **peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--tile-size", type=int, default=128, help="tile side; sources are 10x10 tiles")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--runner", choices=["threads", "dask"], default="threads", help="the build's task runner")
    parser.add_argument("--workers", type=int, default=2, help="runner workers (Dask: worker processes)")
    args = parse_args(parser, tiles=[100], tile_size=32)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    models = make_tiny_models(work / "tiny")
    rows = []
    for count in args.tiles:
        rasters = -(-count // 100)
        sources = make_imagery(
            work / f"data{count}" / "rasters", rasters, size=10 * args.tile_size, linked=True, broken=False
        )
        output = work / f"out{count}-{args.runner}"
        config = write_config(
            work / f"build{count}-{args.runner}.yaml",
            sources,
            models,
            output,
            tiling={"tile_size": args.tile_size},
            batch_size=32,
            selection={"target_tiles": "all"},
            shards={"max_samples": 10000},
            runner={"kind": args.runner, "workers": args.workers},
        )
        home = work / f"prefect{count}-{args.runner}"
        first = run_build(config, home)
        again = run_build(config, home) if count == min(args.tiles) else None
        shards = folder_bytes(output / "shards")
        cache = folder_bytes(output / ".cache")
        beside = folder_bytes(output, exclude=(output / "shards", output / ".cache"))
        database = sum(p.stat().st_size for p in home.glob("*.db*"))
        tiles = rasters * 100
        rows.append((tiles, first, again, shards, cache, beside, database))
        print(
            f"{tiles:>7} tiles: {first['seconds']:7.1f} s  {tiles / first['seconds']:6.1f} tiles/s  "
            f"peak RSS build {first['process'] / 2**30:5.2f} GiB (tree {first['tree'] / 2**30:5.2f} GiB)  "
            f"cache {cache / tiles / 1024:6.1f} KiB/tile  outputs beside shards {beside / tiles / 1024:6.1f} KiB/tile "
            f"({beside / shards:5.1%} of shards; cache {cache / shards:5.1%})  Prefect db {database / 2**20:6.1f} MiB"
            + (f"  largest worker {first['worker'] / 2**30:5.2f} GiB" if args.runner != "threads" else "")
            + (f"  | rerun, nothing changed: {again['seconds']:.1f} s" if again else ""),
            flush=True,
        )
    base = rows[0][1]
    for tiles, first, *_ in rows[1:]:
        ratio = f"peak RSS at {tiles} tiles / at {rows[0][0]} tiles: build {first['process'] / base['process']:.3f}"
        if args.runner != "threads":
            ratio += f", largest worker {first['worker'] / base['worker']:.3f}"
        print(ratio)
    if args.smoke and not args.keep:  # a check of the script: nothing to look at afterwards
        shutil.rmtree(work)
    else:
        print(f"work folder: {work}")


if __name__ == "__main__":
    main()
