"""One review, read against the proposal the reviewer was shown: the reviewed mask and the decisions.

The labelling interface (audit/queue.py) shows one brush region per proposed category, with id
`r{category index}`, a "discard" choice over the proposed categories and a per-region
"correction" choice (boundary / merge / filtering). Per proposed category c:

- c among the discard choices, or its region deleted  -> category **discarded** (a false positive);
  its pixels become 255, not labelled (docs/architecture.md, "Masks"); no mask decision (there is no
  mask left to judge);
- its region relabelled to d                         -> category **corrected** (to d); relabelled to the
  background class it is **discarded** (a false positive; the pixels become background);
- otherwise                                          -> category **accepted**.

The taxonomy's background class (`propose: false`, e.g. ovrsis95k's "unlabeled areas, background,
clutter") is shown as an editable region too, so the reviewed mask keeps it, but it is not a
proposal: it gets no decision and does not count in Table II.

Every kept category (accepted or corrected) gets one mask decision:

- **accepted** when the reviewer kept the region as shown (same pixels) and did not merge it;
- **corrected** otherwise, with the kind: the reviewer's per-region choice where set
  (`kind_source: reviewer`), else inferred (`kind_source: inferred`):
  merge     - relabelled to another category the tile also proposed (two categories merged);
  filtering - pixels only removed (an instance or region filtered out);
  boundary  - otherwise (the outline repainted).

The IoU of shown vs reviewed region is recorded in every case, as a measure, not as the rule.
Extra regions the reviewer painted are joined to a kept category with the same final label (a
region deleted and painted anew under its own label, not ticked under discard, is the outline
redrawn), or, for a label nobody proposed, recorded as an **added** category (a miss of the build;
never the background class, which is only painted). The reviewed
semantic mask is painted from the reviewed regions, larger first, smaller on top (as the merge).
"""

from __future__ import annotations

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from ovrsis.errors import ReviewShapeError
from pipeline.dataset.records import AuditDecision
from taxonomy.loader import Category, Taxonomy
from taxonomy.masks import IGNORE_INDEX as IGNORE

CORRECTION_KINDS = ("boundary", "merge", "filtering")
# Label Studio's brush RLE opens with a 53-bit header: the count of values (32 bits), the word size
# less one (5 bits) and four run-length field sizes less one (4 bits each).
RLE_HEADER_BITS = 53


def proposed_categories(proposal: np.ndarray, taxonomy: Taxonomy) -> list[Category]:
    present = set(np.unique(proposal).tolist()) - {IGNORE}
    return [c for c in taxonomy.categories if c.index in present]


def review_annotation(
    shown: np.ndarray, result: list[dict], taxonomy: Taxonomy
) -> tuple[np.ndarray, list[AuditDecision]]:
    """The reviewed semantic mask and the decisions of one annotation's result list."""
    regions, discarded, kinds = _read_result(result, shown.shape, taxonomy)
    present = proposed_categories(shown, taxonomy)
    proposed_names = {c.name for c in present if c.propose}
    extras = _extra_regions(regions, {f"r{c.index}" for c in present})
    decisions: list[AuditDecision] = []
    kept: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}  # proposed category -> (final label, reviewed, shown)
    for category in present:
        region = regions.get(f"r{category.index}")
        if region is None and category.name not in discarded and category.name in extras:
            region = (category.name, extras.pop(category.name))  # deleted and painted anew: the outline redrawn
        if not category.propose:  # the background class: painted as reviewed, never judged
            if region is not None:
                kept[category.name] = (*region, shown == category.index)
            continue
        if (
            category.name in discarded
            or region is None
            or not taxonomy.categories[taxonomy.index_of(region[0])].propose
        ):
            decisions.append(AuditDecision(target=f"category:{category.name}", state="discarded"))
            if region is not None and category.name not in discarded:  # relabelled to the background: painted so
                kept[category.name] = (*region, shown == category.index)
            continue
        label, pixels = region
        state = "accepted" if label == category.name else "corrected"
        decisions.append(
            AuditDecision(
                target=f"category:{category.name}", state=state, corrected_to=None if label == category.name else label
            )
        )
        kept[category.name] = (label, pixels, shown == category.index)
    added = _join_extras(extras, kept, decisions, taxonomy)
    for name, (label, pixels, was_shown) in kept.items():
        if name in proposed_names and taxonomy.categories[taxonomy.index_of(label)].propose:
            merged = label != name and label in proposed_names
            region_id = f"r{taxonomy.index_of(name)}"
            decisions.append(_mask_decision(name, pixels, was_shown, merged, kinds.get(region_id)))
    painted = [(taxonomy.index_of(label), pixels) for label, pixels, _ in kept.values()] + added
    mask = np.full(shown.shape, IGNORE, np.uint8)
    for index, pixels in sorted(painted, key=lambda p: -int(p[1].sum())):  # larger first, smaller on top
        mask[pixels] = index
    return mask, decisions


def _mask_decision(
    name: str, reviewed: np.ndarray, shown: np.ndarray, merged: bool, chosen: str | None
) -> AuditDecision:
    iou = _iou(shown, reviewed)
    if not merged and np.array_equal(reviewed, shown):
        return AuditDecision(target=f"mask:{name}", state="accepted", mask_iou=iou)
    if chosen is not None:
        kind, source = chosen, "reviewer"
    elif merged:
        kind, source = "merge", "inferred"
    elif not (reviewed & ~shown).any():
        kind, source = "filtering", "inferred"
    else:
        kind, source = "boundary", "inferred"
    return AuditDecision(target=f"mask:{name}", state="corrected", mask_iou=iou, kind=kind, kind_source=source)


