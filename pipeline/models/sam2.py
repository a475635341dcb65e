"""Box-prompted SAM 2 through transformers (`Sam2Model`), the same contract as the SAM backends.

SAM 2's image encoder (Hiera) gives three feature levels instead of one embedding; they are
computed ONCE per tile for the whole batch of tiles, and each tile's boxes are decoded in one
prompt batch against its slice of every level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from pipeline.models import quiet_transformers
from pipeline.models.device import pick_device
from pipeline.models.protocols import SegmentResult
from pipeline.models.spec import BackendSpec


class Sam2Spec(BackendSpec):
    backend: Literal["sam2"] = "sam2"
    model: str = "facebook/sam2.1-hiera-small"
    revision: str | None = None


class Sam2Segmenter:
    def __init__(self, model: str, revision: str | None = None, device: str | None = None) -> None:
        from transformers import Sam2Model, Sam2Processor

        quiet_transformers()
        self.device = device or pick_device()
        self.processor = Sam2Processor.from_pretrained(model, revision=revision)
        self.model = Sam2Model.from_pretrained(model, revision=revision).to(self.device).eval()
        self.model_id = model
        self.image_encoder_calls = 0

    @classmethod
    def from_spec(cls, spec: Sam2Spec) -> Sam2Segmenter:
        return cls(spec.model, revision=spec.revision)

    @torch.inference_mode()
    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[SegmentResult]:
        if not images:
            return []
        encoded = self.processor(images=list(images), return_tensors="pt")
        levels = self.model.get_image_embeddings(encoded["pixel_values"].to(self.device))
        self.image_encoder_calls += len(images)
        results = []
        for index, (image, tile_boxes) in enumerate(zip(images, boxes)):
            height, width = image.shape[:2]
            if len(tile_boxes) == 0:
                results.append(SegmentResult.empty(height, width))
                continue
            # Boxes are rescaled from the tile's own size; the image is not processed again.
            prompt = self.processor(
                input_boxes=[[list(map(float, b)) for b in tile_boxes]],
                original_sizes=[[height, width]],
                return_tensors="pt",
            )
            outputs = self.model(
                image_embeddings=[level[index : index + 1] for level in levels],
                input_boxes=prompt["input_boxes"].to(self.device),
                multimask_output=False,
            )
            masks = self.processor.post_process_masks(outputs.pred_masks.cpu(), prompt["original_sizes"])[0]
            results.append(
                SegmentResult(masks[:, 0].numpy().astype(bool), outputs.iou_scores[0, :, 0].float().cpu().numpy())
            )
        return results
