"""A GPU box simulated on CPUs (issue 32): can the CPU side of a real-size build keep one GPU fed?

Real-size tiles (1024 px GeoTIFFs cut from the NAIP scene in ../shared/data/real, mirrored and
shifted so no two tiles are equal), about 20 instances a tile of realistic shapes (buildings as
rotated rectangles, trees as ellipses, roads as long bands, cars, a water body), and the three model
forwards replaced by sleeps per tile, each held under one lock shared by every worker process: one
GPU, busy while any worker's forward runs. Everything else is the build's own code, end phase
included: `Annotator.run_batch` with the stage cache, the mask and GeoTIFF writes, the sample cache
filled while annotating (as flows/build.py's batch task does), then records sorted by key,
selection with its balance report and the shards (`write_shards` with the sample cache and a thread
per core) — called as plain functions, without Prefect (bench_flow_overhead.py measures Prefect's share).

Default forward times per tile (overridable), for batches of 8-16 tiles in bf16 on an H100:
  caption 0.04 s  Florence-2-large detailed caption: ~150 ms per image at batch 1 on an RTX 5070
                  (botmonster.com, "Run Vision Models Locally: Florence-2 and Qwen-VL", 2026); an H100
                  batch amortises the image encoder and decodes tiles in parallel.
  detect  0.04 s  GroundingDINO-base (Swin-B) at 800-1333 px: a few images/s at batch 1 on an A100
                  (IDEA-Research, Grounding DINO model zoo); ~2x on H100, more from batching.
  segment 0.05 s  SAM ViT-H: image encoder ~0.15 s on an A100 (segment-anything.com FAQ), one per tile,
                  plus the mask decoder for ~20 boxes; ~2x on H100 and bf16.
They are estimates to override with what benchmarks/gpu_check_build.py measures on a lent GPU.

Prints tiles/s, CPU-seconds per tile outside the forwards by stage, the share of the wall time the
simulated GPU is busy, and the projected wall time of 95,000 tiles on a 16-core machine; with
--rebuild also the same build again with nothing changed (no forward runs: cache restore,
selection, shards), in seconds per tile.
Usage: python benchmarks/bench_gpu_box.py [--tiles 32] [--workers 1 2] [--batch-size 8]
                                          [--caption-s 0.04] [--detect-s 0.04] [--segment-s 0.05] [--rebuild]
       python benchmarks/bench_gpu_box.py --webp [--tiles 8]   (lossless WebP settings on the same tiles)
(--smoke: one raster of 4 tiles, one worker, forwards of no time.)
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from _shared import SHARED_REAL, parse_args, require

NAIP = SHARED_REAL / "naip" / "m_4709963_se_14_1_20200831.tif"
TILE = 1024
TILES_PER_RASTER = 4  # 2048 x 2048 px rasters
TARGET_TILES, TARGET_CORES = 95_000, 16
CAPTION = "many buildings and trees along a road with cars near a river and a parking lot"


# --- imagery --------------------------------------------------------------------------------------


def make_rasters(folder: Path, tiles: int) -> Path:
    """GeoTIFFs of 2048 px, 4 tiles each, from the NAIP scene's RGB bands mirrored to size; each raster
    shifted differently, so tiles differ (real texture, real WebP sizes)."""
    import rasterio
    from affine import Affine

    with rasterio.open(require(NAIP)) as source:
        scene = source.read([1, 2, 3])
    side = 2 * TILE
    reps = (1, math.ceil(side / scene.shape[1]) + 1, math.ceil(side / scene.shape[2]) + 1)
    mirrored = np.concatenate([scene, scene[:, ::-1]], axis=1)
    mirrored = np.concatenate([mirrored, mirrored[:, :, ::-1]], axis=2)
    big = np.tile(mirrored, reps)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(math.ceil(tiles / TILES_PER_RASTER)):
        shift = (97 * index) % scene.shape[1], (131 * index) % scene.shape[2]
        pixels = np.ascontiguousarray(big[:, shift[0] : shift[0] + side, shift[1] : shift[1] + side])
        profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8"}
        profile |= {"crs": "EPSG:26914", "transform": Affine(1.0, 0, 500000 + 4000 * index, 0, -1.0, 5200000)}
        profile |= {"tiled": True, "blockxsize": 256, "blockysize": 256}
        with rasterio.open(folder / f"naip{index:05d}.tif", "w", **profile) as out:
            out.write(pixels)
    return folder


def instance_mask(rng: np.random.Generator, kind: str, box: list[float], size: int) -> np.ndarray:
    """A boolean tile mask of one instance shaped like its kind, inside its box."""
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = box
    canvas = Image.new("1", (size, size))
    draw = ImageDraw.Draw(canvas)
    if kind == "tree":
        draw.ellipse(box, fill=1)
    elif kind == "road":
        draw.line([(x0, y0), (x1, y1)], fill=1, width=int(rng.integers(8, 20)))
    elif kind == "water":
        points = [(x0 + (x1 - x0) * rng.random(), y0 + (y1 - y0) * rng.random()) for _ in range(9)]
        draw.polygon(sorted(points, key=lambda p: math.atan2(p[1] - (y0 + y1) / 2, p[0] - (x0 + x1) / 2)), fill=1)
    else:  # buildings, cars, parking: rotated rectangles
        cx, cy, w, h, angle = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2, rng.random() * math.pi
        corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
        draw.polygon(
            [
                (cx + u * math.cos(angle) - v * math.sin(angle), cy + u * math.sin(angle) + v * math.cos(angle))
                for u, v in corners
            ],
            fill=1,
        )
    return np.asarray(canvas, dtype=bool)


# --- the simulated GPU ----------------------------------------------------------------------------

_GPU = None  # the lock every worker's forwards hold: one GPU
_SLEEPS: dict[str, float] = {}


class _Forward:
    """A model stage whose forward is a sleep of `seconds` per tile under the GPU lock."""

    def __init__(self, stage: str) -> None:
        self.stage, self.model_id, self.image_encoder_calls, self.busy = stage, f"simulated-{stage}", 0, 0.0
        self.made = 0.0  # CPU seconds spent drawing the fake outputs: a real model makes them on the GPU

    def _run(self, tiles: int) -> None:
        with _GPU:
            started = time.perf_counter()
            time.sleep(_SLEEPS[self.stage] * tiles)
            self.busy += time.perf_counter() - started


class SimulatedModels:
    """`Models` whose forwards sleep: captions name several categories; the detector returns about 20
    boxes per tile spread over the prompts' categories; the segmenter one shaped mask per box."""

    def __init__(self) -> None:
        from pipeline.models.protocols import Detection, SegmentResult

        self._detection, self._result = Detection, SegmentResult
        self.captioner, self.detector, self.segmenter = _Forward("caption"), _Forward("detect"), _Forward("segment")
        self.captioner.caption = self._caption
        self.detector.detect = self._detect
        self.segmenter.segment = self._segment

    def _caption(self, images: Sequence[np.ndarray]) -> list[str]:
        self.captioner._run(len(images))
        return [CAPTION] * len(images)

    def _detect(self, images, prompts) -> list[list]:
        self.detector._run(len(images))
        started, found = time.thread_time(), []
        for image, phrases in zip(images, prompts):
            rng = np.random.default_rng(int(hashlib.sha256(image[::64, ::64].tobytes()).hexdigest()[:8], 16))
            size, detections = image.shape[0], []
            for index in range(int(rng.integers(16, 25))):
                phrase = phrases[index % len(phrases)]
                w, h = rng.integers(24, 220, 2) if "road" not in phrase.category else (size, rng.integers(20, 60))
                x0, y0 = rng.integers(0, max(1, size - w)), rng.integers(0, max(1, size - h))
                box = [float(x0), float(y0), float(min(size, x0 + w)), float(min(size, y0 + h))]
                detections.append(self._detection(box, float(rng.uniform(0.3, 0.9)), phrase.category, phrase.text))
            found.append(detections)
        self.detector.made += time.thread_time() - started
        return found

    def _segment(self, images, boxes) -> list:
        self.segmenter._run(len(images))
        self.segmenter.image_encoder_calls += len(images)
        started, results = time.thread_time(), []
        for image, tile_boxes in zip(images, boxes):
            rng = np.random.default_rng(len(tile_boxes))
            kinds = ["building", "tree", "road", "car", "water"]
            masks = np.stack(
                [
                    instance_mask(rng, kinds[i % len(kinds)], list(box), image.shape[0])
                    for i, box in enumerate(tile_boxes)
                ]
            )
            results.append(self._result(masks, rng.uniform(0.6, 0.95, len(tile_boxes)).astype(np.float32)))
        self.segmenter.made += time.thread_time() - started
        return results

    def provenance(self, used: set[str]) -> dict:
        return {name: {"model": f"simulated-{name}"} for name in sorted(used)}


