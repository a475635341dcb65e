"""Unmatched phrases as a product: a ready-to-edit YAML snippet of synonyms for the user's taxonomy.

The phrases a run could not place are the words the taxonomy is missing. Ranked by how many
images used them and grouped under their nearest category (cosine similarity to the category's
name and relatives, the embedding stage's own anchors), they become a synonyms list that a person
reviews rather than writes: delete the wrong lines, paste the rest. Nothing here changes matching.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taxonomy.matcher import CategoryMatcher

SUGGEST_FLOOR = 0.5  # below this the nearest category is noise: listed apart, not suggested
ALTERNATIVES = 2  # runner-up categories shown beside each suggestion


@dataclass(frozen=True)
class Suggestion:
    phrase: str
    images: int  # images whose captions used the phrase without a match
    nearest: tuple[tuple[str, float], ...]  # (category, score), best first
    known: bool = False  # the lexicon/relations know the phrase and it reaches no category here
    between: tuple[str, ...] = ()  # categories its term walks reach equally directly: left for a person to pick


def suggest(matcher: CategoryMatcher, unmatched: Counter, top: int = 40, min_images: int = 2) -> list[Suggestion]:
    """The `top` most frequent unmatched phrases (used by >= `min_images` images) with their
    nearest proposable categories."""
    phrases = [(p, n) for p, n in unmatched.most_common() if n >= min_images][:top]
    if not phrases:
        return []
    per_category = matcher.category_scores(matcher.anchor_similarity([p for p, _ in phrases]))
    names = [c.name for c in matcher.taxonomy.categories]
    known = matcher.known_terms()
    proposable = np.array([c.propose for c in matcher.taxonomy.categories])
    per_category[:, ~proposable] = -1.0  # background classes are never proposed, so never suggested
    suggestions = []
    for row, (phrase, images) in enumerate(phrases):
        order = np.argsort(-per_category[row])[: 1 + ALTERNATIVES]
        nearest = tuple((names[i], round(float(per_category[row, i]), 3)) for i in order if proposable[i])
        between = matcher.ambiguous.get(phrase) or matcher.between(phrase)  # also when another matcher ran
        suggestions.append(Suggestion(phrase, images, nearest, known=phrase in known and not between, between=between))
    return suggestions


def suggestions_yaml(taxonomy_name: str, suggestions: list[Suggestion], images: int) -> str:
    """YAML in the taxonomy file's own shape (categories -> name, synonyms), with the evidence as
    comments, so the reviewed snippet merges into the taxonomy by copy and paste."""
    lines = [
        f"# Synonym suggestions for taxonomy {taxonomy_name}: the most frequent phrases of {images} images",
        "# that matched no category, under their nearest category (cosine similarity to the category's",
        "# name and relatives; runner-ups after it). Review: delete wrong lines, then paste each",
        "# `synonyms` list into the category of the same name in the taxonomy YAML.",
        "categories:",
    ]
    grouped: dict[str, list[Suggestion]] = {}
    far: list[Suggestion] = []
    missing = [s for s in suggestions if s.known]
    ambiguous = [s for s in suggestions if s.between]
    for s in suggestions:
        if s.known or s.between:
            continue
        if s.nearest and s.nearest[0][1] >= SUGGEST_FLOOR:
            grouped.setdefault(s.nearest[0][0], []).append(s)
        else:
            far.append(s)
    for category, members in grouped.items():
        lines += [f"  - name: {_quote(category)}", "    synonyms:"]
        for s in members:
            lines.append(f"      - {_quote(s.phrase)}  # {s.images} images; {_evidence(s)}")
    if not grouped:
        lines[-1] = "categories: []"
    if missing:
        lines.append('# known kinds the taxonomy has no category for ("meadow" without a grass class): add a')
        lines.append("# category for them rather than a synonym of a different thing:")
        lines += [f"#   {s.phrase}  # {s.images} images; {_evidence(s)}" for s in missing]
    if ambiguous:
        lines.append(
            "# words between two categories (their term walks reach both equally directly): not guessed; add the"
        )
        lines.append("# word as a synonym of the one it means in your data:")
        lines += [f"#   {s.phrase}  # {s.images} images; between {', '.join(s.between)}" for s in ambiguous]
    if far:
        lines.append(f"# no category scores {SUGGEST_FLOOR} or more for these (a new category, or noise):")
        lines += [f"#   {s.phrase}  # {s.images} images; {_evidence(s)}" for s in far]
    return "\n".join(lines) + "\n"


def _evidence(s: Suggestion) -> str:
    return ", ".join(f"{name} {score:.2f}" for name, score in s.nearest)


def _quote(text: str) -> str:
    """Plain YAML scalar where safe; double-quoted when the text holds YAML syntax."""
    plain = text and not any(ch in text for ch in ":#,[]{}&*!|>'\"%@`") and text[0] not in "-?"
    return text if plain else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_suggestions(matcher: CategoryMatcher, unmatched: Counter, images: int, path: Path) -> int:
    """Write the snippet for a run's unmatched phrases; returns how many phrases it holds."""
    found = suggest(matcher, unmatched)
    path.write_text(suggestions_yaml(matcher.taxonomy.name, found, images), encoding="utf-8")
    return len(found)
