"""The paper's evaluation protocol in our reports (issue 15, items 8-11), on hand-made confusion matrices whose
means are computed here by hand: V1 means without the training set, UAVid's stated seen/unseen split, Table XIII
by whole datasets, and the paper's numbers beside ours."""

import pytest
from typer.testing import CliRunner

from piseg.cli import app
from piseg.config import EvalConfig
from piseg.evaluation.benchmarks import load_definitions
from piseg.evaluation.evaluate import DatasetResult
from piseg.evaluation.paper import paper_comparison
from piseg.evaluation.report import build_report


def matrix(classes: int, cells: dict[tuple[int, int], int]) -> list[list[int]]:
    """Confusion counts [truth][prediction]."""
    counts = [[0] * classes for _ in range(classes)]
    for (truth, predicted), count in cells.items():
        counts[truth][predicted] = count
    return counts


PERFECT = {(0, 0): 5}  # mIoU 1, mACC 1
MIXED = {(0, 0): 1, (0, 1): 1, (1, 1): 2}  # IoU 1/2, 2/3 -> mIoU 7/12; ACC 1/2, 1 -> mACC 3/4
POOR = {(0, 0): 1, (0, 1): 2, (1, 1): 1}  # IoU 1/3, 1/3 -> mIoU 1/3; ACC 1/3, 1 -> mACC 2/3
# UAVid (background, building, road, tree, low vegetation, car, human): half the car pixels called background
UAVID = {(0, 0): 2, (1, 1): 1, (2, 2): 1, (3, 3): 1, (4, 4): 1, (5, 5): 1, (5, 0): 1, (6, 6): 1}


def result(name: str, classes: list[str], cells: dict) -> DatasetResult:
    counts = matrix(len(classes), cells)
    return DatasetResult(
        name, classes, "done", "run", images=1, matrix=counts, groups={"low": counts}, group_images={"low": 1}
    )


def report_of(tmp_path, benchmark: str, results: list[DatasetResult], backbone: str | None = "vit-b") -> dict:
    definitions = load_definitions()
    train = definitions["benchmarks"][benchmark]["train_taxonomy"]
    paper = paper_comparison(benchmark, backbone) if backbone else None
    return build_report(
        results,
        benchmark,
        train,
        "test model",
        "exclude",
        lambda words: [w.lower() for w in words],
        tmp_path,
        definitions,
        EvalConfig(),
        paper,
    )


def names(taxonomy: str) -> list[str]:
    from taxonomy.loader import load_taxonomy

    return load_taxonomy(taxonomy).names


def test_v1_means_leave_out_the_training_set_and_sit_beside_table_iii(tmp_path):
    results = [
        result("dlrsd", names("dlrsd"), PERFECT),
        result("isaid", names("isaid"), MIXED),
        result("potsdam", names("potsdam"), POOR),
    ]
    report = report_of(tmp_path, "ovrsisbench-v1-dlrsd", results)
    assert report["means_exclude"] == "dlrsd"
    assert report["m_miou"] == pytest.approx((7 / 12 + 1 / 3) / 2) and report["m_macc"] == pytest.approx(
        (3 / 4 + 2 / 3) / 2
    )
    assert report["m_miou_with_training_set"] == pytest.approx((1 + 7 / 12 + 1 / 3) / 3)
    assert report["datasets"]["isaid"]["paper"] == {
        "Pi-Seg": {"miou": pytest.approx(0.407), "macc": pytest.approx(0.5653)},
        "CAT-Seg": {"miou": pytest.approx(0.2356), "macc": pytest.approx(0.3848)},
    }
    text = (tmp_path / "report.md").read_text()
    # ours 45.83 beside the paper's "Mean w/o DLRSD": Pi-Seg 37.28, CAT-Seg 29.58
    assert (
        "| **mean w/o dlrsd (2 of 7 datasets)** | 45.83 | 70.83 | 37.28 | 55.99 | 29.58 | 46.60 | +8.55 | +16.25 |"
        in text
    )
    assert "| isaid | 58.33 | 75.00 | 40.70 | 56.53 | 23.56 | 38.48 | +17.63 | +34.77 |" in text
    assert (
        "| dlrsd | 100.00 | 100.00 | - | - | - | - | - | - |" in text
    )  # the paper reports no score on its training set


def test_uavid_split_as_the_paper_states_it_beside_the_automatic_one(tmp_path):
    report = report_of(tmp_path, "ovrsisbench-v2", [result("uavid", names("uavid"), UAVID)])
    split = report["datasets"]["uavid"]["paper_split"]
    # car IoU 1/2 (ACC 1/2), the five other foreground classes 1; background (IoU 2/3) is in no group
    assert split["seen"] == {"miou": pytest.approx(1.0), "macc": pytest.approx(1.0)}
    assert split["unseen"] == {"miou": pytest.approx(2.5 / 3), "macc": pytest.approx(2.5 / 3)}
    assert split["overall"]["miou"] == pytest.approx(5.5 / 6)
    assert report["datasets"]["uavid"]["miou"] == pytest.approx((2 / 3 + 5.5) / 7)
    text = (tmp_path / "report.md").read_text()
    assert "| unseen | 83.33 | 83.33 | 24.30 | 49.83 | 23.70 | 47.53 | +59.03 | +59.63 |" in text
    assert "Automatic split" in text


