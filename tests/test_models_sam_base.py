"""The segmenters share one per-tile loop (`BoxPromptSegmenter`), and `pipeline.models` has no import circle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.models.protocols import Segmenter, SegmentResult
from pipeline.models.registry import BACKENDS
from pipeline.models.segmenter import BoxPromptSegmenter

MODELS = Path(__file__).resolve().parents[1] / "pipeline" / "models"


class CountingSegmenter(BoxPromptSegmenter[int]):
    """A stand-in backend: a tile's "embedding" is its index; records what reaches the hooks."""

    def __init__(self) -> None:
        super().__init__("counting", "cpu")
        self.embedded: list[int] = []
        self.decoded: list[tuple[int, int]] = []

    def _embed(self, images):
        self.embedded.append(len(images))
        return list(range(len(images)))

    def _decode(self, image, tile, boxes):
        self.decoded.append((tile, len(boxes)))
        height, width = image.shape[:2]
        return SegmentResult(np.ones((len(boxes), height, width), bool), np.full(len(boxes), 0.5, np.float32))


def test_one_encoder_pass_per_batch_and_no_decoder_call_for_a_tile_without_boxes():
    segmenter = CountingSegmenter()
    assert isinstance(segmenter, Segmenter)
    images = [np.zeros((4, 6, 3), np.uint8), np.zeros((5, 7, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)]
    boxes = [np.zeros((2, 4), np.float32), np.zeros((0, 4), np.float32), np.zeros((1, 4), np.float32)]
    results = segmenter.segment(images, boxes)
    assert segmenter.embedded == [3] and segmenter.image_encoder_calls == 3
    assert segmenter.decoded == [(0, 2), (2, 1)]
    assert [r.masks.shape for r in results] == [(2, 4, 6), (0, 5, 7), (1, 3, 3)]
    assert results[1].scores.shape == (0,)
    assert segmenter.segment([], []) == [] and segmenter.embedded == [3] and segmenter.image_encoder_calls == 3


def test_every_segmenter_backend_runs_the_shared_loop():
    for name, backend in BACKENDS["segmenter"].items():
        assert issubclass(backend.load.__self__, BoxPromptSegmenter), name
