"""Benchmark evaluation: dataset adapters in real layouts, metrics against torchmetrics, `piseg eval`
end to end with a tiny trained checkpoint, zero-shot CLIP, and `piseg bench`."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import torch
import yaml
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex, MulticlassRecall
from typer.testing import CliRunner

from pipeline.quality.confusion import Confusion
from pipeline.raster.outputs import palette
from piseg.cli import app
from piseg.evaluation.benchmarks import (
    DatasetError,
    dataset_spec,
    default_definitions,
    load_benchmark,
    load_definitions,
)
from piseg.evaluation.evaluate import panel_legend, write_panel
from piseg.evaluation.metrics import ConfusionMatrix
from piseg.figures import MIN_PANEL_SIDE
from piseg.inference.predict import Predictor
from piseg.training.synthetic import tiny_config, write_synthetic_shards
from piseg.training.train import train

runner = CliRunner()


def save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


ISAID = Path("OVRSISBench_test") / "iSAID"


def write_isaid(root: Path, sizes=((40, 48), (36, 36), (900, 900))) -> None:
    """iSAID as the authors release it for the benchmark: imgs/*.png, D2masks/*.png, ids 0-14 (255 ignore)."""
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(sizes):
        save(root / ISAID / "imgs" / f"P{index:04d}.png", rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        mask = rng.choice([0, 3, 8, 14, 255], size=(height, width)).astype(np.uint8)
        save(root / ISAID / "D2masks" / f"P{index:04d}.png", mask)


# Image and mask of one sample per dataset, as the authors' code registers them (cat_seg/data/datasets/
# register_*.py: image folder, mask folder, extensions, root), transcribed separately from benchmarks.yaml.
RELEASED_LAYOUTS = {
    "isaid": ("OVRSISBench_test/iSAID/imgs/a.png", "OVRSISBench_test/iSAID/D2masks/a.png"),
    "dlrsd": ("OVRSISBench_test/DLRSD/imgs/a.jpg", "OVRSISBench_test/DLRSD/D2masks/a.png"),
    "potsdam": ("OVRSISBench_test/Potsdam/imgs/a.png", "OVRSISBench_test/Potsdam/D2masks/a.png"),
    "vaihingen": ("OVRSISBench_test/Vaihingen/imgs/a.png", "OVRSISBench_test/Vaihingen/D2masks/a.png"),
    "udd5": ("OVRSISBench_test/UDD5/all/src/a.JPG", "OVRSISBench_test/UDD5/all/gt/a.png"),
    "loveda": ("OVRSISBench_test/LoveDA/images_png/a.png", "OVRSISBench_test/LoveDA/masks_png2/a.png"),
    "uavid": ("OVRSISBench_test/uavid/Images/a.png", "OVRSISBench_test/uavid/Labels/a.png"),
    "vdd": ("OVRSISBench_test/VDD/src/a.JPG", "OVRSISBench_test/VDD/gt/a.png"),
    "flair": ("OVRSISBench_test/FLAIR_test/image/a.png", "OVRSISBench_test/FLAIR_test/mask/a.png"),
    "openearthmap": ("OVRSISBench_test/OpenEarthMap/images/a.tif", "OVRSISBench_test/OpenEarthMap/labels/a.tif"),
    "inria": (
        "OVRSISBenchV2_other3task/Building_Extraction/Inria/img_dir/split_test/a.png",
        "OVRSISBenchV2_other3task/Building_Extraction/Inria/ann_dir/split_test/a.png",
    ),
    "whu-aerial": (
        "OVRSISBenchV2_other3task/Building_Extraction/WHU-BD/Images/a.png",
        "OVRSISBenchV2_other3task/Building_Extraction/WHU-BD/Masks_cvt/a.png",
    ),
    "whu-satellite-ii": (
        "OVRSISBenchV2_other3task/Building_Extraction/WHU-SAT/Images/a.tif",
        "OVRSISBenchV2_other3task/Building_Extraction/WHU-SAT/Masks_cvt/a.tif",
    ),
    "xbd-pre": (
        "OVRSISBenchV2_other3task/Building_Extraction/xBD/images_pre/a.png",
        "OVRSISBenchV2_other3task/Building_Extraction/xBD/targets_cvt/a.png",
    ),
    **{
        name: (
            f"OVRSISBenchV2_other3task/Road_Extraction/{folder}/image_cvt/a.jpg",
            f"OVRSISBenchV2_other3task/Road_Extraction/{folder}/label_cvt/a.png",
        )
        for name, folder in [
            ("chn6-cug", "CHN6-CUG"),
            ("deepglobe-road", "DeepGlobe"),
            ("massachusetts-road", "Massachusetts"),
            ("spacenet-road", "SpaceNet"),
        ]
    },
    "wbs-si": (
        "OVRSISBenchV2_other3task/Flood_Detection/WBS-SI_val/Images/a.jpg",
        "OVRSISBenchV2_other3task/Flood_Detection/WBS-SI_val/Masks_cvt/a.jpg",
    ),
}


def write_loveda_native(root: Path) -> None:
    """LoveDA's own release: Val/{Urban,Rural}/images_png + masks_png, 1..7 classes, 0 = no-data."""
    rng = np.random.default_rng(1)
    for domain in ("Urban", "Rural"):
        for index in range(2):
            stem = f"{domain[0]}{index}"
            save(
                root / "LoveDA" / "Val" / domain / "images_png" / f"{stem}.png",
                rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            )
            save(
                root / "LoveDA" / "Val" / domain / "masks_png" / f"{stem}.png",
                rng.integers(0, 8, (32, 32), dtype=np.uint8),
            )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-model")
    shards = write_synthetic_shards(folder / "build")
    return train(shards, tiny_config(iters=2), folder / "run")


@pytest.fixture
def definitions(tmp_path):
    data = yaml.safe_load(default_definitions().read_text())
    data["benchmarks"]["two-layouts"] = {"train_taxonomy": "ovrsis95k", "datasets": ["isaid", "loveda-native"]}
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_adapters_read_each_layout_and_remap_labels(tmp_path):
    write_isaid(tmp_path)
    write_loveda_native(tmp_path)
    definitions = load_definitions()
    isaid = dataset_spec(definitions, "isaid")
    samples, problems = isaid.samples(tmp_path)
    assert problems == [] and [s.name for s in samples] == ["P0000", "P0001", "P0002"]
    image, mask = isaid.read(samples[0])
    assert image.shape == (40, 48, 3) and set(np.unique(mask)) <= {0, 3, 8, 14, 255}
    loveda = dataset_spec(definitions, "loveda-native")
    samples, problems = loveda.samples(tmp_path)
    assert problems == [] and len(samples) == 4
    stored = np.asarray(Image.open(samples[0].mask_path))
    _, mask = loveda.read(samples[0])
    assert np.array_equal(mask == 255, stored == 0) and np.array_equal(mask[stored > 0], stored[stored > 0] - 1)
    assert len(loveda.class_names) == 7


def test_every_bundled_dataset_reads_the_released_layout(tmp_path):
    definitions = load_definitions()
    assert set(RELEASED_LAYOUTS) == set(definitions["datasets"]) - {"loveda-native"}
    for name, (image, mask) in RELEASED_LAYOUTS.items():
        save(tmp_path / image, np.zeros((8, 8, 3), dtype=np.uint8))
        save(tmp_path / mask, np.zeros((8, 8), dtype=np.uint8))
        samples, problems = dataset_spec(definitions, name).samples(tmp_path)
        assert problems == [] and [s.mask_path for s in samples] == [tmp_path / mask], name


@pytest.mark.parametrize("scale", [255, 1])
def test_lossy_jpeg_masks_are_thresholded_on_either_scale(tmp_path, scale):
    rows, cols = np.mgrid[:64, :64]
    disc = (rows - 32) ** 2 + (cols - 30) ** 2 < 20**2
    image, mask = RELEASED_LAYOUTS["wbs-si"]
    save(tmp_path / image, np.full((64, 64, 3), 90, dtype=np.uint8))
    # 0/1 masks survive only high JPEG qualities at all (at 70 most of the background reads 1)
    save(tmp_path / mask, np.where(disc, scale, 0).astype(np.uint8), quality=70 if scale == 255 else 95)
    stored = np.asarray(Image.open(tmp_path / mask))
    assert len(np.unique(stored)) > 2  # JPEG really did blur the edges
    spec = dataset_spec(load_definitions(), "wbs-si")
    _, read = spec.read(spec.samples(tmp_path)[0][0])
    assert set(np.unique(read)) == {0, 1} and abs(int(read.sum()) - int(disc.sum())) < 40


def test_palette_masks_missing_files_and_bad_values(tmp_path):
    colours = {"255,255,255": 0, "0,0,255": 1}
    path = tmp_path / "defs.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "colour": {
                        "taxonomy": "building",
                        "images": "c/img/*.png",
                        "masks": "c/mask/{stem}.png",
                        "labels": {"palette": colours},
                    },
                    "plain": {"taxonomy": "building", "images": "p/img/*.png", "masks": "p/mask/{stem}.png"},
                    "both": {
                        "taxonomy": "building",
                        "images": "p/*.png",
                        "masks": "x",
                        "labels": {"map": {0: 0}, "threshold": 3},
                    },
                    "vague": {"taxonomy": "flood", "images": "p/*.png", "masks": "x", "labels": {"threshold": "half"}},
                }
            }
        )
    )
    definitions = load_definitions(path)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:4] = 255
    rgb[4:, :, 2] = 255
    rgb[7, 7] = (9, 9, 9)  # a colour the palette lacks -> ignore
    save(tmp_path / "c" / "img" / "a.png", rgb)
    save(tmp_path / "c" / "mask" / "a.png", rgb)
    colour = dataset_spec(definitions, "colour")
    _, mask = colour.read(colour.samples(tmp_path)[0][0])
    assert (mask[:4] == 0).all() and (mask[4:7] == 1).all() and mask[7, 7] == 255
    plain = dataset_spec(definitions, "plain")
    assert plain.samples(tmp_path)[1] == [f"no images match p/img/*.png under {tmp_path}"]
    save(tmp_path / "p" / "img" / "a.png", rgb)
    save(tmp_path / "p" / "img" / "b.png", rgb)
    save(tmp_path / "p" / "mask" / "a.png", np.full((8, 8), 7, dtype=np.uint8))
    samples, problems = plain.samples(tmp_path)
    assert len(samples) == 1 and problems == [
        f"{tmp_path / 'p' / 'img' / 'b.png'}: no mask at {tmp_path / 'p' / 'mask' / 'b.png'}"
    ]
    with pytest.raises(DatasetError, match=r"a.png: mask values \[7\] outside 0-1"):
        plain.read(samples[0])
    with pytest.raises(DatasetError, match="one of map / threshold / palette"):
        dataset_spec(definitions, "both")
    with pytest.raises(DatasetError, match="'vague': threshold must be a positive integer or 'auto', got 'half'"):
        dataset_spec(definitions, "vague")
    with pytest.raises(DatasetError, match="no benchmark or dataset 'nope'"):
        load_benchmark("nope", definitions)


def test_adapters_on_real_spacenet_masks(shared_real, tmp_path):
    spacenet = shared_real / "spacenet"
    with rasterio.open(spacenet / "sample_geotiff.tif") as image:
        shapes = [
            feature["geometry"] for feature in json.loads((spacenet / "geotiff_labels.geojson").read_text())["features"]
        ]
        buildings = rasterio.features.rasterize(
            shapes, out_shape=image.shape, transform=image.transform, fill=0, default_value=1
        )
    save(tmp_path / "buildings" / "sample_geotiff.png", buildings.astype(np.uint8))
    path = tmp_path / "real.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "spacenet-road": {
                        "taxonomy": "road",
                        "images": "spacenet/road_mask_input.tif",
                        "masks": "spacenet/sample_road_raster_mask.tif",
                        "labels": {"map": {0: 0, 255: 1}},
                    },
                    "spacenet-buildings": {
                        "taxonomy": "building",
                        "images": "spacenet/sample_geotiff.tif",
                        "masks": str(tmp_path / "buildings" / "{stem}.png"),
                    },
                }
            }
        )
    )
    definitions = load_definitions(path)
    road = dataset_spec(definitions, "spacenet-road")
    image, mask = road.read(road.samples(shared_real)[0][0])
    with rasterio.open(spacenet / "sample_road_raster_mask.tif") as truth:
        stored = truth.read(1)
    assert (
        image.shape == (1300, 1300, 3)
        and image.dtype == np.uint8
        and np.array_equal(mask, (stored > 0).astype(np.uint8))
    )
    building = dataset_spec(definitions, "spacenet-buildings")
    image, mask = building.read(building.samples(shared_real)[0][0])
    assert image.shape == (900, 900, 3) and 0.01 < mask.mean() < 0.5


def torchmetrics_scores(prediction, target, classes):
    iou = MulticlassJaccardIndex(classes, average=None, ignore_index=255)(prediction, target)
    recall = MulticlassRecall(classes, average=None, ignore_index=255)(prediction, target)
    return iou, recall


def compare(prediction: torch.Tensor, target: torch.Tensor, classes: int) -> None:
    matrix = ConfusionMatrix(classes)
    matrix.update(prediction, target)
    scores = matrix.scores("exclude")
    shared = Confusion(classes)  # build quality's counter, fed numpy: the same counts and scores
    shared.update(prediction.numpy(), target.numpy())
    assert np.array_equal(shared.matrix, matrix.matrix) and shared.scores("exclude") == scores
    iou, recall = torchmetrics_scores(prediction, target, classes)
    present = torch.tensor(scores.present)
    ours_iou = torch.tensor([v if v is not None else float("nan") for v in scores.iou], dtype=torch.float64)
    ours_acc = torch.tensor([v if v is not None else float("nan") for v in scores.acc], dtype=torch.float64)
    assert torch.allclose(ours_iou[present], iou[present].double(), atol=1e-6)
    assert torch.allclose(ours_acc[present], recall[present].double(), atol=1e-6)
    assert scores.miou == pytest.approx(float(iou[present].mean()), abs=1e-6)
    valid = target != 255
    assert scores.pixel_accuracy == pytest.approx(float((prediction[valid] == target[valid]).double().mean()), abs=1e-9)


def test_metrics_match_torchmetrics_on_random_masks():
    generator = torch.Generator().manual_seed(0)
    for classes in (2, 7, 15):
        target = torch.randint(0, classes, (4, 64, 64), generator=generator)
        target[:, :5] = 255
        target[target == 1] = 0  # class 1 absent from the ground truth
        prediction = torch.randint(0, classes, (4, 64, 64), generator=generator)
        compare(prediction, target, classes)
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 0, 2]))
    exclude, include = matrix.scores("exclude"), matrix.scores("include")
    assert exclude.iou[1] is None and include.iou[1] == 0.0  # predicted, never in the ground truth
    assert exclude.miou == pytest.approx((1 / 3 + 1) / 2) and include.miou == pytest.approx((1 / 3 + 0 + 1) / 3)


def test_metrics_match_torchmetrics_on_real_masks(shared_real):
    with rasterio.open(shared_real / "spacenet" / "sample_road_raster_mask.tif") as source:
        roads = torch.from_numpy((source.read(1) > 0).astype(np.int64))
    shifted = torch.roll(roads, shifts=(7, -5), dims=(0, 1))
    target = roads.clone()
    target[:20] = 255
    compare(shifted, target, 2)


def test_piseg_eval_writes_the_full_report_and_resumes(checkpoint, definitions, tmp_path):
    root = tmp_path / "data"
    write_isaid(root)
    write_loveda_native(root)
    out = tmp_path / "report"
    arguments = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--benchmark",
        "two-layouts",
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--benchmarks",
        str(definitions),
        "--panels",
        "2",
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    for name in ("report.md", "report.json", "overlap.png", "datasets/isaid.json", "datasets/loveda-native.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "panels" / "isaid").glob("*.png"))) == 2
    report = json.loads((out / "report.json").read_text())
    isaid = report["datasets"]["isaid"]
    assert isaid["overlap"]["raw"] == 15 and isaid["overlap"]["mapping"]["large vehicle"] == "vehicle"
    assert isaid["resolution"]["high"]["images"] == 1 and isaid["resolution"]["low"]["images"] == 2
    assert report["m_miou"] == pytest.approx((isaid["miou"] + report["datasets"]["loveda-native"]["miou"]) / 2)
    # the report's numbers equal an independent computation: Predictor + torchmetrics
    predictor = Predictor(checkpoint, device="cpu")
    spec = dataset_spec(load_definitions(definitions), "isaid")
    metric = MulticlassJaccardIndex(15, average=None, ignore_index=255)
    present = torch.zeros(15, dtype=torch.bool)
    for sample in spec.samples(root)[0]:
        image, mask = spec.read(sample)
        target = torch.from_numpy(mask.astype(np.int64))
        metric.update(torch.from_numpy(predictor.predict(image, spec.class_names).astype(np.int64)), target)
        present |= torch.bincount(target[target != 255], minlength=15) > 0
    assert isaid["miou"] == pytest.approx(float(metric.compute()[present].mean()), abs=1e-5)
    markdown = (out / "report.md").read_text()
    assert "Seen / unseen" in markdown and "Resolution per image" in markdown and "left out of its mIoU" in markdown
    # scores are fractions in report.json, percentages with their unit in report.md and on the terminal
    assert 0 <= isaid["miou"] <= 1 and 0 <= isaid["classes"]["ship"]["acc"] <= 1
    assert_scores_carry_units(markdown)
    assert f"| isaid | {100 * isaid['miou']:.2f} | {100 * isaid['macc']:.2f} |" in markdown
    assert "| class | IoU (%) | ACC = recall (%) | occurs in ground truth | seen in training |" in markdown
    assert f"isaid: mIoU {100 * isaid['miou']:.2f} %  mACC {100 * isaid['macc']:.2f} %" in result.output
    # a second run reuses the finished datasets
    before = {p.name: p.stat().st_mtime_ns for p in (out / "datasets").iterdir()}
    assert runner.invoke(app, arguments).exit_code == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "datasets").iterdir()}


def assert_scores_carry_units(markdown: str) -> None:
    """Every score in a report.md says its unit: a table column naming a score says (%) or (pp) (differences,
    in percentage points), a score in the text has its % sign, and the report says JSON holds fractions."""
    assert (
        "every score in this report is a percentage" in markdown
        and "report.json holds the same scores as fractions" in markdown
    )
    lines = markdown.splitlines()
    headers = [line for line, below in zip(lines, lines[1:]) if below.startswith("|---")]
    assert headers
    for header in headers:
        for cell in header.strip("|").split("|"):
            if re.search(r"IoU|ACC|Δ|coverage", cell):
                assert re.search(r"\((%|pp)\)|, %\)", cell), f"{cell!r} in {header!r}"
    prose = "\n".join(line for line in lines if not line.startswith("|"))
    assert not re.search(r"\b(m-mIoU|m-mACC|mIoU|mACC|IoU|ACC) -?\d+(\.\d+)?(?![\d.]|\s?%)", prose), prose


def test_missing_files_are_reported_not_half_evaluated(checkpoint, definitions, tmp_path):
    root = tmp_path / "data"
    write_isaid(root)
    write_loveda_native(root)
    os.remove(root / ISAID / "D2masks" / "P0001.png")
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--benchmark",
            "two-layouts",
            "--data-root",
            str(root),
            "--out",
            str(out),
            "--benchmarks",
            str(definitions),
        ],
    )
    assert result.exit_code == 1 and "missing files" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False and "miou" not in report["datasets"]["isaid"]
    assert report["m_miou"] == pytest.approx(report["datasets"]["loveda-native"]["miou"])
    assert "P0001.png" in (out / "report.md").read_text()


def test_zero_shot_clip_runs_through_the_same_evaluation(definitions, tmp_path):
    root = tmp_path / "data"
    write_loveda_native(root)
    out = tmp_path / "zero"
    result = runner.invoke(
        app,
        [
            "eval",
            "--zero-shot",
            "--backbone",
            "tiny",
            "--benchmark",
            "loveda-native",
            "--data-root",
            str(root),
            "--out",
            str(out),
            "--benchmarks",
            str(definitions),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"].startswith("zero-shot CLIP") and 0 <= report["m_miou"] <= 1
    assert (
        runner.invoke(app, ["eval", "--benchmark", "flood", "--data-root", str(root), "--out", str(out)]).exit_code == 2
    )


def test_bench_prints_the_efficiency_table():
    result = runner.invoke(app, ["bench", "--backbone", "tiny", "--repeats", "1", "--classes", "3"])
    assert result.exit_code == 0, result.output
    assert "device: CPU" in result.output and "Pi-Seg" in result.output and "FPS" in result.output


def test_whole_image_inference_is_one_resized_view_and_its_own_run(checkpoint, definitions, tmp_path):
    import dataclasses

    import torch.nn.functional as F

    from piseg.checkpoint import load_model
    from piseg.inference.scheme import predict_mask, shortest_edge_resize

    model, config, _ = load_model(checkpoint)
    image = torch.from_numpy(np.random.default_rng(5).integers(0, 255, (3, 50, 70))).float()
    text = model.encode_classes(["water", "road", "tree"])
    whole = dataclasses.replace(config.eval, mode="whole", whole_pad=0)  # the released padding: test_piseg_recipe.py
    with torch.no_grad():
        view = F.interpolate(
            shortest_edge_resize(image[None], whole.resize),
            size=(whole.crop, whole.crop),
            mode="bilinear",
            align_corners=False,
        )
        expected = F.interpolate(
            model(view, text).logits.sigmoid(), size=(50, 70), mode="bilinear", align_corners=False
        )[0].argmax(0)
    assert torch.equal(predict_mask(model, image, text, whole), expected)

    root = tmp_path / "data"
    write_loveda_native(root)
    out = tmp_path / "report"
    arguments = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--benchmark",
        "loveda-native",
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--benchmarks",
        str(definitions),
    ]
    assert runner.invoke(app, arguments).exit_code == 0
    sliding = json.loads((out / "report.json").read_text())
    finished = (out / "datasets" / "loveda-native.json").stat().st_mtime_ns
    result = runner.invoke(app, [*arguments, "--inference", "whole"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert sliding["inference"]["mode"] == "sliding" and report["inference"]["mode"] == "whole"
    assert "whole image, resized to one" in (out / "report.md").read_text()
    assert (out / "datasets" / "loveda-native.json").stat().st_mtime_ns != finished  # recomputed, not reused
    assert runner.invoke(app, [*arguments, "--inference", "tiles"]).exit_code == 2


def test_shortest_edge_resize_matches_detectron2_pil_resize():
    """The released evaluation first resizes the shortest edge to 640 (longest <= 2560) with PIL's bilinear
    filter (detectron2's ResizeShortestEdge + ResizeTransform); ours must give the same pixels."""
    from piseg.inference.scheme import shortest_edge_resize

    rng = np.random.default_rng(2)
    texture = rng.integers(0, 255, (1500, 1300, 3), dtype=np.uint8)  # fine detail: where antialiasing matters
    pixels = torch.from_numpy(texture.copy()).permute(2, 0, 1)[None].float()
    ours = shortest_edge_resize(pixels, 640)[0].permute(1, 2, 0).numpy()
    assert ours.shape[:2] == (738, 640)  # 1500 x 640/1300 = 738.5 -> 738, as detectron2 rounds
    theirs = np.asarray(Image.fromarray(texture).resize((640, 738), Image.BILINEAR)).astype(np.float32)
    naive = torch.nn.functional.interpolate(pixels, size=(738, 640), mode="bilinear")[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - theirs).mean() < 0.6 and np.abs(naive - theirs).mean() > 10
    assert tuple(shortest_edge_resize(torch.zeros(1, 3, 1000, 700), 640).shape[-2:]) == (914, 640)
    wide = shortest_edge_resize(torch.zeros(1, 3, 100, 1000), 640)
    assert tuple(wide.shape[-2:]) == (256, 2560)  # the longest edge is capped at 2560


def test_eval_prints_the_papers_numbers_beside_ours(checkpoint, definitions, tmp_path):
    """--compare-paper (on by default): the matching table for the backbone asked for (the tiny checkpoint has
    none of its own); --no-compare-paper leaves the columns out."""
    root = tmp_path / "data"
    write_isaid(root, sizes=((40, 48),))
    arguments = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--benchmark",
        "ovrsisbench-v2",
        "--datasets",
        "isaid",
        "--data-root",
        str(root),
        "--benchmarks",
        str(definitions),
        "--panels",
        "0",
    ]
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path / "a"), "--paper-backbone", "vit-b"])
    assert result.exit_code == 0, result.output
    assert (
        re.search(r"paper mIoU: Pi-Seg 47\.54 % \(Δ [-+]\d+\.\d\d pp\), CAT-Seg 49\.19 % \(Δ ", result.output)
        and "Pi-Seg 39.48 % (Δ " in result.output
    ), result.output
    markdown = (tmp_path / "a" / "report.md").read_text()
    assert "Table IV of arXiv 2604.15652, ViT-B" in markdown and "paper Pi-Seg mIoU (%)" in markdown
    assert_scores_carry_units(markdown)
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0 and "paper reports no ovrsisbench-v2 numbers for tiny" in result.output
    result = runner.invoke(
        app, [*arguments, "--out", str(tmp_path / "c"), "--paper-backbone", "vit-b", "--no-compare-paper"]
    )
    assert result.exit_code == 0 and "paper mIoU" not in result.output and "paper reports" not in result.output


def test_eval_images_are_read_upright_and_palette_images_expanded(tmp_path):
    """As detectron2's reader: the EXIF orientation is applied (the mask is of the upright image) and a palette
    PNG becomes its colours, not its indices."""
    from tests.bad_inputs import write_exif_rotated_jpeg

    folder = tmp_path / "OVRSISBench_test" / "DLRSD"
    (folder / "imgs").mkdir(parents=True)
    upright = write_exif_rotated_jpeg(folder / "imgs" / "rotated.jpg")
    save(folder / "D2masks" / "rotated.png", np.zeros(upright.shape[:2], dtype=np.uint8))
    palette = Image.new("P", (6, 4))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    palette.putdata([0, 1] * 12)
    palette.save(folder / "imgs" / "palette.png")
    save(folder / "D2masks" / "palette.png", np.zeros((4, 6), dtype=np.uint8))
    spec = dataset_spec(load_definitions(), "dlrsd")
    spec.images = ["OVRSISBench_test/DLRSD/imgs/*"]
    samples = {s.name: s for s in spec.samples(tmp_path)[0]}
    image, mask = spec.read(samples["rotated"])
    assert (
        image.shape == upright.shape
        and np.abs(image.astype(int) - upright).mean() < 3
        and mask.shape == upright.shape[:2]
    )
    image, _ = spec.read(samples["palette"])
    assert image.shape == (4, 6, 3) and image[0, 0].tolist() == [255, 0, 0] and image[0, 1].tolist() == [0, 255, 0]


def test_panels_are_titled_with_a_legend_of_the_classes_shown(tmp_path):
    """Image | ground truth | prediction under their titles, and a legend: a colour swatch per class either mask
    shows (marked when only one shows it), black for "not labelled"; no entry for classes neither shows."""
    names = ["water", "road", "tree", "building", "car", "ship"]
    image = np.full((40, 48, 3), 128, dtype=np.uint8)
    truth = np.full((40, 48), 1, dtype=np.uint8)
    truth[20:, :24], truth[20:, 24:] = 255, 2
    prediction = np.full((40, 48), 1, dtype=np.uint8)
    prediction[20:] = 3
    labels = [entry.label for entry in panel_legend(names, truth, prediction)]
    assert labels == [
        "road",
        "tree (only in ground truth)",
        "building (only in prediction)",
        "not labelled (255, not scored)",
    ]
    figure = np.asarray(Image.open(write_panel(tmp_path / "p.png", image, truth, prediction, names, "isaid: P0")))
    scale = math.ceil(MIN_PANEL_SIDE / 40)  # a small image is enlarged by a whole factor, to be seen

    def pixels(colour) -> int:
        return int(np.all(figure == colour, axis=-1).sum())

    colours = palette(len(names))
    for index in (1, 2, 3):  # in the panels, and once more as the legend's swatch
        in_panels = (int((truth == index).sum()) + int((prediction == index).sum())) * scale**2
        assert pixels(colours[index]) > in_panels + 100, names[index]
    for index in (0, 4, 5):
        assert pixels(colours[index]) == 0, names[index]
    assert pixels((0, 0, 0)) > int((truth == 255).sum()) * scale**2 + 100  # the "not labelled" swatch
    first_image_row = int(np.flatnonzero(np.all(figure == 128, axis=-1).any(axis=1))[0])
    assert (figure[:first_image_row] < 100).all(axis=-1).sum() > 50  # the heading and titles above the panels
