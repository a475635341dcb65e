"""Text-prompted boxes with GroundingDINO or MM-Grounding-DINO through transformers.

The prompt of a tile is built from its matched categories ("tennis court . storage tank . car ."),
each phrase tied to its category; the box -> category mapping reads the model's token-level
scores over each phrase's own tokens rather than decoding text back, so "tank" can never be
misread as another category. Then: per-category thresholds, class-aware NMS, and a cross-class
rule for one object claimed by two categories (the higher score keeps it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torchvision.ops import batched_nms, box_iou

from pipeline.models import quiet_transformers
from pipeline.models.device import pick_device
from pipeline.models.protocols import Detection, Detector, PromptPhrase  # noqa: F401  (re-exported)
from pipeline.models.spec import BackendSpec


class DetectorConfig(BaseModel):
    """Thresholds shared by the text-prompted detectors; each backend's spec extends it, so the
    spec itself is the detector's configuration (no field copied, none mapped by position)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    category_thresholds: dict[str, float] = {}  # per-category box thresholds
    nms_iou: float = 0.5
    cross_class_iou: float = 0.85
    max_boxes: int = 100


class GroundingDinoSpec(BackendSpec, DetectorConfig):
    backend: Literal["grounding-dino"] = "grounding-dino"
    model: str = "IDEA-Research/grounding-dino-base"
    revision: str | None = None


class MMGroundingDinoSpec(BackendSpec, DetectorConfig):
    """MM-Grounding-DINO (OpenMMLab's retrained GroundingDINO): same prompts, same outputs."""

    backend: Literal["mm-grounding-dino"] = "mm-grounding-dino"
    model: str = "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"
    revision: str | None = None


class GroundingDinoDetector:
    """GroundingDINO or MM-Grounding-DINO (`architecture`, the config's `model_type`): both take
    "a . b ." prompts and give per-token logits and boxes, so one decoder serves both."""

    def __init__(
        self,
        model: str,
        config: DetectorConfig | None = None,
        revision: str | None = None,
        device: str | None = None,
        architecture: str = "grounding-dino",
    ) -> None:
        from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

        quiet_transformers()
        found = AutoConfig.from_pretrained(model, revision=revision).model_type
        if found != architecture:
            raise ValueError(
                f"{model} is a {found!r} model, not {architecture!r}: set the detector's backend to {found!r}"
            )
        self.device = device or pick_device()
        self.processor = AutoProcessor.from_pretrained(model, revision=revision)
        self.model = (
            AutoModelForZeroShotObjectDetection.from_pretrained(model, revision=revision).to(self.device).eval()
        )
        self.model_id = model
        self.config = config if config is not None else DetectorConfig()
        self.max_text_len = int(self.model.config.max_text_len)

    @classmethod
    def from_spec(cls, spec: GroundingDinoSpec | MMGroundingDinoSpec) -> GroundingDinoDetector:
        return cls(spec.model, spec, revision=spec.revision, architecture=spec.backend)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], prompts: Sequence[Sequence[PromptPhrase]]) -> list[list[Detection]]:
        results: list[list[Detection]] = [[] for _ in images]
        for chunk in self._prompt_chunks(prompts):
            active = [i for i, phrases in enumerate(chunk) if phrases]
            if not active:
                continue
            texts = [" . ".join(p.text for p in chunk[i]) + " ." for i in active]
            inputs = self.processor(
                images=[images[i] for i in active],
                text=texts,
                return_tensors="pt",
                padding="longest",
                return_offsets_mapping=True,
            )
            offsets = inputs.pop("offset_mapping")
            outputs = self.model(**inputs.to(self.device))
            probabilities = outputs.logits.sigmoid().float().cpu()  # (B, queries, text positions)
            boxes = _corners(outputs.pred_boxes.float().cpu())
            for row, i in enumerate(active):
                height, width = images[i].shape[:2]
                spans = _phrase_token_spans(texts[row], chunk[i], offsets[row], probabilities.shape[-1])
                results[i].extend(self._decode(probabilities[row], boxes[row], spans, chunk[i], width, height))
        return [self._suppress(found) for found in results]

    def _prompt_chunks(self, prompts: Sequence[Sequence[PromptPhrase]]) -> list[list[list[PromptPhrase]]]:
        """Split long prompt lists so each text stays within the model's token budget."""
        tokenizer = self.processor.tokenizer
        per_tile = []
        for phrases in prompts:
            chunks, current, length = [], [], 2
            for phrase in phrases:
                cost = len(tokenizer.tokenize(phrase.text)) + 1
                if current and length + cost > self.max_text_len:
                    chunks.append(current)
                    current, length = [], 2
                current.append(phrase)
                length += cost
            chunks.append(current)
            per_tile.append(chunks)
        depth = max((len(c) for c in per_tile), default=0)
        return [[c[k] if k < len(c) else [] for c in per_tile] for k in range(depth)]

    def _decode(self, probabilities, boxes, spans, phrases, width, height) -> list[Detection]:
        if not spans:
            return []
        per_phrase = torch.stack([probabilities[:, s].max(dim=1).values for s in spans], dim=1)  # (queries, phrases)
        scores, best = per_phrase.max(dim=1)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        found = []
        for query in range(len(scores)):
            phrase = phrases[int(best[query])]
            threshold = self.config.category_thresholds.get(phrase.category, self.config.box_threshold)
            score = float(scores[query])
            if score <= threshold or score <= self.config.text_threshold:
                continue
            box = (boxes[query] * scale).clamp(min=0)
            box[0::2] = box[0::2].clamp(max=width)
            box[1::2] = box[1::2].clamp(max=height)
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue
            found.append(Detection([round(float(v), 2) for v in box], score, phrase.category, phrase.text))
        return found

    def _suppress(self, detections: list[Detection]) -> list[Detection]:
        """Class-aware NMS, then the cross-class rule, then the `max_boxes` best."""
        if not detections:
            return []
        boxes = torch.tensor([d.box for d in detections], dtype=torch.float32)
        scores = torch.tensor([d.score for d in detections])
        categories = {name: k for k, name in enumerate(sorted({d.category for d in detections}))}
        labels = torch.tensor([categories[d.category] for d in detections])
        keep = batched_nms(boxes, scores, labels, self.config.nms_iou).tolist()  # sorted by score, descending
        kept: list[int] = []
        overlaps = box_iou(boxes, boxes)
        for index in keep:
            if all(overlaps[index, other] < self.config.cross_class_iou for other in kept):
                kept.append(index)
        return [detections[i] for i in kept[: self.config.max_boxes]]


def _corners(center_boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = center_boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _phrase_token_spans(
    text: str, phrases: Sequence[PromptPhrase], offsets: torch.Tensor, n_positions: int
) -> list[list[int]]:
    """Token positions of each phrase in the prompt, from the tokenizer's character offsets."""
    spans, cursor = [], 0
    for phrase in phrases:
        start = text.index(phrase.text, cursor)
        end = start + len(phrase.text)
        cursor = end
        tokens = [
            t for t, (a, b) in enumerate(offsets.tolist()) if b > a and a >= start and b <= end and t < n_positions
        ]
        spans.append(tokens)
    if any(not s for s in spans):
        return []
    return spans
