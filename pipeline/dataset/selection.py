"""Balanced selection: N tiles out of many, every category at its quota, the rest as even as possible.

OVRSIS95K is "balanced": frequent classes (building, tree, road) appear in most tiles and must not
drown the rare ones, and the five scene domains should all be present. Capping each category (drop
every tile holding a capped class) fails on real co-occurrence: once building is capped, every tile
with a building is dropped, so mid-frequency classes that sit next to buildings are thinned far
below the cap. This module selects to a target instead, in two phases over the compact
`TileTable` (a sparse tiles x categories matrix of pixel counts and a domain per tile):

1. **Quota, rarest category first.** The quota q is the largest integer with
   sum_c min(available_c, q) <= N (water-filling), lowered further by an explicit
   `quota_per_category`. Categories are visited from the rarest up; each takes
   min(available_c, q) - held_c more of its still unselected tiles, preferring tiles that also
   carry other under-quota categories and no category already at quota, then the domain with the
   fewest tiles so far (round-robin over domains), then a larger pixel share of the category. Each
   tile taken raises at least one under-quota category, so phase 1 never needs more than N tiles,
   and every category ends with at least min(available_c, q) tiles. A category below q therefore
   has all its tiles: frequent categories are thinned only through tiles that carry no under-quota
   category.
2. **Fill to N by entropy gain.** The remaining budget goes, in rounds, to the tiles whose addition
   raises the entropy of tiles per category the most (to first order, a tile adds
   sum over its categories of (-log p_c - H)), plus the same gain for the tiles per domain and,
   weighted lower, for the pixel shares (`pixel_weight`): tiles per category first, pixel share
   second, domain balance alongside. p is taken where the fill is heading (the selection so far
   plus the rest of the budget at the remaining tiles' rates), so a category present in nearly
   every tile is seen as frequent from the first round.

The background class is never an instance, so it never counts here: every tile holds some.

Deterministic: rows are sorted by key and ties fall to a CRC-32 of the key, so the same
candidates give the same selection whatever their order. `target_tiles: all` keeps every
candidate; with fewer candidates than the target all are kept, since dropping labelled tiles only
pays when there is a surplus. 1,000,000 candidates take ~7 s on 2 cores (benchmarks/bench_selection.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from annotated_types import Ge

from pipeline.dataset.records import TileRecord
from pipeline.dataset.tile_table import TileTable, kept_categories

DEFAULT_TARGET_TILES = 95_000  # the size of the paper's OVRSIS95K
FILL_ROUNDS = 64  # phase 2 re-scores the remaining tiles this many times at most

__all__ = [
    "DEFAULT_TARGET_TILES",
    "TileCounts",
    "Selection",
    "SelectionConfig",
    "candidate_records",
    "kept_categories",
    "select",
    "select_tiles",
    "water_fill_quota",
]


@dataclass(frozen=True)
class SelectionConfig:
    """How tiles are chosen; also the `selection:` section of the build YAML."""

    __pydantic_config__ = {"extra": "forbid"}  # the build YAML section (pipeline/build/config.py): a typo is an error

    target_tiles: Annotated[int, Ge(1)] | Literal["all"] = DEFAULT_TARGET_TILES  # "all": keep every candidate
    quota_per_category: Annotated[int, Ge(1)] | None = None  # tiles per category kept first; default from the target
    drop_unlabeled: bool = True  # tiles whose mask has no labelled pixel never reach the shards
    domain_weight: float = 1.0  # weight of the domain-entropy gain against the category gain in phase 2
    pixel_weight: float = 0.25  # weight of the pixel-share entropy gain in phase 2

    def __post_init__(self) -> None:
        if self.target_tiles != "all" and (not isinstance(self.target_tiles, int) or self.target_tiles < 1):
            raise ValueError(f"target_tiles must be a positive integer or 'all', not {self.target_tiles!r}")
        if self.quota_per_category is not None and self.quota_per_category < 1:
            raise ValueError("quota_per_category must be at least 1")


@dataclass(frozen=True)
class Selection:
    selected: np.ndarray  # (tiles,) bool over the table's rows
    quota: int | None  # the per-category floor that was guaranteed; None when everything was kept

    @property
    def count(self) -> int:
        return int(self.selected.sum())


def water_fill_quota(available: np.ndarray, target: int) -> int:
    """The largest q with sum(min(available, q)) <= target."""
    low, high = 0, int(available.max(initial=0))
    while low < high:
        middle = (low + high + 1) // 2
        if np.minimum(available, middle).sum() <= target:
            low = middle
        else:
            high = middle - 1
    return low


def select(table: TileTable, config: SelectionConfig = SelectionConfig()) -> Selection:
    """Which rows of `table` to keep (see the module docstring for the rule)."""
    everything = np.ones(len(table), bool)
    if config.target_tiles == "all" or len(table) <= config.target_tiles:
        return Selection(everything, None)
    available = table.category_tiles()
    quota = water_fill_quota(available, config.target_tiles)
    if config.quota_per_category is not None:
        quota = min(quota, config.quota_per_category)
    selected = _fill_quota(table, available, quota)
    _fill_by_gain(table, selected, config)
    return Selection(selected, quota)


def select_tiles(
    records: Sequence[TileRecord], config: SelectionConfig = SelectionConfig(), categories: Sequence[str] | None = None
) -> list[TileRecord]:
    """The selected records, in key order; quarantined tiles (and unlabeled ones unless asked) never count."""
    candidates = candidate_records(records, config)
    table = TileTable.from_records(candidates, categories)
    by_key = {r.key: r for r in candidates}
    return [by_key[k] for k in table.keys[select(table, config).selected].tolist()]


def candidate_records(records: Sequence[TileRecord], config: SelectionConfig) -> list[TileRecord]:
    """The tiles selection may choose from."""
    return [r for r in records if is_candidate(r, config)]


def is_candidate(record: TileRecord, config: SelectionConfig) -> bool:
    """Not quarantined, and labelled unless unlabeled tiles are asked for."""
    return not record.quarantine and (bool(kept_categories(record)) or not config.drop_unlabeled)


@dataclass
class TileCounts:
    """Why each tile of a build is, or is not, a selection candidate: the balance report and the
    manifest say how many tiles were left out and why, so a dataset half the size of the build is
    never a surprise."""

    tiles: int = 0
    quarantined: int = 0
    unlabelled: int = 0  # no labelled pixel in the proposal, and no review
    emptied_by_review: int = 0  # a review left no labelled pixel (every category discarded)
    candidates: int = 0
    drop_unlabeled: bool = True
    reviewed: int = 0  # candidates whose labels come from a review
    selected: int | None = field(default=None)  # set once selection has run

    def admit(self, record: TileRecord, config: SelectionConfig) -> bool:
        """Count `record` under its reason; True where it is a candidate (`is_candidate`)."""
        self.tiles += 1
        self.drop_unlabeled = config.drop_unlabeled
        if record.quarantine:
            self.quarantined += 1
            return False
        if not kept_categories(record):
            if record.review is not None:
                self.emptied_by_review += 1
            else:
                self.unlabelled += 1
            if config.drop_unlabeled:
                return False
        self.candidates += 1
        self.reviewed += record.review is not None
        return True

    def sentences(self) -> list[str]:
        """What happened to the build's tiles, in words (the first lines of the balance report)."""
        left_out = []
        if self.quarantined:
            left_out.append(f"{self.quarantined} quarantined (see the quarantine table and records.jsonl)")
        if self.drop_unlabeled and self.unlabelled:
            left_out.append(f"{self.unlabelled} dropped as unlabelled (nothing proposed and no review)")
        if self.drop_unlabeled and self.emptied_by_review:
            left_out.append(f"{self.emptied_by_review} dropped because a review left no labelled pixel")
        sentences = [f"The build annotated {self.tiles} tiles, of which {self.candidates} could enter the dataset."]
        if left_out:
            sentences.append("Left out: " + "; ".join(left_out) + ".")
        if not self.drop_unlabeled and (self.unlabelled or self.emptied_by_review):
            sentences.append(
                f"{self.unlabelled + self.emptied_by_review} unlabelled tiles are kept (`drop_unlabeled: false`)."
            )
        if self.reviewed:
            sentences.append(f"{self.reviewed} candidate tiles are counted from their reviewed masks.")
        if self.selected is not None:
            sentences.append(f"Selection kept {self.selected} of the {self.candidates} candidates.")
        return sentences

    def as_dict(self) -> dict:
        return {
            "annotated": self.tiles,
            "quarantined": self.quarantined,
            "unlabelled": self.unlabelled,
            "emptied_by_review": self.emptied_by_review,
            "candidates": self.candidates,
            "reviewed_candidates": self.reviewed,
            "selected": self.selected,
        }


