"""The caption -> categories stage: parse captions, match phrases, merge per image.

An image's categories are the union over its captions (several annotators, or several generated
captions). A category wins over its negation: "no cars" in one caption does not cancel "cars
parked along the road" in another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from pydantic import BaseModel, Field

from pipeline.stages.phrases import Phrase, load_spacy, parse_captions
from taxonomy.embedding import DEFAULT_TEXT_EMBEDDER, load_text_embedder
from taxonomy.loader import Taxonomy
from taxonomy.matcher import (
    DEFAULT_MARGIN,
    DEFAULT_THRESHOLD,
    METHOD_RANK,
    CategoryMatch,
    CategoryMatcher,
    PhraseQuery,
)
from taxonomy.relations import Relations


class ProposedCategory(BaseModel):
    name: str
    score: float
    phrase: str
    method: str


class CaptionCategories(BaseModel):
    """The stage's result for one image; also the `phrases`/`categories` part of a tile record."""

    categories: list[ProposedCategory] = Field(default_factory=list)
    unmatched: list[str] = Field(default_factory=list)
    negated: list[str] = Field(default_factory=list)
    phrases: list[Phrase] = Field(default_factory=list)


def spacy_lemmatize(terms: Sequence[str]) -> list[str]:
    """Lemmatise short terms with the same pipeline that parses captions ("storage tanks" -> "storage tank")."""
    nlp = load_spacy()
    return [" ".join(t.lemma_.lower() or t.lower_ for t in doc) for doc in nlp.pipe(list(terms))]


@dataclass
class CaptionCategorizer:
    """Loads the models once; `categorize` takes a batch of images, each with one or more captions.

    `relations`: the hypernym edges (and excluded term/class pairs) the matcher walks. None (the
    default) is what the product ships: the bundled lexicon's relations plus those derived from every
    bundled nomenclature's class definitions, includes and excludes (taxonomy/definitions.py). The
    leave-one-vocabulary-out benchmark (benchmarks/eval_lovo.py) passes the same relations built
    without the held-out vocabulary's definitions. `name_variants`: also match the
    shorter forms a class name implies ("Snow & ice" -> snow, "Tree cover" -> tree;
    taxonomy/names.py); False matches names as written (the benchmark's --before).
    """

    taxonomy: Taxonomy
    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN
    embedder_model: str | None = DEFAULT_TEXT_EMBEDDER  # None: exact, synonym, lexicon and relation only
    use_lexicon: bool = True
    use_relations: bool = True  # False: today's matcher before relation walks (the eval's baseline)
    relations: Relations | None = None  # None: bundled lexicon + all bundled nomenclatures' definitions
    name_variants: bool = True

    @cached_property
    def matcher(self) -> CategoryMatcher:
        embedder = load_text_embedder(self.embedder_model) if self.embedder_model else None
        return CategoryMatcher(
            self.taxonomy,
            spacy_lemmatize,
            embedder,
            self.threshold,
            self.margin,
            use_lexicon=self.use_lexicon,
            use_relations=self.use_relations,
            relations=self.relations,
            use_name_variants=self.name_variants,
        )

    def categorize(self, images: Sequence[Sequence[str]]) -> list[CaptionCategories]:
        return self.match(parse_images(images))

    def match(self, parsed: Sequence[Sequence[Sequence[Phrase]]]) -> list[CaptionCategories]:
        """Match already parsed captions (image -> caption -> phrases) in one embedding call."""
        phrases = [p for image in parsed for caption in image for p in caption]
        queries = [PhraseQuery(tuple(p.candidates), p.compound_start, embed=not p.generic) for p in phrases]
        matches = iter(self.matcher.match(queries))
        return [_merge([[(p, next(matches)) for p in caption] for caption in image]) for image in parsed]


def parse_images(images: Sequence[Sequence[str]]) -> list[list[list[Phrase]]]:
    """Parse every caption of every image in one spaCy pipe: image -> caption -> phrases."""
    parsed = iter(parse_captions([caption for captions in images for caption in captions]))
    return [[next(parsed) for _ in captions] for captions in images]


def _merge(captions: list[list[tuple[Phrase, CategoryMatch | None]]]) -> CaptionCategories:
    best: dict[str, CategoryMatch] = {}
    unmatched: dict[str, None] = {}
    negated: dict[str, None] = {}
    phrases: list[Phrase] = []
    for caption in captions:
        for phrase, match in caption:
            phrases.append(phrase)
            if phrase.negated:
                negated[phrase.lemma] = None
            elif match is None:
                if not phrase.generic:
                    unmatched[phrase.lemma] = None
            elif match.propose and _better(match, best.get(match.name)):
                best[match.name] = match
    proposed = sorted(best.values(), key=lambda m: (METHOD_RANK[m.method], -m.score, m.name))
    matched_phrases = {m.phrase for m in proposed}
    return CaptionCategories(
        categories=[ProposedCategory(name=m.name, score=m.score, phrase=m.phrase, method=m.method) for m in proposed],
        unmatched=list(unmatched),
        negated=[n for n in negated if n not in matched_phrases],
        phrases=phrases,
    )


def _better(candidate: CategoryMatch, current: CategoryMatch | None) -> bool:
    if current is None:
        return True
    return (METHOD_RANK[candidate.method], -candidate.score) < (METHOD_RANK[current.method], -current.score)
