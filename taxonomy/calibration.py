"""Fit the embedding stage's threshold on labelled (phrase, category, yes/no) pairs.

The pairs come from data, not from an evaluation set: for each of several bundled vocabularies
(names only, DLRSD held out), every lexicon or relation term is a phrase whose right category is
the one the written relations reach in that vocabulary, or none. The term's own anchor is masked,
so the embedding must find the category from the *other* relatives, as it would for a word no one
wrote down. The threshold is the lowest score at which the accepted pairs are still at least
`TARGET_PRECISION` right; the margin stays fixed. Same data and model, same threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from taxonomy.loader import Taxonomy, load_taxonomy
from taxonomy.matcher import DEFAULT_MARGIN, CategoryMatcher

CALIBRATION_VOCABULARIES = (
    "isaid",
    "loveda",
    "potsdam",
    "flair",
    "openearthmap",
    "vaihingen",
    "uavid",
    "udd5",
    "vdd",
    "ovrsis95k",
)
TARGET_PRECISION = 0.95


@dataclass(frozen=True)
class Pair:
    """One calibration pair: the embedding's best category for a phrase, and whether it is right."""

    vocabulary: str
    phrase: str
    proposed: str
    gold: str | None  # the category the relations reach, None when they reach nothing
    score: float
    gap: float
    fragment: bool

    @property
    def correct(self) -> bool:
        return self.proposed == self.gold


def names_only(taxonomy: Taxonomy) -> Taxonomy:
    """The vocabulary as a user brings it: names, no synonyms or descriptions."""
    categories = tuple(dataclasses.replace(c, synonyms=(), description="") for c in taxonomy.categories)
    return dataclasses.replace(taxonomy, categories=categories, name=taxonomy.name + "-names-only")


def calibration_pairs(matchers: dict[str, CategoryMatcher]) -> list[Pair]:
    """Leave-one-out pairs for every known term of every vocabulary's matcher."""
    pairs: list[Pair] = []
    for vocabulary, matcher in matchers.items():
        names = [c.name for c in matcher.taxonomy.categories]
        own = set(matcher.term_names())
        relatives = {a: names[o] for a, o in zip(matcher.anchors, matcher.anchor_owner) if a not in own}
        unreached = sorted(matcher.known_terms() - relatives.keys() - own)
        texts = [*relatives, *unreached]
        if not texts:
            continue
        similarity = matcher.anchor_similarity(texts)
        anchors = np.array(matcher.anchors, dtype=object)
        for row, text in enumerate(texts):
            similarity[row, _same_word(anchors, text)] = -1.0
        for text, ranked in zip(texts, matcher.rank(texts, similarity)):
            proposed, gold = names[ranked.best], relatives.get(text)
            pairs.append(Pair(vocabulary, text, proposed, gold, ranked.score, ranked.gap, ranked.fragment))
    return pairs


def fit_threshold(pairs: Iterable[Pair], target: float = TARGET_PRECISION, margin: float = DEFAULT_MARGIN) -> float:
    """Lowest score at which the pairs the stage would accept are >= `target` right (1.0: none is)."""
    eligible = sorted((p for p in pairs if p.gap >= margin and not p.fragment), key=lambda p: -p.score)
    threshold, right = 1.0, 0
    for accepted, pair in enumerate(eligible, start=1):
        right += pair.correct
        last_of_score = accepted == len(eligible) or eligible[accepted].score < pair.score
        if last_of_score and right / accepted >= target:
            threshold = pair.score
    return round(threshold, 4)


def accepted_counts(pairs: Iterable[Pair], threshold: float, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int]:
    """(accepted, right among them, pairs with a right answer): precision and recall of a threshold."""
    pairs = list(pairs)
    accepted = [p for p in pairs if p.score >= threshold and p.gap >= margin and not p.fragment]
    return len(accepted), sum(p.correct for p in accepted), sum(p.gold is not None for p in pairs)


def calibration_matchers(lemmatize, embedder, vocabularies=CALIBRATION_VOCABULARIES) -> dict[str, CategoryMatcher]:
    return {v: CategoryMatcher(names_only(load_taxonomy(v)), lemmatize, embedder) for v in vocabularies}


def _same_word(anchors: np.ndarray, text: str) -> np.ndarray:
    """The text's own anchor and its plural/singular twin: masked for the leave-one-out."""
    return np.isin(anchors, [text, text + "s", text[:-1] if text.endswith("s") else text])