# --- one worker process ---------------------------------------------------------------------------

_ANNOTATOR = None
_CONTEXT: dict = {}
_CPU: Counter = Counter()  # this batch's CPU seconds per stage (the worker's stages are wrapped once)


def _start_worker(lock, sleeps: dict[str, float], out: str, storage: str, workers: int, batch_size: int) -> None:
    """A worker process: its thread budget (one core of `workers`), its Annotator with the simulated models."""
    global _GPU, _ANNOTATOR
    from pipeline.build import threads

    threads.apply(threads.worker_budget("processes", workers))
    from pipeline.build.annotate import AnnotateConfig, Annotator
    from pipeline.dataset.shards import SampleCache, ShardConfig
    from pipeline.raster.ingest import TilingConfig
    from pipeline.stages.categories import parse_images
    from taxonomy import load_taxonomy

    _GPU = lock
    _SLEEPS.update(sleeps)
    config = AnnotateConfig(tiling=TilingConfig(TILE), batch_size=batch_size, write_overlay=False, stitch=False)
    _ANNOTATOR = Annotator(load_taxonomy("ovrsis95k"), SimulatedModels(), Path(out), config, package_version="sim")
    for name, step in list(_ANNOTATOR.stages.items()):
        _ANNOTATOR.stages[name] = _timed(name, step)
    # spaCy and MiniLM load on first use: loaded here, once per worker, not counted against the tiles
    _ANNOTATOR.categorizer.match(parse_images([[CAPTION]]))
    _CONTEXT["samples"] = SampleCache(Path(storage) / "samples", ShardConfig(), context=repr(config.bands))
    _CONTEXT["storage"] = Path(storage)


