"""The paper's evaluation protocol in our reports (issue 15, items 8-11), on hand-made confusion matrices whose
means are computed here by hand: V1 means without the training set, UAVid's stated seen/unseen split, Table XIII
by whole datasets, and the paper's numbers beside ours."""

from pathlib import Path

import pytest
import torch
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
    # ours 45.83 beside the paper's "Mean w/o DLRSD": Pi-Seg 37.28, CAT-Seg 29.58; Table III's own Pi-Seg
    # columns average 38.26 / 57.09, so its printed mean carries a footnote saying so
    assert (
        "| **mean w/o dlrsd (2 of 7 datasets)** | 45.83 | 70.83 | 37.28 ‡ | 55.99 ‡ | 29.58 | 46.60 | +8.55 | +16.25 |"
        in text
    )
    assert (
        "‡ The paper disagrees with itself: the paper's Table III prints Pi-Seg mean 37.28 / 55.99 (m-mIoU / m-mACC), "
        "but the mean of its own columns is 38.26 / 57.09." in text
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
    row = "| low | dlrsd, isaid (2 of 5) | 79.17 | 87.50 | 34.46 | 50.87 | 33.50 ‡ | 49.91 ‡ | +44.71 | +45.67 |"
    assert row in text  # Table XIII's CAT-Seg groups are not the means of Table IV's columns (33.43, 42.32)
    assert "Table XIII prints CAT-Seg low 33.50 / 49.91 (m-mIoU / m-mACC), but the mean of Table IV's DLRSD" in text
    assert "Table XIII prints CAT-Seg high 42.41 / 61.71 (m-mIoU / m-mACC)" in text and "is 42.32 / 61.79." in text
    assert "Pi-Seg low" not in text and "Pi-Seg mean" not in text  # those add up
    assert "Resolution per image (extra" in text and "| isaid | 1 | 58.33 | 0 | - |" in text


def test_no_paper_columns_without_a_matching_table(tmp_path):
    report = report_of(tmp_path, "ovrsisbench-v2", [result("isaid", names("isaid"), MIXED)], backbone="tiny")
    assert report["paper"] is None and "paper Pi-Seg" not in (tmp_path / "report.md").read_text()
    assert paper_comparison("ovrsisbench-v2", "vit-l")["resolution"] is None  # Table XIII is ViT-B only


def test_bench_prints_table_xii_beside_the_measured_rows(monkeypatch):
    """Like for like: both in multiply-adds, train per step with its batch size, and our inference memory in
    another column than the paper's peak training memory."""
    import piseg.evaluation.efficiency
    from piseg.evaluation.efficiency import EfficiencyRow

    row = EfficiencyRow("Pi-Seg", 155_600_000, 1234.5, 615.05, 2.0, 1.5, 8, "inference peak process RSS")
    monkeypatch.setattr(piseg.evaluation.efficiency, "measure", lambda *args: [row])
    result = CliRunner().invoke(app, ["bench", "--backbone", "vit-b", "--device", "cpu"], env={"COLUMNS": "400"})
    output = result.output
    assert "device: CPU" in output and "Pi-Seg, paper" in output and "CAT-Seg, paper" in output
    header = next(line for line in output.splitlines() if "GMACs train" in line)
    assert "GMACs train (per step, batch 8)" in header and "GMACs eval (per image)" in header
    assert "inference memory (GB): inference peak process RSS" in header and "peak training GPU memory (GB)" in header
    cells = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if "Pi-Seg" in line and "│" in line
    ]
    assert cells[0][1:] == ["155.60M", "1234.50", "615.05", "2.00", "- (not measured)", "1.50"]
    assert cells[1] == ["Pi-Seg, paper", "155.60M", "724.20", "608.62", "-", "14.13", "66.89"]
    assert "Table XII of arXiv 2604.15652 (ViT-B), device: NVIDIA H100" in output and "GFLOPs / 2" not in output
    assert "GMACs = multiply-adds / 1e9" in output and "one step: 8 crops of 384" in output


