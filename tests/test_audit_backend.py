"""The review ML backend's protocol (health, setup, predict, webhook) over HTTP in-process, with the tiny
SAM: smart-tool clicks and boxes become brush masks, the image encoder runs once per image (also
across a restart), and tasks without pre-annotations get the build's proposal or Pi-Seg's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from audit.backend import BackendConfig, ReviewBackend, create_app
from audit.embeddings import EmbeddingCache
from audit.queue import MODEL_VERSION, label_config
from audit.queue import load_live_records as load_records
from audit.records import proposal_mask
from flows.sample_build import make_imagery
from pipeline.build.annotate import AnnotateConfig, Annotator, load_caption_file
from pipeline.raster.ingest import TilingConfig
from taxonomy import load_taxonomy

SECRET = "backend-test-secret-0123456789"


def authorized_client(backend: ReviewBackend) -> TestClient:
    """A client of the backend's app that sends the secret as Label Studio does (HTTP Basic auth)."""
    http = TestClient(create_app(backend, SECRET))
    http.auth = ("ovrsis", SECRET)
    return http


@pytest.fixture(scope="module")
def build_output(tmp_path_factory, tiny_models):
    """Four 128x128 tiles annotated with the tiny models, and their JPEGs where `audit push` writes them."""
    root = tmp_path_factory.mktemp("backend")
    imagery = make_imagery(root / "data", count=1, size=256)
    captions = root / "captions.jsonl"
    captions.write_text(
        json.dumps({"id": "scene0", "caption": "a residential area with buildings, a road and cars"}) + "\n"
    )
    out = root / "out"
    Annotator(
        load_taxonomy("ovrsis95k"),
        tiny_models,
        out,
        AnnotateConfig(tiling=TilingConfig(128)),
        captions=load_caption_file(captions),
    ).run(imagery)
    images = out / "audit" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for record in load_records(out):
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(
            images / f"{record.key}.jpg", quality=95
        )
    return out


def task(key: str, task_id: int = 1) -> dict:
    return {"id": task_id, "data": {"image": f"/data/local-files/?d=audit/images/{key}.jpg", "key": key}}


def click(x: float, y: float, label: str = "building", positive: bool = True) -> dict:
    return {
        "type": "keypointlabels",
        "is_positive": positive,
        "original_width": 128,
        "original_height": 128,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }


def brush_pixels(region: dict) -> np.ndarray:
    height, width = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 127