def _annotate(records_json: list[str], keys: dict[str, str]) -> tuple[list[str], Counter, float, float]:
    """One batch as flows/build.py's batch task runs it; returns the records, CPU seconds per stage
    (this thread's, so sleeps and other workers are not counted), the process's CPU seconds and the
    seconds the simulated GPU was busy for it."""
    from pipeline.build.annotate import BatchPixels
    from pipeline.build.stage_cache import StageCache
    from pipeline.build.tile_state import TileState
    from pipeline.dataset.records import TileRecord

    annotator, cpu = _ANNOTATOR, _CPU
    cpu.clear()
    process_started, busy_before, made_before = time.process_time(), _busy(), _made()
    states = [TileState(TileRecord.model_validate_json(line)) for line in records_json]
    cache = StageCache(_CONTEXT["storage"])
    started = time.thread_time()
    pixels = BatchPixels(annotator, states)
    if not all(cache.path(stage, key).is_file() for stage, key in keys.items()):
        pixels.load_all()
    cpu["ingest"] += time.thread_time() - started
    annotator.run_batch(states, pixels, cache, keys)
    started = time.thread_time()
    annotator.write(states, pixels)
    cpu["write masks"] += time.thread_time() - started
    started = time.thread_time()
    for state in states:
        if state.live and not _CONTEXT["samples"].has_image(state.record):
            _CONTEXT["samples"].store_image(state.record, pixels(state.record)[0])
    cpu["encode image"] += time.thread_time() - started  # with the reads a rebuild defers to here
    records = [s.record.model_dump_json() for s in states]
    made = {stage: seconds - made_before[stage] for stage, seconds in _made().items()}
    cpu.subtract(made)  # the fake outputs' drawing is the simulated GPU's work
    process_cpu = time.process_time() - process_started - sum(made.values())
    return records, Counter(cpu), process_cpu, _busy() - busy_before


