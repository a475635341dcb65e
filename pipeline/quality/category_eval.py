"""Proposed categories against hand labels: precision, recall, and per matching method how many
proposals it made and how many were right.

The category benchmark (benchmarks/eval_categories.py) scores every vocabulary and matcher with this,
and the tests check the counting on a stand-in categorizer; it lives in the package so both import the
same function instead of the tests reaching into benchmarks/ through sys.path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from taxonomy.matcher import METHOD_RANK

if TYPE_CHECKING:
    from pipeline.stages.categories import CaptionCategories


class Categorizer(Protocol):
    """What `score` needs of `pipeline.stages.categories.CaptionCategorizer`: a batch of images, each with its
    captions, in; per image the proposed categories (name and method) out."""

    def categorize(self, images: Sequence[Sequence[str]]) -> Sequence[CaptionCategories]: ...


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    by_method: Counter = field(default_factory=Counter)  # method -> proposals
    right_by_method: Counter = field(default_factory=Counter)  # method -> correct proposals
    # per caption scored wrong: the caption, the categories proposed but not labelled, those labelled but missed
    errors: list[tuple[str, set[str], set[str]]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def methods(self) -> str:
        """`method=right/proposed` for each method that proposed anything, most certain method first."""
        return " ".join(f"{m}={self.right_by_method[m]}/{self.by_method[m]}" for m in METHOD_RANK if self.by_method[m])


def score(categorizer: Categorizer, captions: Sequence[str], labels: Iterable[set[str]]) -> Score:
    """Categorize each caption as an image of its own and compare with its label set (category names)."""
    result = Score()
    for caption, gold, found in zip(captions, labels, categorizer.categorize([[c] for c in captions])):
        proposed = {c.name: c for c in found.categories}
        result.tp += len(proposed.keys() & gold)
        result.fp += len(proposed.keys() - gold)
        result.fn += len(gold - proposed.keys())
        for name, category in proposed.items():
            result.by_method[category.method] += 1
            result.right_by_method[category.method] += name in gold
        if proposed.keys() != gold:
            result.errors.append((caption, proposed.keys() - gold, gold - proposed.keys()))
    return result
