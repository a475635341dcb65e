"""Bad input in the `piseg` commands (issue 12): a checkpoint is data, never code; a bad image, mask, class
list or shard is reported by name and never costs the good work; exit codes follow the rule 0 / 1 / 2
(finished / finished but skipped some, reasons in a named file / refused or stopped, one `error:` line)."""

from __future__ import annotations

import io
import json
import os
import random
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import Result
from PIL import Image
from typer.testing import CliRunner

from pipeline.files.atomic import file_sha256
from piseg.checkpoint import FORMAT, rng_state, set_rng_state
from piseg.cli import app
from piseg.evaluation.benchmarks import default_definitions
from piseg.inference.predict import Predictor
from piseg.training.synthetic import tiny_config, write_synthetic_shards
from piseg.training.train import train
from tests.bad_inputs import GOOD, make_raster_corpus, write_exif_rotated_jpeg
from tests.piseg_helpers import write_config

runner = CliRunner()
PISEG = Path(__file__).resolve().parent.parent / "piseg"
# Corpus entries annotate reports with reasons of its own: its folder scan (predict is given paths, and
# says "No such file", "Is a directory", "not recognized") and its tile checks (a tile all nodata or
# too small to segment is an image predict may still segment).
FOLDER_SCAN_KINDS = {"bad_broken_link.tif", "bad_directory.tif", "bad_unsupported.bmp"}
TILE_CHECKS = ("all pixels are nodata", "too small")


def assert_clean_exit(result: Result, code: int) -> None:
    """The exit code wanted, and no Python traceback (the CLI turns bad input into one-line messages)."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output


def last_line(result: Result) -> str:
    return result.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("bad-input-shards") / "build")


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory):
    """A tiny trained run: checkpoints/final.pt (weights) and checkpoints/last.pt (with its training state)."""
    folder = tmp_path_factory.mktemp("bad-input-run")
    train(shards, tiny_config(iters=2), folder)
    return folder


class Payload:
    """What a hostile pickle holds: unpickling it calls os.makedirs(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def write_evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "model": Payload(marker)}, path)
    return path


# --- a checkpoint is data, not code ------------------------------------------------------------------


def test_checkpoints_hold_only_plain_data_and_round_trip(run):
    payload = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert payload["format"] == FORMAT and payload["training"]["step"] == 2
    assert torch.load(run / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)["training"] is None


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")

    def draws() -> tuple:
        return random.random(), float(np.random.random()), float(torch.rand(1))

    expected = draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def test_a_hostile_checkpoint_runs_nothing_in_predict_eval_and_resume(shards, tmp_path):
    marker = tmp_path / "payload-ran"
    evil = write_evil_checkpoint(tmp_path / "evil.pt", marker)
    picture = tmp_path / "scene.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(picture)
    commands = {
        "predict": [
            "predict",
            str(picture),
            "--checkpoint",
            str(evil),
            "--classes",
            "a, b",
            "--out",
            str(tmp_path / "p"),
        ],
        "eval": [
            "eval",
            "--checkpoint",
            str(evil),
            "--benchmark",
            "isaid",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "e"),
        ],
    }
    for name, arguments in commands.items():
        result = runner.invoke(app, arguments)
        assert_clean_exit(result, 2)
        assert "evil.pt: refused" in result.output and "os.makedirs" in result.output, name
        assert not marker.exists(), f"{name} ran the payload"
        assert not (tmp_path / name[0]).exists(), f"{name} wrote output"
    write_evil_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", marker)
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    result = runner.invoke(
        app, ["train", "--shards", str(shards), "--config", str(config), "--out", str(tmp_path / "run"), "--resume"]
    )
    assert_clean_exit(result, 2)
    assert "last.pt: refused" in result.output and not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.is_dir()


def test_no_piseg_module_unpickles_code_unless_convert_released_is_told_to():
    settings = {
        (path.relative_to(PISEG).as_posix(), value)
        for path in PISEG.rglob("*.py")
        for value in re.findall(r"weights_only=([\w ]+)", path.read_text())
    }
    assert {value for _, value in settings} == {"True", "not trust_pickle"}
    assert {name for name, value in settings if value != "True"} == {"released/convert.py"}


# --- predict ----------------------------------------------------------------------------------------


