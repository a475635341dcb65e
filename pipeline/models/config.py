"""Which models a build uses: a validated YAML file, `default` (real weights) or `tiny` (tests).

    captioner: {model: microsoft/Florence-2-large, prompt: "<MORE_DETAILED_CAPTION>", max_new_tokens: 96}
    detector:  {model: IDEA-Research/grounding-dino-base, box_threshold: 0.3, text_threshold: 0.25,
                category_thresholds: {vehicle: 0.35}, nms_iou: 0.5, cross_class_iou: 0.85}
    segmenter: {backend: segment-anything, checkpoint: /models/sam_vit_b_01ec64.pth, arch: vit_b}
           or  {backend: transformers, model: facebook/sam-vit-base}

`model` is a hub id (downloaded on the user's machine) or a local folder. Models load once per
process and are shared by every batch.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pipeline.models.captioner import DEFAULT_CAPTIONER


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CaptionerSpec(_Spec):
    model: str = DEFAULT_CAPTIONER
    revision: str | None = None
    prompt: str | None = None
    max_new_tokens: int = 96
    num_beams: int = 1


class DetectorSpec(_Spec):
    model: str = "IDEA-Research/grounding-dino-base"
    revision: str | None = None
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    category_thresholds: dict[str, float] = {}
    nms_iou: float = 0.5
    cross_class_iou: float = 0.85
    max_boxes: int = 100


class SegmenterSpec(_Spec):
    backend: Literal["segment-anything", "transformers"] = "transformers"
    model: str | None = "facebook/sam-vit-base"  # transformers backend
    checkpoint: str | None = None  # segment-anything backend: an official .pth
    arch: str | dict | None = None  # vit_b | vit_l | vit_h | a dict of sizes
    revision: str | None = None

    @model_validator(mode="after")
    def _needs_weights(self) -> "SegmenterSpec":
        if self.backend == "segment-anything" and not self.checkpoint:
            raise ValueError("segmenter backend 'segment-anything' needs 'checkpoint' (an official SAM .pth)")
        if self.backend == "transformers" and not self.model:
            raise ValueError("segmenter backend 'transformers' needs 'model' (a hub id or folder)")
        return self


class ModelsConfig(_Spec):
    captioner: CaptionerSpec = CaptionerSpec()
    detector: DetectorSpec = DetectorSpec()
    segmenter: SegmenterSpec = SegmenterSpec()


def tiny_models_dir() -> Path:
    return Path(os.environ.get("OVRSIS_CACHE", Path.home() / ".cache" / "ovrsis")) / "tiny-models"


def load_models_config(name_or_path: str | Path) -> ModelsConfig:
    """`default`, `tiny` (built on first use into the cache folder) or a YAML file."""
    if str(name_or_path) == "default":
        return ModelsConfig()
    if str(name_or_path) == "tiny":
        path = tiny_models_dir() / "models.yaml"
        if not path.is_file():
            from pipeline.models.tiny import make_tiny_models

            path = make_tiny_models(tiny_models_dir())
    else:
        path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: models configuration not found (or use 'default' / 'tiny')")
    try:
        return ModelsConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as error:
        raise ValueError(f"{path}: invalid models configuration:\n{error}") from error


class ModelSet:
    """The three models of a build, each loaded on first use and then kept."""

    def __init__(self, config: ModelsConfig) -> None:
        self.config = config

    @cached_property
    def captioner(self):
        from pipeline.models.captioner import TransformersCaptioner

        c = self.config.captioner
        return TransformersCaptioner(c.model, c.prompt, c.max_new_tokens, c.num_beams, c.revision)

    @cached_property
    def detector(self):
        from pipeline.models.detector import DetectorConfig, GroundingDinoDetector

        d = self.config.detector
        settings = DetectorConfig(d.box_threshold, d.text_threshold, dict(d.category_thresholds), d.nms_iou,
                                  d.cross_class_iou, d.max_boxes)  # fmt: skip
        return GroundingDinoDetector(d.model, settings, d.revision)

    @cached_property
    def segmenter(self):
        from pipeline.models.segmenter import SegmentAnythingSegmenter, TransformersSamSegmenter

        s = self.config.segmenter
        if s.backend == "segment-anything":
            return SegmentAnythingSegmenter(s.checkpoint, s.arch)
        return TransformersSamSegmenter(s.model, s.revision)

    def provenance(self, used: set[str]) -> dict:
        """Model ids, revisions and thresholds of the models a tile actually went through."""
        spec = self.config.model_dump(exclude_none=True)
        return {name: spec[name] for name in sorted(used)}