def test_bench_counts_multiply_adds_and_a_whole_training_step():
    """The train column is one step of the recipe's batch (text encoder once), the eval column one image, both
    in multiply-adds: torch's FLOPs / 2."""
    from piseg.config import preset
    from piseg.evaluation.counts import eval_flops, meta_model, train_flops, variant
    from piseg.evaluation.efficiency import measure

    config = preset("tiny")
    pi_seg = measure(config, torch.device("cpu"), classes=3, repeats=1)[0]
    counted = meta_model(variant(config.model, True))
    step = train_flops(counted, config.train.crop, 3, config.train.batch_size)
    one = train_flops(counted, config.train.crop, 3)
    assert pi_seg.batch_size == config.train.batch_size == 4 and one < step < 4 * one  # the text encoder once
    assert pi_seg.train_gmacs_per_step == pytest.approx(step / 2e9)
    assert pi_seg.eval_gmacs == pytest.approx(eval_flops(counted, config.eval, classes=3) / 2e9)
    assert pi_seg.memory_kind == "inference peak process RSS (everything loaded)"


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


def test_v1_reports_show_the_uavid_split_without_the_ovrsis95k_models_numbers(tmp_path):
    """Table XI is of models trained on OVRSIS95K: a DLRSD-trained run shows its UAVid split alone, saying why."""
    report = report_of(tmp_path, "ovrsisbench-v1-dlrsd", [result("uavid", names("uavid"), UAVID)])
    assert report["paper"]["uavid"] is None and report["datasets"]["uavid"]["paper_split"]["seen"]["miou"] == 1
    text = (tmp_path / "report.md").read_text()
    assert "| unseen | 83.33 | 83.33 |\n" in text and "24.30" not in text
    assert "Table XI numbers belong to models trained on OVRSIS95K" in text
    report = report_of(tmp_path, "ovrsisbench-v2", [result("uavid", names("uavid"), UAVID)])
    assert report["paper"]["uavid"]["Pi-Seg"]["unseen"]["miou"] == pytest.approx(0.243)


def test_a_single_dataset_is_compared_with_its_column_of_table_iv_or_v():
    """`piseg eval --benchmark uavid` evaluates with the OVRSIS95K vocabulary: Table IV's UAVid column (and
    Table XI's split); a downstream dataset gets its Table V column; neither has a benchmark mean."""
    uavid = paper_comparison("uavid", "vit-b")
    assert uavid["benchmark"]["table"] == "IV" and uavid["benchmark"]["mean"] is None
    assert uavid["benchmark"]["datasets"] == {
        "uavid": {
            "Pi-Seg": {"miou": pytest.approx(0.4022), "macc": pytest.approx(0.5776)},
            "CAT-Seg": {"miou": pytest.approx(0.3734), "macc": pytest.approx(0.5558)},
        }
    }
    assert uavid["uavid"] is not None and uavid["inconsistencies"] == []
    inria = paper_comparison("inria", "vit-l")["benchmark"]
    assert inria["table"] == "V" and list(inria["datasets"]) == ["inria"]
    assert paper_comparison("uavid", "tiny") is None


def test_printed_means_are_checked_against_their_columns(monkeypatch):
    """The check is computed from the transcription: a printed mean 0.06 pp off its columns is flagged, 0.04 is
    rounding; Table III's Pi-Seg ViT-B (DLRSD) mean is the one real case among the benchmark means."""
    import copy

    from piseg.evaluation import paper

    notes = paper.inconsistencies("ovrsisbench-v1-dlrsd", "vit-b")
    assert [(n["table"], n["row"], n["model"]) for n in notes] == [("III", "mean", "Pi-Seg")]
    assert notes[0]["printed"]["miou"] == pytest.approx(0.3728)
    assert notes[0]["computed"]["miou"] == pytest.approx(0.38257, abs=1e-5)
    assert notes[0]["computed"]["macc"] == pytest.approx(0.57094, abs=1e-5)
    assert paper.inconsistencies("ovrsisbench-v1-dlrsd", "vit-l") == []
    assert [(n["table"], n["row"], n["model"]) for n in paper.inconsistencies("ovrsisbench-v2", "vit-b")] == [
        ("XIII", "low", "CAT-Seg"),
        ("XIII", "high", "CAT-Seg"),
    ]
    original = paper.paper_results()
    for shift, flagged in ((0.04, False), (0.06, True)):
        data = copy.deepcopy(original)
        data["tables"]["V_downstream"]["CAT-Seg"]["ViT-L"]["mean"]["m-mACC"] = 87.288 + shift
        monkeypatch.setattr(paper, "paper_results", lambda data=data: data)
        found = paper.inconsistencies("downstream", "vit-l")
        assert [(n["table"], n["model"]) for n in found] == ([("V", "CAT-Seg")] if flagged else [])


