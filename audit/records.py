"""Reading and rewriting a build's records and masks for the audit.

Where a tile has a review, `masks/KEY.png` is the reviewed mask and `masks/KEY.proposed.png` the
build's proposal; elsewhere `masks/KEY.png` is the proposal. The proposal a reviewer was shown is
kept by content digest in `audit/shown/DIGEST.png`, so a review can be judged against what was
shown even after a rebuild changed the proposal (a stale review). The digest comes from Label
Studio: only a digest as `mask_digest` makes it names a file, and a kept proposal is used only when
its values still have that digest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from audit.decisions import ReviewShapeError
from audit.names import proposal_digest
from audit.settings import AuditError
from pipeline.dataset.records import TileRecord, read_records
from pipeline.dataset.records import write_records as write_record_file
from pipeline.files.layout import audit_dir, records_file
from pipeline.files.safe_names import confined_path
from pipeline.raster.outputs import mask_digest, write_png


def load_records(out_dir: Path) -> list[TileRecord]:
    path = records_file(out_dir)
    if not path.is_file():
        raise AuditError(f"{path} not found: --records must be a build or `ovrsis annotate` output folder")
    return read_records(path)


def write_records(out_dir: Path, records: list[TileRecord]) -> None:
    write_record_file(records_file(out_dir), records)


def mask_path(out_dir: Path, record: TileRecord) -> Path:
    if not record.semantic_mask:
        raise AuditError(f"tile {record.key} has no semantic mask (quarantined?)")
    return out_dir / record.semantic_mask


def kept_proposal_path(out_dir: Path, record: TileRecord) -> Path:
    current = mask_path(out_dir, record)
    return current.with_name(current.stem + ".proposed.png")


def proposal_path(out_dir: Path, record: TileRecord) -> Path:
    """The build's proposal: kept aside once a review replaced the mask, else the mask itself."""
    kept = kept_proposal_path(out_dir, record)
    return kept if kept.is_file() else mask_path(out_dir, record)


def proposal_mask(out_dir: Path, record: TileRecord) -> np.ndarray:
    return read_mask(proposal_path(out_dir, record))


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def keep_proposal(out_dir: Path, record: TileRecord) -> None:
    """Copy the build's mask aside, before a review overwrites it."""
    kept = kept_proposal_path(out_dir, record)
    if not kept.is_file():
        shutil.copyfile(mask_path(out_dir, record), kept)


def shown_path(out_dir: Path, digest: str) -> Path:
    """Where the proposal of `digest` is kept (UnsafeName for anything but a digest `mask_digest` makes)."""
    return confined_path(audit_dir(out_dir) / "shown", f"{proposal_digest(digest)}.png", "proposal digest")


def remember_shown(out_dir: Path, mask: np.ndarray) -> str:
    """Keep the proposal a reviewer is shown (by digest); returns the digest."""
    digest = mask_digest(mask)
    path = shown_path(out_dir, digest)
    if not path.is_file():
        write_png(path, mask)
    return digest


def shown_mask(out_dir: Path, digest: str | None) -> np.ndarray | None:
    """The proposal a reviewer was shown; None where it was not kept. ReviewShapeError where the kept file
    is no longer that proposal (not a PNG, or other values): a review is never judged against another mask."""
    path = None if digest is None else shown_path(out_dir, digest)
    if path is None or not path.is_file():
        return None
    try:
        mask = read_mask(path)
    except OSError as error:  # (PIL's UnidentifiedImageError is one)
        raise ReviewShapeError(f"the proposal shown, {path}, cannot be read ({error})") from None
    if mask_digest(mask) != digest:
        raise ReviewShapeError(f"the proposal shown, {path}, no longer holds the proposal of that digest")
    return mask
