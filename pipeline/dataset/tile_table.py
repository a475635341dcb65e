"""Compact per-tile statistics: what selection and the balance report read instead of whole records.

A tile record carries captions, phrases, RLE masks and provenance; choosing among a million tiles
needs only which categories each tile holds (with their pixels) and its scene domain. `TileTable`
keeps exactly that as a sparse tiles x categories matrix of pixel counts and a domain index per
tile, rows sorted by key so that everything computed from it is independent of the input order.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse

from pipeline.dataset.records import TileRecord

UNKNOWN_DOMAIN = "unknown"


def category_pixels(record: TileRecord) -> dict[str, int]:
    """Pixels per category in the tile's semantic mask (the background class never counts): the
    reviewed mask's where a review was applied (a reviewer may add, discard or repaint), else the
    merged instances' areas. Selection, the tile table and the balance report all read this, so the
    dataset is chosen on the labels it will carry."""
    if record.review is not None and record.review.pixels is not None:
        return {name: count for name, count in record.review.pixels.items() if count > 0}
    return proposed_pixels(record)


def proposed_pixels(record: TileRecord) -> dict[str, int]:
    """Pixels per category in the build's proposal (the merged instances' areas), whatever a review did."""
    pixels: dict[str, int] = {}
    for instance in record.instances:
        if not instance.dropped and instance.area > 0:
            pixels[instance.category] = pixels.get(instance.category, 0) + instance.area
    return pixels


def kept_categories(record: TileRecord) -> list[str]:
    """Categories that own pixels in the tile's semantic mask (after review where there is one)."""
    return sorted(category_pixels(record))


@dataclass(frozen=True)
class TileTable:
    """Construct with `build` or `from_records`, which sort the rows by key."""

    keys: np.ndarray  # (tiles,) str, sorted
    categories: tuple[str, ...]  # column names
    domains: tuple[str, ...]  # names of the values in `domain`
    pixels: sparse.csr_matrix  # (tiles, categories) int64 pixels a category holds in a tile; no explicit zeros
    domain: np.ndarray  # (tiles,) int index into `domains`

    @classmethod
    def build(
        cls,
        keys: Sequence[str],
        categories: Sequence[str],
        domains: Sequence[str],
        pixels: sparse.spmatrix,
        domain: np.ndarray,
    ) -> TileTable:
        """Rows reordered by key; duplicate keys are refused (a key names one tile)."""
        keys = np.asarray(keys, dtype=str)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        if len(keys) > 1 and (keys[1:] == keys[:-1]).any():
            raise ValueError("duplicate tile keys in the selection candidates")
        matrix = sparse.csr_matrix(pixels, dtype=np.int64)[order]
        matrix.eliminate_zeros()
        matrix.sort_indices()
        return cls(keys, tuple(categories), tuple(domains), matrix, np.asarray(domain, dtype=np.int64)[order])

    @classmethod
    def from_records(cls, records: Iterable[TileRecord], categories: Sequence[str] | None = None) -> TileTable:
        """Pixels per kept category (`category_pixels`); categories absent from `categories` are
        appended in name order (a reviewer may paint a class the build's list lacks)."""
        rows = TileRows()
        for record in records:
            rows.add(record)
        return rows.table(categories)

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def incidence(self) -> sparse.csr_matrix:
        """1 where a tile holds a category (float, ready for matrix-vector products)."""
        return sparse.csr_matrix(
            (np.ones_like(self.pixels.data, dtype=np.float64), self.pixels.indices, self.pixels.indptr),
            shape=self.pixels.shape,
        )

    @cached_property
    def spread(self) -> np.ndarray:
        """A deterministic pseudo-random tie-breaker per tile (CRC-32 of the key): ties never fall
        to key order, which would favour one source raster's neighbouring tiles."""
        return np.fromiter((zlib.crc32(k.encode()) for k in self.keys.tolist()), np.uint32, len(self.keys))

    def category_tiles(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Tiles per category among `rows` (a boolean mask; all tiles when None)."""
        matrix = self.incidence if rows is None else self.incidence[rows]
        return np.asarray(matrix.sum(axis=0)).ravel().astype(np.int64)

    def category_pixels(self, rows: np.ndarray | None = None) -> np.ndarray:
        matrix = self.pixels if rows is None else self.pixels[rows]
        return np.asarray(matrix.sum(axis=0)).ravel().astype(np.int64)

    def domain_tiles(self, rows: np.ndarray | None = None) -> np.ndarray:
        domain = self.domain if rows is None else self.domain[rows]
        return np.bincount(domain, minlength=len(self.domains)).astype(np.int64)


def _domain_of(record: TileRecord) -> str:
    return record.domain.name if record.domain else UNKNOWN_DOMAIN


class TileRows:
    """A TileTable gathered one record at a time, keeping a few numbers per tile and no record: a
    build streams its records past it, so selecting among 100,000 tiles never holds their records."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._domains: list[str] = []
        self._rows, self._values = array("q"), array("q")
        self._columns: list[str] = []

    def add(self, record: TileRecord) -> None:
        row = len(self.keys)
        self.keys.append(record.key)
        self._domains.append(_domain_of(record))
        for category, count in category_pixels(record).items():
            self._rows.append(row)
            self._values.append(count)
            self._columns.append(category)

    def table(self, categories: Sequence[str] | None = None) -> TileTable:
        names = list(categories or [])
        names += sorted(set(self._columns) - set(names))
        column = {name: j for j, name in enumerate(names)}
        domain_names = sorted(set(self._domains))
        domain_index = {name: d for d, name in enumerate(domain_names)}
        cols = np.fromiter((column[c] for c in self._columns), np.int64, len(self._columns))
        matrix = sparse.coo_matrix(
            (np.frombuffer(self._values, np.int64), (np.frombuffer(self._rows, np.int64), cols)),
            shape=(len(self.keys), len(names)),
        )
        domains = np.fromiter((domain_index[d] for d in self._domains), np.int64, len(self._domains))
        return TileTable.build(self.keys, names, domain_names, matrix.tocsr(), domains)
