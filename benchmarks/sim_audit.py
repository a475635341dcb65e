"""A simulated audit (issue 33, item 3): how fast each ranking signal (audit/ranking.py) raises the
dataset's mask quality, review by review, against the random order.

The world (seeded):
- the ground truth: generated tiles of SIZE px with a background and 1-4 rectangles of 5 classes, each
  class a colour with per-pixel noise; or, with --real, the SpaceNet tiles of ../shared/data/real cut
  into SIZE px tiles (a panchromatic scene with its 43 building footprints rasterized, and a Las Vegas
  scene with its road mask: background, building, road);
- proposals made from the ground truth by the paper's Table II error rates, per region (a connected
  component of one class): 8 % of masks corrected (boundary 4 %: the region grown or shrunk 2-4 px;
  merge 2 %: grown 6 px over its neighbours; filtering 2 %: dropped), 2 % of categories corrected
  (relabelled) and 0.5 % of tiles with a spurious region (a category the reviewer discards);
- each proposed region's detector x mask score: Beta(9, 1.5) for a correct region, Beta(5, 3) for a
  corrupted one (an assumption: wrong masks score lower, by this much; the low-confidence signal's
  figures depend on it, the others' do not);
- the model: a stand-in for Pi-Seg trained on the reviewed tiles (round 0, before any review: on the
  proposals), a per-pixel Gaussian classifier of colour with a 3x3 spatial smoothing of its class
  probabilities. It really is trained and really predicts, so disagreement and uncertainty are measured,
  not assumed; it is much weaker than Pi-Seg, so model-based signals are if anything understated.
- a reviewer who replaces each reviewed tile's mask with its ground truth.

Each round reviews ROUND % of the tiles, ranked by the signal (random: a seeded permutation); the
dataset's quality is the mIoU of every tile's current mask (reviewed or proposed) against the ground
truth. Prints the table of mIoU against reviews per signal, the reviews each needs to reach the random
order's final quality, and writes the plot.
Usage: python benchmarks/sim_audit.py [--tiles 800] [--size 48] [--round 2.5] [--budget 40] [--seed 0]
                                      [--real] [--plot docs/images/sim_audit.png] [--smoke]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _shared import SHARED_REAL, parse_args, require
from scipy.ndimage import binary_dilation, binary_erosion, label, uniform_filter

from audit import ranking
from pipeline.quality.confusion import Confusion

CLASSES = 6  # 0 = background
COLOURS = np.array([[90, 110, 80], [170, 80, 70], [120, 120, 130], [60, 140, 60], [70, 90, 170], [200, 190, 120]])
NOISE = 38.0  # per-pixel colour noise (sigma): the colour model is good, not perfect
ERRORS = {"boundary": 0.04, "merge": 0.02, "filtering": 0.02, "category": 0.02}
SPURIOUS = 0.005
SIGNALS = ("random", "low_confidence", "uncertainty", "disagreement", "combined")


@dataclass
class Tile:
    image: np.ndarray
    truth: np.ndarray
    proposal: np.ndarray
    scores: list[float] = field(default_factory=list)  # per proposed region, detector x mask
    corrupted: bool = False


def make_tiles(count: int, size: int, rng: np.random.Generator) -> list[Tile]:
    """COUNT generated tiles: rectangles of the 5 classes on a background, each class its colour plus noise."""
    tiles = []
    for _ in range(count):
        truth = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, 5)):
            h, w = rng.integers(size // 6, size // 2, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            truth[y : y + h, x : x + w] = rng.integers(1, CLASSES)
        image = np.clip(COLOURS[truth] + rng.normal(0, NOISE, (size, size, 3)), 0, 255).astype(np.float32)
        tiles.append(propose(image, truth, rng, CLASSES))
    return tiles


def real_tiles(size: int, rng: np.random.Generator) -> list[Tile]:
    """The SpaceNet scenes of ../shared/data/real as SIZE px tiles: 0 background, 1 building, 2 road."""
    import json

    import rasterio
    from rasterio.features import rasterize

    spacenet = require(SHARED_REAL / "spacenet")
    scenes = []
    with rasterio.open(spacenet / "sample_geotiff.tif") as source:
        shapes = [(f["geometry"], 1) for f in json.loads((spacenet / "geotiff_labels.geojson").read_text())["features"]]
        buildings = rasterize(shapes, out_shape=source.shape, transform=source.transform, dtype="uint8")
        scenes.append((source.read(1), buildings))
    with (
        rasterio.open(spacenet / "road_mask_input.tif") as source,
        rasterio.open(spacenet / "sample_road_raster_mask.tif") as roads,
    ):
        scenes.append((source.read(1), np.where(roads.read(1) > 0, 2, 0).astype(np.uint8)))
    tiles = []
    for pixels, truth in scenes:
        low, high = np.percentile(pixels[pixels > 0], (2, 98))
        grey = np.clip((pixels.astype(np.float32) - low) * 255 / (high - low), 0, 255)
        for y in range(0, truth.shape[0] - size + 1, size):
            for x in range(0, truth.shape[1] - size + 1, size):
                image = np.repeat(grey[y : y + size, x : x + size, None], 3, axis=2)
                tiles.append(propose(image, truth[y : y + size, x : x + size].copy(), rng, 3))
    return tiles


def propose(image: np.ndarray, truth: np.ndarray, rng: np.random.Generator, classes: int) -> Tile:
    """The tile with a proposal made from its ground truth at Table II's rates, region by region, and a
    detector x mask score per proposed region."""
    proposal = np.zeros_like(truth)
    scores, corrupted = [], False
    for category in range(1, classes):
        regions, count = label(truth == category)
        for number in range(1, count + 1):
            error = _draw_error(rng)
            corrupted |= error is not None
            scores.append(float(rng.beta(5, 3) if error else rng.beta(9, 1.5)))
            _propose(proposal, regions == number, category, error, rng, classes)
    if rng.random() < SPURIOUS:  # a category the reviewer discards: a region where nothing of it is
        size = truth.shape[0]
        h, w = rng.integers(size // 6, size // 3, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        proposal[y : y + h, x : x + w] = rng.integers(1, classes)
        scores.append(float(rng.beta(5, 3)))
        corrupted = True
    return Tile(image, truth, proposal, scores, corrupted)


def _draw_error(rng: np.random.Generator) -> str | None:
    draw, edge = rng.random(), 0.0
    for kind, rate in ERRORS.items():
        edge += rate
        if draw < edge:
            return kind
    return None


def _propose(proposal: np.ndarray, region: np.ndarray, category: int, error: str | None, rng, classes: int) -> None:
    """REGION as the build would propose it, with ERROR's kind of mistake (Table II's kinds)."""
    if error == "filtering":
        return
    if error == "boundary":
        steps = int(rng.integers(2, 5))
        region = (
            binary_dilation(region, iterations=steps)
            if rng.random() < 0.5
            else binary_erosion(region, iterations=steps)
        )
    if error == "merge":
        region = binary_dilation(region, iterations=6)
    if error == "category":
        category = int((category + rng.integers(1, classes - 1) - 1) % (classes - 1) + 1)
    proposal[region] = category


class ColourModel:
    """The stand-in for Pi-Seg: per-class Gaussian colour statistics from labelled pixels, probabilities
    smoothed over 3x3 neighbours."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
        pixels = np.concatenate([i.reshape(-1, 3) for i in images])
        labels = np.concatenate([m.reshape(-1) for m in masks])
        self.mean = np.stack([_mean_or(pixels[labels == c], COLOURS.mean(0)) for c in range(CLASSES)])
        self.var = np.stack([_var_or(pixels[labels == c]) for c in range(CLASSES)])
        self.prior = np.log(np.bincount(labels, minlength=CLASSES) + 1.0)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        x = image.reshape(-1, 1, 3)
        log = -0.5 * (((x - self.mean) ** 2) / self.var + np.log(self.var)).sum(-1) + self.prior
        log -= log.max(axis=1, keepdims=True)
        p = np.exp(log)
        p /= p.sum(axis=1, keepdims=True)
        p = p.T.reshape(CLASSES, *image.shape[:2])
        return uniform_filter(p, size=(1, 3, 3), mode="nearest")


