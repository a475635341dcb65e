"""Precision and recall of proposed categories on hand-labelled RSICD captions.

Labels (benchmarks/data/rsicd_ovrsis95k_labels.jsonl) name, for one caption of each of 200 randomly
drawn RSICD images, the OVRSIS95K categories that the caption states are present; the captions
themselves are read from ../shared/data/real (they are not copied into the repository). The stage
runs twice: with the bundled OVRSIS95K taxonomy (synonyms written) and with the same names only,
the case of a user who writes no synonyms.
Usage: python benchmarks/eval_categories.py [--threshold T] [--margin M] [--show-errors]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import RSICD_CAPTIONS, require  # noqa: E402

from pipeline.categories import CaptionCategorizer  # noqa: E402
from taxonomy import load_taxonomy  # noqa: E402
from taxonomy.matcher import DEFAULT_MARGIN, DEFAULT_THRESHOLD  # noqa: E402

LABELS = Path(__file__).resolve().parent / "data" / "rsicd_ovrsis95k_labels.jsonl"


def names_only(taxonomy):
    categories = tuple(dataclasses.replace(c, synonyms=(), description="") for c in taxonomy.categories)
    return dataclasses.replace(taxonomy, categories=categories, name=taxonomy.name + "-names-only")


def score(categorizer, captions, labels, show_errors):
    tp = fp = fn = 0
    for caption, gold, result in zip(captions, labels, categorizer.categorize([[c] for c in captions])):
        proposed = {c.name for c in result.categories}
        tp += len(proposed & gold)
        fp += len(proposed - gold)
        fn += len(gold - proposed)
        if show_errors and proposed != gold:
            print(f"  {caption!r}: +{sorted(proposed - gold)} -{sorted(gold - proposed)}")
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, tp, fp, fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument("--show-errors", action="store_true")
    args = parser.parse_args()

    captions_by_id = {row["id"]: row["captions"] for row in map(json.loads, open(require(RSICD_CAPTIONS)))}
    entries = [json.loads(line) for line in open(LABELS)]
    captions = [captions_by_id[e["id"]][e["caption_index"]] for e in entries]
    labels = [set(e["labels"]) for e in entries]

    full = load_taxonomy("ovrsis95k")
    print(f"{len(entries)} labelled captions, {sum(map(len, labels))} labels")
    print(f"{'taxonomy':<24} {'precision':>9} {'recall':>7} {'tp':>5} {'fp':>4} {'fn':>4}")
    for taxonomy in (full, names_only(full)):
        categorizer = CaptionCategorizer(taxonomy, threshold=args.threshold, margin=args.margin)
        precision, recall, tp, fp, fn = score(categorizer, captions, labels, args.show_errors)
        print(f"{taxonomy.name:<24} {precision:>9.3f} {recall:>7.3f} {tp:>5} {fp:>4} {fn:>4}")


if __name__ == "__main__":
    main()