def _fill_quota(table: TileTable, available: np.ndarray, quota: int) -> np.ndarray:
    """Phase 1: every category up to min(available, quota), rarest category first."""
    incidence, pixels = table.incidence, table.pixels
    by_category = pixels.tocsc()  # column c: the rows holding c and their pixels, in the same order
    row_pixels = np.asarray(pixels.sum(axis=1)).ravel().astype(np.float64)
    goal = np.minimum(available, quota)
    held = np.zeros(len(available), np.int64)
    held_domain = np.zeros(len(table.domains), np.int64)
    selected = np.zeros(len(table), bool)
    for c in np.lexsort((np.arange(len(available)), available)):
        need = goal[c] - held[c]
        if need <= 0:
            continue
        column = slice(by_category.indptr[c], by_category.indptr[c + 1])
        rows, row_share = by_category.indices[column], by_category.data[column]
        free = ~selected[rows]
        rows, row_share = rows[free], row_share[free]
        if need < len(rows):
            under = (held < goal).astype(np.float64)
            under[c] = 0.0
            sub = incidence[rows]
            score = (sub @ under - sub @ (held >= goal).astype(np.float64)).astype(np.int64)
            share = row_share / np.maximum(row_pixels[rows], 1.0)
            rows = rows[_round_robin(score, table.domain[rows], held_domain, share, table.spread[rows])[:need]]
        selected[rows] = True
        held += np.asarray(incidence[rows].sum(axis=0)).ravel().astype(np.int64)
        held_domain += np.bincount(table.domain[rows], minlength=len(table.domains))
    return selected


