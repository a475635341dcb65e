"""The tile record: one per tile, carried through every stage (docs/architecture.md, "The record").

JSON-serialisable and validated, so a record written by one stage (or one machine) can be read by
the next without guessing. `schema_version` changes whenever a field changes meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from pipeline.files.jsonl import atomic_writer, write_json_line
from pipeline.stages.categories import ProposedCategory
from pipeline.stages.phrases import Phrase

SCHEMA_VERSION = 1
AuditState = Literal["pending", "accepted", "corrected", "discarded"]


class Window(BaseModel):
    row_off: int
    col_off: int
    height: int
    width: int


class SourceInfo(BaseModel):
    path: str
    sha256: str
    window: Window
    crs: str | None = None  # WKT; None for plain images
    transform: list[float] | None = None  # affine (a, b, c, d, e, f) of this tile; None when not georeferenced
    band_mapping: list[int]  # 1-based source bands used as R, G, B
    stretch: str  # how values became 8-bit, e.g. "none" or "percentile 2-98 per band"
    nodata: float | None = None
    dtype: str
    raster_width: int
    raster_height: int


class Caption(BaseModel):
    text: str
    model: str  # model id, or "file" when captions came with the data


class Domain(BaseModel):
    name: str  # town | industrial | forest | waterfront | wasteland | unknown
    score: float


class Instance(BaseModel):
    category: str
    box: list[float]  # pixel x0, y0, x1, y1 in the tile
    detector_score: float
    phrase: str = ""  # the prompt text the detector tied the box to
    mask: dict | None = None  # COCO RLE {"size": [h, w], "counts": str}
    mask_score: float | None = None
    area: int = 0  # pixels this instance holds in the semantic mask after the merge
    dropped: str | None = None  # why the merge left it out (e.g. "area 12 < min_area 32")


class Conflict(BaseModel):
    winner: int  # instance indices
    loser: int
    winner_category: str
    loser_category: str
    pixels: int
    rule: str  # which step of the merge rule decided


class AuditDecision(BaseModel):
    target: str  # "category:NAME" or "mask:NAME"
    state: AuditState = "pending"
    corrected_to: str | None = None
    reviewer: str | None = None
    time: str | None = None
    mask_iou: float | None = None
    # masks: "boundary" | "merge" | "filtering" (how it was corrected); categories: "added" (painted by the
    # reviewer, not proposed). kind_source says whether the reviewer chose the kind or it was inferred.
    kind: str | None = None
    kind_source: Literal["reviewer", "inferred"] | None = None


class ReviewRef(BaseModel):
    """Which human review a tile's mask and categories come from (an entry of OUT/audit/ledger.jsonl)."""

    queue: str  # "sample" (random, stratified), "uncertain", "stale", ...
    project_id: int
    task_id: int
    annotation_id: int
    updated_at: str
    reviewer: str | None = None
    proposal_digest: str | None = None  # digest of the proposal the reviewer was shown
    stale: bool = False  # the build's proposal has changed since: the review still wins; re-queue with --stale
    # Pixels per category in the reviewed mask (the taxonomy's background classes and the ignore value left
    # out, as for the merged instances' areas): what selection and the balance report count for this tile,
    # so a reviewed tile reaches the dataset on what the reviewer left, not on what the build proposed.
    # None in records written before reviews were counted: read as the proposal until the ledger is
    # applied again (every build and `ovrsis audit pull` do).
    pixels: dict[str, int] | None = None


class Quarantine(BaseModel):
    stage: str
    reason: str


class TileRecord(BaseModel):
    schema_version: int = SCHEMA_VERSION
    key: str
    source: SourceInfo
    domain: Domain | None = None
    captions: list[Caption] = Field(default_factory=list)
    phrases: list[Phrase] = Field(default_factory=list)
    categories: list[ProposedCategory] = Field(default_factory=list)
    unmatched: list[str] = Field(default_factory=list)
    negated: list[str] = Field(default_factory=list)
    instances: list[Instance] = Field(default_factory=list)
    semantic_mask: str | None = None  # path of the uint8 PNG, relative to the output folder
    proposal_digest: str | None = None  # pipeline.raster.outputs.mask_digest of the mask the build proposed
    conflicts: list[Conflict] = Field(default_factory=list)
    audit: list[AuditDecision] = Field(default_factory=list)
    review: ReviewRef | None = None  # set where a human review replaced the proposal
    quarantine: Quarantine | None = None
    provenance: dict = Field(default_factory=dict)


def read_records(path: Path) -> list[TileRecord]:
    """A records.jsonl file, validated record by record."""
    return [TileRecord.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def write_records(path: Path, records: list[TileRecord]) -> None:
    """Rewrite a records.jsonl file atomically."""
    with atomic_writer(path) as handle:
        for record in records:
            write_json_line(handle, record.model_dump(mode="json"))


def tile_key(source_stem: str, row_off: int, col_off: int) -> str:
    """Stable id of a tile within a build: `{source_stem}__r{row_off}_c{col_off}`."""
    return f"{source_stem}__r{row_off}_c{col_off}"