def _busy() -> float:
    """Seconds the simulated GPU ran this worker's forwards so far."""
    models = _ANNOTATOR.models._models
    return models.captioner.busy + models.detector.busy + models.segmenter.busy


def _made() -> dict[str, float]:
    """CPU seconds this worker spent drawing fake model outputs so far, per model stage."""
    models = _ANNOTATOR.models._models
    return {"detect": models.detector.made, "segment": models.segmenter.made}


def _timed(name: str, step):
    """The stage, its CPU seconds (this thread's: sleeps and other threads not counted) added to _CPU."""

    def run(states, pixels) -> None:
        started = time.thread_time()
        try:
            step(states, pixels)
        finally:
            _CPU[name] += time.thread_time() - started

    return run


# --- the whole build ------------------------------------------------------------------------------


def build(imagery: Path, out: Path, workers: int, batch_size: int, sleeps: dict[str, float]) -> dict:
    """Plan, annotate in `workers` processes around one simulated GPU, then records, selection and
    shards in this process; returns wall and CPU figures."""
    # imported before the clock (torch; matplotlib for the balance report): a long build pays them once
    import matplotlib.pyplot  # noqa: F401
    import webdataset  # noqa: F401

    from pipeline.build import threads
    from pipeline.build.batching import batched, in_order
    from pipeline.dataset.records import SCHEMA_VERSION
    from pipeline.raster.ingest import BandRule, RasterSource, TilingConfig, find_rasters, source_keys
    from pipeline.stages.merge import MergeConfig
    from pipeline.stages.registry import batch_key, chained_keys, stage_fingerprints
    from taxonomy import load_taxonomy

    out.mkdir(parents=True, exist_ok=True)
    storage = out / ".cache"
    taxonomy = load_taxonomy("ovrsis95k")
    tiling = {"tile_size": TILE}
    models = {"captioner": sleeps["caption"], "detector": sleeps["detect"], "segmenter": sleeps["segment"]}
    fingerprints = stage_fingerprints(models, taxonomy.version, {}, asdict(MergeConfig()), "sim", SCHEMA_VERSION)
    started, main_cpu = time.perf_counter(), time.process_time()
    rasters, unsupported = find_rasters(imagery)
    stems = source_keys(rasters, unsupported).stems
    records = []
    for path in rasters:
        with RasterSource(path, BandRule(), stems[path]) as source:
            records.extend(source.window_records(TilingConfig(TILE)))
    cpu, worker_cpu, busy, lines = Counter(), 0.0, 0.0, []
    context = multiprocessing.get_context("spawn")
    lock = context.Manager().Lock()
    arguments = (lock, sleeps, str(out), str(storage), workers, batch_size)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=arguments) as pool:
        list(pool.map(time.sleep, [0.2] * workers))  # workers started (imports) before the clock that matters
        annotate_started = time.perf_counter()

        def submit(batch):
            keys = chained_keys(batch_key([(r.key, r.source.sha256) for r in batch], tiling), fingerprints, [])
            return pool.submit(_annotate, [r.model_dump_json() for r in batch], keys)

        for batch_lines, batch_cpu, process_cpu, batch_busy in in_order(
            batched(records, batch_size), submit, workers + 1
        ):
            lines.extend(batch_lines)
            cpu.update(batch_cpu)
            worker_cpu += process_cpu
            busy += batch_busy
        annotated = time.perf_counter()
    threads.apply(threads.budget(threads.owned_cores()))
    end_cpu_started = time.process_time()
    end_phase = _end_phase(out, storage, lines, taxonomy)
    finished = time.perf_counter()
    cpu["end phase (records, selection, shards)"] = time.process_time() - end_cpu_started
    return {
        "tiles": len(records),
        "wall": finished - annotate_started,
        "annotate_wall": annotated - annotate_started,
        "end_wall": finished - annotated,
        "worker_cpu": worker_cpu,
        "main_cpu": time.process_time() - main_cpu,
        "cpu_by_stage": cpu,
        "gpu_busy": busy,
        "samples": end_phase,
        "planned_in": annotate_started - started,
    }


