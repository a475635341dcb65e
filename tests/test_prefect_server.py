"""The README's sequence against a real Prefect server: start it, serve the deployment, run it with
the Prefect CLI, check the shards and the artifacts on the flow run, stop both processes by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.sample_build import make_imagery, ovrsis, prefect_env, write_config
from pipeline.shards import ShardReader, verify_shards

pytestmark = [pytest.mark.slow, pytest.mark.server]
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"process exited early:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def test_served_deployment_builds_shards(tmp_path, tiny_models_yaml):
    imagery = make_imagery(tmp_path / "data" / "rasters", count=2, size=256)
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, tmp_path / "out")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path / "prefect-home", api) | {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=open(server_log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serving = None
    try:
        wait_for(f"{api}/health", 90, server, server_log)
        serving = subprocess.Popen(
            ovrsis("serve"), env=env, stdout=open(serve_log, "w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(f"{api}/deployments/name/build-ovrsis95k/local", 60, serving, serve_log)
        run = subprocess.run(
            [PREFECT, "deployment", "run", "build-ovrsis95k/local", "--param", f"config={config}", "--watch"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + serve_log.read_text()[-3000:]
        assert "Completed" in run.stdout
        assert verify_shards(tmp_path / "out") == []
        manifest = ShardReader(tmp_path / "out").manifest
        assert sum(s["samples"] for s in manifest["splits"].values()) == 8
        runs = post(f"{api}/flow_runs/filter", {})
        assert any(r["state_type"] == "COMPLETED" for r in runs)
        artifacts = {a["key"]: a for a in post(f"{api}/artifacts/filter", {}) if a["key"]}
        assert {"balance-report", "shards", "quarantine", "manifest"} <= set(artifacts), sorted(artifacts)
        run_ids = {r["id"] for r in runs}
        assert all(artifacts[key]["flow_run_id"] in run_ids for key in ("balance-report", "shards", "quarantine"))
        assert (tmp_path / "out" / "report" / "balance.md").read_text() == artifacts["balance-report"]["data"]
        shards = (
            json.loads(artifacts["shards"]["data"])
            if isinstance(artifacts["shards"]["data"], str)
            else artifacts["shards"]["data"]
        )
        assert sum(row["samples"] for row in shards) == 8 and {row["split"] for row in shards} == {"train", "val"}
        quarantine = artifacts["quarantine"]["data"]
        quarantine = json.loads(quarantine) if isinstance(quarantine, str) else quarantine
        assert [row["key"].split("__")[0] for row in quarantine] == ["broken"], quarantine
        assert (tmp_path / "out" / "manifest.json").as_uri() in artifacts["manifest"][
            "data"
        ]  # a link, stored as markdown
    finally:
        if serving is not None:
            stop(serving)
        stop(server)
    assert server.returncode is not None and (serving is None or serving.returncode is not None)
