"""Load and validate category vocabularies written as YAML.

A taxonomy file is data that people edit by hand, so every validation error names the file and the
line, and the version is a hash of the *content* (names, synonyms, descriptions, order), not of the
bytes: re-indenting a file or adding a comment does not change the version a build records.

Masks are uint8 and 255 marks unlabeled pixels everywhere (masks, shards, Pi-Seg, metrics), so a
taxonomy holds at most 255 categories (ids 0-254) and `ignore_index`, if written, must be 255. A key
the loader does not know (a typo such as `synonym:`) is an error, not silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ovrsis.errors import TaxonomyError
from taxonomy.masks import IGNORE_INDEX, MAX_CATEGORIES

DATA_DIR = Path(__file__).parent / "data"
TOP_LEVEL_FIELDS = ("name", "description", "ignore_index", "categories")
CATEGORY_FIELDS = ("name", "synonyms", "description", "propose")
# Kept in Category.extra: scene domains' indicator categories; a nomenclature's `includes` / `excludes`
# (what its class definition says belongs to the class or not: taxonomy/definitions.py).
EXTRA_CATEGORY_FIELDS = ("indicators", "includes", "excludes")
TERM_LIST_FIELDS = ("includes", "excludes")


@dataclass(frozen=True)
class Category:
    """One class of a vocabulary. `index` is its mask value."""

    index: int
    name: str
    synonyms: tuple[str, ...] = ()
    description: str = ""
    propose: bool = True  # False for background/clutter classes that captions must never yield
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # EXTRA_CATEGORY_FIELDS present in the entry

    @property
    def aliases(self) -> tuple[str, ...]:
        """Names written as "a, b, c" (e.g. OpenEarthMap's) mean any of the parts."""
        parts = [p.strip() for p in self.name.split(",") if p.strip()]
        return tuple(parts) if len(parts) > 1 else ()

    @property
    def prompt_name(self) -> str:
        """The name used in text prompts: the first part of a comma name, as the released code does."""
        return self.name.split(",")[0].strip()


@dataclass(frozen=True)
class Taxonomy:
    name: str
    categories: tuple[Category, ...]
    source: str
    description: str = ""
    ignore_index: int = IGNORE_INDEX
    version: str = field(default="")

    @property
    def background_indices(self) -> list[int]:
        """The classes captions never yield (`propose: false`): background / clutter."""
        return [c.index for c in self.categories if not c.propose]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def __len__(self) -> int:
        return len(self.categories)

    def __getitem__(self, name: str) -> Category:
        for category in self.categories:
            if category.name == name:
                return category
        raise KeyError(f"taxonomy {self.name!r} has no category {name!r}")

    def index_of(self, name: str) -> int:
        return self[name].index


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping, for error messages."""


class _LinedDict(dict):
    line: int = 0
    key_lines: dict = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


def _construct_lined_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LinedDict:
    mapping = _LinedDict(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {
        key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)
    }
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_lined_mapping)


def normalize_term(term: str) -> str:
    """Case- and space-insensitive form used to compare names and synonyms."""
    return " ".join(term.lower().replace("_", " ").split())


def resolve_taxonomy_path(name_or_path: str | Path) -> Path:
    """A bundled vocabulary by name (`ovrsis95k`, `dlrsd`, ...) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise TaxonomyError(f"{path}: taxonomy file not found")
        return path
    bundled = DATA_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    available = ", ".join(bundled_taxonomies())
    raise TaxonomyError(f"{name_or_path}: neither a file nor a bundled taxonomy (bundled: {available})")


def bundled_taxonomies() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.yaml") if p.stem != "lexicon")


def load_taxonomy(name_or_path: str | Path) -> Taxonomy:
    """Read, validate and version a taxonomy. Raises TaxonomyError with file:line on any problem."""
    path = resolve_taxonomy_path(name_or_path)
    document = _read_yaml(path)
    if not isinstance(document, dict):
        raise TaxonomyError(f"{path}:1: expected a mapping with 'name' and 'categories'")
    _check_keys(path, document, TOP_LEVEL_FIELDS, "taxonomy")
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TaxonomyError(f"{path}:{document.line}: 'name' must be a non-empty string")
    entries = document.get("categories")
    if not isinstance(entries, list) or not entries:
        raise TaxonomyError(f"{path}:{document.line}: 'categories' must be a non-empty list")
    if len(entries) > MAX_CATEGORIES:
        raise TaxonomyError(
            f"{path}:{document.line_of('categories')}: taxonomy {name.strip()!r} has {len(entries)} categories; masks "
            f"are uint8, so a taxonomy holds at most {MAX_CATEGORIES} (ids 0-{MAX_CATEGORIES - 1}; "
            f"{IGNORE_INDEX} marks unlabeled pixels)"
        )
    if document.get("ignore_index", IGNORE_INDEX) != IGNORE_INDEX:
        raise TaxonomyError(
            f"{path}:{document.line_of('ignore_index')}: ignore_index is {document['ignore_index']!r}, but unlabeled "
            f"pixels are {IGNORE_INDEX} in every mask, shard and metric; remove the line or write {IGNORE_INDEX}"
        )
    categories = tuple(_parse_category(path, i, entry) for i, entry in enumerate(entries))
    _check_unique_terms(path, entries, categories)
    taxonomy = Taxonomy(
        name=name.strip(),
        categories=categories,
        source=str(path),
        description=str(document.get("description", "")),
    )
    return Taxonomy(**{**taxonomy.__dict__, "version": content_hash(taxonomy)})


def content_hash(taxonomy: Taxonomy) -> str:
    """sha256 over the canonical JSON of what the taxonomy means (order included: it fixes mask ids)."""
    canonical = {
        "name": taxonomy.name,
        "ignore_index": taxonomy.ignore_index,
        "categories": [
            {
                "name": c.name,
                "synonyms": list(c.synonyms),
                "description": c.description,
                "propose": c.propose,
                "extra": c.extra,
            }
            for c in taxonomy.categories
        ],
    }
    encoded = json.dumps(canonical, sort_keys=True, ensure_ascii=False, default=str).encode()
    return "sha256:" + hashlib.sha256(encoded).hexdigest()[:16]


def load_lexicon() -> dict[str, list[str]]:
    """The bundled term -> related-terms lexicon (see data/lexicon.yaml)."""
    path = DATA_DIR / "lexicon.yaml"
    document = _read_yaml(path)
    terms = document.get("terms") if isinstance(document, dict) else None
    if not isinstance(terms, dict):
        raise TaxonomyError(f"{path}: expected a 'terms' mapping")
    return {normalize_term(k): [normalize_term(v) for v in values] for k, values in terms.items()}


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TaxonomyError(f"{path}: not UTF-8 text ({error})") from error
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise TaxonomyError(f"{path}{where}: invalid YAML: {problem}") from error


def _parse_category(path: Path, index: int, entry: Any) -> Category:
    if isinstance(entry, str):  # a bare list of names is allowed
        entry = _LinedDict(name=entry)
    if not isinstance(entry, dict):
        raise TaxonomyError(f"{path}: category #{index} must be a mapping with a 'name', got {entry!r}")
    entry_line = getattr(entry, "line", 0) or "?"
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TaxonomyError(f"{path}:{entry_line}: category #{index} has an empty or missing name")
    _check_keys(path, entry, CATEGORY_FIELDS + EXTRA_CATEGORY_FIELDS, f"category {name.strip()!r}")
    synonyms = entry.get("synonyms") or []
    if not isinstance(synonyms, list) or not all(isinstance(s, str) and s.strip() for s in synonyms):
        raise TaxonomyError(f"{path}:{entry_line}: synonyms of {name!r} must be a list of non-empty strings")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise TaxonomyError(f"{path}:{entry_line}: description of {name!r} must be a string")
    for key in TERM_LIST_FIELDS:
        terms = entry.get(key, [])
        if not isinstance(terms, list) or not all(isinstance(t, str) and t.strip() for t in terms):
            raise TaxonomyError(f"{path}:{entry_line}: {key} of {name!r} must be a list of non-empty strings")
    propose = entry.get("propose", True)
    if not isinstance(propose, bool):
        raise TaxonomyError(f"{path}:{entry_line}: 'propose' of {name!r} must be true or false")
    return Category(
        index=index,
        name=name.strip(),
        synonyms=tuple(s.strip() for s in synonyms),
        description=description.strip(),
        propose=propose,
        extra={k: entry[k] for k in EXTRA_CATEGORY_FIELDS if k in entry},
    )


def _check_keys(path: Path, mapping: dict, known: tuple[str, ...], what: str) -> None:
    """Unknown keys are errors naming their line: a misspelt `synonym:` must not be dropped silently."""
    for key in mapping:
        if key not in known:
            line = mapping.line_of(key) if isinstance(mapping, _LinedDict) else "?"
            raise TaxonomyError(f"{path}:{line}: unknown key {key!r} in {what} (known keys: {', '.join(known)})")


def _check_unique_terms(path: Path, entries: list[Any], categories: tuple[Category, ...]) -> None:
    """Names must be unique; a synonym may not be another category's name or synonym."""
    owner: dict[str, tuple[str, int | str]] = {}
    for entry, category in zip(entries, categories):
        line = getattr(entry, "line", "?")
        key = normalize_term(category.name)
        if key in owner and owner[key][0] != category.name:
            raise TaxonomyError(
                f"{path}:{line}: name {category.name!r} clashes with {owner[key][0]!r} (line {owner[key][1]})"
            )
        if key in owner:
            raise TaxonomyError(f"{path}:{line}: duplicate category {category.name!r} (first at line {owner[key][1]})")
        owner[key] = (category.name, line)
    for entry, category in zip(entries, categories):
        line = getattr(entry, "line", "?")
        for term in (*category.aliases, *category.synonyms):
            key = normalize_term(term)
            other = owner.get(key)
            if other is not None and other[0] != category.name:
                raise TaxonomyError(
                    f"{path}:{line}: synonym {term!r} of {category.name!r} clashes with "
                    f"category {other[0]!r} (line {other[1]})"
                )
            owner[key] = (category.name, line)
