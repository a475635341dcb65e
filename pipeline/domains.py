"""Scene domain of a tile (town, industrial, forest, waterfront, wasteland, or unknown).

Evidence comes from two places: what the captions say about the scene ("a dense residential
area" -> town, via the domain vocabulary's names and synonyms) and which categories the tile holds
(each domain lists `indicators` in taxonomy/data/domains.yaml: storage tanks -> industrial).
A caption statement weighs `caption_weight`, each indicator category 1. The score is the winning
domain's share of all evidence; below `min_score`, or with no evidence, the tile is `unknown`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

from pipeline.categories import CaptionCategorizer
from pipeline.records import Domain
from taxonomy.loader import Taxonomy, load_taxonomy

UNKNOWN = "unknown"


@dataclass
class DomainClassifier:
    vocabulary: Taxonomy | None = None  # the domain vocabulary; the bundled `domains` by default
    caption_weight: float = 2.0
    min_score: float = 0.4

    @cached_property
    def _vocabulary(self) -> Taxonomy:
        return self.vocabulary or load_taxonomy("domains")

    @cached_property
    def _caption_matcher(self) -> CaptionCategorizer:
        # names and synonyms only: the general lexicon would read "trees" as the forest *domain*
        return CaptionCategorizer(self._vocabulary, embedder_model=None, use_lexicon=False)

    @cached_property
    def _indicators(self) -> dict[str, list[str]]:
        return {c.name: list(c.extra.get("indicators", [])) for c in self._vocabulary.categories}

    def classify(self, captions: Sequence[Sequence[str]], categories: Sequence[Sequence[str]]) -> list[Domain]:
        """One domain per tile, from its captions and the names of its categories."""
        stated = self._caption_matcher.categorize([list(c) for c in captions]) if captions else []
        domains = []
        for tile_stated, tile_categories in zip(stated, categories):
            evidence: Counter[str] = Counter()
            for match in tile_stated.categories:
                evidence[match.name] += self.caption_weight
            for domain, indicators in self._indicators.items():
                evidence[domain] += sum(1 for name in set(tile_categories) if name in indicators)
            domains.append(self._decide(evidence))
        return domains

    def _decide(self, evidence: Counter[str]) -> Domain:
        total = sum(evidence.values())
        if total <= 0:
            return Domain(name=UNKNOWN, score=0.0)
        order = {c.name: c.index for c in self._vocabulary.categories}
        name, weight = max(evidence.items(), key=lambda kv: (kv[1], -order[kv[0]]))
        score = round(weight / total, 4)
        return Domain(name=name if score >= self.min_score else UNKNOWN, score=score)