def test_protocol_smart_clicks_and_boxes_embed_each_image_once(build_output, tiny_models_yaml):
    backend = ReviewBackend(
        BackendConfig(root=build_output, records=build_output, models=str(tiny_models_yaml)), load_taxonomy("ovrsis95k")
    )
    http = authorized_client(backend)
    assert http.get("/health").json()["status"] == "UP"
    setup = http.post(
        "/setup",
        json={
            "project": "1.1",
            "schema": label_config(load_taxonomy("ovrsis95k"), smart=True),
            "hostname": "http://127.0.0.1:8089",
            "access_token": "x" * 40,
        },
    )
    assert setup.json() == {"model_version": MODEL_VERSION}
    key, other = sorted(r.key for r in load_records(build_output))[:2]
    prompts = [
        [click(30, 40)],
        [click(30, 40), click(70, 70, positive=False)],
        [
            {
                "type": "rectanglelabels",
                "value": {"x": 10, "y": 10, "width": 50, "height": 40, "rectanglelabels": ["road"]},
            }
        ],
    ]
    answers = []
    for prompt in prompts:
        response = http.post(
            "/predict",
            json={
                "tasks": [task(key)],
                "project": "1.1",
                "label_config": "",
                "params": {"context": {"result": prompt}},
            },
        )
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["results"]
        (region,) = prediction["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == ("mask", "image", "brushlabels")
        assert region["value"]["format"] == "rle" and brush_pixels(region).shape == (128, 128)
        answers.append(region["value"]["brushlabels"])
    assert answers == [["building"], ["building"], ["road"]]
    assert backend.embeddings.computed == 1  # three prompts, one image encoder run
    assert len(list(backend.embeddings.folder.glob("*.npy"))) == 1
    http.post("/predict", json={"tasks": [task(other, 2)], "params": {"context": {"result": [click(50, 50)]}}})
    assert backend.embeddings.computed == 2

    # a restarted backend reads the embeddings from disk: no encoder run; a torn file is recomputed
    restarted = ReviewBackend(backend.config, load_taxonomy("ovrsis95k"), sam=backend.sam)
    restarted.predict({"tasks": [task(key)], "params": {"context": {"result": [click(30, 40)]}}})
    assert restarted.embeddings.computed == 0
    for path in restarted.embeddings.folder.glob("*.npy"):
        path.write_bytes(path.read_bytes()[:100])
    restarted.predict({"tasks": [task(other)], "params": {"context": {"result": [click(30, 40)]}}})
    assert restarted.embeddings.computed == 1

    unknown_label = http.post(
        "/predict", json={"tasks": [task(key)], "params": {"context": {"result": [click(5, 5, "unicorn")]}}}
    )
    assert unknown_label.status_code == 400 and "unicorn" in unknown_label.json()["error"]
    assert http.post("/webhook", json={"action": "ANNOTATION_CREATED"}).json() == {"status": "ok"}


def test_preannotations_from_the_proposals_else_piseg(build_output, tiny_models_yaml, tmp_path):
    taxonomy = load_taxonomy("ovrsis95k")
    backend = ReviewBackend(
        BackendConfig(
            root=build_output, records=build_output, models=str(tiny_models_yaml), piseg=tiny_piseg_checkpoint(tmp_path)
        ),
        taxonomy,
    )
    http = authorized_client(backend)
    record = sorted(load_records(build_output), key=lambda r: r.key)[0]
    stranger = build_output / "audit" / "images" / "stranger.jpg"
    Image.fromarray(np.full((96, 64, 3), 90, np.uint8)).save(stranger)
    response = http.post(
        "/predict", json={"tasks": [task(record.key, 1), task("stranger", 2)], "params": {"context": None}}
    )
    proposal, piseg = response.json()["results"]
    expected = proposal_mask(build_output, record)
    assert proposal["model_version"] == MODEL_VERSION and proposal["result"]
    for region in proposal["result"]:
        assert region["id"] == f"r{taxonomy.index_of(region['value']['brushlabels'][0])}"
        assert (brush_pixels(region) == (expected == taxonomy.index_of(region["value"]["brushlabels"][0]))).all()
    assert piseg["model_version"].startswith("piseg:") and piseg["result"]
    covered = sum(brush_pixels(region).sum() for region in piseg["result"])
    assert covered == 96 * 64 and {r["original_height"] for r in piseg["result"]} == {96}
    without = ReviewBackend(BackendConfig(root=build_output, records=build_output), taxonomy)
    assert without.predict({"tasks": [task("stranger")]}) == {
        "results": [{"result": [], "model_version": MODEL_VERSION}]
    }


def test_embedding_cache_keys_by_content_and_model(tmp_path):
    calls = []
    cache = EmbeddingCache(tmp_path, "model-a", memory_items=1)
    image = np.zeros((8, 8, 3), np.uint8)
    compute = lambda pixels: calls.append(1) or np.full((1, 2, 2, 2), float(pixels.sum()), np.float32)  # noqa: E731
    assert cache.get(image, compute).dtype == np.float32
    cache.get(image.copy(), compute)
    cache.get(image + 1, compute)  # other pixels: another embedding
    cache.get(image, compute)  # evicted from memory, read back from disk
    assert len(calls) == 2
    EmbeddingCache(tmp_path, "model-b").get(image, compute)  # other weights never reuse it
    assert len(calls) == 3


def tiny_piseg_checkpoint(folder: Path) -> Path:
    """A random-weight tiny Pi-Seg checkpoint, saved as training saves it."""
    from piseg.checkpoint import save_checkpoint
    from piseg.modeling.model import build_model
    from piseg.training.synthetic import tiny_config

    config = tiny_config()
    path = folder / "piseg.pt"
    save_checkpoint(path, build_model(config.model), config, ["building", "road"], "v")
    return path


class ScoredSam:
    """An interactive SAM whose predicted IoU is whatever the test sets: a real one's is a regression
    output, below 0 or above 1 for a poor prompt."""

    model_key = "scored-stub"

    def __init__(self) -> None:
        self.score = 0.5

    def embed(self, image: np.ndarray) -> np.ndarray:
        return np.zeros((1, 2, 2, 2), np.float32)

    def decode(self, embedding: np.ndarray, size: tuple[int, int], prompt) -> tuple[np.ndarray, float]:
        mask = np.zeros(size, bool)
        mask[: size[0] // 2] = True
        return mask, self.score


@pytest.mark.parametrize(
    ("predicted", "sent"),
    [(-0.3712, 0.0), (float("nan"), 0.0), (1.0831, 1.0), (float("inf"), 1.0), (0.612345, 0.6123), (0.0, 0.0)],
)
def test_smart_tool_score_is_one_label_studio_accepts(tmp_path, predicted, sent):
    """Label Studio refuses a prediction scored outside [0, 1] ("Score must be between 0.00 and 1.00")."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((32, 48, 3), 120, np.uint8)).save(tmp_path / "images" / "t.jpg")
    sam = ScoredSam()
    sam.score = predicted
    backend = ReviewBackend(BackendConfig(root=tmp_path), load_taxonomy("ovrsis95k"), sam=sam)
    tile = {"id": 1, "data": {"image": "/data/local-files/?d=images/t.jpg"}}
    response = authorized_client(backend).post(
        "/predict", json={"tasks": [tile], "params": {"context": {"result": [click(50, 25)]}}}
    )
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["results"]
    assert prediction["score"] == sent and prediction["result"][0]["value"]["brushlabels"] == ["building"]