def test_predict_refuses_more_classes_than_a_mask_holds_before_any_work(run, tmp_path):
    names = ", ".join(f"class {i}" for i in range(300))
    picture = tmp_path / "scene.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(picture)
    result = runner.invoke(
        app,
        [
            "predict",
            str(picture),
            "--checkpoint",
            str(run / "checkpoints" / "final.pt"),
            "--classes",
            names,
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert_clean_exit(result, 2)
    assert "300 class names" in result.output and "at most 255" in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="at most 255"):
        Predictor(run / "checkpoints" / "final.pt", "cpu").predict(np.zeros((32, 32, 3), np.uint8), names.split(", "))


@pytest.mark.slow
def test_predict_goes_over_the_bad_input_corpus_and_exits_1(run, tmp_path):
    corpus = make_raster_corpus(tmp_path / "corpus")
    paths = [tmp_path / "corpus" / name for name in corpus]
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "predict",
            *map(str, paths),
            "--checkpoint",
            str(run / "checkpoints" / "final.pt"),
            "--classes",
            "building, tree, water",
            "--out",
            str(out),
        ],
    )
    assert_clean_exit(result, 1)
    skipped = {
        Path(json.loads(line)["input"]).name: json.loads(line)["reason"]
        for line in (out / "skipped.jsonl").read_text().splitlines()
    }
    bad = {name for name, outcome in corpus.items() if outcome != GOOD}
    unreadable = {name for name in bad if not any(reason in corpus[name] for reason in TILE_CHECKS)}
    assert unreadable <= set(skipped) <= bad
    for name in unreadable - FOLDER_SCAN_KINDS:
        assert corpus[name].removeprefix("bad: ").lower() in skipped[name].lower(), skipped[name]
    for name in corpus.keys() - set(skipped):
        assert (out / f"{Path(name).stem}.png").is_file(), name
    assert last_line(result) == f"skipped {len(skipped)} of {len(paths)} images; reasons in {out / 'skipped.jsonl'}"
    # the EXIF orientation is applied: the landscape-stored JPEG is predicted upright (portrait)
    assert np.asarray(Image.open(out / "good_exif_rotated.png")).shape == (80, 40)


def test_predict_exits_2_when_nothing_is_readable_and_fail_fast_stops_at_the_first(run, tmp_path):
    checkpoint = str(run / "checkpoints" / "final.pt")
    broken, cut = tmp_path / "broken.png", tmp_path / "cut.png"
    broken.write_text("<html>403 Forbidden</html>")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    result = runner.invoke(
        app,
        [
            "predict",
            str(broken),
            str(cut),
            str(tmp_path / "nope.png"),
            "--checkpoint",
            checkpoint,
            "--classes",
            "a, b",
            "--out",
            str(tmp_path / "all-bad"),
        ],
    )
    assert_clean_exit(result, 2)
    assert "none of the 3 images" in last_line(result) and "skipped.jsonl" in last_line(result)
    reasons = (tmp_path / "all-bad" / "skipped.jsonl").read_text()
    assert "truncated" in reasons and "No such file" in reasons
    result = runner.invoke(
        app,
        [
            "predict",
            str(broken),
            str(good),
            "--fail-fast",
            "--checkpoint",
            checkpoint,
            "--classes",
            "a, b",
            "--out",
            str(tmp_path / "fast"),
        ],
    )
    assert_clean_exit(result, 2)
    assert "broken.png" in result.output and "--fail-fast" in result.output
    assert not (tmp_path / "fast" / "good.png").exists()


