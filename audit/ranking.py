"""Which tiles a reviewer should see next (issue 33, item 2): ranking signals over a round's tiles, each
usable alone or combined, and the random order the paper's Table II sample keeps.

Every signal scores a tile so that a higher score means "review this sooner":
- `disagreement`: 1 - the tile's IoU between a model's prediction and the proposal (a model trained on
  the reviewed tiles disagrees where the proposal is likely wrong);
- `uncertainty`: the model's mean per-pixel entropy of its class probabilities (where it does not know);
- `low_confidence`: 1 - the proposal's own confidence (the weakest of its detector x mask scores);
- `random`: a seeded random order (the unbiased sample for Table II's statistics: never re-ranked).
`combined` averages the ranks of the signals it is given, so no signal's scale dominates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from taxonomy.masks import IGNORE_INDEX

SIGNALS = ("disagreement", "uncertainty", "low_confidence", "random")


def tile_iou(a: np.ndarray, b: np.ndarray, ignore: int = IGNORE_INDEX) -> float:
    """Mean IoU over the classes either mask holds (pixels `ignore` in either left out); 1.0 for two masks
    with nothing labelled."""
    keep = (a != ignore) & (b != ignore)
    a, b = a[keep], b[keep]
    classes = np.union1d(np.unique(a), np.unique(b))
    if classes.size == 0:
        return 1.0
    ious = [np.sum((a == c) & (b == c)) / np.sum((a == c) | (b == c)) for c in classes]
    return float(np.mean(ious))


def disagreement(prediction: np.ndarray, proposal: np.ndarray) -> float:
    return 1.0 - tile_iou(prediction, proposal)


def uncertainty(probabilities: np.ndarray) -> float:
    """Mean per-pixel entropy (nats) of class probabilities shaped (classes, H, W)."""
    p = np.clip(probabilities, 1e-12, 1.0)
    return float(-(p * np.log(p)).sum(axis=0).mean())


def low_confidence(scores: Sequence[float]) -> float:
    """1 - the weakest of a proposal's instance scores (detector x mask); 0 for a proposal with none."""
    return 1.0 - min(scores) if len(scores) else 0.0


def random_scores(keys: Sequence[str], seed: int) -> dict[str, float]:
    values = np.random.default_rng(seed).random(len(keys))
    return dict(zip(keys, values.tolist(), strict=True))


def ranks(scores: Mapping[str, float]) -> dict[str, float]:
    """Each key's rank in [0, 1] (1 = the highest score; ties share the mean rank)."""
    keys = list(scores)
    if len(keys) < 2:
        return dict.fromkeys(keys, 1.0)
    values = np.array([scores[k] for k in keys], dtype=np.float64)
    order = values.argsort(kind="stable")
    positions = np.empty(len(keys))
    positions[order] = np.arange(len(keys))
    for value in np.unique(values):  # ties: the mean of their positions
        tied = values == value
        positions[tied] = positions[tied].mean()
    return dict(zip(keys, (positions / (len(keys) - 1)).tolist(), strict=True))


def combined(*signals: Mapping[str, float]) -> dict[str, float]:
    """The mean of each signal's ranks among the keys every signal scores."""
    keys = sorted(set.intersection(*(set(s) for s in signals)))
    ranked = [ranks({k: s[k] for k in keys}) for s in signals]
    return {k: float(np.mean([r[k] for r in ranked])) for k in keys}


def queue_order(scores: Mapping[str, float], count: int) -> list[str]:
    """The COUNT keys to review next: highest score first, key order among equals (reproducible)."""
    return sorted(scores, key=lambda k: (-scores[k], k))[:count]
