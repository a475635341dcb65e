"""`ovrsis evaluate-build`: the build's auto-annotations scored against labelled masks, before and after audit."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex, MulticlassRecall
from typer.testing import CliRunner

from flows.cli import app
from pipeline.dataset.records import AuditDecision, Quarantine, write_records
from pipeline.quality.confusion import Confusion
from pipeline.stages.categories import ProposedCategory
from piseg.training.synthetic import tile_record
from taxonomy.masks import IGNORE_INDEX

BUILD_NAMES = ["building", "road", "tree", "vehicle"]


def category(name: str, method: str = "exact") -> ProposedCategory:
    return ProposedCategory(name=name, score=1.0, phrase=name, method=method)


def tile(key: str, source: str, col: int, categories, mask_value: int | None, out):
    record = tile_record(key, 8)
    record.source.path = f"/imagery/{source}.tif"
    record.source.window.col_off = col
    record.categories = categories
    if mask_value is not None:
        record.semantic_mask = f"masks/{key}.png"
        Image.fromarray(np.full((8, 8), mask_value, dtype=np.uint8)).save(out / record.semantic_mask)
    return record


@pytest.fixture
def build(tmp_path):
    out = tmp_path / "build"
    (out / "masks").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"taxonomy": {"names": BUILD_NAMES, "version": "v"}}))
    left = tile("scene__r0_c0", "scene", 0, [category("building"), category("road")], 0, out)
    right = tile("scene__r0_c8", "scene", 8, [category("tree", "audit")], 2, out)  # reviewed: building -> tree
    right.audit = [
        AuditDecision(target="category:building", state="discarded"),
        AuditDecision(target="category:tree", state="corrected", corrected_to="tree"),
    ]
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(out / "masks" / "scene__r0_c8.proposed.png")
    unlabelled = tile("other__r0_c0", "other", 0, [category("tree")], 2, out)
    broken = tile("scene__r8_c0", "scene", 0, [], None, out)
    broken.quarantine = Quarantine(stage="ingest", reason="all nodata")
    write_records(out / "records.jsonl", [left, right, unlabelled, broken])
    truth = tmp_path / "truth"
    truth.mkdir()
    potsdam = np.full((8, 16), 1, dtype=np.uint8)  # potsdam ids: 1 building, 3 tree, 2 low vegetation
    potsdam[:, 8:] = 3
    potsdam[0, 8] = 2  # low vegetation has no counterpart in the build: ignored
    Image.fromarray(potsdam).save(truth / "scene.png")
    return out, truth


def test_scores_before_and_after_audit(build):
    out, truth = build
    result = CliRunner().invoke(
        app, ["evaluate-build", "--records", str(out), "--ground-truth", str(truth), "--taxonomy", "potsdam"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report" / "build_quality.json").read_text())
    # the lexicon's relations take potsdam's "car" to the build's broader "vehicle" (no vehicle pixels here)
    assert report["shared_classes"] == ["building", "tree", "vehicle"] and report["mapping"]["low vegetation"] is None
    assert (
        report["tiles"] == 2
        and report["audited_tiles"] == 1
        and report["tiles_without_ground_truth"] == ["other__r0_c0"]
    )
    before, after = report["before_audit"], report["after_audit"]
    assert before["categories"]["precision"] == 0.5 and before["categories"]["recall"] == 0.5  # road is not judged
    assert after["categories"]["precision"] == 1.0 and after["categories"]["recall"] == 1.0
    assert before["iou"]["building"] == pytest.approx(64 / 127) and before["iou"]["tree"] == 0.0
    assert before["miou"] == pytest.approx(64 / 127 / 2) and after["miou"] == 1.0
    assert before["iou"]["vehicle"] is None and after["iou"]["vehicle"] is None  # absent from the ground truth
    assert before["pixel_accuracy"] == pytest.approx(64 / 127) and after["pixel_accuracy"] == 1.0
    assert "| before audit | 50.00 | 50.00 |" in (out / "report" / "build_quality.md").read_text()


def test_clear_errors(build, tmp_path):
    out, truth = build
    runner = CliRunner()
    result = runner.invoke(
        app, ["evaluate-build", "--records", str(tmp_path), "--ground-truth", str(truth), "--taxonomy", "potsdam"]
    )
    assert result.exit_code == 2 and "records.jsonl: no records" in result.output
    result = runner.invoke(
        app, ["evaluate-build", "--records", str(out), "--ground-truth", str(truth), "--taxonomy", "nowhere"]
    )
    assert result.exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        runner.invoke(
            app, ["evaluate-build", "--records", str(out), "--ground-truth", str(empty), "--taxonomy", "potsdam"]
        ).exit_code
        == 1
    )


def test_confusion_counter_matches_torchmetrics_on_numpy_masks():
    """The shared counter (build quality's and Pi-Seg's) fed numpy masks in pieces, against torchmetrics."""
    rng = np.random.default_rng(0)
    for classes in (2, 5, 12):
        target = rng.integers(0, classes, (3, 32, 32)).astype(np.uint8)
        target[:, :4] = IGNORE_INDEX
        target[target == 1] = 0  # class 1 absent from the ground truth, but predicted
        prediction = rng.integers(0, classes, (3, 32, 32)).astype(np.uint8)
        counter = Confusion(classes)
        for p, t in zip(prediction, target):
            counter.update(p, t)
        predicted, truth = torch.from_numpy(prediction).long(), torch.from_numpy(target).long()
        reference = MulticlassConfusionMatrix(classes, ignore_index=IGNORE_INDEX)(predicted, truth)
        assert np.array_equal(counter.matrix, reference.numpy())
        iou = MulticlassJaccardIndex(classes, average=None, ignore_index=IGNORE_INDEX)(predicted, truth).double()
        recall = MulticlassRecall(classes, average=None, ignore_index=IGNORE_INDEX)(predicted, truth).double()
        valid = target != IGNORE_INDEX
        present = torch.from_numpy(np.bincount(target[valid], minlength=classes) > 0)
        exclude, include = counter.scores("exclude"), counter.scores("include")
        assert exclude.present == present.tolist() and not exclude.present[1]
        assert exclude.iou[1] is None and exclude.acc[1] is None and include.iou[1] == 0.0 and include.acc[1] is None
        ours_iou = torch.tensor([v for v in exclude.iou if v is not None], dtype=torch.float64)
        ours_acc = torch.tensor([v for v in exclude.acc if v is not None], dtype=torch.float64)
        assert torch.allclose(ours_iou, iou[present], atol=1e-6)  # torchmetrics computes in float32
        assert torch.allclose(ours_acc, recall[present], atol=1e-6)
        assert exclude.miou == pytest.approx(float(iou[present].mean()), abs=1e-6)
        assert exclude.macc == pytest.approx(float(recall[present].mean()), abs=1e-6) and include.macc == exclude.macc
        counted = present | torch.from_numpy(np.bincount(prediction[valid], minlength=classes) > 0)
        assert include.miou == pytest.approx(float(iou[counted].mean()), abs=1e-6)
        assert exclude.pixel_accuracy == pytest.approx(float((prediction[valid] == target[valid]).mean()), abs=1e-12)
        from_tensors = Confusion(classes)
        from_tensors.update(predicted, truth)  # torch tensors are counted where they are, into the same numpy counts
        assert np.array_equal(from_tensors.matrix, counter.matrix)
        assert Confusion.from_counts(counter.matrix.tolist()).scores("include") == include


def test_confusion_counter_edges():
    empty = Confusion(3)
    empty.update(np.zeros((2, 2), np.uint8), np.full((2, 2), IGNORE_INDEX, np.uint8))  # everything ignored
    scores = empty.scores()
    assert np.isnan(scores.miou) and np.isnan(scores.macc) and np.isnan(scores.pixel_accuracy)
    assert scores.iou == [None, None, None] and scores.present == [False, False, False]
    with pytest.raises(ValueError, match=r"ground-truth values \[3, 7\] outside 0-2 \(and 255\)"):
        empty.update(np.zeros(4, np.uint8), np.array([0, 3, 7, 7], np.uint8))
    with pytest.raises(ValueError, match="absent must be 'exclude' or 'include'"):
        empty.scores("sometimes")
