"""Accuracy of the scene-domain stage on RSICD, whose image ids carry a scene class.

benchmarks/data/rsicd_scene_domains.yaml maps 23 of RSICD's 30 scene classes to the paper's five
domains and leaves the ambiguous ones out, with the reasons. Each image of a mapped class goes
through the stage as a tile would in the build: its captions, and the OVRSIS95K categories the
caption stage finds in them. Reported: accuracy over the mapped images, the share called
`unknown`, and the confusion table, on two halves: even image numbers (the half the vocabulary in
taxonomy/data/domains.yaml was tuned on) and odd ones (held out). The captions are read from
../shared/data/real (never copied into the repository).
Usage: python benchmarks/eval_domains.py [--captions-per-image N] [--per-class K] [--show-errors N] [--smoke]
(--smoke: one image of each class and half, one caption each, 2 errors shown.)
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml
from _shared import RSICD_CAPTIONS, parse_args, require

from pipeline.stages.categories import CaptionCategorizer
from pipeline.stages.domains import UNKNOWN, DomainClassifier
from taxonomy import load_taxonomy

SCENE_MAP = Path(__file__).resolve().parent / "data" / "rsicd_scene_domains.yaml"
DOMAINS = ("town", "industrial", "forest", "waterfront", "wasteland")
ID = re.compile(r"^([a-z]+)_(\d+)$")


@dataclass(frozen=True)
class Image:
    id: str
    scene: str
    domain: str  # the expected domain
    captions: tuple[str, ...]


@dataclass
class Result:
    images: int
    correct: int
    unknown: int
    confusion: Counter  # (expected, called) -> images
    errors: list[tuple[Image, str]]

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def unknown_share(self) -> float:
        return self.unknown / self.images if self.images else 0.0


def load_scene_map() -> dict[str, str]:
    return yaml.safe_load(SCENE_MAP.read_text())["domains"]


def labelled_images(
    captions_path: Path, parity: int, per_class: int | None = None, captions_per_image: int = 5
) -> list[Image]:
    """Images of mapped classes whose number has the given parity (0 even, 1 odd), in id order;
    `per_class` keeps the first K of each class (by number)."""
    scene_map = load_scene_map()
    by_scene: dict[str, list[tuple[int, Image]]] = {}
    for row in map(json.loads, captions_path.open()):
        match = ID.match(row["id"])
        if not match or match[1] not in scene_map or int(match[2]) % 2 != parity:
            continue
        image = Image(row["id"], match[1], scene_map[match[1]], tuple(row["captions"][:captions_per_image]))
        by_scene.setdefault(match[1], []).append((int(match[2]), image))
    return [image for scene in sorted(by_scene) for _, image in sorted(by_scene[scene])[:per_class]]


def evaluate(images: list[Image], classifier: DomainClassifier, categorizer: CaptionCategorizer) -> Result:
    captions = [list(image.captions) for image in images]
    categories = [[c.name for c in found.categories] for found in categorizer.categorize(captions)]
    called = [d.name for d in classifier.classify(captions, categories)]
    confusion = Counter((image.domain, name) for image, name in zip(images, called))
    errors = [(image, name) for image, name in zip(images, called) if name != image.domain]
    return Result(len(images), len(images) - len(errors), called.count(UNKNOWN), confusion, errors)


def confusion_table(result: Result) -> str:
    columns = [*DOMAINS, UNKNOWN]
    lines = ["| expected \\ called | " + " | ".join(columns) + " | accuracy |", "|---" * (len(columns) + 2) + "|"]
    for expected in DOMAINS:
        row = [result.confusion[(expected, called)] for called in columns]
        total = sum(row)
        lines.append(
            f"| {expected} | " + " | ".join(map(str, row)) + f" | {row[DOMAINS.index(expected)] / max(total, 1):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--captions-per-image", type=int, default=5, help="RSICD has 5; 1 imitates a single generated caption"
    )
    parser.add_argument("--per-class", type=int, default=None, help="at most K images per class and half")
    parser.add_argument("--show-errors", type=int, default=0, metavar="N", help="print N errors of each half")
    args = parse_args(parser, captions_per_image=1, per_class=1, show_errors=2)

    captions_path = require(RSICD_CAPTIONS)
    categorizer = CaptionCategorizer(load_taxonomy("ovrsis95k"))
    classifier = DomainClassifier()
    for parity, name in ((0, "even ids (tuned on)"), (1, "odd ids (held out)")):
        images = labelled_images(captions_path, parity, args.per_class, args.captions_per_image)
        started = time.perf_counter()
        result = evaluate(images, classifier, categorizer)
        print(
            f"\n## {name}: {result.images} images, {args.captions_per_image} caption(s) each, "
            f"{time.perf_counter() - started:.0f} s"
        )
        print(f"accuracy {result.accuracy:.3f}, unknown {result.unknown_share:.1%}\n")
        print(confusion_table(result))
        per_scene = Counter(image.scene for image, _ in result.errors)
        print("\nerrors per scene class:", ", ".join(f"{s} {n}" for s, n in per_scene.most_common()) or "none")
        for image, called in result.errors[: args.show_errors]:
            print(f"  {image.id} ({image.domain}) -> {called}: {' | '.join(image.captions)}")


if __name__ == "__main__":
    main()
