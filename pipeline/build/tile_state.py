"""A tile between stages (`TileState`): what the stages set, in a form the stage cache stores and a task
hands to another process. Apart from the Annotator, so the stage cache and the flow need not import it."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.dataset.records import TileRecord
from pipeline.models.detector import Detection, PromptPhrase
from pipeline.stages.phrases import Phrase


@dataclass
class TileState:
    """A tile between stages: picklable, no pixels."""

    record: TileRecord
    captions: list[str] = field(default_factory=list)
    parsed: list[list[Phrase]] = field(default_factory=list)  # per caption
    prompts: list[PromptPhrase] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    masks: list[tuple[dict, float]] = field(default_factory=list)  # COCO RLE and mask score per detection
    mask_png: bytes | None = None  # the semantic mask, PNG-encoded
    used_models: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.record.quarantine is None

    def semantic_mask(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.mask_png)))
