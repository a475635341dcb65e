"""Precision and recall of proposed categories on hand-labelled RSICD captions, per vocabulary and method.

Two label sets, captions read from ../shared/data/real (never copied into the repository):
- benchmarks/data/rsicd_ovrsis95k_labels.jsonl: 200 captions against OVRSIS95K, run with its
  synonyms and with its names only;
- benchmarks/data/categories_rsicd_dev.jsonl: 400 other captions labelled against LoveDA, Potsdam,
  iSAID and FLAIR (rules: benchmarks/data/categories_labelling_rules.md): a tune and a test half of
  400, and 200 `fresh` ones labelled after the relations were written; these vocabularies are
  bundled as names only, so they run names-only, and again `with synonyms`: the names plus the
  reviewed `--suggest` synonyms of benchmarks/data/categories_synonyms.yaml.
Every row is printed twice: `baseline` is the matcher before this work (exact, synonym, lexicon,
embedding on names and synonyms at 0.72 / 0.06), `relations` adds the hypernym walks and the
calibrated embedding stage (relatives as anchors, --threshold / --margin, default the calibrated ones).
Per-method counts say how many proposals each stage made and how many were right.
Usage: python benchmarks/eval_categories.py [--threshold T] [--margin M] [--show-errors SPLIT] [--limit N] [--smoke]
(--smoke: 3 captions of each split and of ovrsis95k.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import yaml
from _shared import RSICD_CAPTIONS, parse_args, require

from pipeline.quality.category_eval import Score, score
from pipeline.stages.categories import CaptionCategorizer
from taxonomy import load_taxonomy
from taxonomy.calibration import names_only
from taxonomy.matcher import DEFAULT_MARGIN, DEFAULT_THRESHOLD

DATA = Path(__file__).resolve().parent / "data"
OVRSIS_LABELS = DATA / "rsicd_ovrsis95k_labels.jsonl"
DEV_LABELS = DATA / "categories_rsicd_dev.jsonl"
DEV_SYNONYMS = DATA / "categories_synonyms.yaml"
DEV_VOCABULARIES = ("loveda", "potsdam", "isaid", "flair")
SPLITS = ("tune", "test", "fresh")


def with_synonyms(taxonomy, synonyms: dict[str, list[str]]):
    """The names-only vocabulary plus the synonyms a user accepted from `--suggest`."""
    categories = tuple(dataclasses.replace(c, synonyms=tuple(synonyms.get(c.name, ()))) for c in taxonomy.categories)
    return dataclasses.replace(taxonomy, categories=categories, name=taxonomy.name + "-with-synonyms")


def show_errors(s: Score) -> None:
    for caption, extra, missing in s.errors:
        print(f"    {caption!r}: +{sorted(extra)} -{sorted(missing)}")


def row(label: str, s: Score) -> str:
    return f"{label:<34} {s.precision:>6.3f} {s.recall:>6.3f} {s.f1:>6.3f} {s.tp:>5} {s.fp:>4} {s.fn:>4}  {s.methods()}"


HEADER = (
    f"{'vocabulary / split / matcher':<34} {'P':>6} {'R':>6} {'F1':>6} {'tp':>5} {'fp':>4} {'fn':>4}  right/proposed"
)


BASELINE_THRESHOLD, BASELINE_MARGIN = 0.72, 0.06  # today's matcher, before relations and calibration


def categorizers(taxonomy, args):
    yield "baseline", CaptionCategorizer(taxonomy, BASELINE_THRESHOLD, BASELINE_MARGIN, use_relations=False)
    yield "relations", CaptionCategorizer(taxonomy, args.threshold, args.margin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument("--show-errors", choices=(*SPLITS, "ovrsis95k"), default=None)
    parser.add_argument(
        "--limit", type=int, default=None, help="labelled captions per split, and of ovrsis95k (default: all)"
    )
    args = parse_args(parser, limit=3)
    captions_by_id = {row["id"]: row["captions"] for row in map(json.loads, open(require(RSICD_CAPTIONS)))}

    dev = [json.loads(line) for line in open(DEV_LABELS)]
    print(
        f"dev set: {len(dev)} captions, labels per vocabulary: "
        + ", ".join(f"{v} {sum(len(e['labels'][v]) for e in dev)}" for v in DEV_VOCABULARIES)
    )
    print(HEADER)
    totals: dict[tuple[str, str], Score] = {}
    accepted = yaml.safe_load(DEV_SYNONYMS.read_text())
    for vocabulary in DEV_VOCABULARIES:
        taxonomy = names_only(load_taxonomy(vocabulary))
        runs = list(categorizers(taxonomy, args))
        if accepted.get(vocabulary):
            synonyms = with_synonyms(taxonomy, accepted[vocabulary])
            runs.append(("+synonyms", CaptionCategorizer(synonyms, args.threshold, args.margin)))
        for label, categorizer in runs:
            for split in SPLITS:
                entries = [e for e in dev if e["split"] == split][: args.limit]
                captions = [captions_by_id[e["id"]][e["caption_index"]] for e in entries]
                gold = [set(e["labels"][vocabulary]) for e in entries]
                s = score(categorizer, captions, gold)
                if args.show_errors == split and label == "relations":
                    show_errors(s)
                print(row(f"{vocabulary} {split} {label}", s))
                if label == "+synonyms":
                    continue  # the totals compare the two matchers on names only
                total = totals.setdefault((split, label), Score())
                total.tp, total.fp, total.fn = total.tp + s.tp, total.fp + s.fp, total.fn + s.fn
                total.by_method.update(s.by_method)
                total.right_by_method.update(s.right_by_method)
    for (split, label), s in sorted(totals.items(), key=lambda kv: (SPLITS.index(kv[0][0]), kv[0][1])):
        print(row(f"all four {split} {label}", s))

    entries = [json.loads(line) for line in open(OVRSIS_LABELS)][: args.limit]
    captions = [captions_by_id[e["id"]][e["caption_index"]] for e in entries]
    labels = [set(e["labels"]) for e in entries]
    print(f"\novrsis95k: {len(entries)} labelled captions, {sum(map(len, labels))} labels (tuned on in earlier work)")
    print(HEADER)
    full = load_taxonomy("ovrsis95k")
    for taxonomy, kind in ((full, "synonyms"), (names_only(full), "names only")):
        for label, categorizer in categorizers(taxonomy, args):
            s = score(categorizer, captions, labels)
            if args.show_errors == "ovrsis95k" and label == "relations":
                show_errors(s)
            print(row(f"ovrsis95k {kind} {label}", s))


if __name__ == "__main__":
    main()
