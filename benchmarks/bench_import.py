"""`ovrsis shards import` at scale: is its memory flat in the number of pairs, and how fast is it?

Writes an official-layout folder of N generated 64-px pairs (one JPEG and one PNG, hard-linked under
N names: each name is still its own pair, with its own key and check), imports it in a child
process, and prints pairs/s and the child's peak RSS for each size. Memory flat: the peak grows by
no more than the few fields the importer keeps per pair (key, paths, size, digest).

    python benchmarks/bench_import.py --pairs 1000 10000 100000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import REPO, parse_args
from PIL import Image

TAXONOMY_CLASSES = 35


LINKS_PER_SEED = 50_000  # a file system caps the hard links of one file (ext4: 65,000)


def make_layout(root: Path, pairs: int) -> None:
    """`pairs` pairs, a tenth of them in val, each a hard link of one of a few seed images and masks."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "img").mkdir(parents=True)
        (root / split / "mask").mkdir(parents=True)
    seeds = root / "seeds"
    seeds.mkdir()
    for index in range(pairs):
        if index % LINKS_PER_SEED == 0:
            seed_image, seed_mask = seeds / f"{index}.jpg", seeds / f"{index}.png"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(seed_image, quality=90)
            Image.fromarray(rng.integers(0, TAXONOMY_CLASSES, (64, 64), dtype=np.uint8)).save(seed_mask)
        split = "val" if index % 10 == 0 else "train"
        os.link(seed_image, root / split / "img" / f"p{index:07d}.jpg")
        os.link(seed_mask, root / split / "mask" / f"p{index:07d}.png")
    shutil.rmtree(seeds)


# runs the command in the child and reports the child's own peak RSS, whatever way the command exits
CHILD = """import resource, runpy, sys
sys.argv = ["ovrsis", *sys.argv[1:]]
try:
    runpy.run_module("flows.cli", run_name="__main__")
finally:
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def import_once(source: Path, out: Path) -> tuple[float, float]:
    """Seconds and the child's peak RSS (MiB) of one import."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, "shards", "import", str(source), str(out), "--max-samples", "5000"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"import failed ({result.returncode}):\n{result.stderr[-3000:]}")
    peak = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")]
    return seconds, int(peak[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 10000, 100000])
    args = parse_args(parser, pairs=[50, 200])
    print(f"{'pairs':>8} {'seconds':>8} {'pairs/s':>8} {'peak RSS MiB':>13}")
    for count in sorted(args.pairs):
        work = Path(tempfile.mkdtemp(prefix="bench-import-"))
        try:
            make_layout(work / "source", count)
            seconds, peak = import_once(work / "source", work / "out")
            print(f"{count:>8} {seconds:>8.1f} {count / seconds:>8.0f} {peak:>13.0f}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
