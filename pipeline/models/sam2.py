"""Box-prompted SAM 2 through transformers (`Sam2Model`), on the SAM backends' base and contract.

SAM 2's image encoder (Hiera) gives three feature levels instead of one embedding: they are
computed ONCE per tile for the whole batch of tiles, a tile's embedding is its slice of every
level, and its boxes are rescaled from the tile's own size (the image is not processed again).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from pipeline.models.segmenter import TransformersSegmenter
from pipeline.models.spec import BackendSpec


class Sam2Spec(BackendSpec):
    """transformers `Sam2Model` (facebook/sam2.1-hiera-tiny, -small, -base-plus, -large or a local folder)."""

    backend: Literal["sam2"] = "sam2"
    model: str = "facebook/sam2.1-hiera-small"
    revision: str | None = None


class Sam2Segmenter(TransformersSegmenter[list[torch.Tensor]]):
    """transformers `Sam2Model`: a tile's embedding is its slice of every Hiera level."""

    def __init__(self, model: str, revision: str | None = None, device: str | None = None) -> None:
        from transformers import Sam2Model, Sam2Processor

        super().__init__(Sam2Model, Sam2Processor, model, revision, device)

    def _per_tile(self, levels: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        return [[level[index : index + 1] for level in levels] for index in range(len(levels[0]))]

    def _prompt(self, image: np.ndarray, boxes: list[list[float]]) -> Mapping[str, torch.Tensor]:
        return self.processor(input_boxes=[boxes], original_sizes=[list(image.shape[:2])], return_tensors="pt")

    def _masks(self, pred_masks: torch.Tensor, prompt: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.processor.post_process_masks(pred_masks, prompt["original_sizes"])[0]
