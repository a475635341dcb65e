"""Push and pull of N tasks with masks against a local Label Studio server (tasks/s, peak memory).

Writes a synthetic build output (N records of 256x256 tiles, three categories each, one shared
GeoTIFF), starts Label Studio from .venv-ls on a free port, pushes the N tasks (brush-RLE
predictions, chunks of 500), accepts them all (one annotation POST per task), pulls them into the
review ledger, applies the ledger (decode + decide + rewrite records and masks: what every build
does, with no server), and stops the server by PID.
Usage: python benchmarks/bench_audit.py [--tasks 5000] [--smoke]
(--smoke: 3 tasks.)
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from _shared import parse_args
from affine import Affine
from PIL import Image

from audit.client import AuditClient
from audit.queue import push
from audit.server import start_server, stop_server
from audit.session import apply_ledger, pull_queues
from audit.settings import ServerSettings
from pipeline.dataset.records import Domain, SourceInfo, TileRecord, Window
from pipeline.files.jsonl import atomic_writer, write_json_line
from taxonomy import load_taxonomy

TOKEN = "0123456789abcdef0123456789abcdef01234567"


def synthetic_build(folder: Path, n: int, taxonomy) -> None:
    raster = folder / "tile.tif"
    with rasterio.open(
        raster,
        "w",
        driver="GTiff",
        width=256,
        height=256,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(0.5, 0, 400000, 0, -0.5, 5000000),
    ) as out:
        out.write(np.random.default_rng(0).integers(0, 255, (3, 256, 256), dtype=np.uint8))
    mask = np.full((256, 256), 255, np.uint8)
    mask[:, :100] = taxonomy.index_of("road")
    mask[:120, 100:] = taxonomy.index_of("building")
    mask[150:, 150:] = taxonomy.index_of("tree")
    (folder / "masks").mkdir(parents=True)
    with atomic_writer(folder / "records.jsonl") as handle:
        for i in range(n):
            key = f"tile__r0_c{i}"
            Image.fromarray(mask).save(folder / "masks" / f"{key}.png")
            source = SourceInfo(
                path=str(raster),
                sha256="",
                window=Window(row_off=0, col_off=0, height=256, width=256),
                band_mapping=[1, 2, 3],
                stretch="none",
                dtype="uint8",
                raster_width=256,
                raster_height=256,
            )
            record = TileRecord(
                key=key,
                source=source,
                domain=Domain(name=("town", "forest")[i % 2], score=1.0),
                semantic_mask=f"masks/{key}.png",
                provenance={"taxonomy": {"name": "ovrsis95k"}},
            )
            write_json_line(handle, record.model_dump(mode="json"))


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=5000)
    args = parse_args(parser, tasks=3)
    taxonomy = load_taxonomy("ovrsis95k")
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "out"
        out.mkdir()
        synthetic_build(out, args.tasks, taxonomy)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = start_server(Path(work) / "lsdata", out, TOKEN, "admin@example.com", "bench-password", port)
        try:
            client = AuditClient(ServerSettings(server.url, TOKEN))
            with urllib.request.urlopen(f"{server.url}/api/version", timeout=10) as answer:
                release = json.load(answer)["release"]  # the locked version, whatever `make lock` chose
            records = [
                TileRecord.model_validate_json(line) for line in (out / "records.jsonl").read_text().splitlines()
            ]
            started = time.perf_counter()
            pushed = push(client, out, taxonomy, records, "bench", out)
            push_seconds = time.perf_counter() - started
            rss = {"after push": _rss_mib()}
            (prediction,) = client.sdk.predictions.list(task=pushed.task_ids[0])
            started = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:  # reviewers' submissions: one POST per task
                list(
                    pool.map(
                        lambda task_id: client.sdk.annotations.create(id=task_id, result=prediction.result),
                        pushed.task_ids,
                    )
                )
            annotate_seconds = time.perf_counter() - started
            rss["after reviews"] = _rss_mib()
            started = time.perf_counter()
            (pulled,) = pull_queues(client, out, "bench")
            pull_seconds = time.perf_counter() - started
            rss["after pull"] = _rss_mib()
            started = time.perf_counter()
            applied = apply_ledger(out, taxonomy)
            apply_seconds = time.perf_counter() - started
            started = time.perf_counter()
            apply_ledger(out, taxonomy)  # a later build: the decoded reviews come from audit/reviewed/
            reapply_seconds = time.perf_counter() - started
            rss["after apply"] = _rss_mib()
            ledger_mib = (out / "audit" / "ledger.jsonl").stat().st_size / 2**20
        finally:
            stop_server(server.pid)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"tasks          {args.tasks} (256x256 tiles, 3 brush regions each), Label Studio {release} on SQLite, 2 cores"
    )
    print(
        f"push           {push_seconds:7.1f} s  {args.tasks / push_seconds:7.1f} tasks/s  (JPEG tiles + RLE + import)"
    )
    print(
        f"accept all     {annotate_seconds:7.1f} s  {args.tasks / annotate_seconds:7.1f} tasks/s  "
        "(one annotation POST per task, 4 at a time)"
    )
    print(
        f"pull           {pull_seconds:7.1f} s  {args.tasks / pull_seconds:7.1f} tasks/s  "
        f"(into the ledger: {pulled.new_reviews} reviews, {ledger_mib:.1f} MiB)"
    )
    print(
        f"apply ledger   {apply_seconds:7.1f} s  {args.tasks / apply_seconds:7.1f} tiles/s  "
        f"(no server; every build does this), {applied.reviewed} reviewed"
    )
    print(
        f"apply again    {reapply_seconds:7.1f} s  {args.tasks / reapply_seconds:7.1f} tiles/s  "
        "(decoded reviews cached)"
    )
    print(
        f"peak memory    {peak:7.0f} MiB (client process, max RSS); "
        + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
    )


if __name__ == "__main__":
    main()
