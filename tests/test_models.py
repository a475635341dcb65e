"""Each backend loads tiny random weights from folders/checkpoints, through the same code as real ones."""

import numpy as np
import pytest
import yaml

from pipeline.models.config import ModelsConfig, load_models_config
from pipeline.models.detector import Detection, DetectorConfig, GroundingDinoDetector, PromptPhrase
from pipeline.models.registry import load_backend, parse_spec
from pipeline.models.segmenter import SegmentAnythingSegmenter


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (200, 300, 3), dtype=np.uint8), rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def twins(tiny_models_yaml) -> dict:
    """Every backend's tiny twin spec, by stage and backend name (written beside models.yaml)."""
    return yaml.safe_load((tiny_models_yaml.parent / "twins.yaml").read_text())


def test_default_captioner_twin_is_florence2_with_its_task_prompt(tiny_models, images):
    captioner = tiny_models.captioner
    assert captioner.model_id.endswith("captioner-florence2") and captioner.model.config.model_type == "florence2"
    assert captioner.prompt == "<MORE_DETAILED_CAPTION>"
    captions = captioner.caption(images)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_blip_captioner_by_configuration(twins, images):
    captioner = load_backend("captioner", parse_spec("captioner", twins["captioner"]["blip"]))
    assert captioner.prompt is None and len(captioner.caption(images)) == 2


def test_detector_ties_each_box_to_a_prompt_category(tiny_models, images):
    prompts = [[PromptPhrase("tennis court", "tennis court"), PromptPhrase("car", "vehicle")], []]
    found = tiny_models.detector.detect(images, prompts)
    assert len(found) == 2 and found[1] == []
    assert found[0], "threshold 0 must keep boxes"
    for detection in found[0]:
        assert detection.category in {"tennis court", "vehicle"}
        x0, y0, x1, y1 = detection.box
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200


def test_detector_thresholds_per_category(tiny_models_yaml, images):
    folder = load_models_config(tiny_models_yaml).detector.model
    strict = GroundingDinoDetector(
        folder, DetectorConfig(box_threshold=0.0, text_threshold=0.0, category_thresholds={"vehicle": 1.0})
    )
    found = strict.detect(images[:1], [[PromptPhrase("tennis court", "tennis court"), PromptPhrase("car", "vehicle")]])[
        0
    ]
    assert found and all(d.category == "tennis court" for d in found)


def test_long_prompts_are_split_within_the_token_budget(tiny_models, images):
    phrases = [PromptPhrase(f"storage tank {i}", "storage tank") for i in range(40)]
    chunks = tiny_models.detector._prompt_chunks([phrases])
    assert len(chunks) > 1 and sum(len(c[0]) for c in chunks) == 40


def test_class_aware_nms_and_cross_class_rule(tiny_models):
    detector = tiny_models.detector
    same = [Detection([0, 0, 10, 10], 0.9, "ship", "ship"), Detection([0, 0, 10, 11], 0.8, "ship", "boat")]
    assert [d.score for d in detector._suppress(same)] == [0.9]
    apart = [Detection([0, 0, 10, 10], 0.9, "ship", "ship"), Detection([20, 20, 30, 30], 0.8, "ship", "ship")]
    assert len(detector._suppress(apart)) == 2
    claimed_twice = [
        Detection([0, 0, 10, 10], 0.7, "storage tank", "tank"),
        Detection([0, 0, 10, 10], 0.9, "building", "building"),
    ]
    assert [d.category for d in detector._suppress(claimed_twice)] == ["building"]
    overlapping_other_class = [
        Detection([0, 0, 10, 10], 0.9, "vehicle", "car"),
        Detection([0, 0, 20, 20], 0.8, "road", "road"),
    ]
    assert len(detector._suppress(overlapping_other_class)) == 2  # IoU 0.25: different objects


@pytest.mark.parametrize("backend", ["segment-anything", "sam", "sam2"])
def test_segmenters_one_image_embedding_per_tile(twins, images, backend):
    spec = parse_spec("segmenter", twins["segmenter"][backend])
    if backend == "segment-anything":
        segmenter = SegmentAnythingSegmenter(spec.checkpoint)  # architecture from the .json beside it
    else:
        segmenter = load_backend("segmenter", spec)
    boxes = [
        np.array([[10, 10, 100, 80], [0, 0, 300, 200], [50, 50, 60, 60]], np.float32),
        np.zeros((0, 4), np.float32),
    ]
    results = segmenter.segment(images, boxes)
    assert segmenter.image_encoder_calls == 2
    assert results[0].masks.shape == (3, 200, 300) and results[0].masks.dtype == bool
    assert results[0].scores.shape == (3,) and results[1].masks.shape == (0, 256, 256)


def test_sam_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        SegmentAnythingSegmenter(tmp_path / "missing.pth")
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot tell the SAM architecture"):
        SegmentAnythingSegmenter(tmp_path / "weights.pth")


def test_models_config_validation(tmp_path):
    assert ModelsConfig().detector.model == "IDEA-Research/grounding-dino-base"
    bad = tmp_path / "m.yaml"
    bad.write_text(yaml.safe_dump({"segmenter": {"backend": "segment-anything"}}))
    with pytest.raises(ValueError, match="segment-anything(.|\n)*checkpoint"):
        load_models_config(bad)
    bad.write_text(yaml.safe_dump({"detector": {"modle": "x"}}))
    with pytest.raises(ValueError, match="modle"):
        load_models_config(bad)
    with pytest.raises(FileNotFoundError):
        load_models_config(tmp_path / "none.yaml")