def _mean_or(values: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return values.mean(0) if len(values) else fallback


def _var_or(values: np.ndarray) -> np.ndarray:
    return values.var(0) + 25.0 if len(values) > 1 else np.full(3, 60.0**2)


def quality(tiles: list[Tile], reviewed: set[int]) -> float:
    confusion = Confusion(CLASSES)
    for index, tile in enumerate(tiles):
        confusion.update(tile.truth if index in reviewed else tile.proposal, tile.truth)
    return confusion.scores().miou


def scores_of(signal: str, tiles: list[Tile], left: list[int], reviewed: set[int], seed: int) -> dict[str, float]:
    keys = [str(i) for i in left]
    if signal == "random":
        return ranking.random_scores(keys, seed)
    if signal == "low_confidence":
        return {str(i): ranking.low_confidence(tiles[i].scores) for i in left}
    if reviewed:
        model = ColourModel([tiles[i].image for i in reviewed], [tiles[i].truth for i in reviewed])
    else:  # round 0: no review yet, the model is trained on the proposals
        model = ColourModel([t.image for t in tiles], [t.proposal for t in tiles])
    probabilities = {i: model.probabilities(tiles[i].image) for i in left}
    disagreement = {str(i): ranking.disagreement(p.argmax(0), tiles[i].proposal) for i, p in probabilities.items()}
    if signal == "disagreement":
        return disagreement
    entropy = {str(i): ranking.uncertainty(p) for i, p in probabilities.items()}
    if signal == "uncertainty":
        return entropy
    confidence = {str(i): ranking.low_confidence(tiles[i].scores) for i in left}
    return ranking.combined(disagreement, confidence)


def simulate(tiles: list[Tile], signal: str, per_round: int, budget: int, seed: int) -> list[tuple[int, float]]:
    """(reviews so far, dataset mIoU) after each round of SIGNAL's queue."""
    reviewed: set[int] = set()
    curve = [(0, quality(tiles, reviewed))]
    order = ranking.queue_order(ranking.random_scores([str(i) for i in range(len(tiles))], seed), len(tiles))
    while len(reviewed) < budget:
        left = [i for i in range(len(tiles)) if i not in reviewed]
        count = min(per_round, budget - len(reviewed))
        if signal == "random":  # one seeded permutation, walked in order: the unbiased sample
            chosen = [int(k) for k in order if int(k) not in reviewed][:count]
        else:
            chosen = [int(k) for k in ranking.queue_order(scores_of(signal, tiles, left, reviewed, seed), count)]
        reviewed.update(chosen)
        curve.append((len(reviewed), quality(tiles, reviewed)))
    return curve


def reviews_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((reviews for reviews, miou in curve if miou >= target - 1e-12), None)


def plot(curves: dict[str, list[tuple[int, float]]], path: Path, tiles: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for signal, curve in curves.items():
        axes.plot([r for r, _ in curve], [100 * m for _, m in curve], marker=".", label=signal)
    axes.set_xlabel(f"tiles reviewed (of {tiles})")
    axes.set_ylabel("dataset mIoU against ground truth (%)")
    axes.set_title("Simulated audit: dataset quality by ranking signal")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=800)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--round", type=float, default=2.5, help="tiles reviewed per round, % of all tiles")
    parser.add_argument("--budget", type=float, default=40.0, help="tiles reviewed in all, % of all tiles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", action="store_true", help="SpaceNet tiles of ../shared/data/real, not generated ones")
    parser.add_argument("--plot", type=Path, default=Path("docs/images/sim_audit.png"))
    args = parse_args(parser, tiles=60, size=32, round=10.0, budget=30.0, plot=None)
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    tiles = real_tiles(args.size, rng) if args.real else make_tiles(args.tiles, args.size, rng)
    args.tiles = len(tiles)
    per_round = max(1, round(args.tiles * args.round / 100))
    budget = round(args.tiles * args.budget / 100)
    corrupted = sum(t.corrupted for t in tiles)
    print(
        f"{args.tiles} tiles of {args.size} px, {corrupted} with a corrected or discarded proposal; "
        f"{per_round} reviews a round, {budget} in all"
    )
    curves = {signal: simulate(tiles, signal, per_round, budget, args.seed) for signal in SIGNALS}
    print("\n| reviews | " + " | ".join(SIGNALS) + " |\n|---:|" + "---:|" * len(SIGNALS))
    for row in range(len(curves["random"])):
        reviews = curves["random"][row][0]
        print(f"| {reviews} | " + " | ".join(f"{100 * curves[s][row][1]:.2f}" for s in SIGNALS) + " |")
    target = curves["random"][-1][1]
    print(f"\nreviews to reach the random order's final quality (mIoU {100 * target:.2f} at {budget} reviews):")
    for signal in SIGNALS:
        needed = reviews_to_reach(curves[signal], target)
        share = f"{100 * needed / budget:.0f} % of random's" if needed is not None else "not reached"
        print(f"  {signal:15s} {needed if needed is not None else '-':>5} ({share})")
    if args.plot:
        plot(curves, args.plot, args.tiles)
        print(f"plot: {args.plot}")
    print(f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
