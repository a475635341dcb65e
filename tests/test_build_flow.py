"""The Prefect flow end to end: caching across runs, resume after SIGKILL, selective reruns, real Dask and Ray
clusters."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from flows.sample_build import make_imagery, ovrsis, prefect_env, write_config
from pipeline.dataset.shards import ShardReader, verify_shards

pytestmark = pytest.mark.slow


def run_build(config, home, timeout=600, env=None):
    result = subprocess.run(
        ovrsis("build", "--config", str(config)),
        env=env or prefect_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    # exit 1: finished, but the broken.tif that make_imagery puts among the good rasters was quarantined
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 quarantined tile(s); reasons in" in result.stderr.strip().splitlines()[-1]
    return result


def shard_bytes(output: Path) -> dict[str, bytes]:
    """The shards' and the manifest's bytes, to compare two builds byte for byte."""
    return {p.name: p.read_bytes() for p in sorted((output / "shards").glob("*.tar"))} | {
        "manifest.json": (output / "manifest.json").read_bytes()
    }


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
    process = subprocess.Popen(
        ovrsis("build", "--config", str(config)),
        env=prefect_env(tmp_path / "prefect2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the same floats in every process


@pytest.fixture(scope="module")
def small_imagery(tmp_path_factory):
    """Three rasters of four tiles and the broken file: three batches of 4 for two workers."""
    return make_imagery(tmp_path_factory.mktemp("small") / "rasters", count=3, size=256)


@pytest.fixture(scope="module")
def threads_build(tmp_path_factory, small_imagery, tiny_models_yaml):
    """The thread runner's build, every process on one torch thread: what the clusters must match."""
    folder = tmp_path_factory.mktemp("threads")
    config = write_config(folder / "threads.yaml", small_imagery, tiny_models_yaml, folder / "out")
    run_build(config, folder / "prefect", env=prefect_env(folder / "prefect") | ONE_THREAD)
    return folder / "out"


@pytest.mark.cluster
def test_real_dask_cluster_gives_the_local_runners_shards_byte_for_byte(
    tmp_path, small_imagery, tiny_models_yaml, threads_build
):
    """A `dask scheduler` and two `dask worker` processes (stopped by PID), the build sent to them
    through `runner.address`; the shards must equal the thread runner's, byte for byte."""
    env = prefect_env(tmp_path / "prefect") | ONE_THREAD
    port = free_port()
    scheduler_log = tmp_path / "scheduler.log"
    dask = str(Path(sys.executable).parent / "dask")
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=env,
            stdout=open(scheduler_log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ]
    try:
        for index in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        f"tcp://127.0.0.1:{port}",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"worker-{index}",
                    ],
                    env=env | {"PREFECT_LOGGING_LEVEL": "INFO"},
                    stdout=open(tmp_path / f"worker{index}.log", "w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_for_log(scheduler_log, "Register worker", 2, processes)
        config = write_config(
            tmp_path / "dask.yaml",
            small_imagery,
            tiny_models_yaml,
            tmp_path / "dask",
            runner={"kind": "dask", "address": f"tcp://127.0.0.1:{port}"},
        )
        run_build(config, tmp_path / "prefect", env=env)
        # every batch ran on the cluster's workers (Prefect logs each task run it finishes): 12 tiles, batches of 4
        logs = "".join((tmp_path / f"worker{index}.log").read_text() for index in range(2))
        assert len(re.findall(r"Task run 'annotate-batch-\w+' - Finished in state Completed", logs)) == 3, logs[-2000:]
    finally:
        stop_all(processes)
    assert_same_build(tmp_path / "dask", threads_build)


@pytest.mark.cluster
def test_real_ray_cluster_gives_the_local_runners_shards_byte_for_byte(
    tmp_path, small_imagery, tiny_models_yaml, threads_build
):
    """`ray start --head` (two CPUs, stopped by PID), the build sent to it through prefect-ray."""
    pytest.importorskip("prefect_ray", reason="prefect-ray is the `ray` extra: pip install 'ovrsis[ray]'")
    env = prefect_env(tmp_path / "prefect") | ONE_THREAD
    port = free_port()
    log = tmp_path / "ray.log"
    ray = str(Path(sys.executable).parent / "ray")
    sessions = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--node-ip-address",
            "127.0.0.1",
            "--disable-usage-stats",
            "--block",
            "--temp-dir",
            sessions,
        ],
        env=env | {"PREFECT_LOGGING_LEVEL": "INFO"},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_log(log, "will now block forever", 1, [head])
        config = write_config(
            tmp_path / "ray.yaml",
            small_imagery,
            tiny_models_yaml,
            tmp_path / "out",
            runner={"kind": "ray", "address": f"127.0.0.1:{port}"},
        )
        result = run_build(config, tmp_path / "prefect", env=env)
        assert "(annotate-batch pid=" in result.stderr  # batches ran in Ray's worker processes
    finally:
        stop_all([head])
        shutil.rmtree(sessions, ignore_errors=True)
    assert_same_build(tmp_path / "out", threads_build)


def assert_same_build(built, reference) -> None:
    assert verify_shards(built) == []
    assert shard_bytes(built) == shard_bytes(reference)
    assert (built / "records.jsonl").read_bytes() == (reference / "records.jsonl").read_bytes()


def stop_all(processes: list) -> None:
    """SIGTERM to each process group (a Ray head's daemons too), SIGKILL to what is left after 30 s."""
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # daemons that outlived their parent
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_log(log: Path, text: str, count: int, processes: list, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), f"a cluster process exited:\n{log.read_text()[-2000:]}"
        if log.read_text().count(text) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not seen {count} times within {timeout} s:\n{log.read_text()[-2000:]}")


def test_invalid_configuration_fails_before_models(tmp_path):
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({"inputs": [str(tmp_path / "missing")], "output": str(tmp_path / "out")}))
    result = subprocess.run(
        ovrsis("build", "--config", str(config)),
        env=prefect_env(tmp_path / "p"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr
