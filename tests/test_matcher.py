import pytest

from pipeline.stages.categories import CaptionCategorizer
from taxonomy import load_taxonomy
from taxonomy.loader import Category, Taxonomy
from taxonomy.matcher import CategoryMatcher, PhraseQuery


def names_only(*names: str, propose=None) -> Taxonomy:
    categories = tuple(Category(i, n, propose=(propose or {}).get(n, True)) for i, n in enumerate(names))
    return Taxonomy("test", categories, source="test")


def query(*spans: str, compound_start: int | None = None, embed: bool = True) -> PhraseQuery:
    return PhraseQuery(spans, len(spans) if compound_start is None else compound_start, embed)


@pytest.fixture(scope="module")
def ovrsis(lemmatize, embedder):
    return CategoryMatcher(load_taxonomy("ovrsis95k"), lemmatize, embedder)


def test_exact_name_including_plural_names(lemmatize):
    matcher = CategoryMatcher(load_taxonomy("dlrsd"), lemmatize, None)
    (match,) = matcher.match([query("car")])
    assert (match.name, match.method, match.score) == ("cars", "exact", 1.0)


def test_synonym(ovrsis):
    (match,) = ovrsis.match([query("running track")])
    assert (match.name, match.method) == ("ground track field", "synonym")


def test_comma_name_parts_are_names(lemmatize):
    matcher = CategoryMatcher(load_taxonomy("openearthmap"), lemmatize, None)
    (match,) = matcher.match([query("lawn")])
    assert (match.name, match.method) == ("pasture, grass, lawn", "exact")


def test_lexicon_serves_names_only_taxonomies(lemmatize):
    matcher = CategoryMatcher(names_only("ship", "small vehicle", "water", "impervious surfaces"), lemmatize, None)
    boat, car, river, highway = matcher.match([query("boat"), query("car"), query("river"), query("highway")])
    assert (boat.name, boat.method) == ("ship", "synonym")
    assert car.name == "small vehicle" and river.name == "water"
    assert highway.name == "impervious surfaces"  # highway -> road -> impervious surfaces: two lexicon steps


def test_compound_backoff_reaches_names_but_never_embeddings(lemmatize, embedder):
    matcher = CategoryMatcher(names_only("court", "vegetation"), lemmatize, embedder, threshold=0.3, margin=0.0)
    court, plant = matcher.match(
        [query("tennis court", "court", compound_start=1), query("power plant", "plant", compound_start=1)]
    )
    assert (court.name, court.method) == ("court", "exact")
    assert plant is None or plant.phrase == "power plant"  # never "plant" alone


def test_embedding_threshold_and_margin(lemmatize, embedder):
    taxonomy = names_only("airplane", "harbor")
    loose = CategoryMatcher(taxonomy, lemmatize, embedder, threshold=0.5, margin=0.05)
    (match,) = loose.match([query("jetliner")])
    assert (match.name, match.method) == ("airplane", "embedding") and 0.5 <= match.score < 1.0
    strict = CategoryMatcher(taxonomy, lemmatize, embedder, threshold=min(match.score + 0.01, 1.0), margin=0.05)
    assert strict.match([query("jetliner")]) == [None]
    no_gap = CategoryMatcher(taxonomy, lemmatize, embedder, threshold=0.5, margin=0.99)
    assert no_gap.match([query("jetliner")]) == [None]


def test_fragments_of_a_term_are_not_embedding_evidence(ovrsis):
    # "park" is close to the synonym "car park" but says less than it: no match
    assert ovrsis.match([query("park")]) == [None]


def test_words_the_lexicon_knows_are_not_guessed(ovrsis):
    assert ovrsis.match([query("railway")]) == [None]


def test_unmatched_and_generic_phrases(ovrsis):
    assert ovrsis.match([query("quantum computer"), query("tree shadow", "shadow", embed=False)]) == [None, None]


def test_invalid_thresholds_are_rejected(lemmatize):
    with pytest.raises(ValueError, match="threshold"):
        CategoryMatcher(names_only("a"), lemmatize, None, threshold=1.5)


def test_categorizer_union_negation_and_background():
    taxonomy = load_taxonomy("ovrsis95k")
    categorizer = CaptionCategorizer(taxonomy)
    (result,) = categorizer.categorize(
        [["no cars on the bridge over the river", "two cars and trees in the background"]]
    )
    names = {c.name for c in result.categories}
    assert names == {"bridge", "water", "vehicle", "tree"}  # vehicle: stated by the second caption
    assert "unlabeled areas, background, clutter" not in names
    (denied,) = categorizer.categorize([["a beach without waves and no boats"]])
    assert {c.name for c in denied.categories} == {"bareland"}
    assert set(denied.negated) == {"wave", "boat"}


def test_method_precedence_keeps_the_most_certain_match():
    (result,) = CaptionCategorizer(load_taxonomy("ovrsis95k")).categorize([["a boat", "a ship"]])
    (ship,) = [c for c in result.categories if c.name == "ship"]
    assert ship.method == "exact"