# --- eval -------------------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
def test_eval_reports_unreadable_files_and_evaluates_the_other_datasets(run, tmp_path):
    root, rng = tmp_path / "data", np.random.default_rng(0)
    isaid, dlrsd = root / "OVRSISBench_test" / "iSAID", root / "OVRSISBench_test" / "DLRSD"
    for index in range(4):
        save(isaid / "imgs" / f"P{index}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        save(isaid / "D2masks" / f"P{index}.png", rng.choice([0, 3, 14, 255], size=(40, 40)).astype(np.uint8))
    (isaid / "imgs" / "P0.png").write_text("<html>not an image</html>")
    cut_in_half(isaid / "imgs" / "P1.png")
    cut_in_half(isaid / "D2masks" / "P2.png")
    (dlrsd / "imgs").mkdir(parents=True)
    upright = write_exif_rotated_jpeg(dlrsd / "imgs" / "rotated.jpg")
    save(dlrsd / "D2masks" / "rotated.png", (upright[..., 0] > 127).astype(np.uint8))  # a mask of the upright image
    save(dlrsd / "imgs" / "plain.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    save(dlrsd / "D2masks" / "plain.png", rng.integers(0, 17, (40, 40), dtype=np.uint8))
    definitions = yaml.safe_load(default_definitions().read_text())
    definitions["benchmarks"]["pair"] = {"train_taxonomy": "ovrsis95k", "datasets": ["isaid", "dlrsd"]}
    (tmp_path / "benchmarks.yaml").write_text(yaml.safe_dump(definitions))
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(run / "checkpoints" / "final.pt"),
            "--benchmark",
            "pair",
            "--data-root",
            str(root),
            "--out",
            str(out),
            "--benchmarks",
            str(tmp_path / "benchmarks.yaml"),
        ],
    )
    assert_clean_exit(result, 1)
    report = json.loads((out / "report.json").read_text())
    entry = report["datasets"]["isaid"]
    assert report["complete"] is False and entry["status"] == "unreadable files" and "miou" not in entry
    problems = "\n".join(entry["problems"])
    assert len(entry["problems"]) == 3, problems  # every unreadable file is listed, not only the first
    assert "P0.png: cannot be read as a raster" in problems
    assert re.search(r"imgs/P1\.png: .*truncated", problems) and re.search(r"D2masks/P2\.png: .*truncated", problems)
    assert report["datasets"]["dlrsd"]["status"] == "done" and report["datasets"]["dlrsd"]["images"] == 2
    assert report["m_miou"] == pytest.approx(report["datasets"]["dlrsd"]["miou"])
    assert "P0.png" in (out / "report.md").read_text()
    assert "1 of 2 datasets not evaluated" in last_line(result) and "report.md" in last_line(result)


# --- train on bad shards ----------------------------------------------------------------------------


def rewrite_shard(build: Path, shard: str, change) -> None:
    """Rewrite one shard's members through `change(name, data) -> data`, and give the manifest its new
    checksum, as a build that wrote bad data would have (so the checksum check cannot catch it)."""
    path = build / "shards" / shard
    with tarfile.open(path) as archive:
        members = [(info, archive.extractfile(info).read()) for info in archive.getmembers()]
    with tarfile.open(path, "w") as archive:
        for info, data in members:
            data = change(info.name, data)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    set_checksum(build, shard)


