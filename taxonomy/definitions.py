"""Relations derived from nomenclatures' own class definitions, not from a matcher's errors.

Each file of data/nomenclatures/ is a public vocabulary (CORINE Land Cover, NLCD, ESA WorldCover,
Dynamic World, GID, DeepGlobe, ...) with, per class, what its definition says the class includes
and excludes. A definition that puts "meadow" in "Natural grasslands" is a hypernym edge written
by the nomenclature's authors: meadow -> natural grassland. A user's vocabulary that shares a class
name with any bundled nomenclature ("grassland", "cropland", "tree cover") inherits what that class
includes. Legends that share a class name do not always agree on it (UAVid's "road" holds bridges,
LandCover.ai's does not): an edge needs more than half of the nomenclatures with that class name to
include the term, so one legend's convention does not become every "road"'s. A term a definition
excludes ("lawn" from CORINE's pastures) gets no edge to that class from any nomenclature.

The leave-one-vocabulary-out benchmark (benchmarks/eval_lovo.py) builds these relations without the
held-out vocabulary's file: its score says what the definitions of *other* legends are worth.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from taxonomy.loader import DATA_DIR, Taxonomy, load_taxonomy, normalize_term
from taxonomy.names import name_parts, name_variants
from taxonomy.relations import Relations

NOMENCLATURES_DIR = DATA_DIR / "nomenclatures"


def nomenclatures() -> list[str]:
    """The bundled nomenclatures with definitions, by file stem."""
    return sorted(p.stem for p in NOMENCLATURES_DIR.glob("*.yaml"))


@lru_cache(maxsize=32)
def load_nomenclature(name: str) -> Taxonomy:
    return load_taxonomy(NOMENCLATURES_DIR / f"{name}.yaml")


def definition_relations(exclude: Iterable[str] = ()) -> Relations:
    """Hypernym edges term -> class for the `includes` terms and the parts of joined names ("snow" ->
    "snow & ice") that most nomenclatures with that class name state, over all bundled
    nomenclatures but those in `exclude`."""
    skip = set(exclude)
    taxonomies = [load_nomenclature(n) for n in nomenclatures() if n not in skip]
    excluded = {
        (normalize_term(t), normalize_term(c.name))
        for taxonomy in taxonomies
        for c in taxonomy.categories
        for t in c.extra.get("excludes", ())
    }
    stated: dict[tuple[str, str], int] = {}  # (term, class) -> how many nomenclatures include the term
    holders: dict[str, int] = {}  # class name -> how many nomenclatures have a class of that name
    for taxonomy in taxonomies:
        for category in taxonomy.categories:
            if not category.propose:
                continue
            node = normalize_term(category.name)
            holders[node] = holders.get(node, 0) + 1
            parts = name_parts(category.name)
            members = [*category.extra.get("includes", ()), *(parts if len(parts) > 1 else ())]
            for term in dict.fromkeys(normalize_term(m) for m in members):
                if term != node:
                    stated[term, node] = stated.get((term, node), 0) + 1
    broader: dict[str, list[str]] = {}
    for (term, node), count in stated.items():
        if (term, node) not in excluded and 2 * count > holders[node]:
            broader.setdefault(term, []).append(node)
    # an exclusion holds for the class name and its shorter forms ("open water" -> "water"), not for
    # the parts of a joined name: what NLCD's "Grassland/Herbaceous" excludes, a "Grassland" may hold
    excluded_names = {
        (term, form)
        for term, node in excluded
        for form in (node, *(name_variants(node) if len(name_parts(node)) == 1 else ()))
    }
    return Relations(
        broader={t: tuple(dict.fromkeys(ps)) for t, ps in broader.items()}, excluded=frozenset(excluded_names)
    )