def _end_phase(out: Path, storage: Path, lines: list[str], taxonomy) -> int:
    """records.jsonl sorted by key, the selection and its report, the shards: as the flow does them."""
    from PIL import Image

    from pipeline.build import threads
    from pipeline.build.annotate import RasterPixels
    from pipeline.dataset.balance_report import write_report
    from pipeline.dataset.record_store import sort_records
    from pipeline.dataset.records import TileRecord
    from pipeline.dataset.selection import SelectionConfig, TileCounts, select
    from pipeline.dataset.shards import SampleCache, ShardConfig, write_shards
    from pipeline.dataset.tile_table import TileRows
    from pipeline.raster.ingest import BandRule

    (out / "annotated.jsonl").write_text("".join(line + "\n" for line in lines))
    index = sort_records(out / "annotated.jsonl", out / "records.jsonl")
    selection, rows, counts = SelectionConfig(), TileRows(), TileCounts()
    for line in lines:
        record = TileRecord.model_validate_json(line)
        if counts.admit(record, selection):
            rows.add(record)
    table = rows.table(taxonomy.names)
    chosen = select(table, selection)
    write_report(out / "report", table, chosen, counts)
    pixels = RasterPixels(BandRule())

    def load_mask(record: TileRecord) -> np.ndarray:
        return np.asarray(Image.open(out / record.semantic_mask))

    manifest = write_shards(
        out,
        index.subset(table.keys[chosen.selected].tolist()),
        lambda record: (pixels(record)[0], load_mask(record)),
        taxonomy.names,
        taxonomy.version,
        cache=SampleCache(storage / "samples", ShardConfig(), context=repr(BandRule())),
        load_mask=load_mask,
        workers=threads.owned_cores(),
    )
    return sum(split["samples"] for split in manifest["splits"].values())


