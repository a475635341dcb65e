"""Peak memory of reading the review ledger against its size (issue 27, item 8).

Writes a synthetic build (TILES tiles of SIZE x SIZE px, three or four categories each, as smooth
blobs) and a review ledger of REVIEWS completed reviews of those tiles in Label Studio's brush RLE
(every category kept, a reviewer's repaint of one region; tens of KB a line at 512 px), and a second
ledger holding its first SMALL reviews. For each ledger, each command runs in a fresh process that
reports its peak RSS above its RSS once imports are done (Linux: the peak is reset through
/proc/self/clear_refs after the imports, read as VmHWM after the command):
  status      `ovrsis audit status` (audit.status.audit_status)
  statistics  Table II (audit.stats.audit_statistics)
  apply       applying the ledger, as every build does (audit.session.apply_ledger)
The tiles are the same for both ledgers (more reviews are edits and other queues of the same tiles),
so only the ledger grows: the figures must stay flat.
Usage: python benchmarks/bench_ledger.py [--reviews 10000 --small 1000 --tiles 200 --size 512] [--smoke]
(--smoke: 40 and 10 reviews of 4 tiles of 64 px.)
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from _shared import parse_args
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from audit.ledger import LedgerWriter, Review, ledger_path
from audit.records import remember_shown
from audit.session import apply_ledger
from audit.stats import audit_statistics
from audit.status import audit_status
from pipeline.dataset.records import Domain, SourceInfo, TileRecord, Window, write_records
from pipeline.raster.outputs import mask_digest
from taxonomy import load_taxonomy

COMMANDS = ("status", "statistics", "apply")
TEMPLATES = 8  # distinct tiles' contents (the reviews of tiles alike share their RLE)
CHUNK = 250  # reviews appended at a time


def label_field(size: int, rng: np.random.Generator, categories: list[int]) -> np.ndarray:
    """A proposal of smooth blobs: the category whose upsampled random field is highest."""
    low = rng.random((6, 6, len(categories)), dtype=np.float32)
    fields = [
        np.asarray(Image.fromarray(low[..., c]).resize((size, size), Image.BICUBIC)) for c in range(len(categories))
    ]
    return np.asarray(categories, np.uint8)[np.argmax(np.stack(fields), axis=0)]


def brush(index: int, name: str, pixels: np.ndarray) -> dict:
    height, width = pixels.shape
    rle = mask2rle((pixels * 255).astype(np.uint8))
    value = {"format": "rle", "rle": rle, "brushlabels": [name]}
    return {
        "id": f"r{index}",
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "value": value,
    }


def reviewed(proposal: np.ndarray, names: list[str], rng: np.random.Generator) -> list[dict]:
    """Every category kept, the first one's outline repainted (a disc added), in Label Studio's RLE."""
    result = []
    for number, index in enumerate(np.unique(proposal).tolist()):
        pixels = proposal == index
        if number == 0:
            rows, cols = np.ogrid[: pixels.shape[0], : pixels.shape[1]]
            centre = rng.integers(0, pixels.shape[0], 2)
            pixels = pixels | ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < (pixels.shape[0] // 8) ** 2)
        result.append(brush(index, names[index], pixels))
    return result


def write_build(out: Path, tiles: int, size: int) -> tuple[list[np.ndarray], list[list[dict]]]:
    """records.jsonl and masks of `tiles` tiles, cycling through TEMPLATES contents; returns each
    template's proposal and review result."""
    taxonomy = load_taxonomy("ovrsis95k")
    proposable = [c.index for c in taxonomy.categories if c.propose]
    names = [c.name for c in taxonomy.categories]
    rng = np.random.default_rng(0)
    proposals = [label_field(size, rng, list(rng.choice(proposable, 4, replace=False))) for _ in range(TEMPLATES)]
    results = [reviewed(p, names, rng) for p in proposals]
    (out / "masks").mkdir(parents=True)
    records = []
    for tile in range(tiles):
        key, proposal = f"tile{tile:05d}", proposals[tile % TEMPLATES]
        Image.fromarray(proposal).save(out / "masks" / f"{key}.png")
        records.append(tile_record(key, proposal))
    write_records(out / "records.jsonl", records)
    for proposal in proposals:
        remember_shown(out, proposal)
    return proposals, results


