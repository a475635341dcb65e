"""Throughput and peak memory of the caption -> categories stage on the 54,605 RSICD captions.

Prints start-up time (model loads), captions/s after start-up, and peak resident memory.
--baseline times the matcher as it was before relation walks and calibration (0.72 / 0.06).
Usage: python benchmarks/bench_categories.py [--taxonomy ovrsis95k] [--limit N] [--baseline] [--smoke]
(--smoke: 4 images.)
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from _shared import RSICD_CAPTIONS, parse_args, require

from pipeline.stages.categories import CaptionCategorizer
from taxonomy import load_taxonomy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--taxonomy", default="ovrsis95k")
    parser.add_argument("--limit", type=int, default=None, help="images to use (default: all)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--baseline", action="store_true", help="no relation walks, threshold 0.72 (before issue 16)")
    args = parse_args(parser, limit=4)

    rows = [json.loads(line) for line in open(require(RSICD_CAPTIONS))][: args.limit]
    images = [row["captions"] for row in rows]
    n_captions = sum(len(c) for c in images)

    started = time.perf_counter()
    taxonomy = load_taxonomy(args.taxonomy)
    if args.baseline:
        categorizer = CaptionCategorizer(taxonomy, threshold=0.72, margin=0.06, use_relations=False)
    else:
        categorizer = CaptionCategorizer(taxonomy)
    _ = categorizer.matcher  # loads spaCy and the sentence-transformer, embeds the taxonomy
    categorizer.categorize([["a warm-up caption with a river and a bridge"]])
    startup = time.perf_counter() - started

    started = time.perf_counter()
    proposed = 0
    for start in range(0, len(images), args.batch_size):
        for result in categorizer.categorize(images[start : start + args.batch_size]):
            proposed += len(result.categories)
    elapsed = time.perf_counter() - started

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"taxonomy           {args.taxonomy}{' (baseline matcher)' if args.baseline else ''}")
    print(f"images / captions  {len(images)} / {n_captions} ({len({c for cs in images for c in cs})} distinct)")
    print(f"start-up           {startup:.2f} s (spaCy + MiniLM load, taxonomy embedding)")
    print(f"categorize         {elapsed:.2f} s")
    print(f"throughput         {n_captions / elapsed:.0f} captions/s, {len(images) / elapsed:.0f} images/s")
    print(f"categories         {proposed} proposed, {proposed / len(images):.2f} per image")
    print(f"peak memory        {peak_mib:.0f} MiB (max RSS)")


if __name__ == "__main__":
    main()
