"""Hypernym walks over the bundled relations (the `same` and `broader` sections of lexicon.yaml).

A names-only taxonomy holds a test set's words, and captions use narrower ones: "runway" for a
paved class, "meadow" for herbaceous vegetation, "pond" for water. Walking up written hypernym
edges finds the nearest category the taxonomy has, broader only if the nearer ones are missing.
Walks only go up (and across near-synonym sets), so a term never reaches a sibling branch: "tree"
cannot become "coniferous", "car" cannot become "road". Edges are data with cited sources, so a
reviewer can check each step rather than trust a tuned number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from taxonomy.loader import DATA_DIR, TaxonomyError, _read_yaml, normalize_term

MAX_DEPTH = 3  # three steps reach CORINE level 1 from a caption word; further is another branch

Lemmatize = Callable[[Sequence[str]], list[str]]


@dataclass(frozen=True)
class Relations:
    """Near-synonym sets and hypernym edges between lemmas."""

    same: dict[str, tuple[str, ...]] = field(default_factory=dict)  # term -> its set, itself first
    broader: dict[str, tuple[str, ...]] = field(default_factory=dict)  # term -> parents, nearest first
    # (term, class name) pairs a definition excludes ("swimming pool" from "open water"): no walk,
    # lexicon or hypernym, may take the term to a class of that name
    excluded: frozenset[tuple[str, str]] = frozenset()

    def ancestors(self, term: str, max_depth: int = MAX_DEPTH) -> list[tuple[str, int]]:
        """(term, depth) in walking order: the term's set at depth 0, then each level's parents
        with their sets; every term appears once, at its smallest depth."""
        seen: dict[str, int] = {}
        level = [term]
        for depth in range(max_depth + 1):
            expanded = [t for x in level for t in self.same.get(x, (x,))]
            fresh = [t for t in dict.fromkeys(expanded) if t not in seen]
            seen.update((t, depth) for t in fresh)
            level = [p for t in fresh for p in self.broader.get(t, ())]
            if not level:
                break
        return list(seen.items())

    def knows(self, term: str) -> bool:
        return term in self.same or term in self.broader

    def lemmatized(self, lemmatize: Lemmatize) -> Relations:
        """The same relations with every term also under its lemma ("parking lots" -> "parking lot"):
        a term is looked up as written and as its lemma, since a term lemmatised alone is not always
        lemmatised as in a caption ("building" alone is the verb's "build")."""
        terms = sorted({*self.same, *self.broader, *(p for ps in self.broader.values() for p in ps)})
        lemma = dict(zip(terms, (normalize_term(x) for x in lemmatize(terms)) if terms else ()))

        def forms(members: Iterable[str]) -> tuple[str, ...]:
            return tuple(dict.fromkeys(x for m in members for x in (m, lemma[m])))

        same: dict[str, tuple[str, ...]] = {}
        for term, members in self.same.items():
            for key in dict.fromkeys((term, lemma[term])):
                same.setdefault(key, forms(members))
        broader: dict[str, tuple[str, ...]] = {}
        for term, parents in self.broader.items():
            for key in dict.fromkeys((lemma[term], term)):
                broader[key] = tuple(dict.fromkeys([*broader.get(key, ()), *forms(parents)]))
        pairs = sorted({x for pair in self.excluded for x in pair})
        pair_lemma = dict(zip(pairs, (normalize_term(x) for x in lemmatize(pairs)) if pairs else ()))
        excluded = frozenset(
            (t, n) for term, node in self.excluded for t in (term, pair_lemma[term]) for n in (node, pair_lemma[node])
        )
        return Relations(same=same, broader=broader, excluded=excluded)


def load_relations() -> Relations:
    """The bundled relations of data/lexicon.yaml."""
    path = DATA_DIR / "lexicon.yaml"
    document = _read_yaml(path)
    if not isinstance(document, dict):
        raise TaxonomyError(f"{path}: expected a mapping")
    return relations_from(document.get("same") or [], document.get("broader") or {}, str(path))


def relations_from(same_sets: Iterable[Sequence[str]], broader: dict, where: str = "relations") -> Relations:
    """Build relations from near-synonym sets and a narrower -> [broader] mapping."""
    same: dict[str, tuple[str, ...]] = {}
    for members in same_sets:
        terms = tuple(normalize_term(m) for m in members)
        for term in terms:
            if term in same:
                raise TaxonomyError(f"{where}: {term!r} is in two near-synonym sets")
            same[term] = (term, *(t for t in terms if t != term))
    edges = {normalize_term(k): tuple(normalize_term(p) for p in v) for k, v in broader.items()}
    return Relations(same=same, broader=edges)


def merged(first: Relations, second: Relations) -> Relations:
    """Both relations, `first`'s near-synonym sets and its parents before `second`'s: the written
    lexicon stays nearest, derived edges only add parents it lacks."""
    broader = dict(first.broader)
    for term, parents in second.broader.items():
        broader[term] = tuple(dict.fromkeys([*broader.get(term, ()), *parents]))
    same = {**second.same, **first.same}
    return Relations(same=same, broader=broader, excluded=first.excluded | second.excluded)
