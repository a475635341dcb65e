"""Selection to a target against a random subset and the old per-category caps, on a simulated corpus.

    python benchmarks/bench_selection.py [--tiles 100000] [--target 20000] [--million] [--smoke]

(--smoke: 2,000 tiles to 400.)

The corpus imitates real co-occurrence: three categories (building, road, tree in spirit) sit in
most tiles with domain-dependent rates, the other 32 follow a Zipf long tail, each with a home
domain where it is three times likelier; five domains of unequal size; pixels split per tile by a
Dirichlet draw that gives the common categories more area. All three methods select (about) the
same N; "caps" is the rule `select_tiles` had before: visit tiles rarest-first and keep a tile only
while none of its categories is at the cap, with the cap searched so that it keeps as close to N
as it can. Reported: normalised entropy of tiles per category (1 = perfectly even), categories
below min(available, q) with q the water-filling quota of N, the max/min ratio of tiles per
category, the domain spread (smallest / largest domain), and the time. `--million` also times the
new method alone on 1,000,000 tiles.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _shared import parse_args
from scipy import sparse

from pipeline.dataset.selection import SelectionConfig, select, water_fill_quota
from pipeline.dataset.tile_table import TileTable

CATEGORIES = 35
DOMAINS = ("town", "industrial", "forest", "waterfront", "wasteland")
DOMAIN_SHARE = np.array([0.45, 0.2, 0.15, 0.12, 0.08])
COMMON_RATE = np.array(
    [  # P(category | domain) for the three common categories
        [0.92, 0.88, 0.60],  # town
        [0.85, 0.80, 0.35],
        [0.15, 0.30, 0.97],
        [0.45, 0.50, 0.55],
        [0.10, 0.25, 0.20],
    ]
)
TAIL_PER_TILE = 1.2  # expected number of long-tail categories per tile
TILE_PIXELS = 512 * 512


def simulate(tiles: int, seed: int = 0) -> TileTable:
    rng = np.random.default_rng(seed)
    domain = rng.choice(len(DOMAINS), size=tiles, p=DOMAIN_SHARE)
    tail = 1.0 / np.arange(1, CATEGORIES - 2) ** 1.1
    tail *= TAIL_PER_TILE / tail.sum()
    home = rng.integers(0, len(DOMAINS), size=CATEGORIES - 3)
    rows, cols, values = [], [], []
    for start in range(0, tiles, 200_000):  # in chunks: the dense draw is tiles x 35
        d = domain[start : start + 200_000]
        affinity = np.where(home[None, :] == d[:, None], 3.0, 1.0) / 1.4
        rate = np.concatenate([COMMON_RATE[d], np.minimum(tail[None, :] * affinity, 0.95)], axis=1)
        present = rng.random(rate.shape, dtype=np.float32) < rate
        weight = np.where(present, rng.gamma(np.r_[[3.0] * 3, [0.8] * (CATEGORIES - 3)], size=rate.shape), 0.0)
        area = np.floor(weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-9) * TILE_PIXELS * 0.9)
        r, c = np.nonzero(present & (area > 0))
        rows.append(r + start)
        cols.append(c)
        values.append(area[r, c].astype(np.int64))
    matrix = sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(tiles, CATEGORIES)
    )
    keys = [f"scene{i // 64:06d}__r{(i % 64) // 8 * 512}_c{i % 8 * 512}" for i in range(tiles)]
    return TileTable.build(keys, [f"c{j:02d}" for j in range(CATEGORIES)], DOMAINS, matrix, domain)


def caps_selection(table: TileTable, cap: int) -> np.ndarray:
    """The old rule: tiles rarest-first, each kept while none of its categories is at the cap."""
    held = np.zeros(len(table.categories), np.int64)
    available = table.category_tiles()
    indptr, indices = table.incidence.indptr, table.incidence.indices
    rarity = np.array([available[indices[indptr[i] : indptr[i + 1]]].min(initial=0) for i in range(len(table))])
    selected = np.zeros(len(table), bool)
    for i in np.lexsort((table.keys, rarity)):
        categories = indices[indptr[i] : indptr[i + 1]]
        if (held[categories] < cap).all():
            selected[i] = True
            held[categories] += 1
    return selected


def caps_to_target(table: TileTable, target: int) -> tuple[np.ndarray, int]:
    """The largest cap that keeps at most `target` tiles (the old rule has no target of its own)."""
    low, high = 1, int(table.category_tiles().max())
    best = caps_selection(table, low)
    while low < high:
        middle = (low + high + 1) // 2
        kept = caps_selection(table, middle)
        if kept.sum() <= target:
            low, best = middle, kept
        else:
            high = middle - 1
    return best, low


def measures(table: TileTable, selected: np.ndarray, quota: int) -> dict:
    tiles = table.category_tiles(selected)
    goal = np.minimum(table.category_tiles(), quota)
    present = tiles[tiles > 0]
    p = present / present.sum()
    domains = table.domain_tiles(selected)
    return {
        "tiles": int(selected.sum()),
        "entropy": float(-(p * np.log(p)).sum() / np.log(len(tiles))),
        "below quota": int((tiles < goal).sum()),
        "max/min": float(tiles.max() / max(tiles.min(), 1)),
        "smallest category": int(tiles.min()),
        "domain min/max": float(domains.min() / domains.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--target", type=int, default=20_000)
    parser.add_argument("--million", action="store_true", help="also time the new method on 1,000,000 tiles")
    args = parse_args(parser, tiles=2000, target=400, million=False)

    table = simulate(args.tiles)
    available = table.category_tiles()
    quota = water_fill_quota(available, args.target)
    print(f"{args.tiles:,} simulated tiles, target N = {args.target:,}, quota q = {quota} (water-filling)")
    print(
        f"tiles per category, all: max {available.max():,}, min {available.min():,}; "
        f"per domain: {dict(zip(DOMAINS, table.domain_tiles().tolist()))}"
    )
    before = measures(table, np.ones(len(table), bool), quota)
    print(f"all tiles: entropy {before['entropy']:.3f}, max/min {before['max/min']:.0f}")

    results = {}
    started = time.perf_counter()
    randomly = np.zeros(len(table), bool)
    randomly[np.random.default_rng(0).choice(len(table), args.target, replace=False)] = True
    results["random subset"] = (randomly, time.perf_counter() - started, "")
    started = time.perf_counter()
    capped, cap = caps_to_target(table, args.target)
    results["old caps"] = (capped, time.perf_counter() - started, f"cap {cap}, searched")
    started = time.perf_counter()
    balanced = select(table, SelectionConfig(target_tiles=args.target)).selected
    results["balanced (new)"] = (balanced, time.perf_counter() - started, "")

    print()
    print(
        "| method | tiles | normalised entropy | categories below min(available, q) "
        "| max/min | smallest category | domain min/max | time |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (selected, seconds, note) in results.items():
        m = measures(table, selected, quota)
        print(
            f"| {name} | {m['tiles']:,} | {m['entropy']:.3f} | {m['below quota']} | {m['max/min']:.1f} | "
            f"{m['smallest category']:,} | {m['domain min/max']:.2f} | "
            f"{seconds:.1f} s{' (' + note + ')' if note else ''} |"
        )

    if args.million:
        started = time.perf_counter()
        big = simulate(1_000_000, seed=1)
        built = time.perf_counter() - started
        started = time.perf_counter()
        chosen = select(big, SelectionConfig(target_tiles=200_000))
        seconds = time.perf_counter() - started
        m = measures(big, chosen.selected, chosen.quota)
        print(
            f"\n1,000,000 tiles -> 200,000: selection {seconds:.1f} s (table built in {built:.1f} s); "
            f"entropy {m['entropy']:.3f}, {m['below quota']} categories below min(available, {chosen.quota})"
        )


if __name__ == "__main__":
    main()
