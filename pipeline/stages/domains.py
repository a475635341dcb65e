"""Scene domain of a tile: town, industrial, forest, waterfront or wasteland (the paper's five).

Two kinds of evidence, both from taxonomy/data/domains.yaml:
- **What the captions say the scene is** ("a dense residential area" -> town, "an industrial area",
  "a beach"), matched on the domains' names and synonyms. Each caption votes separately and the
  votes are averaged over the tile's captions, so five human captions and one generated caption
  weigh the same, and a scene word that most captions repeat beats a stray one. The average is
  multiplied by `caption_weight`: saying what the scene is counts more than any one object in it.
- **Which categories the tile holds**, each indicator category adding its weight (specific ones
  such as storage tank 2, ubiquitous ones such as building or tree 0.25-0.5).
The domain with the most evidence wins (ties: vocabulary order); its score is its share of all
evidence. `unknown` is not a sixth domain: it is the honest answer when there is no evidence at
all (no scene word, no indicator category), or when a caller asks for abstention with `min_score`.
Measured on 23 RSICD scene classes: benchmarks/eval_domains.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from pipeline.dataset.records import Domain
from pipeline.stages.categories import CaptionCategorizer
from taxonomy.loader import Taxonomy, load_taxonomy

UNKNOWN = "unknown"


@dataclass
class DomainClassifier:
    vocabulary: Taxonomy | None = None  # the domain vocabulary; the bundled `domains` by default
    caption_weight: float = 3.0
    min_score: float = 0.0  # below it the tile is `unknown`; 0: only a tile without evidence is

    @cached_property
    def _vocabulary(self) -> Taxonomy:
        return self.vocabulary or load_taxonomy("domains")

    @cached_property
    def _caption_matcher(self) -> CaptionCategorizer:
        # names and synonyms only: the general lexicon and the hypernym relations would read "trees"
        # as the forest *domain* (held-out accuracy 0.96 -> 0.71 with relations on)
        return CaptionCategorizer(self._vocabulary, embedder_model=None, use_lexicon=False, use_relations=False)

    @cached_property
    def _indicators(self) -> dict[str, dict[str, float]]:
        """domain -> indicator category -> weight; a plain list gives every indicator weight 1."""
        weights = {}
        for category in self._vocabulary.categories:
            indicators = category.extra.get("indicators", [])
            weights[category.name] = (
                dict(indicators) if isinstance(indicators, dict) else dict.fromkeys(indicators, 1.0)
            )
        return weights

    def classify(self, captions: Sequence[Sequence[str]], categories: Sequence[Sequence[str]]) -> list[Domain]:
        """One domain per tile, from its captions and the names of its categories."""
        flat = [caption for tile in captions for caption in tile]
        stated = iter(self._caption_matcher.categorize([[caption] for caption in flat]) if flat else [])
        domains = []
        for tile_captions, tile_categories in zip(captions, categories):
            evidence: Counter[str] = Counter()
            for _ in tile_captions:
                for match in next(stated).categories:
                    evidence[match.name] += self.caption_weight / len(tile_captions)
            present = set(tile_categories)
            for domain, indicators in self._indicators.items():
                evidence[domain] += sum(weight for name, weight in indicators.items() if name in present)
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