def webp_settings(imagery: Path) -> None:
    """Lossless WebP settings on the tiles: ms and MB per tile, pixels exact or not; then the chosen
    settings (`pipeline.dataset.shards.WEBP_SETTINGS`) on one thread and on one per core, which says whether
    Pillow lets encoding threads run at once (it releases the GIL while it encodes)."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import rasterio
    from PIL import Image

    from pipeline.build import threads
    from pipeline.dataset.shards import WEBP_SETTINGS

    tiles = []
    for path in sorted(imagery.glob("*.tif")):
        with rasterio.open(path) as source:
            pixels = source.read().transpose(1, 2, 0)
        tiles += [np.ascontiguousarray(pixels[r : r + TILE, c : c + TILE]) for r in (0, TILE) for c in (0, TILE)]

    def encode(tile: np.ndarray, **settings: object) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(tile).save(buffer, format="WEBP", **settings)
        return buffer.getvalue()

    print(f"lossless WebP of {len(tiles)} NAIP tiles of {TILE} px (PNG level 6 for scale)")
    for method, quality in ((0, 25), (1, 25), (2, 25), (0, 0), (0, 50)):
        started = time.perf_counter()
        sizes = [len(encode(t, lossless=True, exact=True, method=method, quality=quality)) for t in tiles]
        seconds = (time.perf_counter() - started) / len(tiles)
        data = encode(tiles[0], lossless=True, exact=True, method=method, quality=quality)
        exact = np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), tiles[0])
        print(
            f"  method {method} quality {quality:3d}  {seconds * 1000:6.0f} ms  "
            f"{np.mean(sizes) / 1e6:6.3f} MB  exact {exact}"
        )
    started = time.perf_counter()
    png = [io.BytesIO() for _ in tiles]
    for tile, buffer in zip(tiles, png):
        Image.fromarray(tile).save(buffer, format="PNG", compress_level=6)
    seconds = (time.perf_counter() - started) / len(tiles)
    print(f"  PNG level 6            {seconds * 1000:6.0f} ms  {np.mean([b.tell() for b in png]) / 1e6:6.3f} MB")
    work = tiles * 2
    started = time.perf_counter()
    for tile in work:
        encode(tile, **WEBP_SETTINGS)
    one = time.perf_counter() - started
    cores = threads.owned_cores()
    with ThreadPoolExecutor(cores) as pool:
        started = time.perf_counter()
        list(pool.map(lambda tile: encode(tile, **WEBP_SETTINGS), work))
        many = time.perf_counter() - started
    print(f"  chosen {WEBP_SETTINGS}: {cores} threads {one / many:.2f}x one thread")


def report(label: str, result: dict, sleeps: dict[str, float]) -> float:
    """Print one build's figures; returns its CPU-seconds per tile outside the forwards."""
    tiles = result["tiles"]
    cpu_per_tile = (result["worker_cpu"] + result["cpu_by_stage"]["end phase (records, selection, shards)"]) / tiles
    print(f"{label}: {tiles} tiles of {TILE} px, {result['samples']} sharded")
    print(
        f"  tiles/s end to end          {tiles / result['wall']:7.2f}  ({result['wall']:.1f} s; "
        f"annotate {result['annotate_wall']:.1f} s, end phase {result['end_wall']:.1f} s)"
    )
    print(f"  CPU-s per tile (no forward) {cpu_per_tile:7.3f}  (worker processes + end phase)")
    for stage, seconds in sorted(result["cpu_by_stage"].items(), key=lambda item: -item[1]):
        print(f"    {stage:34s} {seconds / tiles:7.3f}")
    print(
        f"  simulated GPU busy          {result['gpu_busy'] / result['wall']:7.1%} of the wall time "
        f"({sum(sleeps.values()):.3f} s a tile)"
    )
    return cpu_per_tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--caption-s", type=float, default=0.04)
    parser.add_argument("--detect-s", type=float, default=0.04)
    parser.add_argument("--segment-s", type=float, default=0.05)
    parser.add_argument("--rebuild", action="store_true", help="also rebuild with nothing changed")
    parser.add_argument("--webp", action="store_true", help="only measure lossless WebP settings on the tiles")
    args = parse_args(parser, tiles=2, workers=[1], batch_size=2, caption_s=0.0, detect_s=0.0, segment_s=0.0)
    sleeps = {"caption": args.caption_s, "detect": args.detect_s, "segment": args.segment_s}
    rates, cpu = {}, {}
    with tempfile.TemporaryDirectory() as work:
        imagery = make_rasters(Path(work) / "imagery", args.tiles)
        if args.webp:
            webp_settings(imagery)
            return
        for workers in args.workers:
            out = Path(work) / f"out{workers}"
            result = build(imagery, out, workers, args.batch_size, sleeps)
            cpu[workers] = report(f"{workers} worker(s)", result, sleeps)
            rates[workers] = result["tiles"] / result["wall"]
            if args.rebuild:
                again = build(imagery, out, workers, args.batch_size, sleeps)
                report(f"{workers} worker(s), rebuild with nothing changed", again, sleeps)
                print(f"  rebuild s per tile          {again['wall'] / again['tiles']:7.3f}")
    first, last = min(rates), max(rates)
    gpu_rate = 1 / sum(sleeps.values()) if sum(sleeps.values()) else math.inf
    if last > first:
        scaling = rates[last] / rates[first]
        efficiency = min(1.0, scaling / (last / first))
        print(f"scaling {first} -> {last} workers       {scaling:7.2f}x  (efficiency {efficiency:.0%} per doubling)")
    else:
        efficiency = 1.0
    doublings = math.log2(TARGET_CORES / first)
    ideal = TARGET_CORES / cpu[first]  # tiles/s 16 cores sustain at the measured CPU-seconds per tile
    print(
        f"projected {TARGET_TILES} tiles, {TARGET_CORES} cores, CPU-s per tile alone: "
        f"{TARGET_TILES / min(gpu_rate, ideal) / 3600:6.2f} h (CPU side {ideal:.1f} tiles/s, GPU side {gpu_rate:.1f})"
    )
    cpu_rate = ideal * efficiency**doublings
    rate = min(gpu_rate, cpu_rate)
    print(
        f"projected {TARGET_TILES} tiles, {TARGET_CORES} cores: "
        f"{TARGET_TILES / rate / 3600:6.2f} h at {rate:.2f} tiles/s "
        f"(CPU side {cpu_rate:.1f} tiles/s, measured efficiency compounded over {doublings:.0f} doublings; "
        f"GPU side {gpu_rate:.1f} tiles/s)"
    )
    print(f"peak memory (this process)   {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:7.0f} MiB")


if __name__ == "__main__":
    main()
