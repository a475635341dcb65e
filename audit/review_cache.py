"""Decoded reviews, kept on disk so a rebuild does not decode every review again.

Decoding Label Studio's brush RLE is slow (label_studio_sdk's decoder walks bits in Python: about
10 ms per region of a 1024x1024 tile), and every build applies every review. A review and the
proposal it was shown are both immutable, so their decoded result (the reviewed mask and the
decisions) is cached under `OUT/audit/reviewed/HASH.png|.json`, keyed by the review's identity and
result, the shown proposal's digest and `RULES_VERSION` (bump it when audit/decisions.py changes its rules).
A missing or damaged cache entry is simply decoded again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from audit.decisions import review_annotation
from audit.ledger import Review
from pipeline.dataset.records import AuditDecision
from pipeline.files.atomic import atomic_path
from pipeline.files.layout import audit_dir
from pipeline.raster.outputs import write_png
from taxonomy.loader import Taxonomy

RULES_VERSION = 1


def reviewed(
    out_dir: Path, review: Review, shown: np.ndarray, taxonomy: Taxonomy, cache: bool = True
) -> tuple[np.ndarray, list[AuditDecision]]:
    """`review_annotation(shown, review.result)`, from the cache when it holds it. `cache=False` where
    `shown` is a stand-in (the shown proposal was not kept), so a guess is never cached as a fact."""
    if not cache:
        return review_annotation(shown, review.result, taxonomy)
    result = hashlib.sha256(json.dumps(review.result, sort_keys=True).encode()).hexdigest()
    key = json.dumps(
        [RULES_VERSION, taxonomy.version, list(review.identity), result, review.proposal_digest, shown.shape]
    )
    base = audit_dir(out_dir) / "reviewed" / hashlib.sha256(key.encode()).hexdigest()[:32]
    mask_file, decisions_file = base.with_suffix(".png"), base.with_suffix(".json")
    try:
        mask = np.asarray(Image.open(mask_file))
        decisions = [AuditDecision.model_validate(d) for d in json.loads(decisions_file.read_text())]
        if mask.shape == shown.shape:
            return mask, decisions
    except (OSError, UnidentifiedImageError, ValueError):
        pass  # not cached yet (or damaged): decode
    mask, decisions = review_annotation(shown, review.result, taxonomy)
    write_png(mask_file, mask)
    with atomic_path(decisions_file) as temporary:
        temporary.write_text(json.dumps([d.model_dump(mode="json") for d in decisions]))
    return mask, decisions
