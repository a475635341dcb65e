"""Relation walks, the embedding calibration, per-method counts and the --suggest snippet."""

from collections import Counter
from types import SimpleNamespace

import pytest
import yaml

from taxonomy import bundled_taxonomies, load_taxonomy
from taxonomy.calibration import Pair, calibration_matchers, calibration_pairs, fit_threshold, names_only
from taxonomy.loader import Category, Taxonomy, TaxonomyError, load_lexicon
from taxonomy.matcher import DEFAULT_THRESHOLD, CategoryMatcher, PhraseQuery
from taxonomy.relations import load_relations, relations_from
from taxonomy.suggest import Suggestion, suggest, suggestions_yaml


def vocabulary(*names: str) -> Taxonomy:
    return Taxonomy("test", tuple(Category(i, n) for i, n in enumerate(names)), source="test")


def match_one(matcher: CategoryMatcher, term: str):
    (found,) = matcher.match([PhraseQuery((term,), 1)])
    return found


def test_walk_is_nearest_first_and_only_upward():
    edges = {"runway": ["paved area"], "paved area": ["land"]}
    relations = relations_from([["paved area", "impervious surface"]], edges)
    assert relations.ancestors("runway") == [("runway", 0), ("paved area", 1), ("impervious surface", 1), ("land", 2)]
    assert relations.ancestors("land") == [("land", 0)]  # never down to runway


def test_a_term_in_two_near_synonym_sets_is_refused():
    with pytest.raises(TaxonomyError, match="two near-synonym sets"):
        relations_from([["a", "b"], ["b", "c"]], {})


def test_narrower_term_reaches_the_broader_category_only_when_the_narrower_is_missing(lemmatize):
    with_runway = CategoryMatcher(vocabulary("runway", "impervious surface"), lemmatize, None)
    without = CategoryMatcher(vocabulary("impervious surface", "building"), lemmatize, None)
    assert (match_one(with_runway, "runway").name, match_one(with_runway, "runway").method) == ("runway", "exact")
    found = match_one(without, "runway")
    assert (found.name, found.method) == ("impervious surface", "relation") and found.score < 1.0
    meadow = match_one(CategoryMatcher(vocabulary("building", "low vegetation"), lemmatize, None), "meadow")
    assert meadow.name == "low vegetation"  # meadow -> herbaceous vegetation -> low vegetation: two steps


def test_walks_never_cross_branches(lemmatize):
    flair = CategoryMatcher(names_only(load_taxonomy("flair")), lemmatize, None)
    assert match_one(flair, "tree") is None  # coniferous / deciduous are narrower: no guess
    loveda = CategoryMatcher(names_only(load_taxonomy("loveda")), lemmatize, None)
    for term in ("car", "runway", "meadow", "parking lot"):  # LoveDA has no vehicle, paved or grass class
        assert match_one(loveda, term) is None, term
    assert match_one(loveda, "viaduct").name == "road" and match_one(loveda, "desert").name == "barren"


def test_bundled_relations_lead_to_terms_someone_uses():
    """Every parent is a relation or lexicon term or a bundled vocabulary's term: no typo dead ends."""
    relations, lexicon = load_relations(), load_lexicon()
    used = {*relations.same, *relations.broader, *lexicon, *(v for vs in lexicon.values() for v in vs)}
    for name in bundled_taxonomies():
        for category in load_taxonomy(name).categories:
            used |= {t.lower() for t in (category.name, *category.aliases, *category.synonyms)}
    for term, parents in relations.broader.items():
        assert term not in parents and set(parents) <= used, (term, set(parents) - used)


def test_calibration_is_reproducible_from_data(lemmatize, embedder):
    matchers = calibration_matchers(lemmatize, embedder, ("loveda", "potsdam", "isaid"))
    pairs, again = calibration_pairs(matchers), calibration_pairs(matchers)
    assert pairs == again and len({p.vocabulary for p in pairs}) == 3
    assert any(p.gold is None for p in pairs) and any(p.correct for p in pairs)  # negatives and positives
    assert not any(p.vocabulary == "loveda" and p.phrase == "road" for p in pairs)  # own names are no pairs
    threshold = fit_threshold(pairs)
    accepted = [p for p in pairs if p.score >= threshold and p.gap >= 0.06 and not p.fragment]
    assert accepted and sum(p.correct for p in accepted) / len(accepted) >= 0.95
    assert 0.5 < DEFAULT_THRESHOLD < 1.0


def test_fit_threshold_takes_the_lowest_score_that_keeps_the_target():
    def pair(score, correct):
        return Pair("v", f"p{score}", "a", "a" if correct else "b", score, 0.5, False)

    pairs = [pair(0.9, True), pair(0.85, True), pair(0.8, False), pair(0.75, True), pair(0.7, False)]
    assert fit_threshold(pairs, target=0.95) == 0.85
    assert fit_threshold(pairs, target=0.7) == 0.75
    assert fit_threshold([pair(0.9, False)], target=0.95) == 1.0  # nothing to accept: the stage is off


def test_suggestions_group_phrases_under_their_nearest_category(lemmatize, embedder):
    matcher = CategoryMatcher(vocabulary("water", "building", "road"), lemmatize, embedder)
    found = suggest(matcher, Counter({"shoreline": 5, "meadow": 4, "once": 1}), min_images=2)
    assert [s.phrase for s in found] == ["shoreline", "meadow"]  # below min_images: left out
    assert found[0].nearest[0][0] == "water" and found[1].known  # meadow is known, reaches nothing here
    document = yaml.safe_load(suggestions_yaml("test", found, images=9))
    assert document == {"categories": [{"name": "water", "synonyms": ["shoreline"]}]}


def test_suggestion_yaml_quotes_what_yaml_would_misread():
    text = suggestions_yaml("t", [Suggestion("a: b", 3, (("x, y", 0.9),))], images=3)
    assert yaml.safe_load(text) == {"categories": [{"name": "x, y", "synonyms": ["a: b"]}]}
    assert "# 3 images; x, y 0.90" in text


def test_eval_counts_proposals_and_right_ones_per_method():
    from pipeline.quality.category_eval import score

    def found(*pairs):
        return SimpleNamespace(categories=[SimpleNamespace(name=n, method=m) for n, m in pairs])

    categorizer = SimpleNamespace(
        categorize=lambda images: [found(("road", "relation"), ("water", "exact")), found(("tree", "embedding"))]
    )
    result = score(categorizer, ["c1", "c2"], [{"road", "building"}, {"water"}])
    assert (result.tp, result.fp, result.fn) == (1, 2, 2)
    assert result.by_method == Counter(relation=1, exact=1, embedding=1)
    assert result.right_by_method == Counter(relation=1, exact=0, embedding=0)
    assert result.methods() == "exact=0/1 relation=1/1 embedding=0/1"