def _extra_regions(regions: dict, proposal_ids: set[str]) -> dict[str, np.ndarray]:
    """The regions the reviewer painted anew (ids other than the proposals'), united per label."""
    extras: dict[str, np.ndarray] = {}
    for region_id, (label, pixels) in sorted(regions.items()):
        if region_id not in proposal_ids:
            extras[label] = extras[label] | pixels if label in extras else pixels
    return extras


def _join_extras(
    extras: dict[str, np.ndarray], kept: dict, decisions: list[AuditDecision], taxonomy: Taxonomy
) -> list[tuple[int, np.ndarray]]:
    """New regions: joined to the kept category with the same final label (a correction of its mask),
    else painted; an added category (a miss of the build) unless it is the background class."""
    by_label = {label: name for name, (label, _, _) in sorted(kept.items(), reverse=True)}
    painted = []
    for label, pixels in extras.items():
        if label in by_label:
            final, reviewed, shown = kept[by_label[label]]
            kept[by_label[label]] = (final, reviewed | pixels, shown)
            continue
        painted.append((taxonomy.index_of(label), pixels))
        if taxonomy.categories[taxonomy.index_of(label)].propose:
            decisions.append(
                AuditDecision(
                    target=f"category:{label}",
                    state="corrected",
                    corrected_to=label,
                    kind="added",
                    kind_source="reviewer",
                    mask_iou=0.0,
                )
            )
    return painted


def check_regions(result: list[dict], shape: tuple[int, int] | None) -> None:
    """Refuse a result whose brush regions do not fit the tile of `shape` (height, width), or, where
    the tile is not known (None), their own stated size, without decoding them: what a pull checks
    before a review enters the ledger."""
    for item in result:
        try:
            if item.get("type") == "brushlabels":
                height, width = shape or (item["original_height"], item["original_width"])
                brush_rle(item, height, width)
        except ReviewShapeError:
            raise
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as error:
            raise _unexpected(item, error) from None


def brush_rle(item: dict, height: int, width: int) -> list[int]:
    """A brush region's RLE, once its header shows it fits the tile. Why before decoding: Label Studio's
    decoder allocates every value the RLE declares and a bit string of 8 characters a byte, so a 55 KB
    RLE can claim a gibibyte. The region must state the tile's size, declare its RGBA (height*width*4
    values) and be no longer than that many values can be encoded in."""
    stated = (item.get("original_width", width), item.get("original_height", height))
    if stated != (width, height):
        raise ReviewShapeError(f"region {item['id']} is {stated[0]}x{stated[1]}, the tile {width}x{height}")
    rle = item["value"]["rle"]
    declared, longest = _rle_bounds(rle)
    if declared != height * width * 4:
        raise ReviewShapeError(
            f"region {item['id']} declares {declared} RLE values, the {width}x{height} tile's RGBA holds "
            f"{height * width * 4}: not decoded"
        )
    if len(rle) > longest:
        raise ReviewShapeError(
            f"region {item['id']}'s RLE is {len(rle)} bytes, longer than {declared} values can be encoded in "
            f"({longest}): not decoded"
        )
    return rle


def _rle_bounds(rle: list[int]) -> tuple[int, int]:
    """The values an RLE declares, and the most bytes that many can take: each run costs a flag bit,
    2 bits choosing a length field, that field, then its words; a run of one value with the widest
    field is the dearest, so no value costs more than 3 + widest field + word size bits."""
    header_bytes = -(-RLE_HEADER_BITS // 8)
    if not isinstance(rle, list) or len(rle) < header_bytes:
        raise ValueError("the RLE is no list of bytes holding a header")
    header = int.from_bytes(bytes(rle[:header_bytes]), "big") >> (8 * header_bytes - RLE_HEADER_BITS)
    declared, word_size = header >> 21, (header >> 16) % 32 + 1
    widest = max((header >> shift) % 16 + 1 for shift in (12, 8, 4, 0))
    return declared, -(-(RLE_HEADER_BITS + declared * (3 + widest + word_size)) // 8)


def _read_result(result: list[dict], shape: tuple[int, int], taxonomy: Taxonomy):
    height, width = shape
    regions: dict[str, tuple[str, np.ndarray]] = {}
    discarded: set[str] = set()
    kinds: dict[str, str] = {}
    for item in result or []:
        try:
            value = item["value"]
            if item.get("from_name") == "discard":
                discarded.update(value.get("choices", []))
            elif item.get("from_name") == "correction":
                chosen = [c for c in value.get("choices", []) if c in CORRECTION_KINDS]
                if chosen:
                    kinds[item["id"]] = chosen[0]
            elif item.get("type") == "brushlabels":
                label = value["brushlabels"][0]
                taxonomy.index_of(label)
                pixels = decode_rle(brush_rle(item, height, width)).reshape(height, width, 4)[:, :, 3] > 127
                if item["id"] in regions:  # the same region in several parts: union
                    pixels |= regions[item["id"]][1]
                regions[item["id"]] = (label, pixels)
        except ReviewShapeError:
            raise
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise _unexpected(item, error) from None
    return regions, discarded, kinds


def _unexpected(item: object, error: Exception) -> ReviewShapeError:
    found = item.get("id") if isinstance(item, dict) else None
    return ReviewShapeError(f"result item {found!r} in an unexpected shape ({type(error).__name__}: {error})")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return round(float(np.logical_and(a, b).sum() / union), 6) if union else 1.0
