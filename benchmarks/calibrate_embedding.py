"""Refit the embedding stage's threshold from data (taxonomy/calibration.py) and show the pairs.

Prints the pair counts per vocabulary, the fitted threshold for the target precision, precision
and recall of the calibration pairs at it and at the old 0.72, and the wrong pairs nearest the
threshold. Paste the threshold into taxonomy/matcher.py's DEFAULT_THRESHOLD when it changes.
Usage: python benchmarks/calibrate_embedding.py [--target 0.95] [--margin 0.06] [--vocabularies ...] [--smoke]
(--smoke: the pairs of LoveDA alone; not a threshold to paste.)
"""

from __future__ import annotations

import argparse
from collections import Counter

from _shared import parse_args

from pipeline.stages.categories import spacy_lemmatize
from taxonomy.calibration import (
    CALIBRATION_VOCABULARIES,
    TARGET_PRECISION,
    accepted_counts,
    calibration_matchers,
    calibration_pairs,
    fit_threshold,
)
from taxonomy.embedding import load_text_embedder
from taxonomy.matcher import DEFAULT_MARGIN, DEFAULT_THRESHOLD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", type=float, default=TARGET_PRECISION)
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument(
        "--vocabularies", nargs="+", default=CALIBRATION_VOCABULARIES, help="bundled vocabularies giving the pairs"
    )
    args = parse_args(parser, vocabularies=["loveda"])
    pairs = calibration_pairs(calibration_matchers(spacy_lemmatize, load_text_embedder(), args.vocabularies))
    per_vocabulary = Counter(p.vocabulary for p in pairs)
    answerable = Counter(p.vocabulary for p in pairs if p.gold is not None)
    print("pairs (with a right category) per vocabulary:")
    print("  " + ", ".join(f"{v} {n} ({answerable[v]})" for v, n in per_vocabulary.items()))
    threshold = fit_threshold(pairs, args.target, args.margin)
    for label, value in (("fitted", threshold), ("in use", DEFAULT_THRESHOLD), ("old", 0.72)):
        accepted, right, total = accepted_counts(pairs, value, args.margin)
        precision = right / accepted if accepted else 1.0
        print(
            f"{label:<7} threshold {value:.4f}: accepted {accepted}, precision {precision:.3f}, "
            f"recall {right / total:.3f} of {total}"
        )
    wrong = sorted((p for p in pairs if not p.correct and p.gap >= args.margin), key=lambda p: -p.score)
    print("wrong pairs nearest the threshold (vocabulary, phrase -> proposed, right, score, gap):")
    for p in wrong[:15]:
        print(f"  {p.vocabulary:<13} {p.phrase:<22} -> {p.proposed:<24} {p.gold!s:<22} {p.score:.3f} {p.gap:.3f}")


if __name__ == "__main__":
    main()
