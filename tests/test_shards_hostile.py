"""Shards from elsewhere (issue 27): sample names that would leave a folder, and what a published
shard or Hugging Face export carries about the machine and the people that made it.

Hostile shards are crafted with tarfile and given a manifest that matches them (checksum, count),
as someone shipping them would: only the names are wrong."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.dataset.records import AuditDecision, Domain, ReviewRef, SourceInfo, TileRecord, Window
from pipeline.dataset.shards import PSEUDONYM_KEY, ShardConfig, write_shards
from pipeline.files.safe_names import confined_name

NAMES = ["building", "road", "water"]
EMAIL = "alice@example.org"
PSEUDONYM = re.compile(r"reviewer-[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def tile_record(key: str, path: Path, reviewed: bool = False) -> TileRecord:
    source = SourceInfo(
        path=str(path),
        sha256="0" * 64,
        window=Window(row_off=0, col_off=0, height=8, width=7),  # not the whole image: stored as WebP
        band_mapping=[1, 2, 3],
        stretch="none",
        dtype="uint8",
        raster_width=8,
        raster_height=8,
    )
    record = TileRecord(key=key, source=source, domain=Domain(name="town", score=1.0))
    if reviewed:
        record.audit = [AuditDecision(target="category:road", state="corrected", corrected_to="water", reviewer=EMAIL)]
        record.review = ReviewRef(
            queue="sample", project_id=1, task_id=1, annotation_id=1, updated_at="2026-01-01", reviewer=EMAIL
        )
    return record


def sample(record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(len(record.key))
    return rng.integers(0, 255, (8, 7, 3), dtype=np.uint8), rng.integers(0, 3, (8, 7)).astype(np.uint8)


def build(out: Path, inputs: Path, keep_private_fields: bool = False) -> Path:
    """Three tiles of images under `inputs` (one reviewed) and one of an image outside it; train only."""
    records = [tile_record(f"img{i}__r0_c0", inputs / "sub" / f"img{i}.tif", reviewed=i == 0) for i in range(3)]
    records.append(tile_record("far__r0_c0", out.parent / "elsewhere" / "far.tif"))
    write_shards(
        out,
        records,
        sample,
        NAMES,
        "sha256:test",
        ShardConfig(val_fraction=0.0, keep_private_fields=keep_private_fields),
        build_config={"inputs": [str(inputs)], "models": str(out.parent / "models.yaml")},
        inputs=[inputs],
    )
    return out


def plain_build(out: Path, max_samples: int = 1000) -> Path:
    """Four tiles, train only, written with the writer's defaults (the hostile samples come after)."""
    records = [tile_record(f"img{i}__r0_c0", out.parent / "in" / f"img{i}.tif") for i in range(3)]
    records.append(tile_record("far__r0_c0", out.parent / "elsewhere" / "far.tif"))
    write_shards(out, records, sample, NAMES, "sha256:test", ShardConfig(val_fraction=0.0, max_samples=max_samples))
    return out


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 7, 3), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def hostile_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # tarfile keeps the name as given: `add` would strip a leading '/'
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_members(out: Path, members: list[tuple[str, bytes]], samples: int, index: int = 0) -> Path:
    """Append `members` to a train shard and make the manifest agree (sha256, bytes, `samples` more)."""
    shard = out / "shards" / f"train-{index:06d}.tar"
    with tarfile.open(shard) as source:
        kept = [(member, source.extractfile(member).read()) for member in source]
    shard.chmod(0o644)
    with tarfile.open(shard, "w") as tar:
        for member, data in kept:
            tar.addfile(member, io.BytesIO(data))
        for name, data in members:
            hostile_member(tar, name, data)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][index]
    entry.update(sha256=hashlib.sha256(shard.read_bytes()).hexdigest(), bytes=shard.stat().st_size)
    entry["samples"] += samples
    manifest["splits"]["train"]["samples"] += samples
    (out / "manifest.json").write_text(json.dumps(manifest))
    return shard


def sample_members(name: str) -> list[tuple[str, bytes]]:
    """A complete sample (image, mask, record) under the sample name `name`."""
    mask = png(np.zeros((8, 7), np.uint8))
    return [(f"{name}.jpg", jpeg()), (f"{name}.mask.png", mask), (f"{name}.json", b'{"key": "x"}')]


def hostile_cases(tmp_path: Path) -> dict[str, list[tuple[str, bytes]]]:
    sibling = tmp_path / "work" / "sibling"
    return {
        "parent": sample_members("../../x"),
        "parent-of-dest": sample_members("../../../x"),
        "absolute": sample_members(str(sibling / "x")),
        "control": sample_members("x\x1b[2Jy"),
        # the members exactly as issue 27 reported them (the mask named x.png)
        "reported": [
            ("../../x.jpg", jpeg()),
            ("../../x.png", png(np.zeros((8, 7), np.uint8))),
            ("../../x.json", b"{}"),
        ],
    }


