"""Match caption phrases to taxonomy categories: exact name, synonym, lexicon, relation, embedding.

Precision comes first (the paper's auditors accepted 97% of proposed categories), so the cheap,
certain methods run first and the embedding similarity only decides when it is both high and
clearly ahead of the runner-up category. A phrase arrives as its lemma spans, longest first
("large oil tank", "oil tank", "tank"); spans that drop a noun compound ("tank" of "oil tank")
match by name, synonym or lexicon, never by embedding. A word the lexicon knows but the
taxonomy lacks ("railway" in OVRSIS95K) stays unmatched rather than being guessed, unless a
written hypernym walk (taxonomy/relations.py) reaches a broader category the taxonomy has
("runway" -> "impervious surfaces"). Every term walk counts its steps: a hypernym edge is a step,
and so is each place down a lexicon entry's list (its first relative is the word's near-synonym,
0 steps; "meadow": grass 0, pasture 1). The class reached in the fewest steps wins, so a nearer
class is never lost to a lexicon relative listed later ("meadow" is NLCD's grassland, through
"grass", not its pasture). A word that reaches two classes in as few steps sits between them
("bay": CORINE's water bodies or its sea?): it is not guessed, and `ambiguous` / `between` report
it for `--suggest`. A term a nomenclature's definition excludes from a class ("swimming pool" from
"open water") reaches no class of that name by any walk.

The matcher knows nothing of spaCy: the caller passes a `lemmatize` function, so taxonomy terms
and caption phrases are normalised by the same pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from taxonomy.definitions import definition_relations
from taxonomy.embedding import TextEmbedder
from taxonomy.loader import Taxonomy, load_lexicon, normalize_term
from taxonomy.names import COVER_HEADS, literal_forms, name_variants
from taxonomy.relations import Relations, load_relations, merged

Lemmatize = Callable[[Sequence[str]], list[str]]

# Fitted by taxonomy/calibration.py (benchmarks/calibrate_embedding.py) for precision >= 0.95 on
# leave-one-out pairs from ten names-only vocabularies, with the matcher's default relations (the
# lexicon's plus every bundled nomenclature's definitions, includes and excludes) and name variants,
# as benchmarks/eval_lovo.py refits it per held-out vocabulary. 0.7937 with the lexicon's relations
# alone; 0.72 before relations and calibration.
DEFAULT_THRESHOLD = 0.9229
DEFAULT_MARGIN = 0.06
METHOD_RANK = {"exact": 0, "synonym": 1, "relation": 2, "embedding": 3}  # most certain first
RELATION_DECAY = 0.9  # a relation match scores 0.9 per hypernym step: nearer is more certain


@dataclass(frozen=True)
class PhraseQuery:
    """What the matcher needs of a phrase: its lemma spans, longest first."""

    candidates: tuple[str, ...]
    compound_start: int  # candidates from this index on drop a noun compound
    embed: bool = True  # False for container words ("tree shadow", "residential area"): terms only


@dataclass(frozen=True)
class CategoryMatch:
    name: str
    score: float
    phrase: str  # the lemma span that matched
    method: str  # exact | synonym | relation | embedding
    propose: bool = True  # False for background classes: recognised, but never proposed


@dataclass(frozen=True, order=True)
class Reach:
    """How directly a term walk reaches a class: in how many steps, and from which start."""

    steps: int  # the lexicon relative's place in the list + hypernym steps
    rank: int  # 0: the span's own walk; i: from its i-th lexicon relative
    lexical: bool = field(default=False, compare=False)  # a lexicon relative is the class's own term


def _nearest(reach: dict[str, Reach]) -> tuple[str, ...]:
    """The classes reached most directly, in the fewest steps. One is the match; two or more are a
    tie, whichever walks reached them, and the word sits between them: no guess."""
    if not reach:
        return ()
    steps = min(r.steps for r in reach.values())
    return tuple(o for o, r in reach.items() if r.steps == steps)


@dataclass(frozen=True)
class Ranked:
    """The embedding's verdict on one text before the threshold: what the calibration fits."""

    best: int  # category index
    score: float
    gap: float  # lead over the runner-up category
    fragment: bool  # the text is only part of the best anchor: never accepted