def _round_robin(
    score: np.ndarray, domain: np.ndarray, held_domain: np.ndarray, share: np.ndarray, spread: np.ndarray
) -> np.ndarray:
    """Candidate order: higher score first; within a score, domains take turns (the domain with
    the fewest tiles so far first), each domain's candidates by pixel share, then spread."""
    order = np.lexsort((spread, -share, domain, -score))
    s, d = score[order], domain[order]
    starts = np.r_[True, (s[1:] != s[:-1]) | (d[1:] != d[:-1])]
    position = np.arange(len(order))
    rank = position - np.maximum.accumulate(np.where(starts, position, 0))
    turn = held_domain[d] + rank
    return order[np.lexsort((spread[order], turn, -s))]


def _fill_by_gain(table: TileTable, selected: np.ndarray, config: SelectionConfig) -> None:
    """Phase 2: up to the target, the tiles with the largest first-order entropy gain, in rounds."""
    budget = config.target_tiles - int(selected.sum())
    if budget <= 0:
        return
    incidence = table.incidence
    row_pixels = np.asarray(table.pixels.sum(axis=1)).ravel().astype(np.float64)
    shares = table.pixels.multiply(1.0 / np.maximum(row_pixels, 1.0)[:, None]).tocsr()
    step = max(1, -(-budget // FILL_ROUNDS))
    while budget > 0:
        rows = np.flatnonzero(~selected)
        sub, ahead = incidence[rows], budget / len(rows)
        # The gradient is taken where the selection is heading (the rest of the budget filled at
        # random), not where it stands: a category in nearly every tile will end up frequent
        # whatever is chosen, and the greedy must see that now rather than after the budget is spent.
        tiles = table.category_tiles(selected) + ahead * np.asarray(sub.sum(axis=0)).ravel()
        domains = table.domain_tiles(selected) + ahead * np.bincount(table.domain[rows], minlength=len(table.domains))
        pixels = table.category_pixels(selected) + ahead * np.asarray(table.pixels[rows].sum(axis=0)).ravel()
        gain = sub @ _entropy_gradient(tiles)
        gain += config.domain_weight * _entropy_gradient(domains)[table.domain[rows]]
        gain += config.pixel_weight * (shares[rows] @ _entropy_gradient(pixels))
        take = min(step, budget)
        if take < len(rows):
            top = np.argpartition(-gain, take - 1)[:take]
            boundary = gain[top].min()  # ties at the boundary are settled by spread, not by partition order
            tied = np.flatnonzero(gain == boundary)
            sure = top[gain[top] > boundary]
            rest = tied[np.argsort(table.spread[rows[tied]], kind="stable")][: take - len(sure)]
            chosen = rows[np.concatenate([sure, rest])]
        else:
            chosen = rows
        selected[chosen] = True
        budget -= len(chosen)


def _entropy_gradient(counts: np.ndarray) -> np.ndarray:
    """d H / d n_c up to a positive factor: -log p_c - H, over the entries with a positive count.
    An entry at zero (a category no candidate holds) gets 0: it must not dilute H, whatever the
    length of the taxonomy."""
    present = counts > 0
    p = counts[present] / counts[present].sum()
    gradient = np.zeros(len(counts))
    gradient[present] = -np.log(p) + (p * np.log(p)).sum()
    return gradient
