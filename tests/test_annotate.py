"""The imagery stage end to end with tiny models: records, masks, GeoTIFFs, overlays, faults."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from pipeline.build.annotate import AnnotateConfig, Annotator
from pipeline.dataset.records import TileRecord
from pipeline.raster.ingest import TilingConfig, plan_windows
from pipeline.stages.domains import DomainClassifier
from taxonomy import load_taxonomy

CAPTIONS = {"scene": ["many buildings and a road with cars in a residential area", "some trees near a parking lot"]}


def write_scene(folder: Path, name: str = "scene", size=(300, 500), value=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (3, *size), dtype=np.uint8) if value is None else np.full((3, *size), value, np.uint8)
    profile = {
        "driver": "GTiff",
        "width": size[1],
        "height": size[0],
        "count": 3,
        "dtype": "uint8",
        "nodata": 0,
        "crs": "EPSG:32633",
        "transform": Affine(0.5, 0, 400000, 0, -0.5, 5000000),
    }
    path = folder / f"{name}.tif"
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    return path


def read_records(out: Path) -> list[TileRecord]:
    return [TileRecord.model_validate_json(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_annotate_writes_records_masks_geotiffs_and_one_embedding_per_tile(tmp_path, tiny_models):
    write_scene(tmp_path / "in")
    taxonomy = load_taxonomy("ovrsis95k")
    config = AnnotateConfig(tiling=TilingConfig(256, 32), batch_size=3)
    calls_before = tiny_models.segmenter.image_encoder_calls
    summary = Annotator(taxonomy, tiny_models, tmp_path / "out", config, captions=CAPTIONS).run(tmp_path / "in")
    records = read_records(tmp_path / "out")
    assert summary.tiles == summary.annotated == len(records) == len(plan_windows(500, 300, 256, 32)) == 6
    boxed = [r for r in records if r.instances]
    assert boxed, "tiny detector at threshold 0 must find boxes"
    assert tiny_models.segmenter.image_encoder_calls - calls_before == len(boxed)
    for record in records:
        assert {c.name for c in record.categories} >= {"building", "road", "vehicle", "tree", "developed space"}
        assert record.captions[0].model == "file" and record.domain.name == "town"
        mask = np.asarray(Image.open(tmp_path / "out" / record.semantic_mask))
        assert mask.dtype == np.uint8 and mask.shape == (256, 256)
        # unclaimed pixels take the background class (34); 255 only where the scene is nodata
        assert set(np.unique(mask)) <= {taxonomy.index_of(c.name) for c in record.categories} | {34, 255}
        with rasterio.open(tmp_path / "out" / "masks" / f"{record.key}.tif") as tif:
            assert tif.crs.to_epsg() == 32633 and list(tif.transform)[:6] == pytest.approx(record.source.transform)
            assert np.array_equal(tif.read(1), mask)
        assert (tmp_path / "out" / "overlays" / f"{record.key}.png").is_file()
        assert record.provenance["taxonomy"]["version"] == taxonomy.version
        assert "detector" in record.provenance["models"] or not record.instances
    with rasterio.open(tmp_path / "out" / "stitched" / "scene.tif") as stitched:
        assert (stitched.width, stitched.height) == (500, 300)
        assert stitched.transform == Affine(0.5, 0, 400000, 0, -0.5, 5000000)
    assert summary.seconds["segment"] > 0 and summary.domains["town"] == 6


class FailingDetector:
    """Wraps the real tiny detector and fails on one tile, as a model crashing on bad input would."""

    def __init__(self, detector, bad_pixel_value):
        self.inner, self.bad = detector, bad_pixel_value
        self.model_id = detector.model_id

    def detect(self, images, prompts):
        if any(image.mean() == self.bad for image in images):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.detect(images, prompts)


class EmptyCaptioner:
    model_id = "empty-captioner"

    def caption(self, images):
        return ["" for _ in images]


def test_faults_quarantine_one_tile_and_the_run_goes_on(tmp_path, tiny_models):
    folder = tmp_path / "in"
    write_scene(folder, "good")
    write_scene(folder, "flat", size=(200, 200), value=77)
    write_scene(folder, "blank", size=(200, 200), value=0)  # nodata everywhere
    (folder / "zero.tif").write_bytes(b"")
    (folder / "broken.tif").write_bytes(b"not a raster at all" * 10)
    (folder / "image.bmp").write_bytes(b"BM....")
    captions = {k: CAPTIONS["scene"] for k in ("good", "flat")}
    models = type("Models", (), {})()
    models.captioner, models.segmenter = tiny_models.captioner, tiny_models.segmenter
    models.detector = FailingDetector(tiny_models.detector, bad_pixel_value=77)
    models.provenance = tiny_models.provenance
    config = AnnotateConfig(tiling=TilingConfig(256), batch_size=8)
    summary = Annotator(load_taxonomy("ovrsis95k"), models, tmp_path / "out", config, captions=captions).run(folder)
    reasons = {key: (stage, reason) for key, stage, reason in summary.quarantined}
    assert reasons["flat__r0_c0"][0] == "detect" and "out of memory" in reasons["flat__r0_c0"][1]
    assert reasons["blank__r0_c0"] == ("ingest", "all pixels are nodata")
    assert reasons["zero__r0_c0"] == ("ingest", "zero-byte file")
    assert "cannot be read as a raster" in reasons["broken__r0_c0"][1]
    assert reasons["image__r0_c0"] == ("ingest", "unsupported format .bmp")
    records = {r.key: r for r in read_records(tmp_path / "out")}
    assert summary.annotated == 4 and all(records[f"good__r0_c{c}"].semantic_mask for c in (0, 244))
    assert (
        records["flat__r0_c0"].semantic_mask is None and not (tmp_path / "out" / "masks" / "flat__r0_c0.png").exists()
    )

    models.captioner = EmptyCaptioner()
    models.detector = tiny_models.detector
    summary = Annotator(load_taxonomy("ovrsis95k"), models, tmp_path / "out2", config).run(folder / "good.tif")
    assert summary.annotated == 0
    assert {reason for _, _, reason in summary.quarantined} == {"ModelOutputError: captioner returned an empty caption"}


def test_domains_from_captions_and_categories():
    classifier = DomainClassifier()
    found = classifier.classify(
        [["a dense residential area"], ["oil tanks beside a refinery"], ["a view"], ["a river through a forest"]],
        [["building"], ["storage tank", "building"], [], ["water", "tree", "bridge"]],
    )
    assert [d.name for d in found[:3]] == ["town", "industrial", "unknown"]
    assert found[0].score == 1.0 and found[2].score == 0.0
    assert found[3].name in {"forest", "waterfront"}


def test_cli_on_real_naip_with_tiny_models(shared_real, tmp_path, tiny_models_yaml):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        "".join(
            json.dumps({"id": p.stem, "caption": "farmland with a river, trees and a road"}) + "\n"
            for p in (shared_real / "naip").glob("*.tif")
        )
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "annotate",
            str(shared_real / "naip"),
            "--taxonomy",
            "ovrsis95k",
            "--out",
            str(out),
            "--models",
            str(tiny_models_yaml),
            "--captions",
            str(captions),
            "--tile-size",
            "512",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["annotated"] == 8 and summary["quarantined"] == []
    for path in (shared_real / "naip").glob("*.tif"):
        with rasterio.open(path) as source, rasterio.open(out / "stitched" / path.name) as stitched:
            assert stitched.crs == source.crs and stitched.transform == source.transform
            assert (stitched.width, stitched.height) == (source.width, source.height)
    assert "8 of 8 tiles annotated" in result.stderr.replace("\n", " ")


def test_cli_rejects_bad_options_before_loading_models(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "annotate",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
            "--models",
            "default",
            "--bands",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--bands must be comma-separated" in result.stderr
