"""Issue 12, pipeline half: bad input never crashes a run or costs good work.

The generated corpus (tests/bad_inputs.py) goes through `ovrsis annotate`, `ovrsis categories` and
`ovrsis build` the way users run them: every good item is finished, every bad one reported with its
reason, no traceback, and the exit status follows the 0/1/2 rule (docs/failure-behaviour.md). The
unit tests below pin each row of the issue on the reader itself, which `piseg` shares.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_inputs import (
    GOOD,
    LONG_CAPTION,
    make_caption_corpus,
    make_raster_corpus,
    write_absurd_header,
    write_exif_rotated_jpeg,
)
from PIL import Image

from pipeline.build.annotate import AnnotateConfig, Annotator, load_caption_file
from pipeline.dataset.records import TileRecord, Window
from pipeline.dataset.selection import kept_categories
from pipeline.files.atomic import process_umask
from pipeline.files.jsonl import atomic_writer
from pipeline.raster.ingest import IngestError, RasterSource, TilingConfig, bounded_reads, find_rasters
from pipeline.raster.outputs import write_png
from taxonomy import load_taxonomy

OVRSIS = [sys.executable, "-m", "flows.cli"]
CAPTION = "many buildings and a road with cars near a river"


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*OVRSIS, *args], capture_output=True, text=True, timeout=600, **kwargs)


def captions_for(folder: Path) -> Path:
    """Captions by file stem for every file of the corpus, so no tile depends on the tiny captioner."""
    path = folder.parent / f"{folder.name}-captions.jsonl"
    stems = sorted({p.stem for p in folder.rglob("*")})
    path.write_text("".join(json.dumps({"id": stem, "caption": CAPTION}) + "\n" for stem in stems))
    return path


def check_outcomes(records: list[TileRecord], folder: Path, expected: dict[str, str]) -> None:
    """Good files: every tile annotated. Bad files: reported, with a reason saying why."""
    by_file: dict[str, list[TileRecord]] = {}
    for record in records:
        by_file.setdefault(str(Path(record.source.path).relative_to(folder)), []).append(record)
    assert set(by_file) == set(expected), "every file of the corpus is in the records, nothing else"
    for name, outcome in expected.items():
        reasons = [r.quarantine.reason for r in by_file[name] if r.quarantine]
        if outcome == GOOD:
            assert not reasons, f"{name}: {reasons}"
        else:
            why = outcome.removeprefix("bad: ").lower()
            assert any(why in reason.lower() for reason in reasons), f"{name}: expected {why!r}, got {reasons}"


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]


# --- the corpus through the commands -------------------------------------------------------------


@pytest.mark.slow
def test_annotate_on_the_corpus_quarantines_each_bad_file_and_finishes_the_good(tmp_path, tiny_models_yaml):
    folder = tmp_path / "corpus"
    expected = make_raster_corpus(folder)
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    stale = out / "overlays" / ".good_rgb__r0_c0.png.x1y2z3.part"  # what an interrupted run leaves
    stale.write_bytes(b"half a png")
    result = run(
        "annotate",
        str(folder),
        "--out",
        str(out),
        "--models",
        str(tiny_models_yaml),
        "--captions",
        str(captions_for(folder)),
        "--tile-size",
        "64",
        preexec_fn=lambda: os.umask(0o027),
    )
    assert_no_traceback(result)
    assert result.returncode == 1, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    quarantined = len(summary["quarantined"])
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"{quarantined} of {summary['tiles']} tiles quarantined; reasons in {out / 'summary.json'}"
    records = [TileRecord.model_validate_json(line) for line in (out / "records.jsonl").read_text().splitlines()]
    check_outcomes(records, folder, expected)
    assert summary["annotated"] == sum(1 for r in records if not r.quarantine) > 0
    rotated = next(r for r in records if r.key.startswith("good_exif_rotated"))
    assert (rotated.source.raster_width, rotated.source.raster_height) == (40, 80), "EXIF orientation applied"
    assert not stale.exists() and not list(out.rglob("*.part"))
    assert stat.S_IMODE((out / "masks" / "good_rgb__r0_c0.png").stat().st_mode) == 0o640, "the umask's mode"
    assert stat.S_IMODE((out / "records.jsonl").stat().st_mode) == 0o640


def test_categories_on_the_caption_corpus(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    folder = tmp_path / "captions"
    expected = make_caption_corpus(folder)
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    runner = CliRunner()

    def categories(name: str):
        out = tmp_path / name
        result = runner.invoke(
            app, ["categories", "-t", "ovrsis95k", "-c", str(folder / name), "-o", str(out), "--no-embedding"]
        )
        assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), (
            result.output
        )
        return result, out

    result, out = categories("mixed.jsonl")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].endswith(f"reasons in {tmp_path / 'mixed.errors.jsonl'}")
    done = {row["id"] for row in map(json.loads, out.read_text().splitlines())}
    assert done == {"ok_single", "ok_list", "7", "ok_unicode", "ok_one_bad_caption"}
    errors = {}
    for row in map(json.loads, (tmp_path / "mixed.errors.jsonl").read_text().splitlines()):
        errors.setdefault(row["line"], []).append(row["error"])
    for key, outcome in expected.items():
        file, _, line = key.partition(":")
        if file != "mixed.jsonl" or outcome == GOOD:
            continue
        why = outcome.removeprefix("bad: ")
        assert any(why in error for error in errors.get(int(line), [])), (
            f"line {line}: {why!r} not in {errors.get(int(line))}"
        )
    assert "characters long" in " ".join(errors[15]), "a 1,000,000-character caption is reported, not spaCy's E088"

    for name in ("utf8_bom.jsonl", "crlf.jsonl", "no_final_newline.jsonl"):
        result, out = categories(name)
        assert result.exit_code == 0 and json.loads(out.read_text())["id"] == "ok_file", (name, result.output)
    for name in ("utf16.jsonl", "empty.jsonl"):
        result, out = categories(name)
        why = expected[name].removeprefix("bad: ")
        assert result.exit_code == 2 and why in result.output and result.output.startswith("error:"), result.output
        assert not out.exists(), "refused before any work: nothing written"


@pytest.mark.slow
def test_build_flow_on_the_corpus(tmp_path, tiny_models_yaml):
    from flows.sample_build import ovrsis, prefect_env

    folder = tmp_path / "corpus"
    expected = make_raster_corpus(folder)
    output = tmp_path / "build"
    config = {
        "inputs": [str(folder)],
        "captions": str(captions_for(folder)),
        "models": str(tiny_models_yaml),
        "output": str(output),
        "tiling": {"tile_size": 64},
        "batch_size": 16,
        "shards": {"max_samples": 64, "val_fraction": 0.25},
    }
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        ovrsis("build", "--config", str(tmp_path / "build.yaml")),
        env=prefect_env(tmp_path / "p"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert_no_traceback(result)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].endswith(f"reasons in {output / 'summary.json'}")
    records = [TileRecord.model_validate_json(line) for line in (output / "records.jsonl").read_text().splitlines()]
    check_outcomes(records, folder, expected)
    manifest = json.loads((output / "manifest.json").read_text())
    sharded = sum(split["samples"] for split in manifest["splits"].values())
    labelled = [r for r in records if not r.quarantine and kept_categories(r)]  # unlabeled tiles are never sharded
    assert sharded == len(labelled) >= len(records) - manifest["quarantined_tiles"] - 2, "every good tile is sharded"


# --- refusals before any work (exit 2, one line, nothing written) ---------------------------------


@pytest.mark.parametrize(
    ("taxonomy", "message"),
    [
        ("name: x\nignore_index: 200\ncategories: [car, road]\n", "t.yaml:2: ignore_index is 200"),
        ("name: x\ncategories:\n  - name: car\n    synonym: [auto]\n", "t.yaml:4: unknown key 'synonym'"),
        (
            "name: big\ncategories:\n" + "".join(f"  - c{i}\n" for i in range(300)),
            "has 300 categories; masks are uint8",
        ),
    ],
)
def test_bad_taxonomy_refuses_annotate_before_any_work(tmp_path, taxonomy, message):
    from typer.testing import CliRunner

    from flows.cli import app

    (tmp_path / "t.yaml").write_text(taxonomy)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["annotate", str(tmp_path), "-t", str(tmp_path / "t.yaml"), "-o", str(out), "--models", "tiny"]
    )
    assert result.exit_code == 2 and result.output.startswith("error:") and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_annotate_with_nothing_readable_exits_2_and_keeps_the_reasons(tmp_path, tiny_models_yaml):
    from typer.testing import CliRunner

    from flows.cli import app

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zero.tif").write_bytes(b"")
    (tmp_path / "in" / "link.png").symlink_to(tmp_path / "gone.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["annotate", str(tmp_path / "in"), "-o", str(out), "--models", str(tiny_models_yaml)]
    )
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert (
        result.output.strip().splitlines()[-1]
        == f"error: none of the 2 tiles could be annotated; reasons in {out / 'summary.json'}"
    )
    reasons = {q["key"]: q["reason"] for q in json.loads((out / "summary.json").read_text())["quarantined"]}
    assert reasons["zero__r0_c0"] == "zero-byte file" and reasons["link__r0_c0"].startswith("broken symbolic link")
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(
        app, ["annotate", str(tmp_path / "empty"), "-o", str(tmp_path / "o2"), "--models", str(tiny_models_yaml)]
    )
    assert empty.exit_code == 2 and empty.output == f"error: {tmp_path / 'empty'}: no files in the input folder\n"
    assert not (tmp_path / "o2").exists()


def test_annotate_refuses_an_overlong_given_caption_naming_the_line(tmp_path):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        json.dumps({"id": "a", "caption": CAPTION}) + "\n" + json.dumps({"id": "b", "caption": LONG_CAPTION}) + "\n"
    )
    with pytest.raises(
        ValueError,
        match=(
            r"1 bad line\(s\); line 2: id 'b': no usable caption "
            r"\(caption is 1,049,999 characters long; at most 10,000\)"
        ),
    ):
        load_caption_file(captions)


# --- the reader, shared with piseg predict/eval ----------------------------------------------------


def test_truncated_png_and_jpeg_are_errors_not_garbage(tmp_path):
    expected = make_raster_corpus(tmp_path)
    for name in ("bad_truncated.png", "bad_truncated.jpg"):
        with pytest.raises(IngestError, match="truncated"):
            RasterSource(tmp_path / name)
    assert expected["bad_truncated.png"] == "bad: truncated"


def test_truncated_geotiff_reason_is_gdals_message(tmp_path):
    make_raster_corpus(tmp_path)
    with RasterSource(tmp_path / "bad_truncated.tif") as source:
        reasons = {t.quarantine.reason for t in source.tiles(TilingConfig(64)) if isinstance(t, TileRecord)}
    assert reasons and all("TIFFReadEncodedStrip" in r and "previous exception" not in r for r in reasons), reasons


def test_palette_png_is_expanded_to_rgb(tmp_path):
    make_raster_corpus(tmp_path)
    with RasterSource(tmp_path / "good_palette.png") as source:
        tile = next(source.tiles(TilingConfig(64)))
    assert tile.image.shape == (32, 48, 3)
    assert tile.image[0, 0].tolist() == [255, 0, 0] and tile.image[0, 20].tolist() == [0, 255, 0]
    assert tile.image[0, 40].tolist() == [0, 0, 255]


def test_exif_orientation_is_applied(tmp_path):
    upright = write_exif_rotated_jpeg(tmp_path / "photo.jpg")
    with RasterSource(tmp_path / "photo.jpg") as source:
        image, valid = source.read(Window(row_off=0, col_off=0, height=80, width=40))
    assert image.shape == upright.shape == (80, 40, 3) and valid.all()
    assert image[:30].mean() > 240 and image[50:].mean() < 15, "the white half is on top after the turn"


def test_absurd_header_is_refused_before_reading(tmp_path):
    write_absurd_header(tmp_path / "huge.tif")
    with pytest.raises(
        IngestError, match=r"100000 x 100000 = 10,000,000,000 pixels, over the limit of 2,500,000,000 \(--max-pixels\)"
    ):
        RasterSource(tmp_path / "huge.tif")
    with RasterSource(tmp_path / "huge.tif", max_pixels=10**10) as source:  # allowed when asked for
        assert source.dataset.width == 100_000


def test_tiling_a_huge_raster_keeps_memory_flat(tmp_path):
    """GDAL's default block cache (5 % of RAM) grew RSS by ~3 MB per 1024 px tile, without bound."""

    def rss_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    write_absurd_header(tmp_path / "big.tif", side=40_000)  # a real run would need --max-pixels 1.6e9: allowed
    with bounded_reads(), RasterSource(tmp_path / "big.tif") as source:
        tiles = source.tiles(TilingConfig(1024))
        next(tiles)
        before = rss_mib()
        for _ in range(200):
            next(tiles)
        assert rss_mib() - before < 100