def test_a_capped_run_says_so_first_and_marks_every_affected_mean(tmp_path):
    """--max-images: the report opens with the cap and the datasets it cut; rows and means from them carry †."""
    cut = result("isaid", names("isaid"), MIXED)
    cut.available = 40  # one of 40 images evaluated
    whole = result("dlrsd", names("dlrsd"), PERFECT)
    whole.available = 1
    report = build_report(
        [cut, whole],
        "ovrsisbench-v2",
        "ovrsis95k",
        "test model",
        "exclude",
        lambda words: [w.lower() for w in words],
        tmp_path,
        load_definitions(),
        EvalConfig(),
        paper_comparison("ovrsisbench-v2", "vit-b"),
        max_images=1,
        backbone="tiny",
    )
    assert report["max_images"] == 1 and report["means_on_subsets"] is True
    assert report["datasets"]["isaid"]["subset"] and not report["datasets"]["dlrsd"]["subset"]
    assert report["backbone"] == "tiny" and report["paper_backbone"] == "ViT-B"
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[2].startswith(
        "**Subset run (`--max-images 1`): 1 of 2 datasets were cut to their first 1 images (isaid).**"
    )
    text = "\n".join(lines)
    assert "| isaid † | 58.33 | 75.00 |" in text and "| dlrsd | 100.00 | 100.00 |" in text
    assert "| **mean (2 of 10 datasets)** † | 79.17 |" in text and "| low † | dlrsd, isaid (2 of 5) |" in text
    assert "### isaid †" in text and "the model evaluated here is tiny" in text
    whole_run = report_of(tmp_path / "whole", "ovrsisbench-v2", [whole])
    assert whole_run["means_on_subsets"] is False and "Subset run" not in (tmp_path / "whole" / "report.md").read_text()


def test_evaluation_enables_tf32_on_cuda_as_released():
    """The released code turns TF32 on before an eval-only run; on a CPU nothing is touched and none is in force."""
    from piseg.evaluation.evaluate import released_precision

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert released_precision(torch.device("cpu")) == {"device": "cpu", "tf32_matmul": False, "tf32_cudnn": False}
        assert not torch.backends.cuda.matmul.allow_tf32
        assert released_precision(torch.device("cuda")) == {"device": "cuda", "tf32_matmul": True, "tf32_cudnn": True}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_reproduce_runs_the_inference_modes_of_the_released_scripts():
    from piseg.evaluation.reproduce import Run, benchmark_key, inference_modes

    v1 = Run("v1", Path("v1.pth"), "dlrsd", ["ovrsisbench-v1-dlrsd"])
    v2 = Run("v2", Path("v2.pth"), "ovrsis95k", ["ovrsisbench-v2"])
    assert inference_modes(v1, None) == ["sliding", "whole"] and inference_modes(v2, None) == ["sliding"]
    assert inference_modes(v2, "both") == ["sliding", "whole"] and inference_modes(v1, "whole") == ["whole"]
    assert benchmark_key("ovrsisbench-v1-dlrsd", "whole") == "ovrsisbench-v1-dlrsd-whole"
    result = CliRunner().invoke(
        app, ["reproduce", "--weights", ".", "--data-root", ".", "--out", "x", "--inference", "slide"]
    )
    assert result.exit_code == 2 and "--inference must be one of sliding, whole, both" in result.output