def tile_record(key: str, proposal: np.ndarray) -> TileRecord:
    height, width = proposal.shape
    window = Window(row_off=0, col_off=0, height=height, width=width)
    source = SourceInfo(
        path="x.tif",
        sha256="0",
        window=window,
        band_mapping=[1, 2, 3],
        stretch="none",
        dtype="uint8",
        raster_width=width,
        raster_height=height,
    )
    return TileRecord(
        key=key,
        source=source,
        semantic_mask=f"masks/{key}.png",
        proposal_digest=mask_digest(proposal),
        domain=Domain(name="town", score=1.0),
    )


def write_ledger(out: Path, reviews: int, tiles: int, proposals: list[np.ndarray], results: list[list[dict]]) -> None:
    """`reviews` reviews, tile after tile: the first round in the random sample, later rounds (edits,
    other queues) alternating between `uncertain` and `sample`."""
    digests = [mask_digest(p) for p in proposals]
    writer = LedgerWriter(out)  # one writer, as a pull has: each append reads only what others appended
    for start in range(0, reviews, CHUNK):
        writer.append([review(n, tiles, digests, results) for n in range(start, min(reviews, start + CHUNK))])


def review(n: int, tiles: int, digests: list[str], results: list[list[dict]]) -> Review:
    tile, round_ = n % tiles, n // tiles
    return Review(
        key=f"tile{tile:05d}",
        queue="uncertain" if round_ % 2 else "sample",
        project_id=1 + round_ % 2,
        project="bench",
        task_id=tile + 1,
        annotation_id=n + 1,
        updated_at=f"2026-{1 + round_ // 28 % 12:02d}-{1 + round_ % 28:02d}T10:00:00Z",
        reviewer=f"reviewer{n % 7}@example.com",
        result=results[tile % TEMPLATES],
        proposal_digest=digests[tile % TEMPLATES],
        pulled_at="2026-12-01T00:00:00+00:00",
    )


def measure(command: str, folder: str) -> tuple[int, int, float]:
    """In a fresh process: the peak RSS in KiB while the command ran, the RSS before it (interpreter
    and imports: audit.apply alone loads torch) and the command's seconds."""
    taxonomy = load_taxonomy("ovrsis95k")
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far (imports) forgotten
    before = memory_kib()["VmRSS"]
    started = time.perf_counter()
    if command == "status":
        audit_status(Path(folder))
    elif command == "statistics":
        audit_statistics(Path(folder), taxonomy)
    else:
        apply_ledger(Path(folder), taxonomy)
    return memory_kib()["VmHWM"], before, time.perf_counter() - started


def memory_kib() -> dict[str, int]:
    """This process's current (VmRSS) and peak (VmHWM) resident memory."""
    status = Path("/proc/self/status").read_text()
    return {name: int(kib) for name, kib in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.MULTILINE)}


def peak(command: str, folder: Path) -> tuple[int, int, float]:
    """`measure` in a process of its own, so one command's peak never hides another's."""
    with get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (command, str(folder)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000, help="reviews in the ledger compared with")
    parser.add_argument("--tiles", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="tile side in px")
    args = parse_args(parser, reviews=40, small=10, tiles=4, size=64)
    with tempfile.TemporaryDirectory() as temporary:
        small, large = Path(temporary) / "small", Path(temporary) / "large"
        started = time.perf_counter()
        proposals, results = write_build(small, args.tiles, args.size)
        shutil.copytree(small, large)
        write_ledger(small, args.small, args.tiles, proposals, results)
        write_ledger(large, args.reviews, args.tiles, proposals, results)
        print(f"{args.tiles} tiles of {args.size} px, written in {time.perf_counter() - started:.1f} s")
        figures = {}
        for folder, reviews in ((small, args.small), (large, args.reviews)):
            size = ledger_path(folder).stat().st_size
            print(f"ledger of {reviews:,} reviews: {size / 2**20:.1f} MiB ({size / reviews / 1024:.1f} KiB a line)")
            for command in COMMANDS:
                figures[command, reviews] = peak(command, folder)
                total, imports, seconds = figures[command, reviews]
                print(
                    f"  {command:<10} peak RSS +{(total - imports) / 1024:7.1f} MiB over the "
                    f"{imports / 1024:.0f} MiB after imports  {seconds:6.2f} s"
                )
        for command in COMMANDS:
            (large_peak, large_base, _), (small_peak, small_base, _) = (
                figures[command, args.reviews],
                figures[command, args.small],
            )
            growth = (large_peak - large_base - small_peak + small_base) / 1024
            print(
                f"{command}: the command's peak at {args.reviews:,} reviews minus at {args.small:,}: {growth:+.1f} MiB"
            )


if __name__ == "__main__":
    main()
