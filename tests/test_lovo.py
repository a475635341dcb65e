"""The leave-one-vocabulary-out protocol's parts: nomenclature data, name variants, derived relations,
ambiguity, and the benchmark's labels (issue 31)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taxonomy.calibration import names_only
from taxonomy.definitions import definition_relations, load_nomenclature, nomenclatures
from taxonomy.loader import Category, Taxonomy, TaxonomyError, load_taxonomy
from taxonomy.matcher import CategoryMatcher, PhraseQuery
from taxonomy.names import name_parts, name_variants
from taxonomy.relations import Relations

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"


def lemmatize(terms):
    """A stand-in lemmatizer: drops a plural s, enough for these names."""
    return [" ".join(w[:-1] if w.endswith("s") and not w.endswith("ss") else w for w in t.split()) for t in terms]


def vocabulary(*names: str) -> Taxonomy:
    return Taxonomy("t", tuple(Category(index=i, name=n) for i, n in enumerate(names)), source="test")


def match(matcher: CategoryMatcher, word: str):
    return matcher.match([PhraseQuery((word,), 1)])[0]


def test_at_least_twelve_nomenclatures_load_with_definitions():
    names = nomenclatures()
    assert len(names) >= 12
    for name in names:
        taxonomy = load_nomenclature(name)
        assert any(c.extra.get("includes") for c in taxonomy.categories), name


def test_includes_must_be_a_list_of_terms(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ncategories:\n  - name: water\n    includes: lake\n")
    with pytest.raises(TaxonomyError, match="includes of 'water'"):
        load_taxonomy(path)


def test_name_parts_and_variants_come_from_the_name():
    assert name_parts("Barren Land (Rock/Sand/Clay)") == ["barren land", "rock", "sand", "clay"]
    assert name_variants("Snow & ice") == ["snow", "ice"]
    assert name_variants("Tree cover") == ["tree"]
    assert name_variants("Open Water") == ["water"]
    assert "tree" not in name_variants("Fruit trees and berry plantations")  # a narrower kind, not all trees
    assert "vegetation" not in name_variants("herbaceous vegetation")


def test_matcher_uses_name_variants_only_when_one_class_yields_them():
    matcher = CategoryMatcher(vocabulary("Tree cover", "Snow & ice"), lemmatize, None)
    assert match(matcher, "tree").name == "Tree cover"
    assert match(matcher, "snow").name == "Snow & ice"
    both = CategoryMatcher(vocabulary("Open water", "Permanent water"), lemmatize, None)
    assert match(both, "water") is None  # two classes yield "water": neither is guessed
    plain = CategoryMatcher(vocabulary("Snow & ice"), lemmatize, None, relations=Relations(), use_name_variants=False)
    assert match(plain, "snow") is None


def test_definition_relations_leave_the_held_out_vocabulary_out():
    assert "natural grasslands" in definition_relations().broader["steppe"]
    assert "natural grasslands" not in definition_relations(exclude={"corine"}).broader.get("steppe", ())


def test_an_edge_needs_most_legends_with_that_class_name():
    # UAVid alone puts bridges in "road"; LandCover.ai's road does not include them
    assert "road" not in definition_relations().broader.get("bridge", ())


def test_a_word_between_two_classes_is_not_guessed_and_is_reported():
    relations = Relations(broader={"shore": ("sea", "sand")})
    matcher = CategoryMatcher(vocabulary("sea", "sand"), lemmatize, None, use_lexicon=False, relations=relations)
    assert match(matcher, "shore") is None
    assert matcher.ambiguous == {"shore": ("sea", "sand")}
    nearer = Relations(broader={"shore": ("sand",), "sand": ("sea",)})
    matcher = CategoryMatcher(vocabulary("sea", "sand"), lemmatize, None, use_lexicon=False, relations=nearer)
    assert match(matcher, "shore").name == "sand"  # the more direct relation wins


def test_lovo_labels_name_real_classes_and_concepts():
    tables = yaml.safe_load((DATA / "lovo_concepts.yaml").read_text())
    concepts = set(tables["concepts"])
    assert set(tables["labels"]) == set(nomenclatures())
    for name, table in tables["labels"].items():
        assert set(table) <= set(names_only(load_nomenclature(name)).names), name
        assert set().union(*map(set, table.values())) <= concepts, name
    rows = [json.loads(line) for line in (DATA / "lovo_rsicd_concepts.jsonl").read_text().splitlines()]
    assert len(rows) >= 100 and all(set(r["concepts"]) <= concepts for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


@pytest.mark.bench_smoke
def test_lovo_benchmark_smoke_run_prints_figures():
    command = [sys.executable, "benchmarks/eval_lovo.py", "--smoke"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    if result.stdout.strip().splitlines()[-1].startswith("skipped:"):
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert "mean (all)" in result.stdout


def test_suggest_lists_words_between_two_classes():
    from taxonomy.suggest import Suggestion, suggestions_yaml

    text = suggestions_yaml("t", [Suggestion("shore", 3, (("sea", 0.6),), between=("sea", "sand"))], images=10)
    assert "#   shore  # 3 images; between sea, sand" in text
    assert "synonyms:" not in text  # not offered as a synonym of either
