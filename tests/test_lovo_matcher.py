"""The product's matcher as the leave-one-vocabulary-out protocol measures it (issue 31): relations and
name variants as fields of the caption stage, the most direct class for a word between two,
exclusions from definitions, lemma and spelling forms of names and relation terms."""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.stages.categories import CaptionCategorizer
from taxonomy.definitions import definition_relations
from taxonomy.loader import Category, Taxonomy
from taxonomy.matcher import CategoryMatcher, PhraseQuery
from taxonomy.names import literal_forms, name_variants
from taxonomy.relations import Relations, load_relations
from taxonomy.suggest import suggest, suggestions_yaml


def lemmatize(terms):
    """A stand-in lemmatizer: drops a plural s, enough for these names."""
    return [" ".join(w[:-1] if w.endswith("s") and not w.endswith("ss") else w for w in t.split()) for t in terms]


def vocabulary(*names: str) -> Taxonomy:
    return Taxonomy("t", tuple(Category(index=i, name=n) for i, n in enumerate(names)), source="test")


def match(matcher: CategoryMatcher, *spans: str):
    return matcher.match([PhraseQuery(spans, 1)])[0]


def test_the_caption_stage_takes_relations_and_name_variants_as_fields():
    relations = Relations(broader={"shore": ("sand",)})
    categorizer = CaptionCategorizer(vocabulary("sand", "Snow & ice"), embedder_model=None, relations=relations)
    assert categorizer.name_variants and categorizer.matcher.known_terms() >= {"shore"}
    plain = CaptionCategorizer(
        vocabulary("Snow & ice"), embedder_model=None, relations=Relations(), name_variants=False
    )
    assert match(plain.matcher, "snow") is None
    assert match(CaptionCategorizer(vocabulary("Snow & ice"), embedder_model=None).matcher, "snow").name == "Snow & ice"


def test_the_nearest_class_wins_over_a_lexicon_relative_listed_later():
    # lexicon: meadow -> [grass, pasture, ...]; relations: grass is in grassland's near-synonym set
    matcher = CategoryMatcher(vocabulary("Grassland", "Pasture"), lemmatize, None, relations=load_relations())
    found = match(matcher, "meadow")
    assert (found.name, found.method) == ("Grassland", "synonym")  # through "grass", 0 steps; pasture is 1
    ship = match(CategoryMatcher(vocabulary("ship"), lemmatize, None), "boat")
    assert (ship.name, ship.method, ship.score) == ("ship", "synonym", 1.0)  # a lexicon near-synonym


class FakeEmbedder:
    """Fixed unit vectors per text: enough for `suggest` to rank categories without a model."""

    model_id = "fake"

    def encode(self, texts):
        vectors = np.array([[len(t) % 5 + 1.0, t.count("s") + 1.0, 1.0] for t in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_a_word_between_two_classes_is_reported_to_suggest_by_any_matcher():
    relations = Relations(broader={"shore": ("sea", "sand")})
    matcher = CategoryMatcher(
        vocabulary("sea", "sand"), lemmatize, FakeEmbedder(), use_lexicon=False, relations=relations
    )
    assert matcher.between("shore") == ("sea", "sand") and matcher.between("sea") == ()
    matcher.ambiguous.clear()  # as in a matcher that matched no caption (`--suggest` with --no-embedding)
    (found,) = suggest(matcher, Counter({"shore": 3}), min_images=2)
    assert found.between == ("sea", "sand") and not found.known
    assert "#   shore  # 3 images; between sea, sand" in suggestions_yaml("t", [found], images=10)


def test_a_term_a_definition_excludes_reaches_no_class_of_that_name():
    relations = Relations(excluded=frozenset({("swimming pool", "water")}))
    matcher = CategoryMatcher(vocabulary("water", "building"), lemmatize, None, relations=relations)
    assert match(matcher, "pond").name == "water"
    assert match(matcher, "swimming pool") is None
    assert match(matcher, "swimming pool", "pool") is None  # nor through the compound's head
    assert match(CategoryMatcher(vocabulary("water"), lemmatize, None), "swimming pool") is None  # NLCD, DW
    lexicon_only = CategoryMatcher(vocabulary("water"), lemmatize, None, relations=load_relations())
    assert match(lexicon_only, "swimming pool").name == "water"


def test_definition_exclusions_hold_for_shorter_names_not_for_parts():
    excluded = definition_relations().excluded
    assert ("swimming pool", "open water") in excluded and ("swimming pool", "water") in excluded  # NLCD
    # NLCD's Grassland/Herbaceous excludes lawn; ESA's Grassland includes it: a part is not the class
    assert ("lawn", "grassland/herbaceous") in excluded and ("lawn", "grassland") not in excluded
    assert ("lawn", "grassland") not in definition_relations(exclude={"nlcd"}).excluded


def test_relation_terms_are_looked_up_as_written_and_as_lemmas():
    def verb_lemmas(terms):  # spaCy lemmatises a lone "building" as the verb: "build"
        return ["build" if t == "building" else t for t in terms]

    relations = Relations(broader={"building": ("built area",)}).lemmatized(verb_lemmas)
    assert relations.broader["building"] == ("built area",) and relations.broader["build"] == ("built area",)


def test_hyphenated_names_match_as_captions_spell_them():
    assert literal_forms("bare-soil") == ["bare soil"] and "built up" in name_variants("Built-up")
    matcher = CategoryMatcher(vocabulary("bare-soil", "mobile-home"), lemmatize, None)
    assert match(matcher, "bare soil").name == "bare-soil"
    assert match(matcher, "mobile home").name == "mobile-home"