def test_broken_links_directories_and_other_formats_are_listed(tmp_path):
    make_raster_corpus(tmp_path)
    _, skipped = find_rasters(tmp_path)
    reasons = {Path(r.source.path).name: r.quarantine.reason for r in skipped}
    assert reasons["bad_broken_link.tif"].startswith("broken symbolic link (its target ")
    assert reasons["bad_directory.tif"].startswith("not a regular file")
    assert reasons["bad_unsupported.bmp"] == "unsupported format .bmp"


def test_unreadable_file_is_quarantined_and_the_run_goes_on(tmp_path, tiny_models, monkeypatch):
    """Permission denied, simulated (root reads anything): every open of the file fails."""
    import pipeline.raster.ingest

    make_raster_corpus(tmp_path / "corpus")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("good_rgb.tif", "bad_unreadable.tif"):
        shutil.copy(tmp_path / "corpus" / "good_rgb.tif", folder / name)
    locked = folder / "bad_unreadable.tif"
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(pipeline.raster.ingest, "open", guarded_open, raising=False)
    config = AnnotateConfig(tiling=TilingConfig(64), batch_size=4)
    captions = {"good_rgb": [CAPTION]}
    summary = Annotator(load_taxonomy("ovrsis95k"), tiny_models, tmp_path / "out", config, captions=captions).run(
        folder
    )
    assert summary.quarantined == [("bad_unreadable__r0_c0", "ingest", "cannot be opened: Permission denied")]
    assert summary.annotated == 2