class CategoryMatcher:
    """Index of one taxonomy's terms; thread-safe for reading once built."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        lemmatize: Lemmatize,
        embedder: TextEmbedder | None,
        threshold: float = DEFAULT_THRESHOLD,
        margin: float = DEFAULT_MARGIN,
        use_lexicon: bool = True,
        use_relations: bool = True,
        relations: Relations | None = None,
        use_name_variants: bool = True,
    ) -> None:
        """`relations`: the hypernym edges to walk, default the bundled lexicon's plus those derived
        from the bundled nomenclatures' definitions (the leave-one-vocabulary-out benchmark passes
        them without the held-out one's). `use_name_variants`: also match the shorter forms a class
        name implies ("Snow & ice" -> snow, "Tree cover" -> tree; taxonomy/names.py)."""
        if not 0.0 <= threshold <= 1.0 or not 0.0 <= margin <= 1.0:
            raise ValueError(f"threshold and margin must lie in [0, 1], got {threshold}, {margin}")
        self.taxonomy = taxonomy
        self.threshold = threshold
        self.margin = margin
        self._embedder = embedder
        self._propose = {c.name: c.propose for c in taxonomy.categories}
        self._names: dict[str, str] = {}
        self._synonyms: dict[str, str] = {}
        names = [c.name for c in taxonomy.categories]
        for category in taxonomy.categories:
            name_terms = [category.name, *category.aliases]
            for term, lemma in zip(name_terms, _lemmatize_terms(lemmatize, name_terms)):
                for key in {normalize_term(term), lemma}:
                    self._names.setdefault(key, category.name)
            for term, lemma in zip(category.synonyms, _lemmatize_terms(lemmatize, category.synonyms)):
                for key in {normalize_term(term), lemma}:
                    self._synonyms.setdefault(key, category.name)
        self._lexicon = _lemmatized_lexicon(lemmatize) if use_lexicon else {}
        if not use_relations:
            self._relations = Relations()
        else:
            self._relations = _lemmatized_relations(lemmatize) if relations is None else relations.lemmatized(lemmatize)
        self._reach: dict[str, dict[str, Reach]] = {}
        self.ambiguous: dict[str, tuple[str, ...]] = {}  # span -> the classes reached in as few steps
        if use_name_variants:
            self._add_name_variants(lemmatize)
        self._excluded: dict[str, set[str]] = {}  # term -> the classes a definition excludes it from
        for term, node in self._relations.excluded:
            owner = self._names.get(node) or self._synonyms.get(node)
            if owner is not None:
                self._excluded.setdefault(term, set()).add(owner)
        owners = {t: self._names.get(t) or self._synonyms[t] for t in dict.fromkeys([*self._names, *self._synonyms])}
        if use_relations:
            owners.update(self._relative_anchors(owners))
        self.anchors = list(owners)
        self.anchor_owner = np.array([names.index(owners[t]) for t in self.anchors], dtype=np.int64)
        self._anchor_vectors = embedder.encode(self.anchors) if embedder is not None else None

    def match(self, queries: Sequence[PhraseQuery]) -> list[CategoryMatch | None]:
        """One result per query; embeddings for all undecided queries are computed in one call."""
        results: list[CategoryMatch | None] = [self._match_by_terms(q) for q in queries]
        undecided = [
            i for i, r in enumerate(results) if r is None and queries[i].embed and not self._is_known(queries[i])
        ]
        if undecided and self._embedder is not None:
            texts = [self._embedding_text(queries[i]) for i in undecided]
            for i, match in zip(undecided, self._match_by_embedding(texts)):
                results[i] = match
        return results

    def _match_by_terms(self, query: PhraseQuery) -> CategoryMatch | None:
        spans = query.candidates
        for method, table in (("exact", self._names), ("synonym", self._synonyms)):
            for span in spans:
                if span in table:
                    return self._result(table[span], 1.0, span, method)
        blocked: set[str] = set()  # classes a longer span is excluded from: "pool" of "swimming pool" too
        for span in spans:
            blocked |= self._excluded.get(span, set())
            reach = {o: r for o, r in self.reach(span).items() if o not in blocked}
            if not reach:
                continue
            owners = _nearest(reach)
            if len(owners) > 1:  # the word sits between two classes ("shore": sea or sand?): no guess
                self.ambiguous[span] = owners
                return None
            found = reach[owners[0]]
            if found.lexical:  # as near through a lexicon relative that is the class's own term
                return self._result(owners[0], 1.0, span, "synonym")
            return self._result(owners[0], RELATION_DECAY**found.steps, span, "relation")
        return None

    def reach(self, span: str) -> dict[str, Reach]:
        """Every class a span's term walks reach, each by its most direct path: the span's own
        hypernym walk (taxonomy/relations.py) and the walks from its lexicon relatives, a relative
        starting at its place in the span's list (see the module's docstring)."""
        cached = self._reach.get(span)
        if cached is not None:
            return cached
        reached: dict[str, Reach] = {}
        starts = [
            (span, 0, 0),
            *((term, step, rank) for rank, (term, step) in enumerate(self._lexicon.get(span, ()), 1)),
        ]
        excluded = self._excluded.get(span, ())
        for start, step, rank in starts:
            for term, depth in self._relations.ancestors(start):
                owner = self._names.get(term) or self._synonyms.get(term)
                if owner is None or owner in excluded:
                    continue
                found, known = Reach(step + depth, rank, lexical=depth == 0 and rank > 0), reached.get(owner)
                if known is None or found < known:
                    lexical = found.lexical or (known is not None and known.steps == found.steps and known.lexical)
                    reached[owner] = replace(found, lexical=lexical)
                elif found.steps == known.steps and found.lexical:
                    reached[owner] = replace(known, lexical=True)
        self._reach[span] = reached  # captions repeat their words: each span is walked once
        return reached

    def between(self, span: str) -> tuple[str, ...]:
        """The classes a span reaches equally directly (no match is made for it), else ()."""
        if span in self._names or span in self._synonyms:
            return ()
        owners = _nearest(self.reach(span))
        return owners if len(owners) > 1 else ()

    def _add_name_variants(self, lemmatize: Lemmatize) -> None:
        """Register the shorter forms each class name implies, as names. A part of a joined name
        ("snow" of "Snow & ice") is the name's own word and always kept; a shortened form ("tree" of
        "Tree cover") only when the lexicon or relations know it as a thing. Either is dropped when
        two classes yield it, or when it is already another class's term."""
        known = self.known_terms()
        offered: dict[str, set[str]] = {}
        for category in self.taxonomy.categories:
            literal = set(literal_forms(category.name))
            variants = name_variants(category.name)
            for variant, lemma in zip(variants, _lemmatize_terms(lemmatize, variants)):
                if lemma in COVER_HEADS or not (variant in literal or lemma in known or variant in known):
                    continue
                for key in {variant, lemma}:
                    offered.setdefault(key, set()).add(category.name)
        for key, owners in offered.items():
            if len(owners) == 1 and key not in self._names and key not in self._synonyms:
                self._names[key] = next(iter(owners))

    def _relative_anchors(self, terms: dict[str, str]) -> dict[str, str]:
        """Lexicon and relation terms that reach a category by term walks: with them as anchors,
        the embedding compares an unknown phrase ("boulevard") with the category's relatives
        ("street", "highway") and not only with its bare name ("impervious surfaces")."""
        found = ((t, self._match_by_terms(PhraseQuery((t,), 1))) for t in sorted(self.known_terms() - terms.keys()))
        return {t: m.name for t, m in found if m is not None}

    def term_names(self) -> list[str]:
        """The taxonomy's own terms (names, aliases, synonyms), as lemmas and as written."""
        return list(dict.fromkeys([*self._names, *self._synonyms]))

    def known_terms(self) -> set[str]:
        """Every term the lexicon or the relations know, whether or not it reaches a category."""
        return {*self._lexicon, *self._relations.same, *self._relations.broader}

    def anchor_similarity(self, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity (texts, anchors); the calibration masks a text's own anchor."""
        return self._embedder.encode(list(texts)) @ self._anchor_vectors.T

    def _is_known(self, query: PhraseQuery) -> bool:
        """A phrase the lexicon knows ("railway") but the taxonomy lacks gets no embedding guess."""
        known = query.candidates[: query.compound_start]
        return not query.candidates or any(s in self._lexicon or self._relations.knows(s) for s in known)

    def _embedding_text(self, query: PhraseQuery) -> str:
        return query.candidates[max(0, min(query.compound_start, len(query.candidates)) - 1)]

    def _match_by_embedding(self, texts: list[str]) -> list[CategoryMatch | None]:
        results: list[CategoryMatch | None] = []
        for text, ranked in zip(texts, self.rank(texts, self.anchor_similarity(texts))):
            if ranked.score >= self.threshold and ranked.gap >= self.margin and not ranked.fragment:
                name = self.taxonomy.categories[ranked.best].name
                results.append(self._result(name, ranked.score, text, "embedding"))
            else:
                results.append(None)
        return results

    def category_scores(self, similarity: np.ndarray) -> np.ndarray:
        """(texts, categories): each category's best anchor similarity."""
        per_category = np.full((similarity.shape[0], len(self.taxonomy)), -1.0, dtype=np.float32)
        np.maximum.at(per_category.T, self.anchor_owner, similarity.T)
        return per_category

    def rank(self, texts: Sequence[str], similarity: np.ndarray) -> list[Ranked]:
        """Best category per text, its score, its lead over the runner-up category."""
        n_categories = len(self.taxonomy)
        per_category = self.category_scores(similarity)
        order = np.argsort(-per_category, axis=1)
        best_anchor = similarity.argmax(axis=1)
        ranked = []
        for row, text in enumerate(texts):
            best = int(order[row, 0])
            score = float(per_category[row, best])
            runner_up = float(per_category[row, order[row, 1]]) if n_categories > 1 else -1.0
            fragment = _is_fragment(text, self.anchors[best_anchor[row]])
            ranked.append(Ranked(best=best, score=score, gap=score - runner_up, fragment=fragment))
        return ranked

    def _result(self, name: str, score: float, span: str, method: str) -> CategoryMatch:
        return CategoryMatch(name=name, score=round(score, 4), phrase=span, method=method, propose=self._propose[name])


def _is_fragment(text: str, term: str) -> bool:
    """True when the phrase is only part of the term ("park" of "car park", "land" of "agriculture
    land"): such a head word says less than the term, and its high similarity is no evidence."""
    words, term_words = set(text.split()), set(term.split())
    return words < term_words


def _lemmatize_terms(lemmatize: Lemmatize, terms: Sequence[str]) -> list[str]:
    return [normalize_term(t) for t in lemmatize([normalize_term(t) for t in terms])] if terms else []


@lru_cache(maxsize=4)
def _lemmatized_relations(lemmatize: Lemmatize) -> Relations:
    """Once per lemmatizer: a run that builds a matcher per vocabulary parses the terms once."""
    return merged(load_relations(), definition_relations()).lemmatized(lemmatize)


@lru_cache(maxsize=4)
def _lemmatized_lexicon(lemmatize: Lemmatize) -> dict[str, tuple[tuple[str, int], ...]]:
    """term -> its (relative, steps), nearest first, each relative as written and as its lemma. A
    relative's steps are its place in the term's list: the first is the term's own near-synonym (0
    steps, as near as the term itself), each later one a step further ("meadow": grass 0, pasture 1)."""
    lexicon = _two_step_lexicon(load_lexicon())
    keys = list(lexicon)
    values = sorted({v for vs in lexicon.values() for v in vs})
    lemma_of = dict(zip(values, _lemmatize_terms(lemmatize, values)))
    lexicon_lemmas: dict[str, tuple[tuple[str, int], ...]] = {}
    for key, key_lemma in zip(keys, _lemmatize_terms(lemmatize, keys)):
        related: dict[str, int] = {}
        for place, v in enumerate(lexicon[key]):
            for x in (v, lemma_of[v]):
                related.setdefault(x, place)
        lexicon_lemmas.setdefault(key_lemma, tuple(related.items()))
        lexicon_lemmas.setdefault(key, tuple(related.items()))
    return lexicon_lemmas


def _two_step_lexicon(lexicon: dict[str, list[str]]) -> dict[str, list[str]]:
    """Follow the lexicon one step further, nearest first: "highway" -> "road" -> "pavement".

    One extra step reaches the broad land-cover names of benchmarks (impervious surfaces,
    pavement) without letting chains drift far from the caption's word.
    """
    return {
        term: list(dict.fromkeys([*related, *(x for r in related for x in lexicon.get(r, ()) if x != term)]))
        for term, related in lexicon.items()
    }
