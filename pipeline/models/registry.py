"""Backends by name, per stage: each with its configuration class, its loader and its tiny twin.

A models YAML names a backend per stage (`segmenter: {backend: sam2, model: ...}`); the name picks
the configuration class that validates the rest, the loader that builds the model from it, and
the tiny random-weight twin that tests and `--models tiny` load through that same loader. A loaded
model is checked against its stage's Protocol, so a backend that breaks the contract fails at load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from pipeline.models import twins
from pipeline.models.captioner import ImageTextToTextSpec, TransformersCaptioner
from pipeline.models.detector import GroundingDinoDetector, GroundingDinoSpec, MMGroundingDinoSpec
from pipeline.models.protocols import Captioner, Detector, Segmenter
from pipeline.models.sam2 import Sam2Segmenter, Sam2Spec
from pipeline.models.segmenter import SamSpec, SegmentAnythingSegmenter, SegmentAnythingSpec, TransformersSamSegmenter
from pipeline.models.spec import BackendSpec
from pipeline.models.stage_run import with_run_settings

Stage = Literal["captioner", "detector", "segmenter"]
STAGES: tuple[Stage, ...] = ("captioner", "detector", "segmenter")
PROTOCOLS: dict[Stage, type] = {"captioner": Captioner, "detector": Detector, "segmenter": Segmenter}
DEFAULT_BACKENDS: dict[Stage, str] = {
    "captioner": "image-text-to-text",
    "detector": "grounding-dino",
    "segmenter": "sam",
}
ALIASES: dict[Stage, dict[str, str]] = {"segmenter": {"transformers": "sam"}}  # names older models YAMLs used


@dataclass(frozen=True)
class Backend:
    stage: Stage
    name: str
    spec: type[BackendSpec]
    load: Callable[[Any], Any]  # spec -> a model of the stage's Protocol
    tiny: Callable[[Path], dict]  # writes the tiny twin into a folder -> its spec, YAML-ready


BACKENDS: dict[Stage, dict[str, Backend]] = {stage: {} for stage in STAGES}


def register(backend: Backend) -> None:
    BACKENDS[backend.stage][backend.name] = backend


register(
    Backend("captioner", "image-text-to-text", ImageTextToTextSpec, TransformersCaptioner.from_spec, twins.florence2)
)
register(
    Backend("detector", "grounding-dino", GroundingDinoSpec, GroundingDinoDetector.from_spec, twins.grounding_dino)
)
register(
    Backend(
        "detector", "mm-grounding-dino", MMGroundingDinoSpec, GroundingDinoDetector.from_spec, twins.mm_grounding_dino
    )
)
register(Backend("segmenter", "sam", SamSpec, TransformersSamSegmenter.from_spec, twins.sam))
register(Backend("segmenter", "sam2", Sam2Spec, Sam2Segmenter.from_spec, twins.sam2))
register(
    Backend(
        "segmenter", "segment-anything", SegmentAnythingSpec, SegmentAnythingSegmenter.from_spec, twins.segment_anything
    )
)


def backend_of(stage: Stage, name: str) -> Backend:
    name = ALIASES.get(stage, {}).get(name, name)
    if name not in BACKENDS[stage]:
        raise ValueError(f"unknown {stage} backend {name!r}; known: {', '.join(sorted(BACKENDS[stage]))}")
    return BACKENDS[stage][name]


def parse_spec(stage: Stage, value: dict) -> BackendSpec:
    """A stage's YAML mapping -> its backend's configuration class (default backend when unnamed)."""
    if not isinstance(value, dict):
        raise ValueError(f"{stage}: expected a mapping of settings, got {value!r}")
    backend = backend_of(stage, value.get("backend", DEFAULT_BACKENDS[stage]))
    try:
        return backend.spec.model_validate({**value, "backend": backend.name})
    except ValidationError as error:  # re-raised as ValueError so the models config reports it in place
        raise ValueError(f"{stage} backend {backend.name!r}: {error}") from None


def load_backend(stage: Stage, spec: BackendSpec):
    """The stage's model, checked against its Protocol, as the stage calls it (its batch size and precision)."""
    model = backend_of(stage, spec.backend).load(spec)
    if not isinstance(model, PROTOCOLS[stage]):
        raise TypeError(
            f"{stage} backend {spec.backend!r} built a {type(model).__name__}, "
            f"which is not a {PROTOCOLS[stage].__name__}"
        )
    return with_run_settings(model, stage, spec)
