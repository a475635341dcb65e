"""Per-stage batch size and precision (issue 32, item 5): a stage's model runs in chunks of the spec's
`batch_size` tiles under autocast at its `precision`; a spec that sets neither is unchanged, down to its
dump (stage cache keys and record provenance)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipeline.models.config import ModelSet, load_models_config
from pipeline.models.protocols import Captioner, Detector, PromptPhrase, Segmenter
from pipeline.models.stage_run import StageRun
from tests.test_models_backends import COMBINATIONS


def tiles(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def models_with(tiny_models_yaml, tmp_path, backends: dict | None = None, **settings) -> ModelSet:
    """The tiny twins (the default ones, or BACKENDS: stage -> backend name) with SETTINGS (batch_size,
    precision) on every stage."""
    raw = yaml.safe_load(tiny_models_yaml.read_text())
    if backends:
        twins = yaml.safe_load((tiny_models_yaml.parent / "twins.yaml").read_text())
        raw = {stage: twins[stage][name] for stage, name in backends.items()}
    for stage in ("captioner", "detector", "segmenter"):
        raw[stage].update(settings)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    return ModelSet(load_models_config(path))


def test_a_spec_without_run_settings_gives_the_bare_model_and_dumps_as_before(tiny_models_yaml):
    config = load_models_config(tiny_models_yaml)
    for stage in ("captioner", "detector", "segmenter"):
        dumped = getattr(config, stage).model_dump(mode="json")
        assert "batch_size" not in dumped and "precision" not in dumped, dumped
    assert not isinstance(ModelSet(config).segmenter, StageRun)


def test_batch_size_chunks_each_stage_and_keeps_the_segmenter_masks(tiny_models_yaml, tmp_path):
    bare = ModelSet(load_models_config(tiny_models_yaml))
    chunked = models_with(tiny_models_yaml, tmp_path, batch_size=2)
    images = tiles(5)
    boxes = [np.array([[4, 4, 40, 40], [10, 12, 60, 50]], np.float32)] * 5
    segmenter = chunked.segmenter
    assert isinstance(segmenter, Segmenter) and isinstance(segmenter, StageRun)
    calls: list[int] = []
    inner = segmenter._model.segment
    segmenter._model.segment = lambda images, boxes: calls.append(len(images)) or inner(images, boxes)
    results, reference = segmenter.segment(images, boxes), bare.segmenter.segment(images, boxes)
    assert calls == [2, 2, 1] and segmenter.image_encoder_calls == 5
    for got, want in zip(results, reference, strict=True):
        assert np.array_equal(got.masks, want.masks) and np.allclose(got.scores, want.scores, atol=1e-6)
    assert isinstance(chunked.captioner, Captioner) and len(chunked.captioner.caption(images)) == 5
    prompts = [[PromptPhrase("building", "building")]] * 5
    assert isinstance(chunked.detector, Detector) and len(chunked.detector.detect(images, prompts)) == 5
    assert segmenter.segment([], []) == []


@pytest.mark.parametrize("backends", COMBINATIONS, ids=lambda row: "+".join(row.values()))
def test_lower_precision_runs_every_backend_and_changes_the_cache_key(tiny_models_yaml, tmp_path, backends):
    precision = "bfloat16"  # what a GPU build would ask for; autocast on the CPU here
    models = models_with(tiny_models_yaml, tmp_path, backends, precision=precision)
    assert models.config.segmenter.model_dump(mode="json")["precision"] == precision  # in the stage key
    images = tiles(2)
    captions = models.captioner.caption(images)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    found = models.detector.detect(images, [[PromptPhrase("road", "road")]] * 2)
    assert len(found) == 2 and all(0.0 <= d.score <= 1.0 for tile in found for d in tile)
    results = models.segmenter.segment(images, [np.array([[0, 0, 30, 30]], np.float32)] * 2)
    assert [r.masks.shape for r in results] == [(1, 64, 64)] * 2 and results[0].masks.dtype == bool
    assert results[0].scores.dtype == np.float32


def test_batch_size_must_be_positive(tiny_models_yaml, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        models_with(tiny_models_yaml, tmp_path, batch_size=0)
