"""Leave-one-vocabulary-out (LOVO): names-only matching on vocabularies the relations were not fitted to.

For each of the 13 nomenclatures of taxonomy/data/nomenclatures/ (CORINE level 3, NLCD, ESA
WorldCover, Dynamic World, GID, DeepGlobe, LandCover.ai, OpenEarthMap, FLAIR, iSAID, LoveDA,
Potsdam, UAVid) the held-out vocabulary runs names only, with the relations derived from the
*other* nomenclatures' definitions, and an embedding threshold refitted (taxonomy/calibration.py)
on the calibration vocabularies other than it. The labels (benchmarks/data/lovo_*; rules in
lovo_labelling_rules.md) were written before the matcher first ran on these vocabularies. Caption
text is read from ../shared/data/real at run time. Prints P/R/F1 per vocabulary and their means
(all 13, and the 7 that no earlier matcher work had seen).

The matcher is the product's caption stage (pipeline.stages.categories.CaptionCategorizer), given
the held-out relations through its `relations` field. `--before` runs it as it was before the
definitions and name variants (bundled lexicon relations only, names as written: `name_variants`
off), for the before/after figures.
Usage: python benchmarks/eval_lovo.py [--before] [--no-refit] [--show-errors VOCAB] [--limit N] [--smoke]
(--smoke: 3 captions, two vocabularies, default threshold.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from _shared import RSICD_CAPTIONS, parse_args, require

from pipeline.quality.category_eval import Score, score
from pipeline.stages.categories import CaptionCategorizer, spacy_lemmatize
from taxonomy.calibration import (
    CALIBRATION_VOCABULARIES,
    calibration_pairs,
    fit_threshold,
    names_only,
)
from taxonomy.definitions import definition_relations, load_nomenclature, nomenclatures
from taxonomy.embedding import load_text_embedder
from taxonomy.loader import load_taxonomy
from taxonomy.matcher import DEFAULT_THRESHOLD, CategoryMatcher
from taxonomy.relations import Relations, load_relations, merged

DATA = Path(__file__).resolve().parent / "data"
CONCEPTS = DATA / "lovo_rsicd_concepts.jsonl"
CORRESPONDENCES = DATA / "lovo_concepts.yaml"
UNSEEN = ("corine", "nlcd", "esa_worldcover", "dynamic_world", "gid", "deepglobe", "landcover_ai")


def gold_labels(vocabulary: str, entries: list[dict], table: dict[str, list[str]]) -> list[set[str]]:
    """Each caption's classes of `vocabulary`: those whose concepts the caption was tagged with."""
    names = set(load_nomenclature(vocabulary).names)
    unknown = set(table) - names
    if unknown:
        raise ValueError(f"{CORRESPONDENCES}: {vocabulary} has no class {sorted(unknown)}")
    return [{c for c, concepts in table.items() if set(concepts) & set(e["concepts"])} for e in entries]


def held_out_relations(vocabulary: str, before: bool) -> Relations:
    return load_relations() if before else merged(load_relations(), definition_relations(exclude={vocabulary}))


def refit_threshold(vocabulary: str, relations: Relations, before: bool) -> float:
    """The calibration of taxonomy/calibration.py on its vocabularies other than the held-out one,
    each with the held-out relations: the threshold never sees the vocabulary it is scored on."""
    embedder = load_text_embedder()
    matchers = {
        v: CategoryMatcher(
            names_only(load_taxonomy(v)), spacy_lemmatize, embedder, relations=relations, use_name_variants=not before
        )
        for v in CALIBRATION_VOCABULARIES
        if v != vocabulary
    }
    return fit_threshold(calibration_pairs(matchers))


def row(label: str, s: Score, threshold: float) -> str:
    return (
        f"{label:<16} {s.precision:>6.3f} {s.recall:>6.3f} {s.f1:>6.3f} {s.tp:>4} {s.fp:>4} {s.fn:>4} "
        f"{threshold:>7.4f}  {s.methods()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", action="store_true", help="the matcher before definitions and name variants")
    parser.add_argument("--no-refit", dest="refit", action="store_false", help="the default threshold for all")
    parser.add_argument("--show-errors", default=None, help="print the wrong captions of this vocabulary")
    parser.add_argument("--limit", type=int, default=None, help="labelled captions (default: all)")
    parser.add_argument("--vocabularies", nargs="*", default=None, help="held-out vocabularies (default: all)")
    args = parse_args(parser, limit=3, vocabularies=["landcover_ai", "potsdam"], refit=False)
    captions_by_id = {r["id"]: r["captions"] for r in map(json.loads, open(require(RSICD_CAPTIONS)))}
    entries = [json.loads(line) for line in open(CONCEPTS)][: args.limit]
    captions = [captions_by_id[e["id"]][e["caption_index"]] for e in entries]
    tables = yaml.safe_load(CORRESPONDENCES.read_text())["labels"]
    vocabularies = args.vocabularies or nomenclatures()
    print(f"LOVO, names only, {len(captions)} captions, {'before' if args.before else 'after'}")
    print(f"{'held out':<16} {'P':>6} {'R':>6} {'F1':>6} {'tp':>4} {'fp':>4} {'fn':>4} {'thresh':>7}  right/proposed")
    scores: dict[str, Score] = {}
    seconds = 0.0
    for vocabulary in vocabularies:
        relations = held_out_relations(vocabulary, args.before)
        threshold = refit_threshold(vocabulary, relations, args.before) if args.refit else DEFAULT_THRESHOLD
        taxonomy = names_only(load_nomenclature(vocabulary))
        categorizer = CaptionCategorizer(taxonomy, threshold, relations=relations, name_variants=not args.before)
        categorizer.matcher  # noqa: B018 - built before the clock starts: the rate is of matching, not loading
        start = time.perf_counter()
        s = score(categorizer, captions, gold_labels(vocabulary, entries, tables[vocabulary]))
        seconds += time.perf_counter() - start
        scores[vocabulary] = s
        print(row(vocabulary, s, threshold))
        if args.show_errors == vocabulary:
            for caption, extra, missing in s.errors:
                print(f"    {caption!r}: +{sorted(extra)} -{sorted(missing)}")
            if categorizer.matcher.ambiguous:
                print(f"    ambiguous: {categorizer.matcher.ambiguous}")
    for label, members in (("mean (all)", list(scores)), ("mean (unseen 7)", [v for v in scores if v in UNSEEN])):
        if members:
            p, r, f = (
                sum(getattr(scores[v], m) for v in members) / len(members) for m in ("precision", "recall", "f1")
            )
            print(f"{label:<16} {p:>6.3f} {r:>6.3f} {f:>6.3f}  ({len(members)} vocabularies)")
    print(f"matching: {len(captions) * len(scores) / seconds:.0f} captions/s (parse + match, one machine shared)")


if __name__ == "__main__":
    main()
