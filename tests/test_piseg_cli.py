"""The `piseg` command: info, train and predict, end to end through the CLI."""

import numpy as np
import pytest
import rasterio
from PIL import Image
from typer.testing import CliRunner

from pipeline.raster.outputs import palette
from piseg.cli import app
from piseg.inference.predict import Predictor, overlay_legend, parse_class_names, read_image
from piseg.training.synthetic import COLOURS, tiny_config, write_synthetic_shards
from tests.piseg_helpers import write_config

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    shards = write_synthetic_shards(folder / "build")
    config = write_config(folder / "tiny.yaml", tiny_config(iters=4))
    result = runner.invoke(
        app, ["train", "--shards", str(shards), "--config", str(config), "--out", str(folder / "run")]
    )
    assert result.exit_code == 0, result.output
    return folder / "run" / "checkpoints" / "final.pt"


def test_info_prints_counts_and_flops():
    result = runner.invoke(app, ["info", "--backbone", "vit-b", "--classes", "2"])
    assert result.exit_code == 0, result.output
    assert "155,603,682" in result.output and "154,289,378" in result.output and "GMACs" in result.output
    assert runner.invoke(app, ["info", "--backbone", "vit-z"]).exit_code == 2


def test_predict_writes_masks_overlays_and_georeferenced_masks(checkpoint, tmp_path):
    picture = tmp_path / "scene.png"
    Image.fromarray(np.repeat(COLOURS[:2], 20, axis=0)[:, None].repeat(40, axis=1)).save(picture)
    raster = tmp_path / "field.tif"
    profile = {
        "driver": "GTiff",
        "width": 40,
        "height": 30,
        "count": 4,
        "dtype": "uint16",
        "crs": "EPSG:32614",
        "transform": rasterio.transform.from_origin(500000, 4000000, 5, 5),
    }
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(np.random.default_rng(0).integers(0, 4000, (4, 30, 40), dtype=np.uint16))
    out = tmp_path / "predictions"
    result = runner.invoke(
        app,
        [
            "predict",
            str(picture),
            str(raster),
            "--checkpoint",
            str(checkpoint),
            "--classes",
            "building; tree; water, lake",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    names = ["building", "tree", "water, lake"]
    predictor = Predictor(checkpoint, device="cpu")
    mask = np.asarray(Image.open(out / "scene.png"))
    assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 1, 2}
    assert np.array_equal(mask, predictor.predict(np.array(Image.open(picture)), names))  # plain class ids
    # the overlay is a figure with a legend: a swatch in the class's own colour for each class present (the
    # overlay itself only holds blends of colour and image), none for a class the prediction does not show
    quick_look = np.asarray(Image.open(out / "scene.overlay.png"))
    assert quick_look.ndim == 3 and quick_look.shape[0] > 40 and quick_look.shape[1] > 40
    for index, colour in enumerate(palette(len(names))):
        swatch = int(np.all(quick_look == colour, axis=-1).sum())
        assert (swatch > 100) if (mask == index).any() else (swatch == 0), (names[index], swatch)
    with rasterio.open(out / "field.mask.tif") as written:
        assert written.crs.to_epsg() == 32614 and written.transform.c == 500000 and written.shape == (30, 40)
        assert np.array_equal(written.read(1), predictor.predict(read_image(raster)[0], names))
    missing = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "nope.png"),
            "--checkpoint",
            str(checkpoint),
            "--classes",
            "a",
            "--out",
            str(tmp_path / "missing"),
        ],
    )
    assert missing.exit_code == 2 and "nope.png" in missing.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = runner.invoke(
        app, ["predict", str(picture), "--checkpoint", str(bad), "--classes", "a, b", "--out", str(tmp_path / "bad")]
    )
    assert result.exit_code == 2 and "bad.pt: not a readable checkpoint" in result.output


def test_overlay_legend_names_the_classes_present_with_their_share():
    mask = np.zeros((4, 8), dtype=np.uint8)
    mask[:, 6:] = 2
    legend = overlay_legend(mask, ["building", "tree", "water"])
    assert [entry.label for entry in legend] == ["building (75.0 % of the image)", "water (25.0 % of the image)"]
    assert [entry.colour for entry in legend] == [tuple(int(c) for c in palette(3)[i]) for i in (0, 2)]


def test_large_rasters_are_predicted_in_windows_and_stitched(checkpoint, tmp_path):
    raster = tmp_path / "large.tif"
    profile = {
        "driver": "GTiff",
        "width": 300,
        "height": 200,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32617",
        "transform": rasterio.transform.from_origin(400000, 3300000, 0.5, 0.5),
    }
    rng = np.random.default_rng(1)
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(COLOURS[rng.integers(0, 3, (200 // 20, 300 // 20))].repeat(20, 0).repeat(20, 1).transpose(2, 0, 1))
    out = tmp_path / "large-out"
    result = runner.invoke(
        app,
        [
            "predict",
            str(raster),
            "--checkpoint",
            str(checkpoint),
            "--classes",
            "building, tree, water",
            "--out",
            str(out),
            "--tile-size",
            "128",
            "--overlap",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert not (out / "large.png").exists()
    with rasterio.open(out / "large.mask.tif") as written:
        mask = written.read(1)
        assert written.crs.to_epsg() == 32617 and written.transform.c == 400000 and mask.shape == (200, 300)
    with rasterio.open(raster) as source:  # the first window's core is that window's own prediction
        first = source.read(window=rasterio.windows.Window(0, 0, 128, 128)).transpose(1, 2, 0)
    own = Predictor(checkpoint, device="cpu").predict(first, ["building", "tree", "water"])
    assert np.array_equal(mask[:100, :100], own[:100, :100])
    bad = runner.invoke(
        app, ["predict", str(raster), "--checkpoint", str(checkpoint), "--classes", "a", "--overlap", "4096"]
    )
    assert bad.exit_code == 2 and "--overlap" in bad.output


def test_python_api_takes_any_class_names(checkpoint):
    predictor = Predictor(checkpoint, device="cpu")
    image = np.repeat(COLOURS, 16, axis=0)[:, None].repeat(32, axis=1)
    for names in (["building", "tree", "water"], ["car", "ship"], ["a", "b", "c", "d", "e"]):
        mask = predictor.predict(image, names)
        assert mask.shape == (48, 32) and mask.max() < len(names)
    assert predictor.trained_classes == ["building", "tree", "water"]
    assert parse_class_names("vehicle, car; road") == ["vehicle, car", "road"]
    with pytest.raises(ValueError, match="repeat"):
        parse_class_names("a, a")


def test_train_reports_bad_configuration_and_shards(tmp_path):
    result = runner.invoke(app, ["train", "--shards", str(tmp_path), "--backbone", "tiny", "--iters", "1"])
    assert result.exit_code == 2 and "no manifest" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  ignore_mode: maybe\n")
    result = runner.invoke(app, ["train", "--shards", str(tmp_path), "--config", str(bad)])
    assert result.exit_code == 2 and "ignore_mode" in result.output
