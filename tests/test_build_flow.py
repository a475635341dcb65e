"""The Prefect flow end to end: caching across runs, resume after SIGKILL, selective reruns, a real Dask cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flow_helpers import make_imagery, ovrsis, prefect_env, shard_bytes, write_config
from pipeline.shards import ShardReader, verify_shards

pytestmark = pytest.mark.slow


def run_build(config, home, timeout=600, env=None):
    result = subprocess.run(ovrsis("build", "--config", str(config)), env=env or prefect_env(home), capture_output=True,
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


def test_real_dask_cluster_gives_the_local_runners_shards_byte_for_byte(tmp_path, imagery, tiny_models_yaml):
    """A `dask scheduler` and two `dask worker` processes (stopped by PID), the build sent to them
    through `runner.address`; the shards must equal the thread runner's, byte for byte. Every
    process runs torch on one thread, so the same tile gives the same floats wherever it runs."""
    env = prefect_env(tmp_path / "prefect") | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    port = free_port()
    scheduler_log = tmp_path / "scheduler.log"
    dask = str(Path(sys.executable).parent / "dask")
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  env=env, stdout=open(scheduler_log, "w"), stderr=subprocess.STDOUT, start_new_session=True)]  # fmt: skip
    try:
        for index in range(2):
            processes.append(subprocess.Popen([dask, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-dashboard",
                                               "--name", f"worker-{index}"], env=env | {"PREFECT_LOGGING_LEVEL": "INFO"}, stdout=open(tmp_path / f"worker{index}.log", "w"),
                                              stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        wait_for_workers(scheduler_log, 2, processes)
        config = write_config(tmp_path / "dask.yaml", imagery, tiny_models_yaml, tmp_path / "dask",
                              runner={"kind": "dask", "address": f"tcp://127.0.0.1:{port}"})  # fmt: skip
        run_build(config, tmp_path / "prefect", env=env)
        for index in range(2):  # both workers annotated batches (Prefect logs each task run it finishes)
            assert "annotate-batch" in (tmp_path / f"worker{index}.log").read_text(), f"worker-{index} ran no batch"
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
    assert all(process.returncode is not None for process in processes)
    reference = write_config(tmp_path / "threads.yaml", imagery, tiny_models_yaml, tmp_path / "threads")
    run_build(reference, tmp_path / "prefect", env=env)
    assert verify_shards(tmp_path / "dask") == []
    assert shard_bytes(tmp_path / "dask") == shard_bytes(tmp_path / "threads")
    assert (tmp_path / "dask" / "records.jsonl").read_bytes() == (tmp_path / "threads" / "records.jsonl").read_bytes()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_workers(scheduler_log: Path, count: int, processes: list, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), f"a Dask process exited:\n{scheduler_log.read_text()[-2000:]}"
        if scheduler_log.read_text().count("Register worker") >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{count} Dask workers did not register within {timeout} s:\n{scheduler_log.read_text()[-2000:]}")


def test_invalid_configuration_fails_before_models(tmp_path):
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({"inputs": [str(tmp_path / "missing")], "output": str(tmp_path / "out")}))
    result = subprocess.run(ovrsis("build", "--config", str(config)), env=prefect_env(tmp_path / "p"), capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "does not exist" in result.stderr
