"""The Prefect flow end to end: caching across runs, resume after SIGKILL, selective reruns, Dask."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml

from flow_helpers import make_imagery, ovrsis, prefect_env, shard_bytes, write_config
from pipeline.shards import ShardReader, verify_shards

pytestmark = pytest.mark.slow


def run_build(config, home, timeout=600):
    result = subprocess.run(ovrsis("build", "--config", str(config)), env=prefect_env(home), capture_output=True,
                            text=True, timeout=timeout)  # fmt: skip
    # exit 1: finished, but the broken.tif that make_imagery puts among the good rasters was quarantined
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 quarantined tile(s); reasons in" in result.stderr.strip().splitlines()[-1]
    return result


def stage_files(storage):
    """The stage cache's files (one per stage and batch, and one per ingested raster) and their mtimes."""
    return {p.name: p.stat().st_mtime_ns for p in (storage / "stages").rglob("*.json.z")}


@pytest.fixture(scope="module")
def imagery(tmp_path_factory):
    return make_imagery(tmp_path_factory.mktemp("imagery") / "rasters")


def test_resume_after_sigkill_gives_identical_shards_and_cache_rules(tmp_path, imagery, tiny_models_yaml):
    reference = write_config(tmp_path / "reference.yaml", imagery, tiny_models_yaml, tmp_path / "reference")
    result = run_build(reference, tmp_path / "prefect")
    assert "shards: train" in result.stderr.replace("\n", " ")
    assert verify_shards(tmp_path / "reference") == []
    reader = ShardReader(tmp_path / "reference")
    assert reader.manifest["splits"]["train"]["samples"] + reader.manifest["splits"]["val"]["samples"] == 48
    assert reader.class_names[24] == "building" and next(reader.samples("train")).image.shape == (128, 128, 3)
    assert reader.manifest["quarantined_tiles"] == 1
    assert not any(s.key.startswith("broken") for split in ("train", "val") for s in reader.samples(split))

    # SIGKILL the whole build (and its ephemeral Prefect server) in the middle of the model stages
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, tmp_path / "out")
    storage = tmp_path / "out" / ".cache"
    process = subprocess.Popen(ovrsis("build", "--config", str(config)), env=prefect_env(tmp_path / "prefect2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(stage_files(storage)) < 25:
        assert process.poll() is None, "the build finished before it could be interrupted"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out" / "manifest.json").exists(), "killed too late: the build had finished"
    partial = stage_files(storage)
    leftover = tmp_path / "out" / "masks" / ".tile.png.abc123.part"  # what a write cut by the kill leaves
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a png")

    run_build(config, tmp_path / "prefect2")
    assert not leftover.exists()
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "reference")
    completed = stage_files(storage)
    assert all(completed[name] == mtime for name, mtime in partial.items()), "finished stages were recomputed"

    # nothing changed: no task result is written again
    run_build(config, tmp_path / "prefect2")
    assert stage_files(storage) == completed

    # one merge threshold changed: only merge and domain run again (2 new results per batch of 4 tiles)
    settings = yaml.safe_load(config.read_text())
    settings["merge"] = {"min_area": 64}
    config.write_text(yaml.safe_dump(settings))
    run_build(config, tmp_path / "prefect2")
    after = stage_files(storage)
    assert all(after[name] == mtime for name, mtime in completed.items())
    assert len(after) - len(completed) == 2 * (48 // 4)


def test_dask_runner_with_two_local_workers(tmp_path, imagery, tiny_models_yaml):
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, tmp_path / "out",
                          runner={"kind": "dask", "workers": 2})  # fmt: skip
    run_build(config, tmp_path / "prefect")
    assert verify_shards(tmp_path / "out") == []
    reference = write_config(tmp_path / "threads.yaml", imagery, tiny_models_yaml, tmp_path / "threads")
    run_build(reference, tmp_path / "prefect")
    # Worker processes run torch with other thread counts, so model scores may differ in the last
    # bits; the tiles, their split and what the captions yield must not.
    dask, threads = ShardReader(tmp_path / "out"), ShardReader(tmp_path / "threads")
    for split in ("train", "val"):
        a = {s.key: s.record["categories"] for s in dask.samples(split)}
        b = {s.key: s.record["categories"] for s in threads.samples(split)}
        assert a == b and len(a) == dask.manifest["splits"][split]["samples"]


def test_invalid_configuration_fails_before_models(tmp_path):
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({"inputs": [str(tmp_path / "missing")], "output": str(tmp_path / "out")}))
    result = subprocess.run(ovrsis("build", "--config", str(config)), env=prefect_env(tmp_path / "p"), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "does not exist" in result.stderr
