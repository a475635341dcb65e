"""Map one vocabulary's class names onto another's (a test set's classes onto the training taxonomy),
with the caption stage's matcher restricted to the target's own names and synonyms by default (the
general lexicon is lenient: it would count "helicopter" as covered by "airplane"), then embeddings if given.

Used for the seen/unseen split and the category-overlap analysis of the benchmarks, and to compare a
build's masks with a labelled dataset in another vocabulary.
"""

from __future__ import annotations

import re

from taxonomy.embedding import TextEmbedder
from taxonomy.loader import Taxonomy
from taxonomy.matcher import CategoryMatcher, Lemmatize, PhraseQuery


def name_parts(name: str) -> list[str]:
    """ "clutter/background" -> [clutter, background]; "vehicle, car" -> [vehicle, car]."""
    return [part.strip() for part in re.split(r"[,/]", name) if part.strip()]


def crosswalk(
    source: Taxonomy,
    target: Taxonomy,
    lemmatize: Lemmatize,
    embedder: TextEmbedder | None = None,
    use_lexicon: bool = False,
) -> dict[str, str | None]:
    """For each source class, the target class it is covered by (None: no counterpart). A name's parts
    are tried in order; a multi-word part also tries its head ("large vehicle" -> "vehicle")."""
    matcher = CategoryMatcher(target, lemmatize, embedder, use_lexicon=use_lexicon)
    owners, queries = [], []
    for category in source.categories:
        parts = name_parts(category.name)
        for lemma in lemmatize(parts):
            words = lemma.split()
            queries.append(PhraseQuery(tuple(" ".join(words[i:]) for i in range(len(words))), compound_start=1))
            owners.append(category.name)
    result: dict[str, str | None] = {c.name: None for c in source.categories}
    for owner, match in zip(owners, matcher.match(queries)):
        if match is not None and result[owner] is None:
            result[owner] = match.name
    return result
