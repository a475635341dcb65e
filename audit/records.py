"""Reading and rewriting a build's records and masks for the audit.

The first pull keeps the build's proposal of each reviewed tile as `masks/KEY.proposed.png`, and
every pull starts again from that proposal, so pulling twice gives the same result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from audit.settings import AuditError
from pipeline.records import TileRecord, read_records
from pipeline.records import write_records as write_record_file


def load_records(out_dir: Path) -> list[TileRecord]:
    path = out_dir / "records.jsonl"
    if not path.is_file():
        raise AuditError(f"{path} not found: --records must be a build or `ovrsis annotate` output folder")
    return read_records(path)


def write_records(out_dir: Path, records: list[TileRecord]) -> None:
    write_record_file(out_dir / "records.jsonl", records)


def proposal_path(out_dir: Path, record: TileRecord) -> Path:
    if not record.semantic_mask:
        raise AuditError(f"tile {record.key} has no semantic mask (quarantined?)")
    current = out_dir / record.semantic_mask
    kept = current.with_name(current.stem + ".proposed.png")
    return kept if kept.is_file() else current


def proposal_mask(out_dir: Path, record: TileRecord) -> np.ndarray:
    return np.asarray(Image.open(proposal_path(out_dir, record)))


def keep_proposal(out_dir: Path, record: TileRecord) -> None:
    """Copy the build's mask aside once, before the audit overwrites it."""
    current = out_dir / record.semantic_mask
    kept = current.with_name(current.stem + ".proposed.png")
    if not kept.is_file():
        shutil.copyfile(current, kept)
