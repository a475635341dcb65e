"""`piseg reproduce --train-shards`: train here (as `piseg train`), then evaluate on the benchmarks of the shards'
training set and report, resumably; bad input is one `error:` line with exit 2."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from piseg.cli import app
from piseg.training.synthetic import write_synthetic_shards
from taxonomy.loader import load_taxonomy

runner = CliRunner()


def tiny_test_sets(root):
    """Two images each of the V1 test sets iSAID and DLRSD (the others are absent: the run is partial, exit 1)."""
    rng, folder = np.random.default_rng(0), root / "OVRSISBench_test"
    for name, extension, classes in (("iSAID", "png", [0, 3, 14]), ("DLRSD", "jpg", [0, 5, 16])):
        (folder / name / "imgs").mkdir(parents=True)
        (folder / name / "D2masks").mkdir(parents=True)
        for index in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                folder / name / "imgs" / f"P{index}.{extension}"
            )
            Image.fromarray(rng.choice(classes, size=(40, 48)).astype(np.uint8)).save(
                folder / name / "D2masks" / f"P{index}.png"
            )
    return root


def test_reproduce_trains_on_imported_shards_then_evaluates_resumably(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", count=8, size=48, names=load_taxonomy("dlrsd").names)
    data = tiny_test_sets(tmp_path / "data")
    out = tmp_path / "reproduce"
    arguments = [
        "reproduce",
        "--train-shards",
        str(shards),
        "--backbone",
        "tiny",
        "--iters",
        "4",
        "--data-root",
        str(data),
        "--out",
        str(out),
        "--paper-backbone",
        "vit-b",
        "--inference",
        "sliding",
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 1, result.output  # trained and evaluated; most test sets are absent here
    assert "trained 4 iterations" in result.output
    final = out / "train" / "checkpoints" / "final.pt"
    assert final.is_file() and (out / "train" / "log.jsonl").is_file()
    summary = json.loads((out / "report.json").read_text())
    run = summary["runs"]["trained-dlrsd"]
    digest = run["trained_here"]["manifest_sha256"]
    assert run["taxonomy"] == "dlrsd" and run["backbone"] == "tiny" and run["trained_here"]["iters"] == 4
    assert len(digest) == 64 and run["trained_here"]["checkpoint"] == str(final)
    # the benchmark a DLRSD-trained model is reported on (Table III), compared with the paper's DLRSD-trained model
    bench = run["benchmarks"]["ovrsisbench-v1-dlrsd"]
    assert list(run["benchmarks"]) == ["ovrsisbench-v1-dlrsd"] and bench["paper"] is not None
    text = (out / "report.md").read_text()
    assert text.startswith("# The paper's tables from a model trained here")
    assert "**trained-dlrsd was trained here**, not converted from the released weights: 4 iterations (tiny)" in text
    assert f"manifest sha256 `{digest}`" in text and "not a reproduction of its numbers" in text
    assert "| trained-dlrsd | ovrsisbench-v1-dlrsd (III, w/o dlrsd) | sliding | 2 of 8 |" in text
    assert (out / "trained-dlrsd" / "ovrsisbench-v1-dlrsd" / "report.md").is_file()
    assert not (out / "checkpoints").exists()  # nothing converted

    # a rerun trains and evaluates nothing again
    kept = [final, *out.glob("trained-dlrsd/*/datasets/isaid.json"), *out.glob("trained-dlrsd/*/datasets/dlrsd.json")]
    assert len(kept) == 3  # the absent test sets are looked for again
    before = {p: p.stat().st_mtime_ns for p in kept}
    result = runner.invoke(app, arguments)
    assert result.exit_code == 1, result.output
    assert "is there: not trained again" in result.output and "trained 4 iterations" not in result.output
    assert before == {p: p.stat().st_mtime_ns for p in kept}

    # another length or other shards in the same OUT are refused, not mixed
    longer = [*arguments[:6], "5", *arguments[7:]]
    result = runner.invoke(app, longer)
    assert result.exit_code == 2 and "trained with another configuration" in result.output
    assert "train.iters: checkpoint 4, now 5" in result.output
    other = write_synthetic_shards(tmp_path / "other", count=6, size=48, names=load_taxonomy("dlrsd").names)
    result = runner.invoke(app, [arguments[0], arguments[1], str(other), *arguments[3:]])
    assert result.exit_code == 2 and "trained on other shards" in result.output


def test_reproduce_refuses_bad_training_input_with_one_error_line(tmp_path):
    data, out = tmp_path, tmp_path / "out"
    common = ["--data-root", str(data), "--out", str(out), "--device", "cpu"]
    shards = write_synthetic_shards(tmp_path / "synthetic", count=4, size=32)  # building/tree/water: no paper set
    cases = [
        ([], "give either --weights DIR"),
        (["--weights", str(tmp_path), "--train-shards", str(shards)], "give either --weights DIR"),
        (["--weights", str(tmp_path), "--iters", "3"], "--config and --iters set the training of --train-shards"),
        (["--train-shards", str(shards), "--plan", str(tmp_path / "p.yaml")], "--plan maps released weight files"),
        (["--train-shards", str(tmp_path / "nowhere")], "no manifest"),
        (["--train-shards", str(shards)], "is none of the paper's training sets (ovrsis95k, dlrsd, isaid)"),
        (["--train-shards", str(shards), "--backbone", "vit-z"], "unknown backbone"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["reproduce", *extra, *common])
        assert result.exit_code == 2, (extra, result.output)
        assert "error:" in result.output and message in " ".join(result.output.split()), (extra, result.output)
    assert not (out / "train").exists()