CASES = ["parent", "parent-of-dest", "absolute", "control", "reported"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_verify_reports_a_sample_whose_name_leaves_the_folder(tmp_path, case):
    out = plain_build(tmp_path / "out")
    shard = add_members(out, hostile_cases(tmp_path)[case], samples=1)
    result = invoke("shards", "verify", str(out))
    assert result.exit_code == 1, result.output
    first = hostile_cases(tmp_path)[case][0][0]
    assert f"{shard}: member {first!r} left out" in result.output
    assert "\x1b" not in result.output  # a control character is quoted, never sent to the terminal


@pytest.mark.parametrize("case", CASES)
def test_exports_write_nothing_outside_dest(tmp_path, case):
    out = plain_build(tmp_path / "out")
    add_members(out, hostile_cases(tmp_path)[case], samples=1)
    work = tmp_path / "work"
    (work / "sibling").mkdir(parents=True)
    before = files_under(tmp_path)

    official = invoke("shards", "export", str(out), str(work / "dest"))
    assert official.exit_code == 1, official.output
    assert "left out" in official.output and "4 samples written" in official.output
    layout = {work / "dest" / "train" / folder for folder in ("img", "mask")}
    assert all(path.parent in layout for path in files_under(tmp_path) - before)
    assert sorted(p.name for p in (work / "dest" / "train" / "img").iterdir())[0] == "far__r0_c0.jpg"

    hf = invoke("export", "hf", str(out), "--dest", str(work / "hf"))
    assert hf.exit_code == 1, hf.output
    assert "left out" in hf.output
    assert all(path.is_relative_to(work) and "sibling" not in path.parts for path in files_under(tmp_path) - before)
    assert not any((work / "sibling").iterdir())
    with tarfile.open(work / "hf" / "data" / "train-000000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 4 * 3 and all(confined_name(name) for name in names)


def test_repeated_keys_in_a_shard_are_reported_and_exported_once(tmp_path):
    out = plain_build(tmp_path / "out")
    shard = out / "shards" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        first_key = tar.getnames()[0].partition(".")[0]
    add_members(out, sample_members(first_key), samples=0)
    result = invoke("shards", "verify", str(out))
    assert result.exit_code == 1 and f"sample key {first_key!r} repeats" in result.output
    official = invoke("shards", "export", str(out), str(tmp_path / "dest"))
    assert official.exit_code == 1 and "4 samples written" in official.output
    image = np.asarray(Image.open(tmp_path / "dest" / "train" / "img" / f"{first_key}.jpg"))
    assert image.std() > 10  # the first sample's noise, not the repeat's black


def test_a_key_repeated_in_a_later_shard_is_exported_once(tmp_path):
    """The official layout has one file per key in a split's folders: a later shard's sample with an
    earlier shard's key would overwrite it."""
    out = plain_build(tmp_path / "out", max_samples=2)
    with tarfile.open(out / "shards" / "train-000000.tar") as tar:
        first_key = tar.getnames()[0].partition(".")[0]
    add_members(out, sample_members(first_key), samples=0, index=1)
    official = invoke("shards", "export", str(out), str(tmp_path / "dest"))
    assert official.exit_code == 1 and f"sample key {first_key!r} repeats an earlier sample" in official.output
    image = np.asarray(Image.open(tmp_path / "dest" / "train" / "img" / f"{first_key}.jpg"))
    assert image.std() > 10  # the first shard's noise, not the repeat's black


def test_a_manifest_naming_a_shard_outside_the_folder_is_refused(tmp_path):
    out = plain_build(tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["../../evil"] = manifest["splits"].pop("train")
    (out / "manifest.json").write_text(json.dumps(manifest))
    for args in (("shards", "verify", str(out)), ("shards", "export", str(out), str(tmp_path / "dest"))):
        result = invoke(*args)
        assert result.exit_code == 2 and "split name '../../evil' holds a path separator" in result.output
    assert not (tmp_path / "evil").exists()


# --- publishable shards ---------------------------------------------------------------------------


def shard_records(out: Path) -> dict[str, str]:
    """Each sample's JSON part, as text, by key."""
    found = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    found[member.name.removesuffix(".json")] = tar.extractfile(member).read().decode()
    return found


def hf_records(dest: Path) -> dict[str, str]:
    """The `record` column of an `export hf` folder, by key."""
    found = {}
    with tarfile.open(dest / "data" / "train-000000.tar") as tar:
        for member in tar:
            if member.name.endswith(".json"):
                found[member.name.removesuffix(".json")] = json.loads(tar.extractfile(member).read())["record"]
    return found


def leaks(text: str, tmp_path: Path) -> bool:
    return str(tmp_path) in text or "@" in text


def test_shards_carry_relative_paths_and_pseudonyms_by_default(tmp_path):
    out = build(tmp_path / "out", tmp_path / "in")
    records = shard_records(out)
    assert not any(leaks(text, tmp_path) for text in records.values())
    reviewed = json.loads(records["img0__r0_c0"])
    assert reviewed["source"]["path"] == "in/sub/img0.tif"  # relative to the folder holding the input
    assert json.loads(records["far__r0_c0"])["source"]["path"] == "far.tif"  # under no input: its name
    pseudonym = reviewed["review"]["reviewer"]
    assert PSEUDONYM.fullmatch(pseudonym) and reviewed["audit"][0]["reviewer"] == pseudonym
    manifest = (out / "manifest.json").read_text()
    assert not leaks(manifest, tmp_path) and json.loads(manifest)["build_config"]["models"] == "models.yaml"
    key = out / PSEUDONYM_KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # a rebuild of the folder keeps each reviewer's pseudonym, and its bytes
    before = (out / "shards" / "train-000000.tar").read_bytes()
    build(out, tmp_path / "in")
    assert (out / "shards" / "train-000000.tar").read_bytes() == before


def test_keep_private_fields_keeps_raw_paths_and_reviewers(tmp_path):
    out = build(tmp_path / "out", tmp_path / "in", keep_private_fields=True)
    reviewed = json.loads(shard_records(out)["img0__r0_c0"])
    assert reviewed["source"]["path"] == str(tmp_path / "in" / "sub" / "img0.tif")
    assert reviewed["review"]["reviewer"] == EMAIL and reviewed["audit"][0]["reviewer"] == EMAIL
    assert str(tmp_path) in (out / "manifest.json").read_text()
    assert not (out / PSEUDONYM_KEY).exists()


def test_export_hf_record_column_is_public_unless_asked(tmp_path):
    out = build(tmp_path / "out", tmp_path / "in", keep_private_fields=True)
    result = invoke("export", "hf", str(out), "--dest", str(tmp_path / "hf"))
    assert result.exit_code == 0, result.output
    public = hf_records(tmp_path / "hf")
    assert len(public) == 4 and not any(leaks(text, tmp_path) for text in public.values())
    reviewed = json.loads(public["img0__r0_c0"])
    assert reviewed["source"]["path"] == "in/sub/img0.tif"  # the manifest names the build's inputs
    assert PSEUDONYM.fullmatch(reviewed["review"]["reviewer"])

    result = invoke("export", "hf", str(out), "--dest", str(tmp_path / "raw"), "--keep-private-fields")
    assert result.exit_code == 0, result.output
    raw = json.loads(hf_records(tmp_path / "raw")["img0__r0_c0"])
    assert raw["source"]["path"] == str(tmp_path / "in" / "sub" / "img0.tif") and raw["review"]["reviewer"] == EMAIL


def test_export_hf_of_public_shards_keeps_their_pseudonyms(tmp_path):
    out = build(tmp_path / "out", tmp_path / "in")
    assert invoke("export", "hf", str(out), "--dest", str(tmp_path / "hf")).exit_code == 0
    assert hf_records(tmp_path / "hf") == shard_records(out)


def test_export_stac_skips_a_record_whose_key_leaves_dest(tmp_path):
    from rasterio.crs import CRS

    out, work = tmp_path / "out", tmp_path / "work"
    (out / "masks").mkdir(parents=True)
    (work / "sibling").mkdir(parents=True)
    lines = []
    for key in ("good__r0_c0", "../sibling/x", str(work / "sibling" / "y")):
        record = tile_record(key, tmp_path / "in" / "a.tif")
        record.source.crs, record.source.transform = CRS.from_epsg(32633).to_wkt(), [1.0, 0, 500000, 0, -1.0, 0]
        record.semantic_mask = "masks/good.png"
        lines.append(record.model_dump_json())
    Image.fromarray(np.zeros((8, 7), np.uint8)).save(out / "masks" / "good.png")
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    (out / "manifest.json").write_text(json.dumps({"taxonomy": {"names": NAMES}}))
    result = invoke("export", "stac", str(out), "--dest", str(work / "dest"), "--datetime", "2024-06-01T00:00:00Z")
    assert result.exit_code == 1, result.output
    assert "'../sibling/x': tile key '../sibling/x' holds a path separator" in result.output
    assert not any((work / "sibling").iterdir()) and (work / "dest" / "good__r0_c0").is_dir()