class StopAfter:
    """A captioner that is interrupted (Ctrl-C) on its `calls`-th batch."""

    model_id = "interrupted"

    def __init__(self, calls: int) -> None:
        self.left = calls

    def caption(self, images):
        self.left -= 1
        if not self.left:
            raise KeyboardInterrupt
        return [CAPTION for _ in images]


def test_an_interrupted_annotate_keeps_the_records_it_finished(tmp_path, tiny_models):
    folder = tmp_path / "in"
    make_raster_corpus(folder)
    models = type(
        "Models",
        (),
        {
            "captioner": StopAfter(3),
            "detector": tiny_models.detector,
            "segmenter": tiny_models.segmenter,
            "provenance": tiny_models.provenance,
        },
    )()
    config = AnnotateConfig(tiling=TilingConfig(64), batch_size=4, write_overlay=False)
    annotator = Annotator(load_taxonomy("ovrsis95k"), models, tmp_path / "out", config)
    with pytest.raises(KeyboardInterrupt):
        annotator.run(folder)
    lines = (tmp_path / "out" / "records.jsonl").read_text().splitlines()
    assert len(lines) == annotator.summary.tiles >= 8, "two batches finished before the interruption"
    assert all(TileRecord.model_validate_json(line).key for line in lines)


def test_atomic_writes_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    process_umask.cache_clear()
    try:
        write_png(tmp_path / "mask.png", np.zeros((4, 4), np.uint8))
        with atomic_writer(tmp_path / "records.jsonl") as handle:
            handle.write("{}\n")
    finally:
        os.umask(previous)
        process_umask.cache_clear()
    assert stat.S_IMODE((tmp_path / "mask.png").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "records.jsonl").stat().st_mode) == 0o640
    assert np.asarray(Image.open(tmp_path / "mask.png")).shape == (4, 4)
