"""What a class name itself says, read the way nomenclatures write names.

Land-cover legends name classes as plurals ("Trees", "Crops"), conjunctions ("Snow & ice",
"Shrub/Scrub", "Barren Land (Rock/Sand/Clay)"), cover types ("Tree cover", "Paddy field") and
qualified heads ("Open Water", "Permanent water bodies"). A caption says "trees", "snow", "water".
These variants are derived from the name alone, so they hold for a vocabulary nobody read; the
matcher keeps a variant only when one class of the vocabulary yields it (two classes that both
yield "forest", as NLCD's deciduous and evergreen forests do, leave "forest" to neither).
"""

from __future__ import annotations

import re

from taxonomy.loader import normalize_term

# Heads that name a cover type, not a thing: "tree cover" is trees, "paddy field" is paddy.
COVER_HEADS = frozenset("cover land area areas surface surfaces ground field fields plot plots body bodies".split())
# Modifiers that qualify a head without naming a narrower kind of it: "open water" is water, but
# "fruit trees" are not all trees, nor is "herbaceous vegetation" all vegetation. Listed, not
# guessed from the word's form: most adjectives in class names restrict ("natural", "deciduous").
QUALIFIERS = frozenset("open permanent perennial cultivated".split())
_SPLIT = re.compile(r"\s*(?:,|/|&|\(|\)|\+|\band\b|\bor\b)\s*")


def name_parts(name: str) -> list[str]:
    """The concepts a name joins: "Snow & ice" -> [snow, ice]; "Barren Land (Rock/Sand/Clay)" ->
    [barren land, rock, sand, clay]. A name with one part returns [name]."""
    return [p for p in (normalize_term(x) for x in _SPLIT.split(name)) if p]


def literal_forms(name: str) -> list[str]:
    """The name's own words in other spellings: the parts of a joined name, and a hyphenated or
    underscored name with spaces ("bare-soil" -> "bare soil", "Built-up" -> "built up"), as captions write
    it. The matcher keeps these whenever one class yields them, known to its lexicon or not."""
    parts = name_parts(name)
    forms = parts if len(parts) > 1 else []
    forms += [_spaced(x) for x in (name, *parts)]
    return list(dict.fromkeys(f for f in forms if f and f != normalize_term(name)))


def name_variants(name: str) -> list[str]:
    """Shorter forms a caption may use for the class, most literal first: the literal forms, then each
    part without a cover head ("tree cover" -> "tree"), then without a qualifier ("open water" -> "water").
    Unfiltered: the matcher keeps the ones its lexicon knows and only one class yields."""
    variants: list[str] = literal_forms(name)
    parts = [_spaced(p) for p in name_parts(name)]
    for part in parts:
        words = part.split()
        if len(words) > 1 and words[-1] in COVER_HEADS:
            variants.append(" ".join(words[:-1]))
        if len(words) > 1 and all(_is_qualifier(w) for w in words[:-1]):
            variants.append(words[-1])
        if len(words) > 2 and _is_qualifier(words[0]):
            variants.append(" ".join(words[1:]))
    return list(dict.fromkeys(v for v in variants if v != normalize_term(name)))


def _spaced(term: str) -> str:
    """ "bare-soil" -> "bare soil": a hyphen or underscore between words is a space in a caption."""
    return normalize_term(re.sub(r"(?<=\w)[-_](?=\w)", " ", term))


def _is_qualifier(word: str) -> bool:
    return word in QUALIFIERS