def test_table_xiii_groups_whole_datasets_and_keeps_the_per_image_view(tmp_path):
    results = [
        result("dlrsd", names("dlrsd"), PERFECT),
        result("isaid", names("isaid"), MIXED),
        result("loveda", names("loveda"), POOR),
        result("uavid", names("uavid"), UAVID),
    ]
    report = report_of(tmp_path, "ovrsisbench-v2", results)
    low, high = report["resolution_groups"]["low"], report["resolution_groups"]["high"]
    assert low["evaluated"] == ["dlrsd", "isaid"] and low["m_miou"] == pytest.approx((1 + 7 / 12) / 2)
    assert high["evaluated"] == ["loveda", "uavid"] and high["m_miou"] == pytest.approx((1 / 3 + (2 / 3 + 5.5) / 7) / 2)
    text = (tmp_path / "report.md").read_text()
    assert "| low | dlrsd, isaid (2 of 5) | 79.17 | 87.50 | 34.46 | 50.87 | 33.50 | 49.91 | +44.71 | +45.67 |" in text
    assert "Resolution per image (extra" in text and "| isaid | 1 | 58.33 | 0 | - |" in text


def test_no_paper_columns_without_a_matching_table(tmp_path):
    report = report_of(tmp_path, "ovrsisbench-v2", [result("isaid", names("isaid"), MIXED)], backbone="tiny")
    assert report["paper"] is None and "paper Pi-Seg" not in (tmp_path / "report.md").read_text()
    assert paper_comparison("ovrsisbench-v2", "vit-l")["resolution"] is None  # Table XIII is ViT-B only


def test_bench_prints_table_xii_beside_the_measured_rows(monkeypatch):
    import piseg.evaluation.efficiency
    from piseg.evaluation.efficiency import EfficiencyRow

    monkeypatch.setattr(
        piseg.evaluation.efficiency,
        "measure",
        lambda *args: [EfficiencyRow("Pi-Seg", 155_600_000, 700.0, 600.0, 2.0, 1.5)],
    )
    output = CliRunner().invoke(app, ["bench", "--backbone", "vit-b", "--device", "cpu"]).output
    assert "device: CPU" in output and "Pi-Seg, paper" in output and "CAT-Seg, paper" in output
    assert (
        "66.89" in output
        and "14.13" in output
        and "Table XII of arXiv 2604.15652 (ViT-B), device: NVIDIA H100" in output
    )


def test_a_stated_split_naming_unknown_classes_is_refused_before_evaluation():
    from piseg.evaluation.benchmarks import DatasetError, dataset_spec

    definitions = load_definitions()
    definitions["datasets"]["uavid"] = {
        **definitions["datasets"]["uavid"],
        "paper_split": {"seen": ["building"], "unseen": ["boat"]},
    }
    with pytest.raises(DatasetError, match="paper_split takes seen and unseen lists"):
        dataset_spec(definitions, "uavid")
    assert dataset_spec(load_definitions(), "uavid").class_names[0] == "background/clutter"


def test_reproduce_plans_runs_from_the_weight_paths_or_a_plan(tmp_path):
    from piseg.evaluation.reproduce import PlanError, plan_runs

    for path in ("V1/vitb_384_iSAID/model_final.pth", "V2/Pi-Seg ViT-L.pth"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    runs = {run.name: (run.taxonomy, run.benchmarks) for run in plan_runs(tmp_path)}
    assert runs == {
        "V1-vitb_384_iSAID": ("isaid", ["ovrsisbench-v1-isaid"]),
        "V2-Pi-Seg_ViT-L": ("ovrsis95k", ["ovrsisbench-v2", "downstream"]),
    }
    plan = tmp_path / "plan.yaml"
    plan.write_text("V2/Pi-Seg ViT-L.pth: {taxonomy: ovrsis95k, benchmarks: [building]}\n")
    assert [(r.name, r.benchmarks) for r in plan_runs(tmp_path, plan)] == [("V2-Pi-Seg_ViT-L", ["building"])]
    plan.write_text("missing.pth: {taxonomy: ovrsis95k, benchmarks: [building]}\n")
    with pytest.raises(PlanError, match="weights not found"):
        plan_runs(tmp_path, plan)
    plan.write_text("V2/Pi-Seg ViT-L.pth: {benchmarks: [building]}\n")
    with pytest.raises(PlanError, match="needs taxonomy and benchmarks"):
        plan_runs(tmp_path, plan)
    with pytest.raises(PlanError, match="no released weights"):
        plan_runs(tmp_path / "V1" / "nothing")
