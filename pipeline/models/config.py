"""Which models a build uses: a preset (`default`, `fast`, `best`), `tiny` (tests) or a YAML file.

    captioner: {backend: image-text-to-text, model: florence-community/Florence-2-large, max_new_tokens: 96}
    detector:  {backend: grounding-dino, model: IDEA-Research/grounding-dino-base, box_threshold: 0.3,
                text_threshold: 0.25, category_thresholds: {vehicle: 0.35}, nms_iou: 0.5, cross_class_iou: 0.85}
    segmenter: {backend: sam2, model: facebook/sam2.1-hiera-small}
           or  {backend: sam, model: facebook/sam-vit-base}
           or  {backend: segment-anything, checkpoint: /models/sam_vit_b_01ec64.pth, arch: vit_b}

`backend` picks the configuration class that checks the rest (pipeline/models/registry.py lists
them; unnamed means image-text-to-text, grounding-dino, sam). `model` is a hub id (downloaded on
the user's machine, or fetched ahead with `ovrsis models fetch`) or a local folder. Models load
once per process and are shared by every batch.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from pipeline.models import registry
from pipeline.models.presets import PRESETS
from pipeline.models.protocols import Captioner, Detector, Segmenter
from pipeline.models.spec import BackendSpec
from pipeline.models.tiny import TINY_VERSION


def _default(stage: registry.Stage):
    return Field(default_factory=lambda: registry.parse_spec(stage, {}))


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    captioner: SerializeAsAny[BackendSpec] = _default("captioner")
    detector: SerializeAsAny[BackendSpec] = _default("detector")
    segmenter: SerializeAsAny[BackendSpec] = _default("segmenter")

    @field_validator("captioner", "detector", "segmenter", mode="before")
    @classmethod
    def _backend_spec(cls, value: object, info: ValidationInfo) -> BackendSpec:
        """Each stage is validated by the configuration class of the backend it names."""
        return value if isinstance(value, BackendSpec) else registry.parse_spec(info.field_name, value)


def tiny_models_dir() -> Path:
    return Path(os.environ.get("OVRSIS_CACHE", Path.home() / ".cache" / "ovrsis")) / f"tiny-models-v{TINY_VERSION}"


def load_models_config(name_or_path: str | Path) -> ModelsConfig:
    """A preset name, `tiny` (built on first use into the cache folder) or a YAML file."""
    name = str(name_or_path)
    if name in PRESETS:
        return ModelsConfig.model_validate(PRESETS[name])
    if name == "tiny":
        path = tiny_models_dir() / "models.yaml"
        if not path.is_file():
            from pipeline.models.tiny import make_tiny_models

            path = make_tiny_models(tiny_models_dir())
    else:
        path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: models configuration not found (or use {' / '.join([*PRESETS, 'tiny'])})")
    try:
        return ModelsConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as error:
        raise ValueError(f"{path}: invalid models configuration:\n{error}") from error


class ModelSet:
    """The three models of a build, each loaded on first use (through the registry) and then kept."""

    def __init__(self, config: ModelsConfig) -> None:
        self.config = config

    @cached_property
    def captioner(self) -> Captioner:
        return registry.load_backend("captioner", self.config.captioner)

    @cached_property
    def detector(self) -> Detector:
        return registry.load_backend("detector", self.config.detector)

    @cached_property
    def segmenter(self) -> Segmenter:
        return registry.load_backend("segmenter", self.config.segmenter)

    def provenance(self, used: set[str]) -> dict:
        """Model ids, revisions and thresholds of the models a tile actually went through."""
        spec = self.config.model_dump(exclude_none=True)
        return {name: spec[name] for name in sorted(used)}
