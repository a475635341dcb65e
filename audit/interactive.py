"""Click- and box-prompted SAM for the review UI: the image encoder once per image, the decoder per click.

The build's segmenters (pipeline/models/segmenter.py) take boxes for a batch of tiles and run the
encoder every call; a reviewer's clicks need the opposite split: `embed` (cached on disk by
audit/embeddings.py) and `decode` (prompt encoder + mask decoder only, tens of milliseconds).
Both of the build's SAM backends are supported, loaded from the same models configuration
(`tiny`, `default` or a YAML), so the review tool segments like the build did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


@dataclass
class Prompt:
    """Points (x, y in pixels, 1 = object, 0 = background) and at most one box (x0, y0, x1, y1)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None


class InteractiveSam(Protocol):
    model_key: str  # digest of the model's identity, for the embedding cache

    def embed(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the image embedding (1, C, h, w) float32."""

    def decode(self, embedding: np.ndarray, size: tuple[int, int], prompt: Prompt) -> tuple[np.ndarray, float]:
        """The (H, W) bool mask for the prompt and its predicted IoU."""


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a block on `count` intra-op threads. The mask decoder is small: on a busy 2-core machine its
    OpenMP threads spin-wait on each other (measured 2 s per click on 2 threads, 0.26 s on 1), while
    one thread loses little on an idle one. The image encoder keeps every core."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _multimask(prompt: Prompt) -> bool:
    """One click is ambiguous (part or whole?): SAM's three candidates, best IoU kept; more prompts are not."""
    return prompt.box is None and len(prompt.points) == 1


class SegmentAnythingInteractive:
    """The official `segment-anything` model (a `SegmentAnythingSegmenter`'s `.model`)."""

    def __init__(self, model, model_key: str) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.model_key = model_key
        with torch.inference_mode():  # the positional encoding of the embedding grid: the same for every click
            self.dense_pe = model.prompt_encoder.get_dense_pe()

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> np.ndarray:
        resized = torch.as_tensor(self.transform.apply_image(image), device=self.device).permute(2, 0, 1).contiguous()
        return self.model.image_encoder(self.model.preprocess(resized[None])).float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, embedding: np.ndarray, size: tuple[int, int], prompt: Prompt) -> tuple[np.ndarray, float]:
        points = boxes = None
        if prompt.points:
            coords = self.transform.apply_coords(np.asarray(prompt.points, np.float32), size)
            points = (
                torch.as_tensor(coords[None], device=self.device),
                torch.as_tensor([prompt.labels], device=self.device),
            )
        if prompt.box is not None:
            boxes = torch.as_tensor(
                self.transform.apply_boxes(np.asarray([prompt.box], np.float32), size), device=self.device
            )
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=torch.as_tensor(embedding, device=self.device),
            image_pe=self.dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=_multimask(prompt),
        )
        best = int(iou[0].argmax())
        input_size = self.transform.get_preprocess_shape(size[0], size[1], self.transform.target_length)
        mask = self.model.postprocess_masks(low_res[:, best : best + 1], input_size, size) > self.model.mask_threshold
        return mask[0, 0].cpu().numpy(), float(iou[0, best])


class TransformersInteractive:
    """transformers' `SamModel` with its `SamProcessor` (a `TransformersSamSegmenter`'s parts)."""

    def __init__(self, model, processor, model_key: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device
        self.target = processor.image_processor.size["longest_edge"]
        self.model_key = model_key

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> np.ndarray:
        pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"].to(self.device)
        return self.model.get_image_embeddings(pixels).float().cpu().numpy()

    def _resized(self, size: tuple[int, int]) -> tuple[int, int]:
        scale = self.target / max(size)
        return int(size[0] * scale + 0.5), int(size[1] * scale + 0.5)

    @torch.inference_mode()
    def decode(self, embedding: np.ndarray, size: tuple[int, int], prompt: Prompt) -> tuple[np.ndarray, float]:
        height, width = size
        new_h, new_w = self._resized(size)
        scale = np.asarray([new_w / width, new_h / height], np.float32)
        inputs: dict[str, torch.Tensor] = {}
        if prompt.points:
            inputs["input_points"] = torch.as_tensor(np.asarray(prompt.points, np.float32) * scale)[None, None].to(
                self.device
            )
            inputs["input_labels"] = torch.as_tensor([[prompt.labels]], dtype=torch.long, device=self.device)
        if prompt.box is not None:
            inputs["input_boxes"] = (
                torch.as_tensor(np.asarray(prompt.box, np.float32).reshape(2, 2) * scale)
                .reshape(1, 1, 4)
                .to(self.device)
            )
        outputs = self.model(
            image_embeddings=torch.as_tensor(embedding, device=self.device),
            multimask_output=_multimask(prompt),
            **inputs,
        )
        scores = outputs.iou_scores[0, 0]
        best = int(scores.argmax())
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks[:, :, best : best + 1].cpu(), [list(size)], [[new_h, new_w]]
        )[0]
        return masks[0, 0].numpy().astype(bool), float(scores[best])


def load_interactive(models: str | Path) -> InteractiveSam:
    """The SAM of a models configuration (`tiny`, `default` or a YAML), split for interactive use."""
    from pipeline.models.config import ModelSet, load_models_config

    spec = interactive_segmenter(models)
    segmenter = ModelSet(load_models_config(models)).segmenter
    if spec.backend == "segment-anything":
        return SegmentAnythingInteractive(segmenter.model, model_key("segment-anything", spec.checkpoint, spec.arch))
    return TransformersInteractive(
        segmenter.model, segmenter.processor, model_key("transformers", spec.model, spec.revision)
    )


def interactive_segmenter(models: str | Path):
    """The segmenter spec of a models configuration, refused unless it is a SAM the tool can split
    into encoder and decoder (checked when the backend starts, not at a reviewer's first click)."""
    from pipeline.models.config import load_models_config

    spec = load_models_config(models).segmenter
    if spec.backend not in ("segment-anything", "sam"):
        raise ValueError(
            f"{models}: the interactive tool runs SAM (segmenter backend 'sam' or 'segment-anything'), "
            f"not {spec.backend!r}; name a models configuration with a SAM segmenter (--models)"
        )
    return spec


def model_key(backend: str, weights: str | None, variant: object = None) -> str:
    """Identity of the weights: a local file's (or folder's weight files') size and mtime digest, else the hub id."""
    identity = [backend, str(weights), repr(variant)]
    path = Path(weights) if weights else None
    if path is not None and path.exists():
        files = (
            [path]
            if path.is_file()
            else sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))
        )
        identity += [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("|".join(identity).encode()).hexdigest()[:16]
