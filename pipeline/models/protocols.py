"""What the imagery stage asks of its models: three Protocols, and the set of three a build holds.

Every backend in `pipeline.models.registry` is typed by one of these, so a new backend is checked
against the same contract the annotator relies on (one caption per tile; boxes tied to prompt
categories; one mask per box, one image embedding per tile).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class PromptPhrase:
    text: str  # what the detector reads ("oil tank")
    category: str  # the taxonomy category it stands for ("storage tank")


@dataclass
class Detection:
    box: list[float]  # pixel x0, y0, x1, y1
    score: float
    category: str
    phrase: str


@dataclass
class SegmentResult:
    masks: np.ndarray  # (N, H, W) bool, one per box
    scores: np.ndarray  # (N,) predicted mask IoU

    @staticmethod
    def empty(height: int, width: int) -> SegmentResult:
        return SegmentResult(np.zeros((0, height, width), bool), np.zeros(0, np.float32))


@runtime_checkable
class Captioner(Protocol):
    model_id: str

    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        """One caption per tile (H, W, 3 uint8)."""


@runtime_checkable
class Detector(Protocol):
    model_id: str

    def detect(self, images: Sequence[np.ndarray], prompts: Sequence[Sequence[PromptPhrase]]) -> list[list[Detection]]:
        """Boxes for each tile, prompted with that tile's phrases."""


@runtime_checkable
class Segmenter(Protocol):
    model_id: str
    image_encoder_calls: int  # counted, so tests can prove one embedding per tile

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[SegmentResult]:
        """For each tile (H, W, 3 uint8) and its boxes (N, 4 xyxy pixels), one mask per box."""


class Models(Protocol):
    """What `Annotator` uses: `ModelSet` is the real one; tests wrap single models to inject faults."""

    captioner: Captioner
    detector: Detector
    segmenter: Segmenter

    def provenance(self, used: set[str]) -> dict:
        """Model ids, revisions and settings of the models a tile went through."""
