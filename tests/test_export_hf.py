"""Hugging Face `datasets` loads the exported shards: images and masks decode to the shards' pixels,
class names come with the features, and records of every shape (audited, reviewed, dropped
instances) load, which the raw shards' inferred schema cannot promise."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.dataset.records import AuditDecision, Domain, Instance, ReviewRef, SourceInfo, TileRecord, Window
from pipeline.dataset.shards import ShardConfig, ShardReader, write_shards

NAMES = ["building", "road", "background"]


def records(folder: Path, whole_png_sources: int) -> list[TileRecord]:
    """Nine 16x16 tiles; the first `whole_png_sources` are whole PNG images (their bytes go into the
    shards as `png`, the others as lossless `webp`); later ones carry audit, review and dropped instances."""
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for i in range(9):
        path = folder / f"img{i}.png"
        Image.fromarray(pixels(i)).save(path)
        window = (
            Window(row_off=0, col_off=0, height=16, width=16)
            if i < whole_png_sources
            else Window(row_off=0, col_off=0, height=16, width=15)
        )
        source = SourceInfo(
            path=str(path),
            sha256="0" * 64,
            window=window,
            band_mapping=[1, 2, 3],
            stretch="none",
            dtype="uint8",
            raster_width=16,
            raster_height=16,
        )
        record = TileRecord(
            key=f"img{i}__r0_c0",
            source=source,
            domain=Domain(name="town", score=1.0),
            semantic_mask=f"masks/img{i}.png",
        )
        if i >= 6:
            record.audit = [
                AuditDecision(target="category:building", state="corrected", corrected_to="road", mask_iou=0.5)
            ]
            record.review = ReviewRef(
                queue="sample", project_id=1, task_id=i, annotation_id=i, updated_at="2026-01-01", stale=i == 8
            )
            record.instances = [
                Instance(category="road", box=[0, 0, 4, 4], detector_score=0.4, dropped="area 3 < min_area 32")
            ]
        found.append(record)
    return found


def pixels(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)


def sample(record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
    i = int(record.key[3])
    mask = np.random.default_rng(100 + i).integers(0, 3, (16, 16)).astype(np.uint8)
    mask[0, 0] = 255
    image = pixels(i)
    return image[:, : record.source.window.width], mask[:, : record.source.window.width]


def build(folder: Path, whole_png_sources: int) -> Path:
    out = folder / "build"
    write_shards(
        out,
        records(folder / "in", whole_png_sources),
        sample,
        NAMES,
        "sha256:test",
        ShardConfig(max_samples=4, val_fraction=0.25),
    )
    return out


def shard_parts(out: Path) -> dict[str, dict[str, bytes]]:
    parts: dict[str, dict[str, bytes]] = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, part = member.name.partition(".")
                parts.setdefault(key, {})[part] = tar.extractfile(member).read()
    return parts


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_export_hf_loads_with_datasets_bytes_and_class_names_intact(tmp_path):
    import datasets

    out = build(tmp_path, whole_png_sources=0)
    assert ShardReader(out).manifest["image_format"] == "webp"
    result = CliRunner().invoke(app, ["export", "hf", str(out), "--dest", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    ds = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))
    assert {split: len(ds[split]) for split in ds} == {"train": 7, "val": 2}
    assert ds["train"].features["json"]["classes"].feature.names == NAMES
    raw = shard_parts(out)
    for split in ds:
        for row in ds[split]:
            key = row["__key__"]
            assert np.array_equal(
                np.asarray(row["webp"].convert("RGB")),
                np.asarray(Image.open(io.BytesIO(raw[key]["webp"])).convert("RGB")),
            )
            mask = np.asarray(row["mask.png"])
            assert np.array_equal(mask, np.asarray(Image.open(io.BytesIO(raw[key]["mask.png"]))))
            assert row["json"]["classes"] == sorted(set(np.unique(mask).tolist()) - {255})
            assert row["json"]["reviewed"] == (int(key[3]) >= 6)
            assert TileRecord.model_validate_json(row["json"]["record"]).key == key
    # the image and mask parts are the build's bytes
    undecoded = (
        ds["train"]
        .cast_column("webp", datasets.Image(decode=False))
        .cast_column("mask.png", datasets.Image(decode=False))
    )
    for row in undecoded:
        assert (
            row["webp"]["bytes"] == raw[row["__key__"]]["webp"]
            and row["mask.png"]["bytes"] == raw[row["__key__"]]["mask.png"]
        )


def test_mixed_image_formats_become_one_lossless_png_column(tmp_path):
    import datasets

    from pipeline.export.hf import hf_features

    out = build(tmp_path, whole_png_sources=3)
    assert ShardReader(out).manifest["image_format"] == "mixed"
    result = CliRunner().invoke(app, ["export", "hf", str(out), "--dest", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    # the exported tars also load as plain webdataset, given the features
    files = {
        split: sorted(str(p) for p in (tmp_path / "hf" / "data").glob(f"{split}-*.tar")) for split in ("train", "val")
    }
    ds = datasets.load_dataset(
        "webdataset", data_files=files, features=hf_features(NAMES, "png"), cache_dir=str(tmp_path / "cache")
    )
    raw = shard_parts(out)
    for row in ds["train"]:
        own = raw[row["__key__"]]
        image = own.get("png") or own["webp"]
        assert np.array_equal(
            np.asarray(row["png"].convert("RGB")), np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
        )
        assert row["json"]["window"][3] == (16 if "png" in own else 15)


def test_export_hf_refuses_a_folder_without_shards(tmp_path):
    result = CliRunner().invoke(app, ["export", "hf", str(tmp_path)])
    assert result.exit_code == 2 and f"{tmp_path / 'manifest.json'}: no manifest" in result.output
