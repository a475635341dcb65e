"""Every registered backend, with its tiny twin, end to end through `ovrsis annotate` from a models
YAML naming it; the registry's names, configuration classes and Protocol checks."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.models.detector import GroundingDinoDetector
from pipeline.models.registry import BACKENDS, STAGES, Backend, load_backend, parse_spec, register
from pipeline.models.spec import BackendSpec

# Each backend appears at least once; the first row is what `--models tiny` runs.
COMBINATIONS = [
    {"captioner": "image-text-to-text", "detector": "grounding-dino", "segmenter": "sam"},
    {"captioner": "blip", "detector": "mm-grounding-dino", "segmenter": "sam2"},
    {"captioner": "image-text-to-text", "detector": "grounding-dino", "segmenter": "segment-anything"},
]


@pytest.fixture(scope="module")
def twins(tiny_models_yaml) -> dict:
    return yaml.safe_load((tiny_models_yaml.parent / "twins.yaml").read_text())


@pytest.fixture(scope="module")
def imagery(tmp_path_factory):
    """Two tiles: one with a caption naming categories (detect + segment run), one the captioner captions."""
    folder = tmp_path_factory.mktemp("imagery")
    (folder / "in").mkdir()
    rng = np.random.default_rng(0)
    for name in ("given", "uncaptioned"):
        Image.fromarray(rng.integers(0, 255, (160, 192, 3), dtype=np.uint8)).save(folder / "in" / f"{name}.png")
    (folder / "captions.jsonl").write_text(
        json.dumps({"id": "given", "caption": "a tennis court and storage tanks beside a road with cars"}) + "\n"
    )
    return folder


def test_every_backend_is_in_a_combination_and_has_a_twin(twins):
    for stage in STAGES:
        assert set(BACKENDS[stage]) <= {row[stage] for row in COMBINATIONS}
        assert set(BACKENDS[stage]) <= set(twins[stage])


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda row: "+".join(row.values()))
def test_annotate_end_to_end_with_each_backend(tmp_path, twins, imagery, combination):
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({stage: twins[stage][name] for stage, name in combination.items()}))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "annotate",
            str(imagery / "in"),
            "--out",
            str(out),
            "--models",
            str(models),
            "--captions",
            str(imagery / "captions.jsonl"),
            "--tile-size",
            "256",
        ],
    )
    assert result.exit_code == 0, result.output
    records = {r["key"].split("__")[0]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    given, captioned = records["given"], records["uncaptioned"]
    assert captioned["captions"][0]["model"] == twins["captioner"][combination["captioner"]]["model"]
    assert given["instances"], "threshold 0: the tiny detector keeps boxes and every box gets a mask"
    used = given["provenance"]["models"]
    assert used["detector"]["backend"] == combination["detector"]
    assert used["segmenter"]["backend"] == combination["segmenter"]


@pytest.mark.parametrize("stage", STAGES)
def test_models_yaml_names_pick_the_backends_configuration_class(stage):
    for name, backend in BACKENDS[stage].items():
        settings = {"checkpoint": "sam.pth"} if name == "segment-anything" else {}
        assert type(parse_spec(stage, {"backend": name, **settings})) is backend.spec
    with pytest.raises(ValueError, match="unknown .* backend 'nope'; known: "):
        parse_spec(stage, {"backend": "nope"})


def test_older_models_yaml_names_still_load():
    assert parse_spec("segmenter", {"backend": "transformers", "model": "facebook/sam-vit-base"}).backend == "sam"
    assert parse_spec("detector", {"model": "x/y"}).backend == "grounding-dino"  # no backend: the stage's default


def test_a_backend_pointed_at_another_architecture_is_refused(twins):
    wrong = {**twins["detector"]["grounding-dino"], "backend": "mm-grounding-dino"}
    with pytest.raises(ValueError, match="is a 'grounding-dino' model, not 'mm-grounding-dino'"):
        load_backend("detector", parse_spec("detector", wrong))
    assert isinstance(
        load_backend("detector", parse_spec("detector", twins["detector"]["mm-grounding-dino"])), GroundingDinoDetector
    )


class NotASegmenterSpec(BackendSpec):
    backend: Literal["not-a-segmenter"] = "not-a-segmenter"


def test_a_backend_that_breaks_its_stage_protocol_is_refused_at_load():
    register(Backend("segmenter", "not-a-segmenter", NotASegmenterSpec, lambda spec: object(), lambda folder: {}))
    try:
        with pytest.raises(TypeError, match="built a object, which is not a Segmenter"):
            load_backend("segmenter", parse_spec("segmenter", {"backend": "not-a-segmenter"}))
    finally:
        del BACKENDS["segmenter"]["not-a-segmenter"]