def set_checksum(build: Path, shard: str) -> None:
    manifest = json.loads((build / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            if entry["name"] == shard:
                entry["sha256"] = file_sha256(build / "shards" / shard)
    (build / "manifest.json").write_text(json.dumps(manifest))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def train_cli(build: Path, out: Path, **settings) -> Result:
    config = write_config(out.parent / f"{out.name}.yaml", tiny_config(**settings))
    return runner.invoke(app, ["train", "--shards", str(build), "--config", str(config), "--out", str(out)])


def test_train_refuses_an_empty_shard_folder_and_a_corrupt_tar_unless_told_to_skip(tmp_path):
    empty = write_synthetic_shards(tmp_path / "empty")
    for shard in (empty / "shards").iterdir():
        shard.unlink()
    result = train_cli(empty, tmp_path / "a")
    assert_clean_exit(result, 2)
    assert re.search(r"error: .*train-000000\.tar: missing", result.output)
    result = train_cli(empty, tmp_path / "b", on_corrupt_shard="skip")
    assert_clean_exit(result, 2)
    assert "0 readable training samples" in result.output
    corrupt = write_synthetic_shards(tmp_path / "corrupt")
    first = corrupt / "shards" / "train-000000.tar"
    first.write_bytes(first.read_bytes()[:1000])
    assert_clean_exit(train_cli(corrupt, tmp_path / "c"), 2)
    result = train_cli(corrupt, tmp_path / "d", on_corrupt_shard="skip")
    assert_clean_exit(result, 1)
    reasons = [json.loads(line) for line in (tmp_path / "d" / "skipped.jsonl").read_text().splitlines()]
    assert reasons == [{"input": str(first), "reason": f"{first}: sha256 differs from the manifest"}]
    assert last_line(result) == f"skipped 1 unreadable shards/samples; reasons in {tmp_path / 'd' / 'skipped.jsonl'}"
    assert (tmp_path / "d" / "checkpoints" / "final.pt").is_file()


@pytest.mark.slow
def test_train_stops_at_or_skips_bad_samples_and_unreadable_shard_data(tmp_path):
    build = write_synthetic_shards(tmp_path / "build")
    shards = sorted(p.name for p in (build / "shards").glob("train-*.tar"))
    keys = sorted({name.split(".")[0] for name in tarfile.open(build / "shards" / shards[0]).getnames()})
    truncated, misshapen = keys[0], keys[1]

    def damage(name: str, data: bytes) -> bytes:
        if name == f"{truncated}.mask.png":
            return data[: len(data) // 2]
        if name == f"{misshapen}.mask.png":
            return png_bytes(np.zeros((10, 12), np.uint8))
        return data

    rewrite_shard(build, shards[0], damage)
    (build / "shards" / shards[1]).write_bytes(b"not a tar archive " * 200)
    set_checksum(build, shards[1])
    result = train_cli(build, tmp_path / "stop")
    assert_clean_exit(result, 2)
    assert "error:" in result.output and "on_corrupt_shard: skip" in result.output
    result = train_cli(build, tmp_path / "skip", on_corrupt_shard="skip", workers=2)
    assert_clean_exit(result, 1)
    reasons = "\n".join(
        json.loads(line)["reason"] for line in (tmp_path / "skip" / "skipped.jsonl").read_text().splitlines()
    )
    assert re.search(rf"sample {truncated}: cannot decode \(.*truncated", reasons), reasons
    assert re.search(rf"sample {misshapen}: mask \(10, 12\) and image \(48, 48\) differ in size", reasons), reasons
    assert "unreadable shard data" in reasons and "fewer training samples than the manifest" in reasons
    assert (tmp_path / "skip" / "checkpoints" / "final.pt").is_file()
    assert "skipped" in last_line(result) and "skipped.jsonl" in last_line(result)


# --- malformed YAML inputs: benchmark definitions, training configuration, reproduce plan -----------

DATASET = '{taxonomy: isaid, images: "x/*.png", masks: "x/{stem}.png"}'
BENCHMARK = f"datasets:\n  a: {DATASET}\nbenchmarks:\n"
# (id, file content, the benchmark asked for, what the one error line says after the file's name)
BAD_DEFINITIONS: list[tuple[str, str | bytes, str, str]] = [
    ("yaml-syntax", "datasets: {a: [1, 2\n", "a", ":2: invalid YAML: expected ',' or ']'"),
    ("repeated-key", f"datasets:\n  a: {DATASET}\n  a: {DATASET}\n", "a", ":3: invalid YAML: key 'a' repeats"),
    ("not-utf8", b"\xff\xfedatasets: {}\n", "a", ": cannot read the benchmark definitions: not UTF-8 text"),
    ("not-a-mapping", "- a\n", "a", ": expected a mapping with 'datasets'"),
    ("datasets-a-list", "datasets: [a, b]\n", "a", ": datasets: expected a mapping of dataset names"),
    ("unknown-top-key", f"datasets:\n  a: {DATASET}\nbenchmark: {{}}\n", "a", ": unknown key benchmark"),
    ("entry-a-number", "datasets:\n  a: 5\n", "a", ": dataset 'a': expected a mapping with taxonomy"),
    (
        "unknown-dataset-key",
        'datasets:\n  a: {taxonomy: isaid, images: "x/*.png", masks: "x/{stem}.png", label: {map: {0: 0}}}\n',
        "a",
        ": dataset 'a': unknown key label (known: taxonomy",
    ),
    ("taxonomy-a-number", 'datasets:\n  a: {taxonomy: 5, images: x, masks: "{stem}"}\n', "a", "taxonomy must be"),
    ("taxonomy-missing", 'datasets:\n  a: {taxonomy: gone.yaml, images: x, masks: "{stem}"}\n', "a", "gone.yaml"),
    ("images-a-mapping", 'datasets:\n  a: {taxonomy: isaid, images: {x: 1}, masks: "{stem}"}\n', "a", "images must"),
    ("masks-a-number", "datasets:\n  a: {taxonomy: isaid, images: x, masks: 5}\n", "a", "masks must be a path"),
    ("masks-unknown-field", 'datasets:\n  a: {taxonomy: isaid, images: x, masks: "{name}.png"}\n', "a", "{name}"),
    ("masks-open-brace", 'datasets:\n  a: {taxonomy: isaid, images: x, masks: "{stem"}\n', "a", "masks '{stem'"),
    (
        "labels-a-list",
        'datasets:\n  a: {taxonomy: isaid, images: x, masks: "{stem}", labels: [1]}\n',
        "a",
        "labels must be a mapping",
    ),
    (
        "map-key-a-word",
        'datasets:\n  a: {taxonomy: isaid, images: x, masks: "{stem}", labels: {map: {road: 1}}}\n',
        "a",
        "map key 'road' is not a stored mask value",
    ),
    (
        "map-to-no-class",
        'datasets:\n  a: {taxonomy: isaid, images: x, masks: "{stem}", labels: {map: {0: 40}}}\n',
        "a",
        "map sends 0 to 40; use class ids 0-14 or 255",
    ),
    (
        "palette-two-channels",
        'datasets:\n  a: {taxonomy: isaid, images: x, masks: "{stem}", labels: {palette: {"1,2": 3}}}\n',
        "a",
        "palette colour '1,2' is not 'r,g,b'",
    ),
    (
        "default-without-map",
        'datasets:\n  a: {taxonomy: isaid, images: x, masks: "{stem}", labels: {default: 1}}\n',
        "a",
        "default goes with map",
    ),
    ("benchmarks-a-list", f"datasets:\n  a: {DATASET}\nbenchmarks: [a]\n", "a", ": benchmarks: expected a mapping"),
    ("benchmark-a-string", BENCHMARK + "  b: a\n", "b", ": benchmark 'b': expected a mapping with datasets"),
    ("datasets-a-string", BENCHMARK + "  b: {datasets: a}\n", "b", "benchmark 'b': datasets must be a list"),
    ("undefined-dataset", BENCHMARK + "  b: {datasets: [a, zz]}\n", "b", "benchmark 'b': no dataset 'zz'"),
    ("unknown-benchmark-key", BENCHMARK + "  b: {datasets: [a], means: x}\n", "b", "benchmark 'b': unknown key means"),
    ("bad-train-taxonomy", BENCHMARK + "  b: {datasets: [a], train_taxonomy: nope}\n", "b", "train_taxonomy: "),
    ("foreign-train-dataset", BENCHMARK + "  b: {datasets: [a], train_dataset: c}\n", "b", "train_dataset 'c'"),
    ("bad-groups", BENCHMARK + "  b: {datasets: [a], resolution_groups: {low: a}}\n", "b", "resolution_groups"),
]


def assert_one_error_line(result: Result, path: Path, says: str) -> None:
    """Exit 2, no traceback, and one `error:` line, the last, naming PATH and saying SAYS (README, exit codes)."""
    assert_clean_exit(result, 2)
    assert result.output.count("error:") == 1, result.output
    assert last_line(result).startswith(f"error: {path}") and says in last_line(result), result.output


@pytest.mark.parametrize(
    ("content", "benchmark", "says"), [c[1:] for c in BAD_DEFINITIONS], ids=[c[0] for c in BAD_DEFINITIONS]
)
def test_eval_refuses_malformed_benchmark_definitions_with_one_error_line(tmp_path, content, benchmark, says):
    path = tmp_path / "benchmarks.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    arguments = ["eval", "--zero-shot", "--backbone", "tiny", "--benchmark", benchmark, "--data-root", str(tmp_path)]
    result = runner.invoke(app, [*arguments, "--out", str(out), "--benchmarks", str(path)])
    assert_one_error_line(result, path, says)
    assert not out.exists()  # refused before any work


def test_eval_refuses_a_missing_benchmark_definitions_file(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    arguments = ["eval", "--zero-shot", "--backbone", "tiny", "--benchmark", "a", "--data-root", str(tmp_path)]
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path / "out"), "--benchmarks", str(missing)])
    assert_one_error_line(result, missing, ": cannot read the benchmark definitions (No such file or directory)")


# (id, file content, what the one error line says after the file's name)
BAD_CONFIGS: list[tuple[str, str | bytes, str]] = [
    ("yaml-syntax", "model: {backbone: tiny\n", ":2: invalid YAML: expected ',' or '}'"),
    ("repeated-key", "train:\n  iters: 2\n  iters: 3\n", ":3: invalid YAML: key 'iters' repeats (first on line 2)"),
    ("not-utf8", b"\xfftrain: {}\n", ": cannot read the configuration: not UTF-8 text"),
    ("not-a-mapping", "[1, 2]\n", ": expected a mapping with model/train/eval sections"),
    ("section-a-list", "model: [tiny]\n", ": model: expected a mapping of settings, got ['tiny']"),
    ("section-a-number", "train: 5\n", ": train: expected a mapping of settings, got 5"),
    ("nested-section-a-number", "model: {spm: 3}\n", ": model.spm: expected a mapping of settings, got 3"),
    ("unknown-top-key", "training: {iters: 2}\n", ": unknown setting 'training' (known in the configuration"),
    ("unknown-nested-key", "train: {learning_rate: 1}\n", ": unknown setting 'train.learning_rate' (known in train"),
    ("count-a-word", "train: {iters: many}\n", ": train.iters: expected an integer, got 'many'"),
    ("count-a-float", "train: {batch_size: 2.5}\n", ": train.batch_size: expected an integer, got 2.5"),
    ("rate-a-word", "train: {lr: fast}\n", ": train.lr: expected a number, got 'fast'"),
    ("switch-a-number", "train: {amp: 1}\n", ": train.amp: expected true or false, got 1"),
    ("size-a-string", 'eval: {crop: "64"}\n', ": eval.crop: expected an integer, got '64'"),
    ("pair-a-number", "model: {guidance_layers: 3}\n", ": model.guidance_layers: expected a list of 2 integers"),
    ("architecture-typo", "model: {architecture: {patches: 8}}\n", ": unknown setting 'model.architecture.patches'"),
    ("backbone-a-number", "model: {backbone: 5}\n", ": model.backbone: unknown backbone 5"),
    ("zero-iterations", "train: {iters: 0}\n", ": train.iters must be at least 1, got 0"),
    ("zero-validation-period", "train: {val_every: 0}\n", ": train.val_every must be at least 1, got 0"),
    ("negative-rate", "train: {lr: -0.1}\n", ": train.lr must be above 0"),
    (
        "template-without-slot",
        "model: {prompt_template: a photo}\n",
        ": model.prompt_template must hold exactly one {}",
    ),
    ("bad-value", "train: {ignore_mode: maybe}\n", ": ignore_mode must be 'negative' or 'exclude'"),
]


@pytest.mark.parametrize(("content", "says"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_train_refuses_a_malformed_configuration_with_one_error_line(tmp_path, content, says):
    path = tmp_path / "my.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = runner.invoke(
        app, ["train", "--shards", str(tmp_path), "--config", str(path), "--out", str(tmp_path / "r")]
    )
    assert_one_error_line(result, path, says)
    assert not (tmp_path / "r").exists()


def test_other_commands_refuse_malformed_configurations_and_plans(tmp_path):
    config = tmp_path / "convert.yaml"
    config.write_text("eval: {stride: wide}\n")
    weights = tmp_path / "w" / "model_final.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    result = runner.invoke(
        app, ["convert-released", str(weights), "--out", str(tmp_path / "c.pt"), "--config", str(config)]
    )
    assert_one_error_line(result, config, ": eval.stride: expected an integer, got 'wide'")
    plan = tmp_path / "plan.yaml"
    arguments = ["reproduce", "--weights", str(weights.parent), "--data-root", str(tmp_path), "--plan", str(plan)]
    for content, says in [
        ("model_final.pth: {taxonomy: dlrsd, benchmarks: [road\n", ":2: invalid YAML"),
        ("model_final.pth: {taxonomy: dlrsd, benchmarks: road}\n", "benchmarks must be a list of benchmark names"),
        ("model_final.pth: {taxonomy: 5, benchmarks: [road]}\n", "taxonomy must be a taxonomy name"),
        ("model_final.pth: {taxonomy: dlrsd, benchmarks: [road], backbone: vit-b}\n", "and nothing else"),
        ("5: {taxonomy: dlrsd, benchmarks: [road]}\n", "5: each key must be a weights path"),
    ]:
        plan.write_text(content)
        result = runner.invoke(app, [*arguments, "--out", str(tmp_path / "o")])
        assert_one_error_line(result, plan, says)
    plan.write_bytes(b"\xff")
    assert_one_error_line(runner.invoke(app, [*arguments, "--out", str(tmp_path / "o")]), plan, "not UTF-8 text")
