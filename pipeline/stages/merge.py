"""Instance masks -> one semantic mask per tile, with every resolved overlap written down.

Conflict rule, deterministic, applied pixel by pixel where instances overlap; the first step that
separates two instances decides:
1. higher confidence = detector score x mask score ("confidence");
2. smaller area on top, so a car on a road or a ship in a harbour stays visible ("smaller area");
3. the category that comes first in the taxonomy file ("taxonomy order");
4. the instance detected first ("detection order"), so ties never depend on sort stability.
Before that, instances below `min_area` pixels are dropped and, if asked, holes inside each
instance are filled. Pixels no instance claims take the taxonomy's background class (its category
with `propose: false`, id 34 "unlabeled areas, background, clutter" in OVRSIS95K), as the released
dataset's masks do, so a model trained on the shards learns background too. That is
`background="auto"`, the default; a taxonomy without a background class leaves them 255.
`background="class"` insists on the class (an error without one); `background="ignore"` keeps
every unclaimed pixel 255. Nodata pixels are always 255: 255 means "no data", never "background".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from pycocotools import mask as coco_mask

from pipeline.dataset.records import Conflict, Instance
from taxonomy.loader import Taxonomy
from taxonomy.masks import IGNORE_INDEX as IGNORE

Background = Literal["auto", "class", "ignore"]  # what unclaimed pixels become (the module docstring)
BACKGROUNDS: tuple[str, ...] = get_args(Background)


@dataclass(frozen=True)
class MergeConfig:
    """How instance masks become one semantic mask; also the `merge:` section of the build YAML."""

    __pydantic_config__ = {"extra": "forbid"}  # the build YAML section (pipeline/build/config.py): a typo is an error

    min_area: int = 16
    fill_holes: bool = False
    background: Background = "auto"


@dataclass
class InstanceMask:
    category: str
    mask: np.ndarray  # (H, W) bool
    detector_score: float
    mask_score: float
    box: Sequence[float]
    phrase: str = ""


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean mask, JSON-ready (counts as str)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def merge_instances(
    instances: Sequence[InstanceMask],
    taxonomy: Taxonomy,
    valid: np.ndarray,
    config: MergeConfig = MergeConfig(),
) -> tuple[np.ndarray, list[Instance], list[Conflict]]:
    """The semantic mask (uint8), the instance records (with RLE, area kept, why dropped) and the conflicts."""
    height, width = valid.shape
    records: list[Instance] = []
    masks: list[np.ndarray | None] = []
    for item in instances:
        mask = _filled(item.mask) if config.fill_holes else item.mask.astype(bool)
        mask = mask & valid
        area = int(mask.sum())
        record = Instance(
            category=item.category,
            box=[float(v) for v in item.box],
            detector_score=float(item.detector_score),
            phrase=item.phrase,
            mask=encode_rle(mask),
            mask_score=float(item.mask_score),
            area=area,
        )
        if area < config.min_area:
            record.dropped = f"area {area} < min_area {config.min_area}"
            mask = None
        records.append(record)
        masks.append(mask)

    order = sorted(
        (i for i, m in enumerate(masks) if m is not None),
        key=lambda i: (
            -records[i].detector_score * records[i].mask_score,
            records[i].area,
            taxonomy.index_of(records[i].category),
            i,
        ),
    )
    owner = np.full((height, width), -1, dtype=np.int32)
    conflicts: list[Conflict] = []
    for i in order:
        claimed = masks[i] & (owner >= 0)
        if claimed.any():
            for winner, pixels in zip(*np.unique(owner[claimed], return_counts=True)):
                conflicts.append(_conflict(records, int(winner), i, int(pixels)))
        owner[masks[i] & (owner < 0)] = i

    semantic = np.full((height, width), _fill_value(taxonomy, config), dtype=np.uint8)
    for i in order:
        kept = owner == i
        records[i].area = int(kept.sum())
        semantic[kept] = taxonomy.index_of(records[i].category)
    semantic[~valid] = IGNORE
    return semantic, records, conflicts


def _conflict(records: list[Instance], winner: int, loser: int, pixels: int) -> Conflict:
    a, b = records[winner], records[loser]
    if a.detector_score * a.mask_score != b.detector_score * b.mask_score:
        rule = "confidence"
    elif a.area != b.area:
        rule = "smaller area"
    elif a.category != b.category:
        rule = "taxonomy order"
    else:
        rule = "detection order"
    return Conflict(
        winner=winner, loser=loser, winner_category=a.category, loser_category=b.category, pixels=pixels, rule=rule
    )


def _fill_value(taxonomy: Taxonomy, config: MergeConfig) -> int:
    """What unclaimed pixels become (see the module docstring)."""
    if config.background == "ignore":
        return IGNORE
    background = taxonomy.background_indices
    if background:
        return background[-1]
    if config.background == "auto":
        return IGNORE
    raise ValueError(f"background='class' needs a category with propose: false in taxonomy {taxonomy.name!r}")


def _filled(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled; scipy is imported here, on use, because MergeConfig (this
    module) is read by the build configuration parser, which should not pay ~0.4 s for scipy."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(mask)
